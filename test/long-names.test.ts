/**
 * Names a client makes up (paths, path parameters, query names and values, body field and option names) are
 * quoted in refusals and log lines: a huge one is cut to its first 100 characters and "…", never echoed whole
 * into the answer and the log.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { clipName } from '../src/errors.js';
import { ADMIN_KEY, startHarness, type Harness } from './harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => h.close());

const HUGE = 'k'.repeat(5_000);
const CUT = `${'k'.repeat(100)}…`;

/** Neither the answer nor any log line holds more of the huge name than its cut. */
function expectCut(body: string, logsBefore: number): void {
  expect(body).toContain(CUT);
  expect(body).not.toContain('k'.repeat(101));
  expect(body.length).toBeLessThan(5000);
  const logs = h.logs.slice(logsBefore).join('\n');
  expect(logs).not.toContain('k'.repeat(101));
}

it('a query parameter of a huge name or value is a 400 quoting it cut', async () => {
  let before = h.logs.length;
  const name = await h.app.inject({ method: 'GET', url: `/v1/images?${HUGE}=1`, headers: h.auth });
  expect(name.statusCode).toBe(400);
  expect(name.json().error.details[0].field).toBe(CUT);
  expectCut(name.body, before);
  before = h.logs.length;
  const value = await h.app.inject({ method: 'GET', url: `/v1/usage?from=${HUGE}`, headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  expect(value.statusCode).toBe(400);
  expectCut(value.body, before);
});

it('a huge path is a 404 quoting the path cut, and its log line holds the path cut', async () => {
  const before = h.logs.length;
  const res = await h.app.inject({ method: 'GET', url: `/${HUGE}?${HUGE}=${HUGE}` });
  expect(res.statusCode).toBe(404);
  expect(res.json().error.message).toBe(`no route GET /${'k'.repeat(99)}…`);
  expect(res.body).not.toContain('k'.repeat(100));
  expect(h.logs.slice(before).join('\n')).not.toContain('k'.repeat(100));
  const line = h.logs.slice(before).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'request completed');
  expect(line?.path).toBe(`/${'k'.repeat(99)}…`);
});

/** The contract's error body: `{"error":{"code","message","details"?,"request_id"}}`, its request id the x-request-id header's. */
function expectContractError(res: { statusCode: number; headers: Record<string, unknown>; json(): unknown }, status: number, code: string): { message: string; details?: { field?: string; message: string }[] } {
  expect(res.statusCode).toBe(status);
  const body = res.json() as { error: { code: string; message: string; request_id: string; details?: { field?: string; message: string }[] } };
  expect(Object.keys(body)).toEqual(['error']);
  expect(body.error.code).toBe(code);
  expect(body.error.request_id).toBe(res.headers['x-request-id']);
  expect(String(res.headers['content-type'])).toMatch(/^application\/json/);
  expect(res.headers['x-content-type-options']).toBe('nosniff');
  return body.error;
}

it.each([
  ['GET /v1/jobs/{id}', 'GET', `/v1/jobs/${HUGE}`, `no job ${CUT}`],
  ['GET /v1/jobs/{id}/events', 'GET', `/v1/jobs/${HUGE}/events`, `no job ${CUT}`],
  ['GET /v1/models/{id}', 'GET', `/v1/models/${HUGE}`, `no model "${CUT}"; GET /v1/models lists them`],
  ['DELETE /v1/images/{id}', 'DELETE', `/v1/images/${HUGE}`, `no image ${CUT} of yours; GET /v1/images lists them`],
] as const)('%s with a path parameter over 100 characters is the route\'s own 404, quoting the id cut', async (_route, method, url, message) => {
  const before = h.logs.length;
  const res = await h.app.inject({ method, url, headers: h.auth });
  expect(expectContractError(res, 404, 'not_found').message).toBe(message);
  expectCut(res.body, before);
  const line = h.logs.slice(before).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'request completed');
  expect(line).toMatchObject({ status: 404, team: 'design' });
  expect(line?.path).toBe(clipName(url));
});

it('a console file name over 100 characters is a 404 quoting it cut', async () => {
  const before = h.logs.length;
  const res = await h.app.inject({ method: 'GET', url: `/console/${HUGE}` });
  expect(expectContractError(res, 404, 'not_found').message).toBe(`no console file ${CUT}`);
  expectCut(res.body, before);
});

it('a long path parameter is authenticated first, like any other: no key is a 401', async () => {
  const res = await h.app.inject({ method: 'GET', url: `/v1/jobs/${HUGE}` });
  expectContractError(res, 401, 'unauthorized');
  expect(res.body).not.toContain('k'.repeat(100));
});

it('a signed image URL with a name over 100 characters is refused in the contract shape, the name not echoed', async () => {
  const bare = await h.app.inject({ method: 'GET', url: `/v1/images/${HUGE}` });
  expectContractError(bare, 403, 'forbidden');
  const signed = await h.app.inject({ method: 'GET', url: `/v1/images/${HUGE}?exp=${Math.floor(Date.now() / 1000) + 60}&sig=abc` });
  expect(expectContractError(signed, 403, 'forbidden').message).toBe('the image URL signature is not valid');
  expect(signed.body).not.toContain('k'.repeat(100));
});

it('a key id over 100 characters is a 400 naming id and its allowed length', async () => {
  const res = await h.app.inject({ method: 'DELETE', url: `/v1/keys/${HUGE}`, headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  const error = expectContractError(res, 400, 'invalid_request');
  expect(error.details).toEqual([{ field: 'id', message: 'must be 1-64 characters' }]);
  expect(res.body).not.toContain('k'.repeat(100));
});

it('a path parameter that is not valid percent-encoding is a 400 in the contract shape, the path quoted cut, and logged', async () => {
  const before = h.logs.length;
  const res = await h.app.inject({ method: 'GET', url: `/v1/jobs/%zz${HUGE}`, headers: h.auth });
  const error = expectContractError(res, 400, 'invalid_request');
  expect(error.message).toBe(`the path ${clipName(`/v1/jobs/%zz${HUGE}`)} is not a valid URL path: "%" must start a percent-encoded byte of UTF-8 ("%2F", "%C3%A9")`);
  expect(error.details).toEqual([{ field: '(path)', message: 'is not a valid URL path: "%" must start a percent-encoded byte of UTF-8 ("%2F", "%C3%A9")' }]);
  expect(res.headers['cache-control']).toBe('no-store');
  expect(res.body).not.toContain('k'.repeat(100));
  const logs = h.logs.slice(before);
  expect(logs.join('\n')).not.toContain('k'.repeat(100));
  const line = logs.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'request completed');
  expect(line).toMatchObject({ method: 'GET', status: 400, path: clipName(`/v1/jobs/%zz${HUGE}`) });
  // Its usage record was committed before the answer left, as every answer's is (read without flushing the log).
  const committed = await h.app.db.get<{ status: number }>('SELECT status FROM usage_records WHERE request_id = $1', [String(res.headers['x-request-id'])]);
  expect(committed?.status).toBe(400);
  // A short one the same way.
  const short = await h.app.inject({ method: 'GET', url: '/v1/jobs/%zz', headers: h.auth });
  expect(expectContractError(short, 400, 'invalid_request').message).toMatch(/^the path \/v1\/jobs\/%zz is not a valid URL path/);
});

it('over a real connection, a 5,000-character job id reaches its route: 404 in the contract shape', async () => {
  const address = await h.app.listen({ port: 0, host: '127.0.0.1' });
  const res = await fetch(`${address}/v1/jobs/${HUGE}`, { headers: h.auth });
  expect(res.status).toBe(404);
  const body = (await res.json()) as { error: { code: string; message: string } };
  expect(body.error).toMatchObject({ code: 'not_found', message: `no job ${CUT}` });
});

it('an unknown field of a huge name on /v1/images/generations is a 400 quoting the name cut', async () => {
  const before = h.logs.length;
  const res = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', [HUGE]: 1 } });
  expect(res.statusCode).toBe(400);
  // The OpenAI-compatible routes answer in OpenAI's shape: the field is `param`.
  expect(res.json().error.param).toBe(CUT);
  expectCut(res.body, before);
});

it('an unknown field of a huge name on POST /v1/keys and /v1/tokens is a 400 quoting the name cut', async () => {
  let before = h.logs.length;
  const keys = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'long', [HUGE]: 1 } });
  expect(keys.statusCode).toBe(400);
  expect(keys.json().error.details[0].field).toBe(CUT);
  expectCut(keys.body, before);
  before = h.logs.length;
  const tokens = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: h.auth, payload: { [HUGE]: 1 } });
  expect(tokens.statusCode).toBe(400);
  expect(tokens.json().error.details[0].field).toBe(CUT);
  expectCut(tokens.body, before);
});

it('an option of a huge name on /v1/generate is a 400 quoting the name cut', async () => {
  const before = h.logs.length;
  const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', options: { [HUGE]: 1 } } });
  expect(res.statusCode).toBe(400);
  expectCut(res.body, before);
});
