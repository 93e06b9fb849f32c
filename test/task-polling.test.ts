/**
 * UpstreamClient polling asynchronous tasks over real HTTP: against the simulator, and against a
 * small scripted upstream for the Retry-After replies the simulator does not send. Time is a
 * virtual clock shared by the client (its waits move it) and the simulator (task readiness, the
 * time each request is recorded at): when each poll went out is exact, whatever the machine's load.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startUpstreamSimulator, type UpstreamSimulator } from '../src/simulator/upstream-simulator.js';
import { UpstreamClient } from '../src/upstream/upstream-client.js';
import { UpstreamFailure, toGatewayError } from '../src/upstream/upstream-failure.js';
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

/** A clock that moves only when the client waits. */
function virtualClock(): { now: () => number; wait: (ms: number, signal: AbortSignal) => Promise<void> } {
  let t = Date.now();
  return {
    now: () => t,
    wait: async (ms, signal) => {
      signal.throwIfAborted();
      t += ms;
    },
  };
}
let clock = virtualClock();

function clientFor(baseUrl: string, pollIntervalMs: number): UpstreamClient {
  return new UpstreamClient({
    now: clock.now,
    wait: clock.wait,
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
beforeEach(() => {
  clock = virtualClock();
});
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

async function simulator(taskReadyAfterMs: number): Promise<UpstreamSimulator> {
  const sim = await startUpstreamSimulator({ apiKey: KEY, taskReadyAfterMs, now: clock.now });
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
    const deadline = clock.now() + deadlineInMs;
    const result = await upstream.generate(fluxTask, new AbortController().signal, { deadline });
    expect(result.images).toEqual([{ url: expect.stringContaining('/sim/files/') }]);

    const submission = sim.received.find((r) => r.method === 'POST')!;
    const readyAt = submission.at + readyAfterMs;
    const polls = pollsOf(sim);
    expect(polls.map((p) => p.taskStatus)).toEqual([...polls.slice(1).map(() => 'Pending'), 'Ready']);
    // Polled every interval from submission: the first one interval after it ...
    expect(polls.map((p) => p.at - submission.at)).toEqual(polls.map((_, i) => (i + 1) * DEFAULT_INTERVAL_MS));
    // ... so the poll that found it Ready came within one interval of its readiness, before the deadline.
    expect(polls.at(-1)!.at - readyAt).toBeGreaterThanOrEqual(0);
    expect(polls.at(-1)!.at - readyAt).toBeLessThan(DEFAULT_INTERVAL_MS);
    expect(polls.at(-1)!.at).toBeLessThan(deadline);
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
    const start = clock.now();
    const deadline = start + 3_000;
    // A signal nobody aborts: the deadline alone must end the call.
    const outcome = await upstream.generate(fluxTask, new AbortController().signal, { deadline }).catch((err: unknown) => err);
    expect(outcome).toBeInstanceOf(UpstreamFailure);
    expect((outcome as UpstreamFailure).kind).toBe('timeout');
    expect(toGatewayError(outcome as UpstreamFailure).code).toBe('upstream_timeout');
    // Not before the deadline: the last answer could still have been Ready.
    expect(clock.now()).toBe(deadline);

    const polls = pollsOf(sim);
    expect(polls.every((p) => p.taskStatus === 'Pending')).toBe(true);
    // Regular polls every 0.5 s, then the last one brought forward to DEADLINE_MARGIN_MS before the
    // deadline (not a regular poll at 3 s, whose answer would come too late); none after it.
    expect(polls.map((p) => p.at - start)).toEqual([500, 1000, 1500, 2000, 2500, 3_000 - DEADLINE_MARGIN_MS]);
  });

  it('reports each Pending answer with the simulator’s progress, in order', async () => {
    const sim = await simulator(1_000);
    const upstream = client(sim.url, 100);
    const seen: Array<{ status: string; progress?: number }> = [];
    const result = await upstream.generate(fluxTask, new AbortController().signal, { onProgress: (p) => seen.push(p) });
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
    const result = await upstream.generate(fluxTask, new AbortController().signal, {
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
      pollTimes.push(clock.now());
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
    const result = await upstream.generate(fluxTask, new AbortController().signal, { deadline: clock.now() + 15_000, onProgress: (p) => seen.push(p) });
    expect(result.images).toEqual([{ url: 'https://example.invalid/a.png' }]);
    expect(pollTimes).toHaveLength(4);
    // Without Retry-After these polls would be 50 ms apart.
    expect(pollTimes.slice(1).map((t, i) => t - pollTimes[i]!)).toEqual([1000, 1000, 1000]);
    // A null progress is not a number: only the status is reported.
    expect(seen).toEqual([{ status: 'Pending' }]);
  });

  it('does not wait out a Retry-After past the deadline: the last poll still goes out before it', async () => {
    const { url, pollTimes } = await scriptedUpstream([
      { status: 200, retryAfter: '30', body: { id: 'task-1', status: 'Pending' } },
      { status: 200, body: { id: 'task-1', status: 'Ready', result: { sample: 'https://example.invalid/b.png' } } },
    ]);
    const upstream = client(url, 50);
    const deadline = clock.now() + 2_000;
    const result = await upstream.generate(fluxTask, new AbortController().signal, { deadline });
    expect(result.images).toEqual([{ url: 'https://example.invalid/b.png' }]);
    expect(pollTimes).toHaveLength(2);
    // Retry-After: 30 is cut to the last moment a poll can still be answered in time.
    expect(pollTimes[1]!).toBe(deadline - DEADLINE_MARGIN_MS);
  });
});
