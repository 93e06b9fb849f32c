/**
 * A job survives `kill -9` of its gateway: the gateway runs as a real child process (the built
 * dist/server.js), is killed mid-job, and a new process on the same DATA_DIR finishes the job
 * without submitting it upstream again.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startUpstreamSimulator, type UpstreamSimulator } from '../src/simulator/upstream-simulator.js';
import { CLIENT_KEY, UPSTREAM_KEY } from './harness.js';
import { freePort, kill9, startGatewayProcess } from './gateway-process.js';

let simulator: UpstreamSimulator;
let dataDir: string;
let port: number;
const children: ChildProcess[] = [];
/** What the last gateway started printed so far. */
let outputOfLast: () => string = () => '';

async function startGateway(env: Record<string, string> = {}): Promise<ChildProcess> {
  const { child, output } = await startGatewayProcess(port, {
    DATA_DIR: dataDir,
    AIHUBMIX_API_KEY: UPSTREAM_KEY,
    AIHUBMIX_BASE_URL: simulator.url,
    GATEWAY_API_KEYS: `design:${CLIENT_KEY}`,
    JOB_LEASE_MS: '300',
    TASK_POLL_INTERVAL_MS: '20',
    ...env,
  });
  children.push(child);
  outputOfLast = output;
  return child;
}

const api = (path: string, init: RequestInit = {}) =>
  fetch(`http://127.0.0.1:${port}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json', ...(init.headers ?? {}) },
  });

type Json = any;

async function jobWhen(id: string, done: (job: { status: string }) => boolean): Promise<Json> {
  for (let i = 0; i < 300; i++) {
    const job = (await (await api(`/v1/jobs/${id}`)).json()) as Json;
    if (done(job)) return job;
    await sleep(30);
  }
  throw new Error(`job ${id} never reached the expected state`);
}

beforeAll(async () => {
  simulator = await startUpstreamSimulator({ apiKey: UPSTREAM_KEY, taskReadyAfterMs: 30 });
  port = await freePort();
}, 60_000);

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await simulator?.close();
});

describe('a gateway killed mid-job', () => {
  it('finishes an async task job after restart, polling the saved task instead of submitting again', async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'gw-resume-'));
    simulator.reset();
    simulator.holdTasks = true;
    const first = await startGateway();
    const accepted: Json = await (await api('/v1/generate', { method: 'POST', body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'survive', async: true }) })).json();
    // The first poll comes only after the task id has been written down.
    for (let i = 0; i < 200 && !simulator.received.some((r) => r.path.startsWith('/v1/tasks/')); i++) await sleep(20);
    await kill9(first);

    simulator.holdTasks = false;
    await startGateway();
    const job = await jobWhen(accepted.id, (j) => j.status === 'succeeded' || j.status === 'failed');
    expect(job.status).toBe('succeeded');
    const submissions = simulator.received.filter((r) => r.method === 'POST' && r.path.includes('flux-kontext-pro'));
    expect(submissions).toHaveLength(1);
    const image = await fetch(job.result.images[0].url);
    expect(image.status).toBe(200);
    expect(image.headers.get('content-type')).toBe('image/png');
    await kill9(children.at(-1)!);
    rmSync(dataDir, { recursive: true, force: true });
  }, 60_000);

  it('counts what a synchronous request with an Idempotency-Key made when its gateway died before answering', async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'gw-resume-'));
    simulator.reset();
    simulator.holdTasks = true;
    const priced = { PRICE_OVERRIDES: JSON.stringify({ 'flux-kontext-pro': 0.04 }) };
    const first = await startGateway(priced);
    const request = { method: 'POST', headers: { 'idempotency-key': 'dies-mid-render' }, body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'survive, unanswered' }) };
    const unanswered = api('/v1/generate', request).catch((err: unknown) => err);
    for (let i = 0; i < 200 && !simulator.received.some((r) => r.path.startsWith('/v1/tasks/')); i++) await sleep(20);
    await kill9(first);
    expect(await unanswered).toBeInstanceOf(Error);

    simulator.holdTasks = false;
    await startGateway(priced);
    // The retry joins the job the restarted gateway carries on, and gets its image.
    const retry = await api('/v1/generate', request);
    expect(retry.status).toBe(200);
    expect(((await retry.json()) as Json).images).toHaveLength(1);
    expect(simulator.received.filter((r) => r.method === 'POST')).toHaveLength(1);

    const records = ((await (await api('/v1/usage/records?from=2000-01-01&limit=1000')).json()) as Json).data as Json[];
    // The image and its price are counted once: in the record that stands for the request that died
    // unanswered (its id is the job's), not in the retry's.
    expect(records.reduce((n: number, r: Json) => n + r.images_returned, 0)).toBe(1);
    const standIn = records.find((r: Json) => r.images_returned === 1);
    expect(standIn).toMatchObject({ status: 200, route: '/v1/generate', model: 'flux-kontext-pro', key_id: 'design', images_requested: 1, estimated_cost_usd: 0.04 });
    expect(standIn.request_id).toMatch(/^job_/);
    expect(records.filter((r: Json) => r.request_id !== standIn.request_id).map((r: Json) => r.estimated_cost_usd ?? 0)).toEqual([0]);
    await kill9(children.at(-1)!);
    rmSync(dataDir, { recursive: true, force: true });
  }, 60_000);

  it('names the OpenAI façade’s route in the record standing for a request made through it when its gateway died before answering', async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'gw-resume-'));
    simulator.reset();
    simulator.holdTasks = true;
    const first = await startGateway();
    const request = { method: 'POST', headers: { 'idempotency-key': 'dies-mid-render-openai' }, body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'survive, asked the OpenAI way' }) };
    const unanswered = api('/v1/images/generations', request).catch((err: unknown) => err);
    for (let i = 0; i < 200 && !simulator.received.some((r) => r.path.startsWith('/v1/tasks/')); i++) await sleep(20);
    await kill9(first);
    expect(await unanswered).toBeInstanceOf(Error);

    simulator.holdTasks = false;
    await startGateway();
    // The restarted gateway takes the job over at start and finishes it; the record it writes stands for the request.
    let standIn: Json;
    for (let i = 0; i < 300 && !standIn; i++) {
      const records = ((await (await api('/v1/usage/records?from=2000-01-01&limit=1000')).json()) as Json).data as Json[];
      standIn = records.find((r: Json) => String(r.request_id).startsWith('job_'));
      if (!standIn) await sleep(30);
    }
    expect(standIn).toMatchObject({ status: 200, route: '/v1/images/generations', operation: 'generate', model: 'flux-kontext-pro', images_returned: 1 });
    await kill9(children.at(-1)!);
    rmSync(dataDir, { recursive: true, force: true });
  }, 60_000);

  it('fails a job whose synchronous upstream call was in flight, rather than paying for it twice', async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'gw-resume-'));
    simulator.reset();
    simulator.failNext('hang');
    const first = await startGateway();
    const accepted: Json = await (await api('/v1/generate', { method: 'POST', body: JSON.stringify({ model: 'gpt-image-1', prompt: 'in flight', async: true }) })).json();
    for (let i = 0; i < 200 && simulator.received.length === 0; i++) await sleep(20);
    await kill9(first);

    await startGateway();
    const job = await jobWhen(accepted.id, (j) => j.status === 'failed' || j.status === 'succeeded');
    expect(job.status).toBe('failed');
    expect(job.error.message).toMatch(/not sent again/);
    expect(job.error.message).toMatch(/new Idempotency-Key/);
    expect(simulator.received.filter((r) => r.method === 'POST')).toHaveLength(1);
    // Upstream may have made and billed it: its usage record (what a budget counts from after a
    // restart) keeps the most it may have cost, never nothing. No quality: the highest, 6240 output
    // tokens at $40 per million, and the prompt's 9 bytes at $5.
    let record: Json;
    for (let i = 0; i < 300 && !record; i++) {
      const records = ((await (await api('/v1/usage/records?from=2000-01-01&limit=1000')).json()) as Json).data as Json[];
      record = records.find((r: Json) => r.route === '/v1/generate' && r.status === 502);
      if (!record) await sleep(30);
    }
    expect(record).toMatchObject({ error_code: 'upstream_error', images_returned: 0 });
    expect(record.estimated_cost_usd).toBeCloseTo((6240 * 40 + 9 * 5) / 1e6, 6);
    await kill9(children.at(-1)!);
    rmSync(dataDir, { recursive: true, force: true });
  }, 60_000);
});

describe('jobs a restart finds failed (their upstream call was in flight)', () => {
  it('are one warning line at start; a retry under the same Idempotency-Key replays the failure, marked replayed, telling to use a new key', async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'gw-resume-'));
    simulator.reset();
    simulator.failNext('hang', 2);
    const first = await startGateway();
    const request = (key: string) => ({ method: 'POST', headers: { 'idempotency-key': key }, body: JSON.stringify({ model: 'gpt-image-1', prompt: `in flight ${key}` }) });
    const unanswered = [api('/v1/generate', request('crash-a')).catch((err: unknown) => err), api('/v1/generate', request('crash-b')).catch((err: unknown) => err)];
    for (let i = 0; i < 200 && simulator.received.length < 2; i++) await sleep(20);
    await kill9(first);
    for (const answer of await Promise.all(unanswered)) expect(answer).toBeInstanceOf(Error);

    // LOG_LEVEL info: every line the restart writes about these jobs is seen.
    await startGateway({ LOG_LEVEL: 'info' });
    const retry = await api('/v1/generate', request('crash-a'));
    expect(retry.status).toBe(502);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    const error = ((await retry.json()) as Json).error;
    expect(error.message).toMatch(/not sent again/);
    expect(error.message).toMatch(/new Idempotency-Key/);
    expect(simulator.received.filter((r) => r.method === 'POST')).toHaveLength(2);

    // Stopped (SIGTERM) so that all it logged is written out.
    const restarted = children.at(-1)!;
    await new Promise((resolve) => {
      restarted.once('exit', resolve);
      restarted.kill('SIGTERM');
    });
    const lines = outputOfLast()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Json);
    // No error, no stack: the restart's failed jobs are one warning naming them; the replay one warning.
    expect(lines.filter((l) => l.level >= 50)).toEqual([]);
    expect(lines.filter((l) => JSON.stringify(l).includes('"stack"'))).toEqual([]);
    const restartLines = lines.filter((l) => l.level === 40 && Array.isArray(l.job_ids));
    expect(restartLines).toHaveLength(1);
    expect(restartLines[0]).toMatchObject({ jobs_failed: 2 });
    expect(restartLines[0].job_ids).toHaveLength(2);
    const replayLines = lines.filter((l) => l.reqId && l.code === 'upstream_error');
    expect(replayLines).toHaveLength(1);
    expect(replayLines[0].level).toBe(40);
    rmSync(dataDir, { recursive: true, force: true });
  }, 60_000);
});

describe('a gateway killed while a job waits for an upstream slot', () => {
  it('leaves it queued, and the restarted gateway sends it once', async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'gw-resume-'));
    simulator.reset();
    // One slot, held by a call that never answers: the second job waits for it, never sent.
    simulator.failNext('hang');
    const first = await startGateway({ UPSTREAM_MAX_CONCURRENCY: '1' });
    const holder: Json = await (await api('/v1/generate', { method: 'POST', body: JSON.stringify({ model: 'gpt-image-1', prompt: 'holds the slot', async: true }) })).json();
    for (let i = 0; i < 200 && simulator.received.length === 0; i++) await sleep(20);
    const waiting: Json = await (await api('/v1/generate', { method: 'POST', body: JSON.stringify({ model: 'gpt-image-1', prompt: 'waits for a slot', async: true }) })).json();
    expect((await jobWhen(waiting.id, () => true)).status).toBe('queued');
    await kill9(first);

    await startGateway({ UPSTREAM_MAX_CONCURRENCY: '1' });
    const job = await jobWhen(waiting.id, (j) => j.status === 'succeeded' || j.status === 'failed');
    expect(job.status).toBe('succeeded');
    const sent = (prompt: string) => simulator.received.filter((r) => r.method === 'POST' && JSON.stringify(r.json ?? '').includes(prompt));
    expect(sent('waits for a slot')).toHaveLength(1);
    // The one in flight is not sent again.
    expect((await jobWhen(holder.id, (j) => j.status === 'failed')).error.message).toMatch(/not sent again/);
    expect(sent('holds the slot')).toHaveLength(1);
    await kill9(children.at(-1)!);
    rmSync(dataDir, { recursive: true, force: true });
  }, 60_000);
});

describe("the server process's log on standard output", () => {
  it('carries a request line with no more traffic to fill the buffer, and what was buffered when it stops on SIGTERM', async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'gw-log-'));
    const gateway = await startGateway({ LOG_LEVEL: 'info' });
    let stdout = '';
    gateway.stdout!.on('data', (chunk) => (stdout += chunk));
    const lineOf = (requestId: string) => stdout.split('\n').find((l) => l.includes(`"reqId":"${requestId}"`));

    // Light traffic: one request, and its line arrives by the flush timer, not a full buffer nor the
    // exit: the process keeps running and nothing else is sent until the line is read.
    const first = await api('/v1/models', { headers: { 'x-request-id': 'req_log_first_0001' } });
    expect(first.status).toBe(200);
    await new Promise<void>((resolve) => {
      const check = () => (lineOf('req_log_first_0001') ? resolve() : gateway.stdout!.once('data', () => setImmediate(check)));
      check();
    });
    expect(gateway.exitCode).toBeNull();

    const exited = new Promise((r) => gateway.once('exit', r));
    const last = await api('/v1/models', { headers: { 'x-request-id': 'req_log_last_00001' } });
    expect(last.status).toBe(200);
    gateway.kill('SIGTERM');
    await exited;
    expect(lineOf('req_log_last_00001')).toBeDefined();
    expect(stdout).toMatch(/shutting down/);
    rmSync(dataDir, { recursive: true, force: true });
  }, 30_000);
});
