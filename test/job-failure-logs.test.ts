/**
 * One failure, one error line: a job's failure is logged as an error by its runner (with the job,
 * its model and how upstream failed), and the synchronous request that waited for it tells it as
 * one warning naming the job, not as a second error.
 */
import { afterAll, beforeAll, beforeEach, expect, it } from 'vitest';
import { startHarness, type Harness } from './harness.js';

let h: Harness;
type Line = Record<string, any>;

beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.close();
});
beforeEach(() => {
  h.simulator.reset();
  h.logs.length = 0;
});

const lines = (): Line[] => h.logs.map((l) => JSON.parse(l));
const errors = (): Line[] => lines().filter((l) => l.level >= 50);
/** A request's own lines, but its "request completed". */
const requestLines = (requestId: string): Line[] => lines().filter((l) => l.reqId === requestId && l.msg !== 'request completed');

it('a synchronous request with an Idempotency-Key whose job fails upstream: one error line (the job’s), one warning (the request’s)', async () => {
  h.simulator.failNext('http500');
  const res = await h.app.inject({
    method: 'POST',
    url: '/v1/generate',
    headers: { ...h.auth, 'idempotency-key': 'one-failure-one-error' },
    payload: { model: 'gpt-image-1', prompt: 'a lighthouse' },
  });
  expect(res.statusCode, res.body).toBe(502);
  expect(h.simulator.received).toHaveLength(1);
  const requestId = res.json().error.request_id;

  const errorLines = errors();
  expect(errorLines).toHaveLength(1);
  const [error] = errorLines;
  expect(error).toMatchObject({ level: 50, code: 'upstream_error', model: 'gpt-image-1', failure_kind: 'server_error', upstream_status: 500 });
  expect(error!.job_id).toMatch(/^job_/);
  // The job's line carries the stack of what failed.
  expect(error!.err?.stack).toMatch(/^\w*Error: .+\n\s+at /);

  const own = requestLines(requestId);
  expect(own).toHaveLength(1);
  expect(own[0]).toMatchObject({ level: 40, code: 'upstream_error', job_id: error!.job_id });
  expect(own[0]!.err).toBeUndefined();
  // The job is the request's: its row names the model the error line names.
  const row = await h.app.jobs.get(error!.job_id);
  expect(row?.status).toBe('failed');
  expect(row?.model).toBe('gpt-image-1');
});

it('the same through the OpenAI façade, as a stream: still one error line', async () => {
  h.simulator.failNext('http500');
  const res = await h.app.inject({
    method: 'POST',
    url: '/v1/images/generations',
    headers: { ...h.auth, 'idempotency-key': 'one-failure-one-error-stream' },
    payload: { model: 'gpt-image-1', prompt: 'a lighthouse', stream: true },
  });
  expect(res.statusCode).toBe(200);
  expect(res.body).toMatch(/event: error/);
  const errorLines = errors();
  expect(errorLines).toHaveLength(1);
  expect(errorLines[0]).toMatchObject({ job_id: expect.stringMatching(/^job_/), model: 'gpt-image-1', failure_kind: 'server_error' });
  const warnings = lines().filter((l) => l.level === 40 && l.job_id === errorLines[0]!.job_id && l.reqId !== undefined);
  expect(warnings).toHaveLength(1);
});

it('a failure of a request that is not a job is still logged as an error, once, by its request', async () => {
  h.simulator.failNext('http500');
  const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a lighthouse' } });
  expect(res.statusCode).toBe(502);
  const errorLines = errors();
  expect(errorLines).toHaveLength(1);
  expect(errorLines[0]).toMatchObject({ reqId: res.json().error.request_id, code: 'upstream_error' });
});

it('an asynchronous job’s failure: the one error line is the job’s', async () => {
  h.simulator.failNext('http500');
  const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a lighthouse', async: true } });
  expect(res.statusCode).toBe(202);
  const id = res.json().id;
  for (let i = 0; i < 250 && errors().length === 0; i++) await new Promise((r) => setTimeout(r, 20));
  const job = (await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: h.auth })).json();
  expect(job.status).toBe('failed');
  expect(errors()).toHaveLength(1);
  expect(errors()[0]).toMatchObject({ job_id: id, model: 'gpt-image-1', failure_kind: 'server_error' });
  // The job's error names the job (its log lines carry it as job_id), not the request that created it.
  expect(job.error.request_id).toBe(id);
});
