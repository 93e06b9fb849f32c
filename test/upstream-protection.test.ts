import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { FairQueue } from '../src/upstream/fair-queue.js';
import { UpstreamClient, parseRetryAfter, type UpstreamClientOptions } from '../src/upstream/upstream-client.js';
import type { UpstreamRequest } from '../src/upstream/upstream-request.js';
import { UPSTREAM_KEY, startHarness, type Harness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const generate = (harness: Harness, payload: Record<string, unknown> = { model: 'gpt-image-1', prompt: 'x' }) =>
  harness.app.inject({ method: 'POST', url: '/v1/generate', headers: harness.auth, payload });
/** An UpstreamClient of its own against the harness's simulator, as the gateway's is configured. */
const clientOptions = (harness: Harness): UpstreamClientOptions => ({
  baseUrl: harness.simulator.url,
  apiKeys: [UPSTREAM_KEY],
  maxConcurrency: 4,
  queueTimeoutMs: 5_000,
  retries: 0,
  retryBaseMs: 10,
  keyCooldownMs: 60_000,
  pollIntervalMs: 10,
  maxReplyBytes: 64 * 1024 * 1024,
  maxDownloadBytes: 64 * 1024 * 1024,
});
const gptImage: UpstreamRequest = {
  path: '/v1/images/generations',
  auth: 'bearer',
  body: { kind: 'json', value: { model: 'gpt-image-1', prompt: 'x' } },
  async: false,
};
const submissions = (harness: Harness) => harness.simulator.received.filter((r) => r.method === 'POST').length;

describe('retries of refused upstream calls', () => {
  it('upstream throttling (429) is absorbed by retrying, honouring Retry-After', async () => {
    h = await startHarness({ UPSTREAM_RETRIES: '2', UPSTREAM_RETRY_BASE_MS: '10' });
    h.simulator.failNext('http429', 2);
    // The pauses before each retry, recorded instead of slept: the order and the values are the claim.
    const waits: number[] = [];
    const upstream = new UpstreamClient({ ...clientOptions(h), retries: 2, wait: async (ms) => void waits.push(ms) });
    try {
      const result = await upstream.generate(gptImage, AbortSignal.timeout(15_000));
      expect(result.images).toHaveLength(1);
    } finally {
      await upstream.close();
    }
    expect(submissions(h)).toBe(3);
    // The simulator says Retry-After: 1 on each throttle: 1 s before each retry, not the 10 ms backoff.
    expect(waits).toEqual([1000, 1000]);
  });

  it('without Retry-After the pause before a retry is the backoff, doubling per retry', async () => {
    h = await startHarness();
    h.simulator.failNext('http503', 2);
    const waits: number[] = [];
    const upstream = new UpstreamClient({ ...clientOptions(h), retries: 2, retryBaseMs: 1000, wait: async (ms) => void waits.push(ms) });
    try {
      await upstream.generate(gptImage, AbortSignal.timeout(15_000));
    } finally {
      await upstream.close();
    }
    expect(submissions(h)).toBe(3);
    expect(waits).toHaveLength(2);
    // base/2 + jitter up to base, per retry: [500, 1500) then [1000, 3000).
    expect(waits[0]).toBeGreaterThanOrEqual(500);
    expect(waits[0]).toBeLessThan(1500);
    expect(waits[1]).toBeGreaterThanOrEqual(1000);
    expect(waits[1]).toBeLessThan(3000);
  });

  it('upstream 503 is retried with backoff when no Retry-After is given', async () => {
    h = await startHarness({ UPSTREAM_RETRIES: '1', UPSTREAM_RETRY_BASE_MS: '10' });
    h.simulator.failNext('http503');
    const res = await generate(h);
    expect(res.statusCode).toBe(200);
    expect(submissions(h)).toBe(2);
  });

  it('after the last retry the client gets 429 with Retry-After', async () => {
    h = await startHarness({ UPSTREAM_RETRIES: '1', UPSTREAM_RETRY_BASE_MS: '10' });
    h.simulator.failNext('http429', 5);
    const res = await generate(h);
    expect(res.statusCode).toBe(429);
    expect(res.json().error.code).toBe('rate_limited');
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
    expect(submissions(h)).toBe(2);
  });

  it('an upstream 500 is not retried: an image may have been made and paid for', async () => {
    h = await startHarness({ UPSTREAM_RETRIES: '3', UPSTREAM_RETRY_BASE_MS: '10' });
    h.simulator.failNext('http500');
    const res = await generate(h);
    expect(res.statusCode).toBe(502);
    expect(submissions(h)).toBe(1);
  });

  it('Retry-After is read as seconds or as an HTTP date', () => {
    expect(parseRetryAfter('3')).toBe(3);
    expect(parseRetryAfter(new Date(Date.now() + 10_000).toUTCString())).toBeGreaterThanOrEqual(9);
    expect(parseRetryAfter('soon')).toBeUndefined();
    expect(parseRetryAfter(undefined)).toBeUndefined();
  });
});

describe('several upstream keys', () => {
  it('rotate between calls', async () => {
    const second = 'sk-test-second-upstream-key-0123';
    h = await startHarness({ AIHUBMIX_API_KEY: `${UPSTREAM_KEY},${second}` }, { extraApiKeys: [second] });
    await generate(h);
    await generate(h);
    const used = h.simulator.received.map((r) => r.headers.authorization);
    expect(used).toEqual([`Bearer ${UPSTREAM_KEY}`, `Bearer ${second}`]);
  });

  it('a key upstream refuses for its balance is set aside and the call goes out with the next key', async () => {
    const broke = 'sk-test-broke-upstream-key-0123';
    h = await startHarness({ AIHUBMIX_API_KEY: `${broke},${UPSTREAM_KEY}` }, { brokeApiKeys: [broke] });
    const first = await generate(h);
    expect(first.statusCode).toBe(200);
    const second = await generate(h);
    expect(second.statusCode).toBe(200);
    const used = h.simulator.received.map((r) => r.headers.authorization);
    // The broke key is tried once, then left out while it cools down.
    expect(used).toEqual([`Bearer ${broke}`, `Bearer ${UPSTREAM_KEY}`, `Bearer ${UPSTREAM_KEY}`]);
  });

  it('with every key refused, the client gets 502 naming the gateway’s credentials', async () => {
    const broke = 'sk-test-broke-upstream-key-0123';
    h = await startHarness({ AIHUBMIX_API_KEY: broke }, { brokeApiKeys: [broke] });
    const res = await generate(h);
    expect(res.statusCode).toBe(502);
    expect(res.json().error.message).toMatch(/credentials/);
    expect(res.body).not.toContain(broke);
  });
});

describe('the upstream concurrency cap', () => {
  it('keeps at most UPSTREAM_MAX_CONCURRENCY calls in flight under load', async () => {
    h = await startHarness({ UPSTREAM_MAX_CONCURRENCY: '2', RATE_LIMIT_RPM: '1000' }, { latencyMs: 100 });
    let inFlight = 0;
    let peak = 0;
    const upstream = h.app.upstream as unknown as { slots: FairQueue };
    const timer = setInterval(() => {
      inFlight = upstream.slots.inFlight;
      peak = Math.max(peak, inFlight);
    }, 5);
    const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => generate(h!, { model: 'gpt-image-1', prompt: `p${i}` })));
    clearInterval(timer);
    expect(answers.every((a) => a.statusCode === 200)).toBe(true);
    expect(peak).toBe(2);
  });

  it('a request that waits past UPSTREAM_QUEUE_TIMEOUT_MS gets 503 with Retry-After and is never sent', async () => {
    h = await startHarness({ UPSTREAM_MAX_CONCURRENCY: '1', UPSTREAM_QUEUE_TIMEOUT_MS: '100', RATE_LIMIT_RPM: '1000' }, { latencyMs: 400 });
    const [first, second] = await Promise.all([generate(h, { model: 'gpt-image-1', prompt: 'a' }), generate(h, { model: 'gpt-image-1', prompt: 'b' })]);
    expect(first.statusCode).toBe(200);
    expect(second.statusCode).toBe(503);
    expect(second.headers['retry-after']).toBeDefined();
    expect(submissions(h)).toBe(1);
  });

  it('serves waiting teams in turn, so one team’s burst cannot starve another', async () => {
    const queue = new FairQueue(1, 10_000);
    const order: string[] = [];
    const never = new AbortController().signal;
    await queue.acquire('holder', never);
    const waits = [
      ...['a1', 'a2', 'a3'].map((id) => queue.acquire('team-a', never).then(() => order.push(id))),
      queue.acquire('team-b', never).then(() => order.push('b1')),
    ];
    for (let i = 0; i < 4; i++) {
      queue.release();
      await sleep(1);
    }
    queue.release();
    await Promise.all(waits);
    expect(order.slice(0, 2)).toEqual(['a1', 'b1']);
  });
});

describe('tasks already paid for', () => {
  it('a passing fault while polling a task is waited out, not turned into a failure', async () => {
    h = await startHarness();
    h.simulator.failNextPolls(2);
    const res = await generate(h, { model: 'flux-kontext-pro', prompt: 'keep polling' });
    expect(res.statusCode).toBe(200);
    expect(h.simulator.received.filter((r) => r.method === 'POST')).toHaveLength(1);
  });

  it('polling a task holds no upstream slot, so a long task does not block other calls', async () => {
    h = await startHarness({ UPSTREAM_MAX_CONCURRENCY: '1', UPSTREAM_QUEUE_TIMEOUT_MS: '200' });
    h.simulator.holdTasks = true;
    const accepted = await generate(h, { model: 'flux-kontext-pro', prompt: 'long', async: true });
    expect(accepted.statusCode).toBe(202);
    for (let i = 0; i < 100 && !h.simulator.received.some((r) => r.path.startsWith('/v1/tasks/')); i++) await sleep(10);
    const other = await generate(h, { model: 'gpt-image-1', prompt: 'meanwhile' });
    expect(other.statusCode).toBe(200);
    h.simulator.holdTasks = false;
  });
});

describe('a 403 that is about the model, not the key', () => {
  it('does not set the key aside', async () => {
    const second = 'sk-test-second-upstream-key-0123';
    h = await startHarness({ AIHUBMIX_API_KEY: `${UPSTREAM_KEY},${second}` }, { extraApiKeys: [second] });
    h.simulator.failNext('http403_model');
    expect((await generate(h)).statusCode).toBe(502);
    await generate(h);
    await generate(h);
    const used = h.simulator.received.map((r) => r.headers.authorization);
    // Not set aside: the rotation goes on through both keys.
    expect(used).toEqual([`Bearer ${UPSTREAM_KEY}`, `Bearer ${second}`, `Bearer ${UPSTREAM_KEY}`]);
  });
});
