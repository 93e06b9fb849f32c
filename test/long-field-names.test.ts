/**
 * Field and option names a client makes up are quoted in refusals and log lines: a huge one is cut to its
 * first 100 characters and "…", never echoed whole into the answer and the log.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
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
