/**
 * Paths and query parameters a client makes up are quoted in refusals and log lines: a huge one is cut to its
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
