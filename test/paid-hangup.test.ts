/**
 * A direct request (no Idempotency-Key) whose client hangs up: its upstream call is aborted. Once
 * the request was sent upstream it may have been made and billed, so the key's reservation settles
 * to the sent model's estimated cost (not the dearest model of its fallback chain, nor left at what
 * was reserved); with nothing sent, to $0. The usage record's cost is what the budget was charged.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, startListening, usageRecordOf, type ListeningHarness } from './harness.js';

let h: ListeningHarness;
/** While gating, each upstream answer waits here until the test releases it (the simulator's latency). */
let gating = false;
const held: Array<() => void> = [];
const gatedWait = () => (gating ? new Promise<void>((release) => held.push(release)) : Promise.resolve());
beforeAll(async () => {
  // One upstream call at a time: a second request waits in the queue, sent nowhere yet.
  h = await startListening({ UPSTREAM_MAX_CONCURRENCY: '1', RATE_LIMIT_RPM: '1000' }, { latencyMs: 1, wait: gatedWait });
});
afterAll(async () => h?.close());
beforeEach(() => h.simulator.reset());

const month = () => new Date().toISOString().slice(0, 7);

/** A key with a budget, and what its budget has counted so far (USD). */
async function budgetedKey(): Promise<{ headers: Record<string, string>; spentUsd: () => Promise<number> }> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'hangup', monthly_budget_usd: 5 } });
  expect(res.statusCode, res.body).toBe(201);
  const { id, key } = res.json();
  return {
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    spentUsd: async () => (await h.app.counters.peek(`usd:${id}:${month()}`)).total / 1e6,
  };
}

async function until(ready: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (await ready()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`never: ${what}`);
}

const submissions = () => h.simulator.received.filter((r) => r.method === 'POST').length;

/** Sends a generation, and a way to hang up on it. */
function generation(headers: Record<string, string>, requestId: string, body: Record<string, unknown>) {
  const leave = new AbortController();
  const answer = h
    .fetch(`${h.base}/v1/generate`, { method: 'POST', headers: { ...headers, 'x-request-id': requestId }, body: JSON.stringify(body), signal: leave.signal })
    .then(async (res) => {
      // A stream answers its headers at once: read it to its end (or the hang-up).
      await res.text();
      return res;
    })
    .catch((err: unknown) => err);
  return { hangUp: () => leave.abort(), answer };
}

// Ideogram 1.0 Turbo, $0.02 an image; its fallback Ideogram 2.0, $0.08: the reservation takes the dearer.
const CHAIN = { model: 'ideogram-v1-turbo', prompt: 'a deer that leaves', fallback_models: ['ideogram-v2'] };

describe('a client that hangs up on a direct request', () => {
  it('after it was sent upstream: the budget keeps the sent model’s estimated cost, and the usage record says the same', async () => {
    const key = await budgetedKey();
    h.simulator.failNext('hang');
    const call = generation(key.headers, 'paid-hangup-sent', CHAIN);
    await until(() => submissions() === 1, 'the request sent upstream');
    // Reserved: the dearest model of the chain.
    expect(await key.spentUsd()).toBeCloseTo(0.08, 6);
    call.hangUp();
    await call.answer;
    await until(async () => (await key.spentUsd()) < 0.08, 'the reservation settled');
    expect(await key.spentUsd()).toBeCloseTo(0.02, 6);
    await h.app.usageLog.flush();
    const record = await usageRecordOf(h, 'paid-hangup-sent');
    expect(record).toMatchObject({ status: 499, error_code: 'client_closed', model: 'ideogram-v1-turbo' });
    expect(record.estimated_cost_usd).toBeCloseTo(0.02, 6);
    expect(submissions()).toBe(1);
  });

  it('in a stream too: the record of the abandoned stream says the cost the budget kept', async () => {
    const key = await budgetedKey();
    h.simulator.failNext('hang');
    const call = generation(key.headers, 'paid-hangup-stream', { ...CHAIN, stream: true });
    await until(() => submissions() === 1, 'the request sent upstream');
    call.hangUp();
    await call.answer;
    await until(async () => (await key.spentUsd()) < 0.08, 'the reservation settled');
    expect(await key.spentUsd()).toBeCloseTo(0.02, 6);
    await h.app.usageLog.flush();
    const record = await usageRecordOf(h, 'paid-hangup-stream');
    expect(record).toMatchObject({ status: 499, model: 'ideogram-v1-turbo' });
    expect(record.estimated_cost_usd).toBeCloseTo(0.02, 6);
  });

  it('before anything was sent upstream (waiting for a slot): nothing is charged, and the record says $0', async () => {
    const holder = await budgetedKey();
    const key = await budgetedKey();
    // The only upstream slot, held by a call upstream never answers.
    h.simulator.failNext('hang');
    const first = generation(holder.headers, 'paid-hangup-holder', { model: 'ideogram-v1-turbo', prompt: 'holds the slot' });
    await until(() => submissions() === 1, 'the slot taken');
    const queued = generation(key.headers, 'paid-hangup-queued', CHAIN);
    await until(async () => (await key.spentUsd()) > 0, 'the queued request reserved');
    queued.hangUp();
    await queued.answer;
    await until(async () => (await key.spentUsd()) === 0, 'the reservation given back');
    await h.app.usageLog.flush();
    const record = await usageRecordOf(h, 'paid-hangup-queued');
    expect(record).toMatchObject({ status: 499, estimated_cost_usd: 0 });
    expect(submissions()).toBe(1);
    first.hangUp();
    await first.answer;
    await until(async () => (await holder.spentUsd()) < 0.02 + 1e-9, 'the holder settled');
  });

  it('after its first model failed unbilled and the fallback waits for a slot: nothing is charged, the failed model’s estimate neither', async () => {
    const holder = await budgetedKey();
    const key = await budgetedKey();
    gating = true;
    try {
      // The first model answers "no channel" (not billed) once released; the chain then waits for the slot.
      const call = generation(key.headers, 'paid-hangup-fallback-queued', { model: 'gpt-image-1', prompt: 'a deer #sim:no_channel:gpt-image-1', fallback_models: ['gpt-image-1.5'] });
      await until(() => held.length === 1, 'the first model sent upstream');
      // Another request queues for the slot meanwhile, and takes it when the first model's answer frees it.
      const other = generation(holder.headers, 'paid-hangup-fallback-holder', { model: 'ideogram-v1-turbo', prompt: 'takes the slot next' });
      await until(async () => (await holder.spentUsd()) > 0, 'the other request queued');
      held.shift()!();
      await until(() => held.length === 1 && submissions() === 2, 'the slot taken by the other request');
      call.hangUp();
      await call.answer;
      await until(async () => (await key.spentUsd()) === 0, 'the reservation given back');
      await h.app.usageLog.flush();
      const record = await usageRecordOf(h, 'paid-hangup-fallback-queued');
      expect(record).toMatchObject({ status: 499, estimated_cost_usd: 0 });
      gating = false;
      held.shift()!();
      expect(((await other.answer) as Response).status).toBe(200);
    } finally {
      gating = false;
      for (const release of held.splice(0)) release();
    }
  });
});
