import { readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { prose } from '../src/routes/docs-routes.js';
import { ADMIN_KEY, startHarness, type Harness, makePng, multipartBody } from './harness.js';

const spec = parse(readFileSync(new URL('../openapi.yaml', import.meta.url), 'utf8')) as {
  paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
  components: { schemas: Record<string, unknown> };
};

const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats.default(ajv);
ajv.addSchema({ ...spec, $id: 'openapi.yaml' });

function validate(schemaName: string, body: unknown): string[] {
  const check = ajv.getSchema(`openapi.yaml#/components/schemas/${schemaName}`);
  if (!check) throw new Error(`no schema ${schemaName}`);
  return check(body) ? [] : (check.errors ?? []).map((e) => `${e.instancePath} ${e.message}`);
}

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => h.close());

/** The routes the app serves, as OpenAPI paths (`:id` → `{id}`), read from Fastify's route tree. */
function servedRoutes(): Set<string> {
  const routes = new Set<string>();
  const stack: string[] = [];
  for (const line of h.app.printRoutes({ commonPrefix: false }).split('\n')) {
    const start = line.search(/[^│├└─\s]/);
    const m = /^(\S+) \(([A-Z, ]+)\)/.exec(line.slice(start));
    if (start < 0 || !m) continue;
    const depth = start / 4 - 1;
    stack.length = depth;
    stack.push(m[1]!);
    const path = stack.join('').replace(/:(\w+)/g, '{$1}');
    for (const method of m[2]!.split(', ')) routes.add(`${method.toLowerCase()} ${path}`);
  }
  return routes;
}

describe('openapi.yaml and the running app', () => {
  it('describes every route the app serves under /v1 and the health routes', () => {
    const described = new Set(Object.entries(spec.paths).flatMap(([path, item]) => Object.keys(item).map((m) => `${m} ${path}`)));
    const served = [...servedRoutes()].filter((r) => (r.includes(' /v1/') || r.endsWith('/healthz') || r.endsWith('/readyz')) && !r.startsWith('head '));
    expect(served).toContain('get /v1/models/{id}');
    const undocumented = served.filter((r) => !described.has(r.replace('{name}', '{id}')));
    expect(undocumented).toEqual([]);
  });

  it('a generate answer matches GenerationResult', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'otter', n: 2, response_format: 'b64_json' } });
    expect(res.statusCode).toBe(200);
    expect(validate('GenerationResult', res.json())).toEqual([]);
  });

  it('an edit answer matches GenerationResult', async () => {
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'add a hat' }, [{ field: 'image', filename: 'a.png', bytes: await makePng() }]);
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
    expect(res.statusCode).toBe(200);
    expect(validate('GenerationResult', res.json())).toEqual([]);
  });

  it('an image listing matches ImageList', async () => {
    const made = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a gallery entry', quality: 'low' } });
    expect(made.statusCode).toBe(200);
    const res = await h.app.inject({ method: 'GET', url: '/v1/images?limit=1', headers: h.auth });
    expect(res.statusCode).toBe(200);
    expect(res.json().data).toHaveLength(1);
    expect(validate('ImageList', res.json())).toEqual([]);
  });

  it('the model list matches ModelList', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth });
    expect(validate('ModelList', res.json())).toEqual([]);
  });

  it('a validation error matches Error', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1' } });
    expect(res.statusCode).toBe(400);
    expect(validate('Error', res.json())).toEqual([]);
  });

  it('an upstream failure matches Error', async () => {
    h.simulator.failNext('http500');
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x' } });
    expect(res.statusCode).toBe(502);
    expect(validate('Error', res.json())).toEqual([]);
  });

  it('an async answer matches JobAccepted and the finished job matches Job', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'later', async: true } });
    expect(res.statusCode).toBe(202);
    expect(validate('JobAccepted', res.json())).toEqual([]);
    let job = res.json();
    for (let i = 0; i < 100 && job.status !== 'succeeded'; i++) {
      await new Promise((r) => setTimeout(r, 20));
      job = (await h.app.inject({ method: 'GET', url: `/v1/jobs/${job.id}`, headers: h.auth })).json();
    }
    expect(job.status).toBe('succeeded');
    expect(validate('Job', job)).toEqual([]);
  });

  it('minting and listing keys answer KeyCreated and KeyList', async () => {
    const admin = { authorization: `Bearer ${ADMIN_KEY}` };
    const created = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'docs', rpm: 10, models: ['gpt-image-*'] } });
    expect(created.statusCode).toBe(201);
    expect(validate('KeyCreated', created.json())).toEqual([]);
    const list = await h.app.inject({ method: 'GET', url: '/v1/keys', headers: admin });
    expect(validate('KeyList', list.json())).toEqual([]);
  });

  it('minting a browser token answers TokenCreated, and the usage records of its requests match UsageRecordPage', async () => {
    const created = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: h.auth, payload: { models: ['gpt-image-1'], max_images: 2 } });
    expect(created.statusCode).toBe(201);
    expect(validate('TokenCreated', created.json())).toEqual([]);
    const bare = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: h.auth });
    expect(validate('TokenCreated', bare.json())).toEqual([]);
    await h.app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: `Bearer ${created.json().token}` } });
    const records = await h.app.inject({ method: 'GET', url: '/v1/usage/records?from=2000-01-01&limit=1000', headers: h.auth });
    expect(records.json().data.some((r: { token_id: string | null }) => r.token_id === created.json().id)).toBe(true);
    expect(validate('UsageRecordPage', records.json())).toEqual([]);
  });

  it('the refusals of the key, usage and model routes are statuses their entries list', async () => {
    const admin = { authorization: `Bearer ${ADMIN_KEY}` };
    const declared = (method: string, path: string) => Object.keys(spec.paths[path]![method]!.responses);
    const expectListed = (method: string, path: string, res: { statusCode: number; body: string }, status: number) => {
      expect(res.statusCode, res.body).toBe(status);
      expect(declared(method, path)).toContain(String(status));
    };
    const mint = (payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload });
    expect((await mint({ id: 'docs-twice', team: 'docs' })).statusCode).toBe(201);
    expectListed('post', '/v1/keys', await mint({ id: 'docs-twice', team: 'docs' }), 409);

    const fromEnv = (await h.app.inject({ method: 'GET', url: '/v1/keys', headers: admin })).json().data.find((k: { source: string }) => k.source === 'env');
    expectListed('delete', '/v1/keys/{id}', await h.app.inject({ method: 'DELETE', url: `/v1/keys/${fromEnv.id}`, headers: admin }), 400);

    const token = (await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: h.auth, payload: {} })).json().token;
    for (const path of ['/v1/usage', '/v1/usage/records']) {
      expectListed('get', path, await h.app.inject({ method: 'GET', url: path, headers: { authorization: `Bearer ${token}` } }), 403);
    }

    // A key allowed one request a minute may read ten times a minute (its rpm x 10, RATE_LIMIT_READ_RPM unset).
    const slow = (await mint({ team: 'docs', rpm: 1 })).json().key;
    let last = await h.app.inject({ method: 'GET', url: '/v1/models/gpt-image-1', headers: { authorization: `Bearer ${slow}` } });
    for (let i = 0; i < 20 && last.statusCode === 200; i++) {
      last = await h.app.inject({ method: 'GET', url: '/v1/models/gpt-image-1', headers: { authorization: `Bearer ${slow}` } });
    }
    expectListed('get', '/v1/models/{id}', last, 429);
  });

  it('every operation lists the refusals any request can meet: 408, 431 and 500', () => {
    const missing = Object.entries(spec.paths).flatMap(([path, item]) =>
      Object.entries(item).flatMap(([method, op]) => ['408', '431', '500'].filter((s) => !(s in op.responses)).map((s) => `${method} ${path} ${s}`)),
    );
    expect(missing).toEqual([]);
  });

  it('the headers an answer carries are declared on the response its entry lists', async () => {
    const admin = { authorization: `Bearer ${ADMIN_KEY}` };
    type Ref = { $ref?: string; headers?: Record<string, unknown> };
    const resolve = (r: Ref): Ref => (r.$ref ? resolve((spec.components as unknown as Record<string, Record<string, Ref>>).responses![r.$ref.split('/').pop()!]!) : r);
    const watched = /^(x-request-id|x-ratelimit-.*|idempotent-replayed|location|retry-after|x-accel-buffering|etag|set-cookie|content-range)$/;
    const undeclared = (method: string, path: string, res: { statusCode: number; headers: Record<string, unknown> }) => {
      const entry = spec.paths[path]![method]!.responses[String(res.statusCode)] as Ref | undefined;
      if (!entry) return [`${method} ${path} ${res.statusCode} (status not listed)`];
      const declared = new Set(Object.keys(resolve(entry).headers ?? {}).map((n) => n.toLowerCase()));
      return Object.keys(res.headers).filter((n) => watched.test(n) && !declared.has(n)).map((n) => `${method} ${path} ${res.statusCode} ${n}`);
    };
    const key = (await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'docs-headers', images_per_day: 50, monthly_budget_usd: 10 } })).json().key;
    const auth = { authorization: `Bearer ${key}` };
    const generate = (payload: Record<string, unknown>, headers: Record<string, string> = auth, url = '/v1/generate') =>
      h.app.inject({ method: 'POST', url, headers, payload: { model: 'gpt-image-1', prompt: 'otter', ...payload } });
    const found: string[] = [];
    const sync = await generate({}, { ...auth, 'idempotency-key': 'docs-headers-1' });
    expect(sync.headers['x-ratelimit-images-limit']).toBe('50');
    expect(sync.headers['idempotent-replayed']).toBe('false');
    found.push(...undeclared('post', '/v1/generate', sync));
    const replay = await generate({}, { ...auth, 'idempotency-key': 'docs-headers-1' });
    expect(replay.headers['idempotent-replayed']).toBe('true');
    found.push(...undeclared('post', '/v1/generate', replay));
    const accepted = await generate({ async: true });
    expect(accepted.statusCode).toBe(202);
    expect(accepted.headers.location).toBe(accepted.json().status_url);
    found.push(...undeclared('post', '/v1/generate', accepted));
    found.push(...undeclared('get', '/v1/jobs/{id}', await h.app.inject({ method: 'GET', url: accepted.json().status_url, headers: auth })));
    found.push(...undeclared('post', '/v1/images/generations', await generate({}, auth, '/v1/images/generations')));
    // Upstream's 503 past the gateway's retries: a 502 telling when to come back.
    const upstream = await generate({ prompt: 'otter #sim:http503' });
    expect(upstream.statusCode).toBe(502);
    expect(upstream.headers['retry-after']).toBeDefined();
    found.push(...undeclared('post', '/v1/generate', upstream));
    found.push(...undeclared('post', '/v1/generate', await generate({ quality: 'nope' })));
    found.push(...undeclared('get', '/v1/models', await h.app.inject({ method: 'GET', url: '/v1/models', headers: auth })));
    found.push(...undeclared('get', '/v1/models/{id}', await h.app.inject({ method: 'GET', url: '/v1/models/no-such-model', headers: auth })));
    const minted = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: auth, payload: { models: ['gpt-image-1'], max_images: 2 } });
    found.push(...undeclared('post', '/v1/tokens', minted));
    const token = { authorization: `Bearer ${minted.json().token}` };
    const byToken = await generate({}, token);
    expect(byToken.headers['x-ratelimit-token-images-limit']).toBe('2');
    found.push(...undeclared('post', '/v1/generate', byToken));
    const overToken = await generate({ n: 2 }, token);
    expect(overToken.statusCode).toBe(429);
    found.push(...undeclared('post', '/v1/generate', overToken));
    // Event streams: the gateway's, OpenAI's, a job's.
    const streamed = await generate({ stream: true });
    expect(streamed.headers['x-accel-buffering']).toBe('no');
    found.push(...undeclared('post', '/v1/generate', streamed));
    found.push(...undeclared('post', '/v1/images/generations', await generate({ stream: true }, auth, '/v1/images/generations')));
    const events = await h.app.inject({ method: 'GET', url: `${accepted.json().status_url}/events`, headers: auth });
    expect(events.statusCode).toBe(200);
    found.push(...undeclared('get', '/v1/jobs/{id}/events', events));
    // A stored image: whole, a range of it, not modified.
    const url = new URL(sync.json().images[0].url);
    const image = await h.app.inject({ method: 'GET', url: url.pathname + url.search });
    found.push(...undeclared('get', '/v1/images/{id}', image));
    const range = await h.app.inject({ method: 'GET', url: url.pathname + url.search, headers: { range: 'bytes=0-9' } });
    expect(range.statusCode).toBe(206);
    found.push(...undeclared('get', '/v1/images/{id}', range));
    const notModified = await h.app.inject({ method: 'GET', url: url.pathname + url.search, headers: { 'if-none-match': String(image.headers.etag) } });
    expect(notModified.statusCode).toBe(304);
    found.push(...undeclared('get', '/v1/images/{id}', notModified));
    // Signing out of the console clears its cookie.
    const host = 'gw.test';
    const signOut = await h.app.inject({ method: 'DELETE', url: '/console/api/session', headers: { host, origin: `http://${host}`, 'x-console-request': '1' } });
    expect(signOut.statusCode).toBe(204);
    expect(String(signOut.headers['set-cookie'])).toMatch(/^gw_console=;/);
    found.push(...undeclared('delete', '/console/api/session', signOut));
    expect(found).toEqual([]);
  });

  it("the JSON request examples of POST /v1/edit and /v1/upscale are taken as written", async () => {
    for (const path of ['/v1/edit', '/v1/upscale']) {
      const example = (spec.paths[path]!.post as unknown as { requestBody: { content: Record<string, { example: Record<string, unknown> }> } }).requestBody.content['application/json']!.example;
      const res = await h.app.inject({ method: 'POST', url: path, headers: h.auth, payload: example });
      expect(res.statusCode, `${path}: ${res.body}`).toBe(200);
    }
  });

  it('the schema check itself refuses a body that breaks the spec', () => {
    expect(validate('GenerationResult', { id: 'gen_x', object: 'image.result' })).not.toEqual([]);
  });

  it('/docs renders the reference from openapi.yaml with the catalogue, and /openapi.yaml serves the spec', async () => {
    const docs = await h.app.inject({ method: 'GET', url: '/docs' });
    expect(docs.statusCode).toBe(200);
    expect(docs.headers['content-type']).toMatch(/text\/html/);
    expect(docs.body).toContain('/v1/generate');
    expect(docs.body).toContain('FLUX-1.1-pro');
    expect(docs.body).not.toMatch(/<script|https?:\/\/(?!localhost)/);
    // Request fields, header parameters and authentication are spelled out, not just named.
    expect(docs.body).toMatch(/<code>prompt<\/code> <b>required<\/b>/);
    expect(docs.body).toContain('<code>Idempotency-Key</code> (header)');
    expect(docs.body).toContain('Authorization: Bearer');
    // Markdown emphasis in descriptions renders, not as literal asterisks; code spans keep their characters.
    expect(docs.body).toContain('<strong>Event streams.</strong>');
    expect(docs.body).toContain('<strong>Limits.</strong>');
    expect(docs.body).not.toContain('**');
    expect(docs.body).toContain('<code>STREAM_KEEPALIVE_MS</code>');
    expect(docs.body).toContain('<code>estimated_cost_usd</code>');
    const yaml = await h.app.inject({ method: 'GET', url: '/openapi.yaml' });
    expect(parse(yaml.body).paths['/v1/generate']).toBeDefined();
  });
});

describe('/docs inline Markdown', () => {
  it('renders bold, italics and code spans, and leaves identifiers, globs and code contents as written', () => {
    expect(prose('**Limits.** counted')).toBe('<strong>Limits.</strong> counted');
    expect(prose('an *optional* field, or _this_ one')).toBe('an <em>optional</em> field, or <em>this</em> one');
    expect(prose('`STREAM_KEEPALIVE_MS` and STREAM_KEEPALIVE_MS')).toBe('<code>STREAM_KEEPALIVE_MS</code> and STREAM_KEEPALIVE_MS');
    expect(prose('`**not bold**` and `gpt-image-*`')).toBe('<code>**not bold**</code> and <code>gpt-image-*</code>');
    expect(prose('models gpt-image-* or flux-* match; 2 * 3 * 4')).toBe('models gpt-image-* or flux-* match; 2 * 3 * 4');
    expect(prose('**a <b> tag**')).toBe('<strong>a &lt;b&gt; tag</strong>');
  });
});
