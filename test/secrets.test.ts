import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InjectOptions, LightMyRequestResponse } from 'fastify';
import type { SimulatedFault } from '../src/simulator/upstream-simulator.js';
import {
  ADMIN_KEY,
  CLIENT_KEY,
  OTHER_CLIENT_KEY,
  UPSTREAM_KEY,
  makeHalfTransparentMask,
  makePng,
  multipartBody,
  startHarness,
  type Harness,
} from './harness.js';

const WRONG_KEY = 'gk-test-wrong-key-5555555555';
/** Each secret in full, and its distinctive tail in case a prefix such as "sk-" is cut or masked. */
const SECRETS = [UPSTREAM_KEY, CLIENT_KEY, OTHER_CLIENT_KEY, ADMIN_KEY, WRONG_KEY].flatMap((k) => [k, k.slice(3)]);
/** A browser token (POST /v1/tokens), minted in beforeAll; added to SECRETS then. */
let browserToken = '';
const PNG_BASE64_PREFIX = 'iVBORw0KGgo';

interface Exchange {
  name: string;
  harness: Harness;
  requestId: string;
  res: LightMyRequestResponse;
  status: number;
  /** Set for requests made with a valid client key. */
  client?: { keyId: string; team: string };
  /** The catalogue id the completion line should name, when the model was known. */
  model?: string;
}

const exchanges: Exchange[] = [];
let main: Harness;
let expiring: Harness;

const as = {
  design: { authorization: `Bearer ${CLIENT_KEY}` },
  ads: { 'x-api-key': OTHER_CLIENT_KEY },
  admin: { authorization: `Bearer ${ADMIN_KEY}` },
  wrong: { authorization: `Bearer ${WRONG_KEY}` },
  nobody: {},
  browser: {} as Record<string, string>,
};
const CLIENT_OF = {
  design: { keyId: 'design', team: 'design' },
  ads: { keyId: 'ads', team: 'ads' },
  admin: { keyId: 'admin', team: 'admin' },
  browser: { keyId: 'design', team: 'design' },
} as const;

async function record(
  harness: Harness,
  name: string,
  who: keyof typeof as,
  status: number,
  request: Omit<InjectOptions, 'headers'> & { headers?: Record<string, string> },
  opts: { fault?: SimulatedFault; model?: string } = {},
): Promise<void> {
  const requestId = `secrets-${exchanges.length + 1}`;
  if (opts.fault) harness.simulator.failNext(opts.fault);
  const res = await harness.app.inject({ ...request, headers: { ...as[who], ...request.headers, 'x-request-id': requestId } } as InjectOptions);
  const client = who in CLIENT_OF ? CLIENT_OF[who as keyof typeof CLIENT_OF] : undefined;
  exchanges.push({ name, harness, requestId, res, status, ...(client ? { client } : {}), ...(opts.model ? { model: opts.model } : {}) });
}

const generate = (body: Record<string, unknown>) => ({ method: 'POST' as const, url: '/v1/generate', payload: body });

async function edit(fields: Record<string, string>, withMask: boolean) {
  const files = [{ field: 'image', filename: 'source.png', bytes: await makePng(32, 32) }];
  if (withMask) files.push({ field: 'mask', filename: 'mask.png', bytes: await makeHalfTransparentMask(32, 32) });
  const { payload, headers } = multipartBody(fields, files);
  return { method: 'POST' as const, url: '/v1/edit', payload, headers };
}

beforeAll(async () => {
  main = await startHarness({ UPSTREAM_TIMEOUT_MS: '1000' });
  expiring = await startHarness({}, { urlTtlMs: 0 });
  const h = main;

  // Successes across the upstream families and both ways of presenting a client key.
  await record(h, 'gpt-image-1 url', 'design', 200, generate({ model: 'gpt-image-1', prompt: 'a deer' }), { model: 'gpt-image-1' });
  await record(h, 'gpt-image-1 b64_json', 'design', 200, generate({ model: 'gpt-image-1', prompt: 'a deer', response_format: 'b64_json' }), { model: 'gpt-image-1' });
  await record(h, 'imagen n=2 b64_json', 'ads', 200, generate({ model: 'google/imagen-4.0-generate-001', prompt: 'a deer', n: 2, response_format: 'b64_json' }), {
    model: 'imagen-4.0-generate-001',
  });
  await record(h, 'flux async', 'design', 200, generate({ model: 'flux-kontext-pro', prompt: 'a deer' }), { model: 'flux-kontext-pro' });
  await record(h, 'ideogram-v3', 'ads', 200, generate({ model: 'ideogram-v3', prompt: 'a deer', response_format: 'b64_json' }), { model: 'ideogram-v3' });
  await record(h, 'ideogram legacy', 'design', 200, generate({ model: 'ideogram-v2', prompt: 'a deer' }), { model: 'ideogram-v2' });
  await record(h, 'gpt-image-1 edit with mask', 'design', 200, await edit({ model: 'gpt-image-1', prompt: 'make it blue', response_format: 'b64_json' }, true), {
    model: 'gpt-image-1',
  });
  await record(h, 'ideogram-v3 edit with mask', 'ads', 200, await edit({ model: 'ideogram-v3', prompt: 'make it blue' }, true), { model: 'ideogram-v3' });
  await record(h, 'catalogue with the admin key', 'admin', 200, { method: 'GET', url: '/v1/models' });

  // A browser token: minted outside the record (its one answer carries it), then used and refused.
  browserToken = (await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: as.design, payload: { models: ['gpt-image-1'] } })).json().token;
  expect(browserToken).toMatch(/^gkt_/);
  SECRETS.push(browserToken, browserToken.slice(4));
  as.browser = { authorization: `Bearer ${browserToken}` };
  await record(h, 'a browser token generates', 'browser', 200, generate({ model: 'gpt-image-1', prompt: 'a deer' }), { model: 'gpt-image-1' });
  await record(h, 'a browser token as x-api-key', 'nobody', 200, { method: 'GET', url: '/v1/models', headers: { 'x-api-key': browserToken } });
  await record(h, 'a browser token on a model outside its list', 'browser', 403, generate({ model: 'ideogram-v3', prompt: 'a deer' }), { model: 'ideogram-v3' });
  await record(h, 'a browser token on usage', 'browser', 403, { method: 'GET', url: '/v1/usage' });

  // Every upstream fault.
  const faults: Array<[SimulatedFault, string, number]> = [
    ['http400', 'gpt-image-1', 400],
    ['http401', 'gpt-image-1', 502],
    ['http403', 'ideogram-v3', 502],
    ['http429', 'gpt-image-1', 429],
    ['http500', 'gpt-image-1', 502],
    ['http503', 'ideogram-v2', 502],
    ['moderated', 'gpt-image-1', 422],
    ['moderated', 'flux-kontext-pro', 422],
    ['task_error', 'flux-kontext-pro', 502],
    ['malformed', 'gpt-image-1', 502],
    ['hang', 'gpt-image-1', 504],
  ];
  for (const [fault, model, status] of faults) {
    await record(h, `${fault} on ${model}`, 'design', status, generate({ model, prompt: 'a deer', response_format: 'b64_json' }), { fault, model });
  }
  await record(expiring, 'expired upstream URL', 'design', 502, generate({ model: 'Stable-Diffusion-3-5-Large', prompt: 'a deer' }), {
    model: 'Stable-Diffusion-3-5-Large',
  });

  // Refusals before any upstream call.
  await record(h, 'a parameter the model does not take', 'design', 400, generate({ model: 'gpt-image-1', prompt: 'a deer', seed: 1 }), { model: 'gpt-image-1' });
  await record(h, 'an unknown model', 'design', 400, generate({ model: 'no-such-model', prompt: 'a deer' }));
  await record(h, 'no client key', 'nobody', 401, generate({ model: 'gpt-image-1', prompt: 'a deer' }));
  await record(h, 'a wrong client key', 'wrong', 401, generate({ model: 'gpt-image-1', prompt: 'a deer' }));
  await record(h, 'a wrong client key as x-api-key', 'nobody', 401, { ...generate({ model: 'gpt-image-1', prompt: 'a deer' }), headers: { 'x-api-key': WRONG_KEY } });
  await record(h, 'an unknown route', 'design', 404, { method: 'GET', url: '/v1/nothing' });

  // Client-made names are echoed in errors; a huge one must not reach the log whole.
  const smuggled = 'A'.repeat(5000);
  await record(h, 'a huge model name', 'design', 400, generate({ model: smuggled, prompt: 'a deer' }));
  await record(h, 'a huge unknown field name', 'design', 400, generate({ model: 'gpt-image-1', prompt: 'a deer', [smuggled]: 1 }));
  await record(h, 'a huge option key', 'design', 400, generate({ model: 'gpt-image-1', prompt: 'a deer', options: { [smuggled]: 1 } }));
  await record(h, 'many unknown field names', 'design', 400, generate(Object.fromEntries([['model', 'gpt-image-1'], ['prompt', 'a deer'], ...Array.from({ length: 200 }, (_, i) => [`field_${i}_${'x'.repeat(90)}`, i])])));
});

afterAll(async () => {
  await main?.close();
  await expiring?.close();
});

const logsOf = () => [...main.logs, ...expiring.logs];
const received = () => [...main.simulator.received, ...expiring.simulator.received];

describe('the scenario itself', () => {
  it('got the status each exchange was meant to get', () => {
    const got = exchanges.map((e) => [e.name, e.res.statusCode]);
    expect(got).toEqual(exchanges.map((e) => [e.name, e.status]));
  });

  it('returned base64 images to the b64_json requests, so the log checks below see them pass through', () => {
    const b64 = exchanges.filter((e) => e.res.statusCode === 200 && e.res.body.includes(PNG_BASE64_PREFIX));
    expect(b64.map((e) => e.name)).toEqual(expect.arrayContaining(['gpt-image-1 b64_json', 'imagen n=2 b64_json', 'gpt-image-1 edit with mask']));
  });
});

describe('keys never leave where they belong', () => {
  it('no response body carries the upstream key or a client key', () => {
    for (const e of exchanges) {
      for (const secret of SECRETS) expect(e.res.body, `${e.name}`).not.toContain(secret);
    }
  });

  it('no response header carries the upstream key or a client key', () => {
    for (const e of exchanges) {
      const headers = JSON.stringify(e.res.headers);
      for (const secret of SECRETS) expect(headers, `${e.name}`).not.toContain(secret);
    }
  });

  it('no log line carries the upstream key or a client key', () => {
    const logs = logsOf();
    expect(logs.length).toBeGreaterThan(exchanges.length);
    for (const line of logs) {
      for (const secret of SECRETS) expect(line).not.toContain(secret);
    }
  });

  it('every upstream request carries the gateway key and never a client key', () => {
    const calls = received();
    expect(calls.length).toBeGreaterThan(20);
    for (const call of calls) {
      const key = call.path.startsWith('/ideogram/') ? call.headers['api-key'] : call.headers.authorization;
      expect(key, call.path).toBe(call.path.startsWith('/ideogram/') ? UPSTREAM_KEY : `Bearer ${UPSTREAM_KEY}`);
      expect(call.headers['x-api-key'], call.path).toBeUndefined();
      const everything = JSON.stringify(call.headers);
      for (const secret of [CLIENT_KEY, OTHER_CLIENT_KEY, ADMIN_KEY, WRONG_KEY, browserToken]) expect(everything, call.path).not.toContain(secret);
    }
  });

  it('task polls carry the gateway key too', () => {
    const taskPolls = received().filter((r) => r.method === 'GET' && r.path.startsWith('/v1/tasks/'));
    expect(taskPolls.length).toBeGreaterThan(0);
    for (const poll of taskPolls) expect(poll.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
  });
});

describe('log lines', () => {
  it('are all JSON objects', () => {
    for (const line of logsOf()) {
      const parsed: unknown = JSON.parse(line);
      expect(typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed), line).toBe(true);
    }
  });

  it('carry no image data: none is over 2,000 characters or holds PNG base64', () => {
    for (const line of logsOf()) {
      expect(line.length, line.slice(0, 200)).toBeLessThanOrEqual(2000);
      expect(line).not.toContain(PNG_BASE64_PREFIX);
    }
  });

  it('each request writes exactly one "request completed" line with its id, status and duration', () => {
    const completed = logsOf()
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.msg === 'request completed');
    for (const e of exchanges) {
      const mine = completed.filter((l) => l.reqId === e.requestId);
      expect(mine, e.name).toHaveLength(1);
      expect(mine[0]!.status, e.name).toBe(e.res.statusCode);
      expect(typeof mine[0]!.ms, e.name).toBe('number');
      expect(mine[0]!.ms as number, e.name).toBeGreaterThanOrEqual(0);
    }
  });

  it('the completion line of an authenticated request names its key id and team', () => {
    const completed = logsOf()
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.msg === 'request completed');
    const authenticated = exchanges.filter((e) => e.client);
    expect(authenticated.length).toBeGreaterThan(10);
    for (const e of authenticated) {
      const line = completed.find((l) => l.reqId === e.requestId);
      expect({ key_id: line?.key_id, team: line?.team }, e.name).toEqual({ key_id: e.client!.keyId, team: e.client!.team });
    }
  });

  it('the completion line names the model, for successes, upstream failures and refusals alike', () => {
    const completed = logsOf()
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.msg === 'request completed');
    const withModel = exchanges.filter((e) => e.model);
    expect(withModel.some((e) => e.status === 400)).toBe(true);
    for (const e of withModel) {
      const line = completed.find((l) => l.reqId === e.requestId);
      expect(line?.model, e.name).toBe(e.model);
    }
  });

  it('the completion line of a refused key names no key id', () => {
    const completed = logsOf()
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.msg === 'request completed');
    for (const e of exchanges.filter((x) => x.status === 401)) {
      const line = completed.find((l) => l.reqId === e.requestId);
      expect(line, e.name).toBeDefined();
      expect(line!.key_id, e.name).toBeUndefined();
    }
  });
});
