/**
 * A body of a type its route does not read (text/plain, a form, multipart to a JSON route, no
 * Content-Type) is refused with 415 in the contract's error body, naming the type sent and the types
 * the route reads, before the body is read and before the rate limit counts it (src/http/body-types.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_KEY, CLIENT_KEY, makePng, multipartBody, startListening, type ListeningHarness } from './harness.js';

const admin = { authorization: `Bearer ${ADMIN_KEY}` };
const client = { authorization: `Bearer ${CLIENT_KEY}` };
const HOST = 'gw.test';
const CONSOLE = { host: HOST, origin: `http://${HOST}`, 'x-console-request': '1' };

let h: ListeningHarness;
beforeAll(async () => {
  h = await startListening();
});
afterAll(async () => h.close());

async function post(path: string, headers: Record<string, string>, body?: string | Buffer) {
  const res = await h.fetch(`${h.base}${path}`, { method: 'POST', headers, ...(body === undefined ? {} : { body }) });
  return { status: res.status, type: res.headers.get('content-type'), requestId: res.headers.get('x-request-id'), body: (await res.json()) as any };
}

/** The contract's error body for a 415, naming the route, the type sent and the types it reads. */
function expectWrongType(res: Awaited<ReturnType<typeof post>>, route: string, sent: string | undefined, allowed: string[]) {
  expect(res.status, JSON.stringify(res.body)).toBe(415);
  expect(res.type).toMatch(/^application\/json/);
  expect(Object.keys(res.body)).toEqual(['error']);
  const error = res.body.error;
  expect(error.code).toBe('unsupported_media_type');
  expect(error.request_id).toBe(res.requestId);
  expect(error.message).toContain(route);
  expect(error.message).toContain(allowed.join(' or '));
  if (sent) expect(error.message).toContain(`(${sent})`);
  else expect(error.message).toContain('no Content-Type');
  expect(error.details).toEqual([{ field: 'Content-Type', message: sent ? `is ${sent}; send ${allowed.join(' or ')}` : `is missing; send ${allowed.join(' or ')}`, allowed }]);
  expect(error.message).not.toMatch(/Invalid input|expected object/);
}

describe('a body of a type the route does not read', () => {
  it.each([
    ['/v1/keys', admin],
    ['/v1/tokens', client],
    ['/v1/generate', client],
  ] as const)('POST %s with text/plain is a 415 naming application/json, not a validation message', async (path, auth) => {
    h.simulator.reset();
    const res = await post(path, { ...auth, 'content-type': 'text/plain' }, 'x');
    expectWrongType(res, `POST ${path}`, 'text/plain', ['application/json']);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('answers a DELETE that carries a text/plain body with 415 in the contract’s error body (openapi lists it)', async () => {
    const res = await h.fetch(`${h.base}/v1/keys/nope`, { method: 'DELETE', headers: { ...admin, 'content-type': 'text/plain' }, body: 'x' });
    expect(res.status).toBe(415);
    const body = (await res.json()) as any;
    expect(Object.keys(body)).toEqual(['error']);
    expect(body.error).toMatchObject({ code: 'unsupported_media_type', request_id: res.headers.get('x-request-id') });
  });

  it('answers a request for no route 404 whatever its body type', async () => {
    for (const [method, path] of [['POST', '/v1/nonexistent'], ['PUT', '/v1/generate'], ['PATCH', '/v1/keys/abc']]) {
      const res = await h.fetch(`${h.base}${path}`, { method, headers: { ...admin, 'content-type': 'text/plain' }, body: 'x' });
      expect(res.status, `${method} ${path}`).toBe(404);
      expect(((await res.json()) as any).error.code).toBe('not_found');
    }
  });

  it('takes an empty DELETE body sent with a Content-Type as no body, as browsers send it', async () => {
    for (const type of ['text/plain;charset=UTF-8', 'application/json']) {
      const minted = await post('/v1/keys', { ...admin, 'content-type': 'application/json' }, JSON.stringify({ team: 'empty-delete' }));
      expect(minted.status).toBe(201);
      const res = await h.fetch(`${h.base}/v1/keys/${minted.body.id}`, { method: 'DELETE', headers: { ...admin, 'content-type': type }, body: '' });
      expect(res.status, type).toBe(204);
    }
  });

  it('answers text/plain to the OpenAI façade with 415 in OpenAI’s error shape', async () => {
    const res = await post('/v1/images/generations', { ...client, 'content-type': 'text/plain; charset=utf-8' }, '{"model":"gpt-image-1","prompt":"a deer"}');
    expect(res.status).toBe(415);
    expect(res.body.error).toMatchObject({ type: 'invalid_request_error', param: 'Content-Type' });
    expect(res.body.error.message).toBe("the body's Content-Type (text/plain) is not one POST /v1/images/generations reads: send application/json");
  });

  it('refuses multipart to a JSON route with 415 rather than reading it as no body (nothing minted)', async () => {
    const keyCount = async () => ((await (await h.fetch(`${h.base}/v1/keys`, { headers: admin })).json()) as { data: unknown[] }).data.length;
    const before = await keyCount();
    const { payload, headers } = multipartBody({ team: 'formed' }, []);
    expectWrongType(await post('/v1/keys', { ...admin, ...headers }, payload), 'POST /v1/keys', 'multipart/form-data', ['application/json']);
    expectWrongType(await post('/v1/tokens', { ...client, ...headers }, payload), 'POST /v1/tokens', 'multipart/form-data', ['application/json']);
    expect(await keyCount()).toBe(before);
  });

  it('names both types on the routes that take files, and multipart alone on the OpenAI edit', async () => {
    for (const path of ['/v1/edit', '/v1/upscale', '/v1/describe']) {
      expectWrongType(await post(path, { ...client, 'content-type': 'text/plain' }, 'x'), `POST ${path}`, 'text/plain', ['multipart/form-data', 'application/json']);
    }
    const res = await post('/v1/images/edits', { ...client, 'content-type': 'application/json' }, '{"model":"gpt-image-1","prompt":"a hat"}');
    expect(res.status).toBe(415);
    expect(res.body.error.message).toBe("the body's Content-Type (application/json) is not one POST /v1/images/edits reads: send multipart/form-data");
  });

  it('refuses a body sent without a Content-Type, and one of a made-up type', async () => {
    // undici sends a Uint8Array body with no Content-Type of its own.
    expectWrongType(await post('/v1/keys', admin, Buffer.from('{"team":"x"}')), 'POST /v1/keys', undefined, ['application/json']);
    expectWrongType(await post('/v1/tokens', { ...client, 'content-type': 'application/vnd.api+json' }, '{}'), 'POST /v1/tokens', 'application/vnd.api+json', ['application/json']);
  });

  it('refuses text/plain to the console sign-in with 415 (a cross-site form cannot send a key)', async () => {
    const res = await post('/console/api/session', { ...CONSOLE, 'content-type': 'text/plain' }, JSON.stringify({ key: CLIENT_KEY }));
    expectWrongType(res, 'POST /console/api/session', 'text/plain', ['application/json']);
  });

  it('still reads JSON with a charset, and JSON or multipart on the routes that take files', async () => {
    const minted = await post('/v1/keys', { ...admin, 'content-type': 'application/json; charset=utf-8' }, '{"team":"charset"}');
    expect(minted.status).toBe(201);
    const token = await post('/v1/tokens', { ...client, 'content-type': 'Application/JSON' }, '{}');
    expect(token.status).toBe(201);
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it blue' }, [{ field: 'image', filename: 'a.png', bytes: await makePng() }]);
    expect((await post('/v1/edit', { ...client, ...headers }, payload)).status).toBe(200);
  });

  it('is refused before the rate limit counts it: a key of one request a minute still generates after two refusals', async () => {
    const key = (await post('/v1/keys', { ...admin, 'content-type': 'application/json' }, '{"team":"slow","rpm":1}')).body.key as string;
    const auth = { authorization: `Bearer ${key}` };
    for (let i = 0; i < 2; i++) expect((await post('/v1/generate', { ...auth, 'content-type': 'text/plain' }, 'x')).status).toBe(415);
    const res = await post('/v1/generate', { ...auth, 'content-type': 'application/json' }, '{"model":"gpt-image-1","prompt":"a deer"}');
    expect(res.status, JSON.stringify(res.body)).toBe(200);
  });
});
