/**
 * A request with an Idempotency-Key runs as a job: when its client hangs up, the upstream task goes
 * on (unlike a request without a key, whose upstream call is aborted: upstream-faults.test.ts), and
 * the client's retry with the same key gets that one result, with no second upstream submission.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startListening, type ListeningHarness } from './harness.js';

let h: ListeningHarness;
beforeAll(async () => {
  // Priced, so the spend can be counted (the catalogue gives no Flux price).
  h = await startListening({ PRICE_OVERRIDES: JSON.stringify({ 'flux-kontext-pro': 0.04 }) });
});
afterAll(async () => h?.close());

interface UsageRow {
  request_id: string;
  route: string | null;
  status: number;
  error_code: string | null;
  images_returned: number;
  estimated_cost_usd: number | null;
  job_id: string | null;
}

const polls = () => h.simulator.received.filter((r) => r.method === 'GET' && r.path.startsWith('/v1/tasks/')).length;
const submissions = () => h.simulator.received.filter((r) => r.method === 'POST').length;

/** Waits, reading the state again and again, until `ready` holds; fails after many tries. */
async function until(ready: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (ready()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`never: ${what}`);
}

describe('an idempotent request whose client hangs up', () => {
  it('keeps running upstream, the retry with the same Idempotency-Key gets its result without a second submission, and usage counts the image once', async () => {
    h.simulator.holdTasks = true;
    const headers = { ...h.auth, 'content-type': 'application/json', 'idempotency-key': 'hangup-1' };
    const body = JSON.stringify({ model: 'flux-kontext-pro', prompt: 'a deer that waits' });
    const leave = new AbortController();
    const first = h.fetch(`${h.base}/v1/generate`, { method: 'POST', headers, body, signal: leave.signal }).catch((err: unknown) => err);
    await until(() => polls() >= 2, 'two task polls');
    leave.abort();
    expect(((await first) as Error).name).toBe('AbortError');

    // The task is still followed after the client has gone: more polls come (a request without a
    // key stops at the hang-up, at most one more poll already on the wire).
    const atHangUp = polls();
    await until(() => polls() >= atHangUp + 3, 'polls after the hang-up');

    h.simulator.holdTasks = false;
    const retry = await h.fetch(`${h.base}/v1/generate`, { method: 'POST', headers, body });
    expect(retry.status).toBe(200);
    const answer = (await retry.json()) as { images: Array<{ url: string }> };
    expect(answer.images).toHaveLength(1);
    expect(submissions()).toBe(1);
    // The image is served.
    const image = await h.fetch(answer.images[0]!.url);
    expect(image.status).toBe(200);
    expect(image.headers.get('content-type')).toBe('image/png');
    await image.arrayBuffer();

    // A third call replays the same answer.
    const again = await h.fetch(`${h.base}/v1/generate`, { method: 'POST', headers, body });
    expect(again.status).toBe(200);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(((await again.json()) as { images: Array<{ url: string }> }).images[0]!.url).toBe(answer.images[0]!.url);
    expect(submissions()).toBe(1);

    // The image made is in the usage records once: in the record of the request that started the
    // job (its client left, so the job's outcome completes it), not in those that joined or replayed it.
    await h.app.usageLog.flush();
    const records = ((await (await h.fetch(`${h.base}/v1/usage/records?from=2000-01-01&limit=1000`, { headers: h.auth })).json()) as { data: UsageRow[] }).data.filter(
      (r) => r.route === '/v1/generate',
    );
    expect(records.map((r) => r.images_returned).reduce((a, b) => a + b, 0)).toBe(1);
    expect(records.map((r) => r.estimated_cost_usd ?? 0).reduce((a, b) => a + b, 0)).toBeCloseTo(0.04, 6);
    const started = records.find((r) => r.images_returned === 1)!;
    expect(started).toMatchObject({ status: 200, error_code: null, estimated_cost_usd: 0.04 });
    // The one that left: the first of the three.
    expect(started.request_id).toBe(records[0]!.request_id);
  });

  it('(control) without a key, the hang-up stops the upstream task', async () => {
    h.simulator.reset();
    h.simulator.holdTasks = true;
    const leave = new AbortController();
    const first = h
      .fetch(`${h.base}/v1/generate`, {
        method: 'POST',
        headers: { ...h.auth, 'content-type': 'application/json', 'x-request-id': 'hangup-control' },
        body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'a deer that leaves' }),
        signal: leave.signal,
      })
      .catch((err: unknown) => err);
    await until(() => polls() >= 2, 'two task polls');
    leave.abort();
    await first;
    // Its end is logged (the abort reached the upstream call) ...
    await until(() => h.logs.some((l) => l.includes('"reqId":"hangup-control"') && /client disconnected/.test(l)), 'the disconnect log line');
    h.simulator.holdTasks = false;
  });
});
