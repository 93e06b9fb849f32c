/**
 * A job's callback: retried after 1 s, 5 s and 25 s while the receiver answers 5xx or 429 (or the
 * connection fails), never after another 4xx, and the outcome kept as the job's `callback_status`.
 * The pauses are recorded instead of slept (AppOptions.callbackWait), so the test says which waits
 * came, in order, without depending on how long anything took.
 */
import { createHmac } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { jobWhenFinished, startHarness, type Harness } from './harness.js';

const CALLBACK_SECRET = 'a-callback-secret-of-at-least-32-characters';
let h: Harness;
let receiver: Server;
let hook: string;
/** The statuses the receiver answers with, one per delivery; 200 once they run out. */
let script: number[] = [];
let deliveries: Array<{ body: string; signature: string }> = [];
let waits: number[] = [];

beforeAll(async () => {
  receiver = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      deliveries.push({ body, signature: String(req.headers['x-gateway-signature']) });
      res.statusCode = script.shift() ?? 200;
      res.end('answer');
    });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  hook = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
  h = await startHarness({ CALLBACK_SECRET, ALLOWED_CALLBACK_HOSTS: '127.0.0.1' }, {}, { callbackWait: async (ms) => void waits.push(ms) });
});
afterAll(async () => {
  await h?.close();
  await new Promise((r) => receiver?.close(r));
});
beforeEach(() => {
  script = [];
  deliveries = [];
  waits = [];
});

/** Submits an async job with the callback and answers the job once its callback_status is no longer pending. */
async function jobWithCallback(url = hook): Promise<any> {
  const accepted = await h.app.inject({
    method: 'POST',
    url: '/v1/generate',
    headers: h.auth,
    payload: { model: 'gpt-image-1', prompt: 'call me back', async: true, callback_url: url },
  });
  expect(accepted.statusCode).toBe(202);
  const id = accepted.json().id;
  let job = await jobWhenFinished(h, id);
  for (let i = 0; i < 500 && job.callback_status === 'pending'; i++) {
    await new Promise((r) => setTimeout(r, 10));
    job = (await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: h.auth })).json();
  }
  return job;
}

describe('job callbacks', () => {
  it('a receiver answering 503 twice gets the same signed delivery a third time, after 1 s then 5 s, and the job says delivered', async () => {
    script = [503, 503];
    const job = await jobWithCallback();
    expect(job.status).toBe('succeeded');
    expect(job.callback_status).toBe('delivered');
    expect(deliveries).toHaveLength(3);
    expect(waits).toEqual([1000, 5000]);
    // Every attempt carries the same body and signature, which the receiver can check.
    expect(new Set(deliveries.map((d) => d.body)).size).toBe(1);
    expect(new Set(deliveries.map((d) => d.signature)).size).toBe(1);
    const [t, v1] = deliveries[0]!.signature.split(',').map((p) => p.split('=')[1]);
    expect(v1).toBe(createHmac('sha256', CALLBACK_SECRET).update(`${t}.${deliveries[0]!.body}`).digest('hex'));
    expect(JSON.parse(deliveries[0]!.body)).toMatchObject({ id: job.id, status: 'succeeded' });
  });

  it('a receiver that keeps answering 500 is tried four times in all, and the job says why it failed', async () => {
    script = [500, 500, 500, 500, 500];
    const job = await jobWithCallback();
    expect(deliveries).toHaveLength(4);
    expect(waits).toEqual([1000, 5000, 25_000]);
    expect(job.callback_status).toBe('failed: the callback URL answered HTTP 500');
    expect(h.logs.some((l) => l.includes('job callback not delivered') && l.includes(job.id))).toBe(true);
  });

  it('429 is retried like a 5xx', async () => {
    script = [429];
    const job = await jobWithCallback();
    expect(deliveries).toHaveLength(2);
    expect(waits).toEqual([1000]);
    expect(job.callback_status).toBe('delivered');
  });

  it('another 4xx is not retried: the receiver refused the delivery', async () => {
    script = [404];
    const job = await jobWithCallback();
    expect(deliveries).toHaveLength(1);
    expect(waits).toEqual([]);
    expect(job.callback_status).toBe('failed: the callback URL answered HTTP 404');
  });

  it('a receiver that cannot be reached is tried four times and the job says the connection failed', async () => {
    // A port that was just free: nothing listens there.
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const job = await jobWithCallback(`http://127.0.0.1:${port}/hook`);
    expect(waits).toEqual([1000, 5000, 25_000]);
    expect(job.callback_status).toMatch(/^failed: .*ECONNREFUSED/);
  });
});
