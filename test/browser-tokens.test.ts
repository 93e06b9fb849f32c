/**
 * Browser tokens (POST /v1/tokens): a client key mints a short-lived token that acts as the key
 * within narrower bounds (models, max_images, max_requests), only on generate, edit, its own jobs
 * and the models; it expires, dies with its parent key on every replica, and is never stored or
 * logged in plaintext.
 */
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, CLIENT_KEY, jobWhenFinished, startHarness, type Harness } from './harness.js';
import { freshPostgres, freshRedis, postgresProblem, redisProblem } from './services.js';

const admin = { authorization: `Bearer ${ADMIN_KEY}` };
const bearer = (secret: string) => ({ authorization: `Bearer ${secret}` });
/** A configured client key that happens to start like a browser token. */
const KEY_LIKE_A_TOKEN = 'gkt_configured-client-key-0123456789';

async function mintKey(h: Harness, policy: Record<string, unknown> = {}): Promise<{ id: string; team: string; auth: Record<string, string> }> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: `t${randomBytes(3).toString('hex')}`, rpm: 1000, ...policy } });
  expect(res.statusCode).toBe(201);
  const body = res.json();
  return { id: body.id, team: body.team, auth: bearer(body.key) };
}

async function mintToken(h: Harness, key: Record<string, string>, body: Record<string, unknown> = {}): Promise<{ token: string; auth: Record<string, string>; id: string } & Record<string, any>> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: key, payload: body });
  expect(res.statusCode, res.body).toBe(201);
  const minted = res.json();
  const row = await h.app.db.get<{ id: string }>('SELECT id FROM browser_tokens WHERE token_sha256 = $1', [createHash('sha256').update(minted.token).digest('hex')]);
  return { ...minted, auth: bearer(minted.token), id: row!.id };
}

/** Every browser token these tests minted, to look for in logs and the database. */
const minted: string[] = [];

describe('browser tokens on one gateway', () => {
  let h: Harness;
  let clock = Date.parse('2026-06-01T12:00:00Z');
  beforeAll(async () => {
    h = await startHarness({ GATEWAY_API_KEYS: `design:${CLIENT_KEY},web:${KEY_LIKE_A_TOKEN}` }, {}, { now: () => clock });
  });
  afterAll(async () => h.close());
  beforeEach(() => h.simulator.reset());

  const generate = (auth: Record<string, string>, payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload });
  const token = async (key: Record<string, string>, body: Record<string, unknown> = {}) => {
    const t = await mintToken(h, key, body);
    minted.push(t.token);
    return t;
  };

  describe('minting', () => {
    it('a client key mints a gkt_ token that lasts 600 s, as the key for models and without counts, by default', async () => {
      const key = await mintKey(h);
      const res = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: key.auth, payload: {} });
      expect(res.statusCode).toBe(201);
      const body = res.json();
      minted.push(body.token);
      expect(body).toEqual({ token: expect.stringMatching(/^gkt_[\w-]{40,}$/), expires_at: new Date(clock + 600_000).toISOString(), models: null, max_images: null, max_requests: null, id: expect.stringMatching(/^tok_/) });
      expect((await generate(bearer(body.token), { model: 'gpt-image-1', prompt: 'a fox' })).statusCode).toBe(200);
    });

    it('takes a ttl, models (aliases resolved to ids) and counts, and answers them', async () => {
      const key = await mintKey(h);
      const t = await token(key.auth, { ttl_seconds: 60, models: ['openai/gpt-image-1', 'ideogram-v3', 'gpt-image-1'], max_images: 4, max_requests: 2 });
      expect(t).toMatchObject({ expires_at: new Date(clock + 60_000).toISOString(), models: ['gpt-image-1', 'ideogram-v3'], max_images: 4, max_requests: 2 });
    });

    it.each([
      [{ ttl_seconds: 0 }, 'ttl_seconds'],
      [{ ttl_seconds: 3601 }, 'ttl_seconds'],
      [{ ttl_seconds: 1.5 }, 'ttl_seconds'],
      [{ max_images: 0 }, 'max_images'],
      [{ max_requests: -1 }, 'max_requests'],
      [{ models: [] }, 'models'],
      [{ models: ['no-such-model'] }, 'models[0]'],
      [{ scope: 'all' }, 'scope'],
    ])('refuses %j with 400 naming %s', async (body, field) => {
      const key = await mintKey(h);
      const res = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: key.auth, payload: body });
      expect(res.statusCode).toBe(400);
      expect(res.json().error.code).toBe('invalid_request');
      expect(res.json().error.details.map((d: { field: string }) => d.field)).toContain(field);
      expect(res.json().error.message).toContain(field);
    });

    it.each([
      [{ ttl_seconds: 0 }, 'ttl_seconds: must be an integer from 1 to 3600'],
      [{ ttl_seconds: 3601 }, 'ttl_seconds: must be an integer from 1 to 3600'],
      [{ ttl_seconds: 1.5 }, 'ttl_seconds: must be an integer from 1 to 3600'],
      [{ ttl_seconds: '60' }, 'ttl_seconds: must be an integer from 1 to 3600'],
      [{ max_images: 0 }, 'max_images: must be an integer from 1 to 1000000'],
      [{ max_requests: null }, 'max_requests: must be an integer from 1 to 1000000'],
    ])('answers %j with what the field allows: %s', async (body, message) => {
      const key = await mintKey(h);
      const res = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: key.auth, payload: body });
      expect(res.statusCode).toBe(400);
      expect(res.json().error.message).toBe(message);
      expect(res.json().error.details).toEqual([{ field: message.split(':')[0], message: message.split(': ')[1] }]);
    });

    it.each([
      [{ models: 'gpt-image-1' }, 'models: must be a list of 1 to 200 model ids or aliases'],
      [{ models: [] }, 'models: must be a list of 1 to 200 model ids or aliases'],
      [{ models: [7] }, 'models[0]: must be a model id or alias: a string of 1-200 characters'],
      [{ models: [''] }, 'models[0]: must be a model id or alias: a string of 1-200 characters'],
      [[], '(body): must be a JSON object of the token\'s bounds: {"ttl_seconds"?, "models"?, "max_images"?, "max_requests"?}, or {} for the defaults'],
    ])('answers %j in its own words, never zod’s: %s', async (body, message) => {
      const key = await mintKey(h);
      const res = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: key.auth, payload: body });
      expect(res.statusCode).toBe(400);
      expect(res.json().error.message).toBe(message);
      expect(res.json().error.details).toEqual([{ field: message.split(':')[0], message: message.slice(message.indexOf(': ') + 2) }]);
      expect(res.body).not.toMatch(/Invalid input|expected \w+, received|Too (small|big)/);
    });

    it('refuses models outside the key’s allow-list with 400 naming the model', async () => {
      const key = await mintKey(h, { models: ['gpt-image-*'] });
      const res = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: key.auth, payload: { models: ['gpt-image-1', 'ideogram-v3'] } });
      expect(res.statusCode).toBe(400);
      expect(res.json().error.message).toMatch(/models\[1\].*ideogram-v3/);
    });

    it('a browser token cannot mint a token (403 naming tokens), nor can a request without a key (401)', async () => {
      const t = await token((await mintKey(h)).auth);
      const res = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: t.auth, payload: {} });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe('forbidden');
      expect(res.json().error.message).toMatch(/browser token may not/);
      expect((await h.app.inject({ method: 'POST', url: '/v1/tokens', payload: {} })).statusCode).toBe(401);
    });

    it('a made-up gkt_ token is refused with 401', async () => {
      const res = await generate(bearer(`gkt_${randomBytes(32).toString('base64url')}`), { model: 'gpt-image-1', prompt: 'x' });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.message).toMatch(/browser token is not valid/);
    });

    it('a configured client key that starts with gkt_ still works as a key', async () => {
      const res = await h.app.inject({ method: 'GET', url: '/v1/usage', headers: bearer(KEY_LIKE_A_TOKEN) });
      expect(res.statusCode).toBe(200);
    });
  });

  describe('scoping', () => {
    it('a model outside the token’s models is refused with 403 naming it, before upstream; its own model works, in both forms', async () => {
      const key = await mintKey(h);
      const t = await token(key.auth, { models: ['gpt-image-1'] });
      const other = await generate(t.auth, { model: 'ideogram-v3', prompt: 'x' });
      expect(other.statusCode).toBe(403);
      expect(other.json().error.message).toMatch(/browser token tok_\S+ may not use model ideogram-v3/);
      expect(h.simulator.received).toHaveLength(0);
      expect((await generate(t.auth, { model: 'gpt-image-1', prompt: 'x' })).statusCode).toBe(200);
      const openai = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: t.auth, payload: { model: 'gpt-image-1', prompt: 'x' } });
      expect(openai.statusCode).toBe(200);
    });

    it('GET /v1/models lists only the token’s models', async () => {
      const t = await token((await mintKey(h)).auth, { models: ['gpt-image-1', 'ideogram-v3'] });
      const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: t.auth });
      expect(res.statusCode).toBe(200);
      expect(res.json().data.map((m: { id: string }) => m.id).sort()).toEqual(['gpt-image-1', 'ideogram-v3']);
      expect((await h.app.inject({ method: 'GET', url: '/v1/models/flux-kontext-pro', headers: t.auth })).statusCode).toBe(404);
    });

    it.each([
      ['GET', '/v1/usage'],
      ['GET', '/v1/usage/records'],
      ['GET', '/v1/keys'],
      ['POST', '/v1/keys'],
      ['DELETE', '/v1/keys/some-key'],
    ] as const)('%s %s is refused with 403 saying a browser token may not', async (method, url) => {
      const t = await token((await mintKey(h)).auth);
      const res = await h.app.inject({ method, url, headers: t.auth, ...(method === 'POST' ? { payload: { team: 'x' } } : {}) });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.message).toMatch(/browser token may not call/);
    });

    it('a token follows the jobs it started; another token’s job and its key’s own job answer 404, while the key sees both', async () => {
      const key = await mintKey(h);
      const [a, b] = [await token(key.auth), await token(key.auth)];
      const started = await generate(a.auth, { model: 'flux-kontext-pro', prompt: 'a lighthouse', async: true });
      expect(started.statusCode).toBe(202);
      const jobId = started.json().id;
      expect((await jobWhenFinished(h, jobId, a.auth)).status).toBe('succeeded');
      const events = await h.app.inject({ method: 'GET', url: `/v1/jobs/${jobId}/events`, headers: a.auth });
      expect(events.statusCode).toBe(200);
      expect(events.body).toContain('succeeded');
      expect((await h.app.inject({ method: 'GET', url: `/v1/jobs/${jobId}`, headers: b.auth })).statusCode).toBe(404);
      expect((await h.app.inject({ method: 'GET', url: `/v1/jobs/${jobId}/events`, headers: b.auth })).statusCode).toBe(404);
      expect((await h.app.inject({ method: 'GET', url: `/v1/jobs/${jobId}`, headers: key.auth })).statusCode).toBe(200);
      const keys = await generate(key.auth, { model: 'flux-kontext-pro', prompt: 'the key’s own', async: true });
      expect((await h.app.inject({ method: 'GET', url: `/v1/jobs/${keys.json().id}`, headers: a.auth })).statusCode).toBe(404);
      await jobWhenFinished(h, keys.json().id, key.auth);
    });
  });

  describe('counts', () => {
    it('past max_requests: 429 naming the token’s limit, with a Retry-After within its life, before upstream', async () => {
      const t = await token((await mintKey(h)).auth, { ttl_seconds: 300, max_requests: 2 });
      const codes = [];
      for (let i = 0; i < 2; i++) codes.push((await generate(t.auth, { model: 'gpt-image-1', prompt: `r${i}` })).statusCode);
      h.simulator.reset();
      const over = await generate(t.auth, { model: 'gpt-image-1', prompt: 'r3' });
      expect(codes).toEqual([200, 200]);
      expect(over.statusCode).toBe(429);
      expect(over.json().error.message).toMatch(/max_requests limit reached: browser token tok_/);
      expect(Number(over.headers['retry-after'])).toBeGreaterThan(0);
      expect(h.simulator.received).toHaveLength(0);
      // Reads are not requests against max_requests.
      expect((await h.app.inject({ method: 'GET', url: '/v1/models', headers: t.auth })).statusCode).toBe(200);
    });

    it('max_images counts n, refuses the request that would cross it, and says what is left', async () => {
      const t = await token((await mintKey(h)).auth, { max_images: 3 });
      const first = await generate(t.auth, { model: 'gpt-image-1', prompt: 'x', n: 2 });
      expect(first.statusCode).toBe(200);
      expect(first.headers['x-ratelimit-token-images-remaining']).toBe('1');
      const over = await generate(t.auth, { model: 'gpt-image-1', prompt: 'x', n: 2 });
      expect(over.statusCode).toBe(429);
      expect(over.json().error.message).toMatch(/max_images limit reached: .* has made 2, and asked for 2/);
      expect(over.json().error.details[0]).toMatchObject({ field: 'n', allowed: 1 });
      // The refusal carries the token's image headers as its other answers do, the refused request not counted.
      expect(over.headers).toMatchObject({ 'x-ratelimit-token-images-limit': '3', 'x-ratelimit-token-images-remaining': '1' });
      expect((await generate(t.auth, { model: 'gpt-image-1', prompt: 'x', n: 1 })).statusCode).toBe(200);
      expect((await generate(t.auth, { model: 'gpt-image-1', prompt: 'x', n: 1 })).statusCode).toBe(429);
    });

    it('images of a request that failed upstream are given back to the token', async () => {
      const t = await token((await mintKey(h)).auth, { max_images: 2 });
      h.simulator.failNext('http500');
      expect((await generate(t.auth, { model: 'gpt-image-1', prompt: 'x', n: 2 })).statusCode).toBe(502);
      expect((await generate(t.auth, { model: 'gpt-image-1', prompt: 'x', n: 2 })).statusCode).toBe(200);
    });

    it('a token’s use counts against its parent key’s images_per_day', async () => {
      const key = await mintKey(h, { images_per_day: 3 });
      const t = await token(key.auth);
      expect((await generate(t.auth, { model: 'gpt-image-1', prompt: 'x', n: 2 })).statusCode).toBe(200);
      const own = await generate(key.auth, { model: 'gpt-image-1', prompt: 'x', n: 2 });
      expect(own.statusCode).toBe(429);
      expect(own.json().error.message).toMatch(/images_per_day limit reached: key \S+ .* has made 2/);
    });

    it('a token refused by its parent’s limit keeps its own counts', async () => {
      const key = await mintKey(h, { images_per_day: 1 });
      const t = await token(key.auth, { max_images: 2, max_requests: 2 });
      expect((await generate(t.auth, { model: 'gpt-image-1', prompt: 'x', n: 2 })).statusCode).toBe(429);
      const res = await generate(t.auth, { model: 'gpt-image-1', prompt: 'x', n: 1 });
      expect(res.statusCode).toBe(200);
      expect(res.headers['x-ratelimit-token-images-remaining']).toBe('1');
    });
  });

  describe('expiry', () => {
    it('after expires_at the token is refused with 401 saying it expired, on every route', async () => {
      const t = await token((await mintKey(h)).auth, { ttl_seconds: 60 });
      expect((await generate(t.auth, { model: 'gpt-image-1', prompt: 'x' })).statusCode).toBe(200);
      clock += 59_000;
      expect((await h.app.inject({ method: 'GET', url: '/v1/models', headers: t.auth })).statusCode).toBe(200);
      clock += 1_000;
      for (const res of [await generate(t.auth, { model: 'gpt-image-1', prompt: 'x' }), await h.app.inject({ method: 'GET', url: '/v1/models', headers: { 'x-api-key': t.token } })]) {
        expect(res.statusCode).toBe(401);
        expect(res.json().error.code).toBe('unauthorized');
        expect(res.json().error.message).toMatch(/browser token expired at/);
      }
    });
  });

  describe('usage', () => {
    it('records carry the parent key id and team and the token id, in JSON and CSV', async () => {
      const key = await mintKey(h);
      const t = await token(key.auth);
      const res = await generate({ ...t.auth, 'x-request-id': `tok-usage-${t.id}` }, { model: 'gpt-image-1', prompt: 'x' });
      expect(res.statusCode).toBe(200);
      const page = (await h.app.inject({ method: 'GET', url: '/v1/usage/records?from=2000-01-01&limit=1000', headers: admin })).json();
      const record = page.data.find((r: { request_id: string }) => r.request_id === `tok-usage-${t.id}`);
      expect(record).toMatchObject({ key_id: key.id, team: key.team, token_id: t.id, images_returned: 1 });
      const byKey = page.data.find((r: { key_id: string; token_id: string | null; route: string }) => r.key_id === key.id && r.route === '/v1/tokens');
      expect(byKey.token_id).toBeNull();
      const csv = (await h.app.inject({ method: 'GET', url: '/v1/usage/records?from=2000-01-01&limit=1000&format=csv', headers: admin })).body.split('\r\n');
      // token_id comes after the JSON columns, followed only by models_tried (empty: no fallback);
      // the request id, key id and team come before the JSON ones.
      expect(csv[0]!.split(',').slice(-2)).toEqual(['token_id', 'models_tried']);
      const line = csv.find((l) => l.includes(`tok-usage-${t.id}`))!;
      expect(line.endsWith(`,${t.id},`)).toBe(true);
      expect(line).toContain(`,tok-usage-${t.id},${key.id},${key.team},`);
    });

    it('the completion log line names the token id, never the token', async () => {
      const t = await token((await mintKey(h)).auth);
      await generate({ ...t.auth, 'x-request-id': `tok-log-${t.id}` }, { model: 'gpt-image-1', prompt: 'x' });
      const line = h.logs.map((l) => JSON.parse(l)).find((l) => l.reqId === `tok-log-${t.id}` && l.msg === 'request completed');
      expect(line.token_id).toBe(t.id);
    });
  });

  describe('secrecy', () => {
    it('no token reaches a log line or the database in plaintext; the database holds its sha256', async () => {
      expect(minted.length).toBeGreaterThan(10);
      for (const line of h.logs) for (const secret of minted) expect(line).not.toContain(secret.slice(4));
      const tables = await h.app.db.all<{ name: string }>("SELECT name FROM sqlite_master WHERE type = 'table'");
      expect(tables.map((t) => t.name)).toContain('browser_tokens');
      const everything = JSON.stringify(await Promise.all(tables.map((t) => h.app.db.all(`SELECT * FROM "${t.name}"`))));
      for (const secret of minted) expect(everything).not.toContain(secret.slice(4));
      const digest = createHash('sha256').update(minted[0]!).digest('hex');
      expect(await h.app.db.get('SELECT id FROM browser_tokens WHERE token_sha256 = $1', [digest])).toBeDefined();
    });
  });
});

describe('a page on a listed origin (CORS_ORIGINS)', () => {
  const APP = 'https://app.example.com';
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ CORS_ORIGINS: APP });
  });
  afterAll(async () => h.close());

  it('generates with a token its backend minted: the preflight allows the token header, the answer and the token’s image counts are readable', async () => {
    const key = await mintKey(h);
    const t = await mintToken(h, key.auth, { models: ['gpt-image-1'], max_images: 2 });
    minted.push(t.token);
    const preflight = await h.app.inject({
      method: 'OPTIONS',
      url: '/v1/generate',
      headers: { origin: APP, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
    });
    expect(preflight.statusCode).toBe(204);
    expect(String(preflight.headers['access-control-allow-headers']).toLowerCase()).toContain('authorization');
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...t.auth, origin: APP }, payload: { model: 'gpt-image-1', prompt: 'from a page' } });
    expect(res.statusCode).toBe(200);
    expect(res.headers['access-control-allow-origin']).toBe(APP);
    expect(String(res.headers['access-control-expose-headers']).toLowerCase()).toContain('x-ratelimit-token-images-remaining');
    expect(res.headers['x-ratelimit-token-images-remaining']).toBe('1');
    // The same token is useless for anything else.
    const usage = await h.app.inject({ method: 'GET', url: '/v1/usage', headers: { ...t.auth, origin: APP } });
    expect(usage.statusCode).toBe(403);
  });
});

describe.skipIf(postgresProblem !== undefined)('browser tokens across a restart without Redis (skipped when PostgreSQL is unreachable and REQUIRE_SERVICES is unset)', () => {
  let database: Awaited<ReturnType<typeof freshPostgres>>;
  beforeAll(async () => {
    database = await freshPostgres();
  });
  afterAll(async () => database?.drop());

  it('a token’s max_requests and max_images counts start from its usage records after a restart, not from zero', async () => {
    const env = { DATABASE_URL: database.url };
    const generate = (h: Harness, auth: Record<string, string>, body: Record<string, unknown>) =>
      h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'gpt-image-1', prompt: 'x', ...body } });
    const first = await startHarness(env);
    let requests: Awaited<ReturnType<typeof mintToken>>;
    let images: Awaited<ReturnType<typeof mintToken>>;
    try {
      const key = await mintKey(first);
      requests = await mintToken(first, key.auth, { max_requests: 2 });
      images = await mintToken(first, key.auth, { max_images: 3 });
      minted.push(requests.token, images.token);
      expect((await generate(first, requests.auth, {})).statusCode).toBe(200);
      // Refused before its reservation: not a request against max_requests.
      expect((await generate(first, requests.auth, { seed: 1 })).statusCode).toBe(400);
      expect((await generate(first, images.auth, { n: 2 })).statusCode).toBe(200);
    } finally {
      await first.close();
    }
    const second = await startHarness(env);
    try {
      expect((await generate(second, requests.auth, {})).statusCode).toBe(200);
      const third = await generate(second, requests.auth, {});
      expect(third.statusCode).toBe(429);
      expect(third.json().error.message).toMatch(/max_requests limit reached/);
      const over = await generate(second, images.auth, { n: 2 });
      expect(over.statusCode).toBe(429);
      expect(over.json().error.message).toMatch(/max_images limit reached: .* has made 2, and asked for 2/);
      expect((await generate(second, images.auth, { n: 1 })).statusCode).toBe(200);
    } finally {
      await second.close();
    }
  });
});

describe.skipIf(redisProblem !== undefined || postgresProblem !== undefined)(
  'browser tokens on two replicas sharing Redis and PostgreSQL (skipped when either is unreachable and REQUIRE_SERVICES is unset)',
  () => {
    let a: Harness;
    let b: Harness;
    let database: Awaited<ReturnType<typeof freshPostgres>>;
    beforeAll(async () => {
      database = await freshPostgres();
      const env = { REDIS_URL: freshRedis().url, DATABASE_URL: database.url };
      // Keys are re-read from the database once an hour: only Redis can carry the revocation across in time.
      a = await startHarness(env, {}, { keyPollIntervalMs: 3_600_000 });
      b = await startHarness(env, {}, { keyPollIntervalMs: 3_600_000 });
    });
    afterAll(async () => {
      await a?.close();
      await b?.close();
      await database?.drop();
    });

    /** The answer of `b` once it differs from `from` (a mint or revocation on `a` on its way through Redis). */
    async function onB(auth: Record<string, string>, from: number): Promise<number> {
      let status = from;
      for (let i = 0; i < 250 && status === from; i++) {
        status = (await b.app.inject({ method: 'GET', url: '/v1/models', headers: auth })).statusCode;
        if (status === from) await new Promise((r) => setTimeout(r, 20));
      }
      return status;
    }

    it('a token minted on one replica works on the other, its max_requests is counted once for both, and revoking its key refuses it on both at once', async () => {
      const key = await mintKey(a);
      expect(await onB(key.auth, 401)).toBe(200);
      const t = await mintToken(a, key.auth, { max_requests: 3 });
      minted.push(t.token);
      const codes = [];
      for (const h of [a, b, a, b]) codes.push((await h.app.inject({ method: 'POST', url: '/v1/generate', headers: t.auth, payload: { model: 'gpt-image-1', prompt: 'shared' } })).statusCode);
      expect(codes).toEqual([200, 200, 200, 429]);

      const other = await mintToken(a, key.auth);
      expect((await b.app.inject({ method: 'GET', url: '/v1/models', headers: other.auth })).statusCode).toBe(200);
      expect((await a.app.inject({ method: 'DELETE', url: `/v1/keys/${key.id}`, headers: admin })).statusCode).toBe(204);
      const onA = await a.app.inject({ method: 'GET', url: '/v1/models', headers: other.auth });
      expect(onA.statusCode).toBe(401);
      expect(onA.json().error.message).toMatch(/key that minted it was revoked/);
      expect(await onB(other.auth, 200)).toBe(401);
      const refused = await b.app.inject({ method: 'POST', url: '/v1/generate', headers: other.auth, payload: { model: 'gpt-image-1', prompt: 'after' } });
      expect(refused.json().error.message).toMatch(/key that minted it was revoked/);
    });

    it('the PostgreSQL database holds no token in plaintext', async () => {
      const key = await mintKey(a);
      const t = await mintToken(a, key.auth);
      const rows = await a.app.db.all('SELECT * FROM browser_tokens');
      expect(rows.length).toBeGreaterThan(0);
      expect(JSON.stringify(rows)).not.toContain(t.token.slice(4));
    });
  },
);
