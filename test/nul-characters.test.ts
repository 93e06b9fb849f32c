/**
 * The NUL character (U+0000) in a client's text is refused with a 400 naming the field, before anything
 * reaches upstream or the database: PostgreSQL cannot store it and failed the statement (a 500), so
 * the same requests are made against SQLite and PostgreSQL.
 */
import { beforeEach, expect, it } from 'vitest';
import { ADMIN_KEY, makePng, multipartBody, type Harness } from './harness.js';
import { describeOnEachDatabase } from './each-database.js';

const NUL_MESSAGE = 'must not contain the NUL character (U+0000)';

describeOnEachDatabase('NUL in client text', (harness) => {
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });

  function expectRefused(res: { statusCode: number; json(): any }, field: string): void {
    expect(res.statusCode).toBe(400);
    expect(res.json().error.code).toBe('invalid_request');
    expect(res.json().error.details).toEqual([{ field, message: NUL_MESSAGE }]);
  }

  it('a prompt, an option and an option name holding NUL are refused naming them, and never sent upstream', async () => {
    const before = h.simulator.received.length;
    for (const async of [false, true]) {
      const prompt = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a\u0000b', async } });
      expectRefused(prompt, 'prompt');
    }
    const option = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'ab', options: { moderation: 'lo\u0000w' } } });
    expectRefused(option, 'options.moderation');
    const name = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'ab', options: { 'x\u0000': 1 } } });
    expectRefused(name, 'options.x\\u0000');
    expect(h.simulator.received.length).toBe(before);
  });

  it('NUL nested deeper than the call stack goes is refused naming the field cut, not a 500', async () => {
    const depth = 200_000;
    const payload = `{"model":"gpt-image-1","prompt":"x","options":{"a":${'['.repeat(depth)}"\\u0000"${']'.repeat(depth)}}}`;
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, 'content-type': 'application/json' }, payload });
    expect(res.statusCode).toBe(400);
    const field = res.json().error.details[0].field as string;
    expect(field.startsWith('options.a[0][0]')).toBe(true);
    expect(field.endsWith('…')).toBe(true);
    expect(field.length).toBe(101);
  });

  it('the OpenAI façade refuses it in its own shape, naming the param', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a\u0000b' } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ type: 'invalid_request_error', param: 'prompt', message: `prompt: ${NUL_MESSAGE}` });
  });

  it('an edit whose multipart prompt holds NUL is refused naming prompt', async () => {
    const before = h.simulator.received.length;
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it \u0000blue' }, [{ field: 'image', filename: 'a.png', bytes: await makePng() }]);
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
    expectRefused(res, 'prompt');
    expect(h.simulator.received.length).toBe(before);
  });

  it('path parameters and query values holding NUL are refused naming them, not answered 500', async () => {
    const admin = { authorization: `Bearer ${ADMIN_KEY}` };
    expectRefused(await h.app.inject({ method: 'GET', url: '/v1/jobs/job_%00', headers: h.auth }), 'id');
    expectRefused(await h.app.inject({ method: 'GET', url: '/v1/jobs/job_%00/events', headers: h.auth }), 'id');
    expectRefused(await h.app.inject({ method: 'DELETE', url: '/v1/keys/k%00', headers: admin }), 'id');
    expectRefused(await h.app.inject({ method: 'GET', url: '/v1/images?model=a%00', headers: h.auth }), 'model');
    expectRefused(await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'a\u0000b' } }), 'team');
  });

  it('text that only looks like the escape ("\\\\u0000", a backslash and "u0000") is a prompt like any other', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a \\u0000 b' } });
    expect(res.statusCode).toBe(200);
    const job = await h.app.inject({ method: 'GET', url: '/v1/jobs/job_x%2500', headers: h.auth });
    expect(job.statusCode).toBe(404);
  });
});
