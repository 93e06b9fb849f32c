/**
 * UpstreamClient polling asynchronous tasks over real HTTP: against the simulator, and against a
 * small scripted upstream for the Retry-After replies the simulator does not send.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { GatewayError } from '../src/errors.js';
import { startUpstreamSimulator, type UpstreamSimulator } from '../src/simulator/upstream-simulator.js';
import { UpstreamClient } from '../src/upstream/upstream-client.js';
import type { UpstreamRequest } from '../src/upstream/upstream-request.js';
import { DEADLINE_MARGIN_MS } from '../src/upstream/task-poll-schedule.js';

const KEY = 'sk-test-task-polling-0123456789';
/** TASK_POLL_INTERVAL_MS as shipped. */
const DEFAULT_INTERVAL_MS = loadConfig({}).TASK_POLL_INTERVAL_MS;

const fluxTask: UpstreamRequest = {
  path: '/v1/models/bfl/flux-kontext-pro/predictions',
  auth: 'bearer',
  body: { kind: 'json', value: { input: { prompt: 'a deer at dawn' } } },
  async: true,
};

function clientFor(baseUrl: string, pollIntervalMs: number): UpstreamClient {
  return new UpstreamClient({
    baseUrl,
    apiKeys: [KEY],
    maxConcurrency: 4,
    queueTimeoutMs: 5_000,
    retries: 0,
    retryBaseMs: 100,
    keyCooldownMs: 60_000,
    pollIntervalMs,
    maxReplyBytes: 1024 * 1024,
    maxDownloadBytes: 1024 * 1024,
  });
}

const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

async function simulator(taskReadyAfterMs: number): Promise<UpstreamSimulator> {
  const sim = await startUpstreamSimulator({ apiKey: KEY, taskReadyAfterMs });
  closers.push(() => sim.close());
  return sim;
}

function client(baseUrl: string, pollIntervalMs: number): UpstreamClient {
  const made = clientFor(baseUrl, pollIntervalMs);
  closers.push(() => made.close());
  return made;
}

const pollsOf = (sim: UpstreamSimulator) => sim.received.filter((r) => r.method === 'GET' && r.path.startsWith('/v1/tasks/'));

describe('polling an upstream task', () => {
  /** Runs a task ready after `readyAfterMs` to its end under a deadline `deadlineInMs` ahead, and checks when it was found Ready. */
  async function answeredSoonAfterReady(readyAfterMs: number, deadlineInMs: number): Promise<void> {
    const sim = await simulator(readyAfterMs);
    const upstream = client(sim.url, DEFAULT_INTERVAL_MS);
    const deadline = Date.now() + deadlineInMs;
    const result = await upstream.generate(fluxTask, AbortSignal.timeout(deadlineInMs), { deadline });
    expect(result.images).toEqual([{ url: expect.stringContaining('/sim/files/') }]);

    const submission = sim.received.find((r) => r.method === 'POST')!;
    const readyAt = submission.at + readyAfterMs;
    const polls = pollsOf(sim);
    expect(polls.map((p) => p.taskStatus)).toEqual([...polls.slice(1).map(() => 'Pending'), 'Ready']);
    // The poll that found it Ready came well within a second of its readiness.
    expect(polls.at(-1)!.at - readyAt).toBeLessThan(1_000);
    expect(polls.at(-1)!.at).toBeLessThan(deadline);
    // The first poll within half a second of submission, with some room for a busy machine.
    expect(polls[0]!.at - submission.at).toBeLessThan(900);
  }

  it('answers a task ready after 1.2 s within a 3 s deadline, soon after it is ready', async () => {
    // The old schedule (1 s, then 1.5x) found it Ready 1.3 s late.
    await answeredSoonAfterReady(1_200, 3_000);
  });

  it('answers a task ready late in its time before the deadline', async () => {
    // The old schedule polled at 1, 2.5 and 4.75 s: past this deadline, a 504 for a task ready in time.
    await answeredSoonAfterReady(2_600, 4_000);
  });

  it('sends one last poll just before the deadline for a task that is never ready, then answers upstream_timeout at it', async () => {
    const sim = await simulator(3_600_000);
    const upstream = client(sim.url, 500);
    const deadline = Date.now() + 3_000;
    // A signal nobody aborts: the deadline alone must end the call.
    const outcome = await upstream.generate(fluxTask, new AbortController().signal, { deadline }).catch((err: unknown) => err);
    const endedAt = Date.now();
    expect(outcome).toBeInstanceOf(GatewayError);
    expect((outcome as GatewayError).code).toBe('upstream_timeout');
    // Not before the deadline: the last answer could still have been Ready.
    expect(endedAt).toBeGreaterThanOrEqual(deadline - 5);

    await new Promise((resolve) => setTimeout(resolve, 300));
    const polls = pollsOf(sim);
    expect(polls.every((p) => p.taskStatus === 'Pending')).toBe(true);
    // Regular polls every 0.5 s, then the last one: none after the deadline.
    expect(polls.length).toBeGreaterThanOrEqual(4);
    expect(polls.length).toBeLessThanOrEqual(7);
    // Scheduled DEADLINE_MARGIN_MS before the deadline; a busy machine's timers may run a little late.
    const late = 250;
    expect(polls.every((p) => p.at < deadline + late)).toBe(true);
    const last = polls.at(-1)!;
    expect(last.at).toBeGreaterThan(deadline - 1_000);
    expect(last.at).toBeLessThan(deadline + late);
    // Brought forward to fit before the deadline, not a regular poll half a second after the one before.
    expect(last.at - polls.at(-2)!.at).toBeLessThan(500);
    expect(last.at).toBeGreaterThanOrEqual(deadline - DEADLINE_MARGIN_MS - 400);
  });

  it('reports each Pending answer with the simulator’s progress, in order', async () => {
    const sim = await simulator(1_000);
    const upstream = client(sim.url, 100);
    const seen: Array<{ status: string; progress?: number }> = [];
    const result = await upstream.generate(fluxTask, AbortSignal.timeout(10_000), { onProgress: (p) => seen.push(p) });
    expect(result.images).toHaveLength(1);
    // One report per Pending answer.
    expect(seen).toHaveLength(pollsOf(sim).filter((p) => p.taskStatus === 'Pending').length);
    expect(pollsOf(sim).at(-1)!.taskStatus).toBe('Ready');
    expect(seen.length).toBeGreaterThan(2);
    for (const report of seen) {
      expect(report).toEqual({ status: 'Pending', progress: expect.any(Number) });
      expect(report.progress).toBeGreaterThanOrEqual(0);
      expect(report.progress).toBeLessThan(1);
    }
    const fractions = seen.map((r) => r.progress!);
    expect(fractions).toEqual([...fractions].sort((a, b) => a - b));
    expect(fractions.at(-1)!).toBeGreaterThan(fractions[0]!);
  });

  it('keeps polling when a progress observer throws: the task is paid for', async () => {
    const sim = await simulator(300);
    const upstream = client(sim.url, 50);
    const result = await upstream.generate(fluxTask, AbortSignal.timeout(10_000), {
      onProgress: () => {
        throw new Error('the stream is gone');
      },
    });
    expect(result.images).toHaveLength(1);
  });
});

describe('Retry-After on a task poll', () => {
  /** A scripted upstream: the task's polls are answered in turn from `replies`. */
  async function scriptedUpstream(replies: Array<{ status: number; retryAfter?: string; body: unknown }>): Promise<{ url: string; pollTimes: number[] }> {
    const pollTimes: number[] = [];
    const server: Server = createServer((req, res) => {
      req.resume();
      const send = (status: number, body: unknown, headers: Record<string, string> = {}) => {
        res.writeHead(status, { 'content-type': 'application/json', ...headers });
        res.end(JSON.stringify(body));
      };
      if (req.method === 'POST') return send(200, { output: [{ taskId: 'task-1' }] });
      pollTimes.push(Date.now());
      const reply = replies[Math.min(pollTimes.length - 1, replies.length - 1)]!;
      send(reply.status, reply.body, reply.retryAfter ? { 'retry-after': reply.retryAfter } : {});
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    closers.push(() => new Promise((resolve) => server.close(resolve)));
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, pollTimes };
  }

  it('waits as long as a 200 Pending, a 429 and a 503 ask before polling again', async () => {
    const { url, pollTimes } = await scriptedUpstream([
      { status: 200, retryAfter: '1', body: { id: 'task-1', status: 'Pending', progress: null } },
      { status: 429, retryAfter: '1', body: { error: { message: 'slow down' } } },
      { status: 503, retryAfter: '1', body: { error: { message: 'busy' } } },
      { status: 200, body: { id: 'task-1', status: 'Ready', result: { sample: 'https://example.invalid/a.png' } } },
    ]);
    const upstream = client(url, 50);
    const seen: Array<{ status: string; progress?: number }> = [];
    const result = await upstream.generate(fluxTask, AbortSignal.timeout(15_000), { deadline: Date.now() + 15_000, onProgress: (p) => seen.push(p) });
    expect(result.images).toEqual([{ url: 'https://example.invalid/a.png' }]);
    expect(pollTimes).toHaveLength(4);
    // Without Retry-After these polls would be 50 ms apart.
    for (let i = 1; i < pollTimes.length; i++) expect(pollTimes[i]! - pollTimes[i - 1]!).toBeGreaterThanOrEqual(950);
    // A null progress is not a number: only the status is reported.
    expect(seen).toEqual([{ status: 'Pending' }]);
  });

  it('does not wait out a Retry-After past the deadline: the last poll still goes out before it', async () => {
    const { url, pollTimes } = await scriptedUpstream([
      { status: 200, retryAfter: '30', body: { id: 'task-1', status: 'Pending' } },
      { status: 200, body: { id: 'task-1', status: 'Ready', result: { sample: 'https://example.invalid/b.png' } } },
    ]);
    const upstream = client(url, 50);
    const deadline = Date.now() + 2_000;
    const result = await upstream.generate(fluxTask, AbortSignal.timeout(2_000), { deadline });
    expect(result.images).toEqual([{ url: 'https://example.invalid/b.png' }]);
    expect(pollTimes).toHaveLength(2);
    expect(pollTimes[1]!).toBeGreaterThan(deadline - 1_000);
    expect(pollTimes[1]!).toBeLessThan(deadline);
  });
});
