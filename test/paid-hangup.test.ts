/**
 * A direct request (no Idempotency-Key) whose client hangs up: its upstream call is aborted. Once
 * the request was sent upstream it may have been made and billed, so the key's reservation settles
 * to the sent model's estimated cost (not the dearest model of its fallback chain, nor left at what
 * was reserved); with nothing sent, to $0. The usage record's cost is what the budget was charged.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, startListening, usageRecordOf, type ListeningHarness } from './harness.js';

let h: ListeningHarness;
beforeAll(async () => {
  // One upstream call at a time: a second request waits in the queue, sent nowhere yet.
  h = await startListening({ UPSTREAM_MAX_CONCURRENCY: '1', RATE_LIMIT_RPM: '1000' });
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
});

describe('a client that hangs up after a fallback', () => {
  it('once the model that failed unbilled (no channel) was left for the next, still waiting for a slot: nothing is charged for the first', async () => {
    const first = await budgetedKey();
    const second = await budgetedKey();
    const key = await budgetedKey();
    // The only upstream slot, held; the chain's request and then the second holder queue behind it.
    h.simulator.failNext('hang');
    const holder = generation(first.headers, 'paid-hangup-fb-holder', { model: 'ideogram-v1-turbo', prompt: 'holds the slot' });
    await until(() => submissions() === 1, 'the slot taken');
    const chained = generation(key.headers, 'paid-hangup-fb-chain', CHAIN);
    await until(async () => (await key.spentUsd()) > 0, 'the chain reserved');
    const next = generation(second.headers, 'paid-hangup-fb-next', { model: 'ideogram-v1-turbo', prompt: 'takes the slot next' });
    await until(async () => (await second.spentUsd()) > 0, 'the second holder reserved');
    // The chain's first model answers "no channel" (not billed); the second holder then takes the slot and keeps it.
    h.simulator.failNext('no_channel');
    h.simulator.failNext('hang');
    holder.hangUp();
    await holder.answer;
    await until(() => submissions() === 3, 'the first model refused, the second holder sent');
    // The fallback model waits for the slot: nothing of this request is in upstream's hands.
    await new Promise((r) => setTimeout(r, 50));
    expect(submissions()).toBe(3);
    chained.hangUp();
    await chained.answer;
    await until(async () => (await key.spentUsd()) < 0.08, 'the reservation settled');
    expect(await key.spentUsd()).toBe(0);
    await h.app.usageLog.flush();
    const record = await usageRecordOf(h, 'paid-hangup-fb-chain');
    expect(record).toMatchObject({ status: 499, estimated_cost_usd: 0 });
    next.hangUp();
    await next.answer;
  });
});

describe('a client that hangs up while its request waits to be sent again (UPSTREAM_RETRIES=1)', () => {
  let r: ListeningHarness;
  beforeAll(async () => {
    r = await startListening({ RATE_LIMIT_RPM: '1000', UPSTREAM_RETRIES: '1' });
  });
  afterAll(async () => r?.close());

  it('after upstream refused it unbilled (429, Retry-After 1): nothing is charged, the record says $0', async () => {
    const res = await r.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'hangup-retry', monthly_budget_usd: 5 } });
    expect(res.statusCode, res.body).toBe(201);
    const { id, key } = res.json();
    const spentUsd = async () => (await r.app.counters.peek(`usd:${id}:${month()}`)).total / 1e6;
    r.simulator.reset();
    r.simulator.failNext('http429');
    const leave = new AbortController();
    const answer = r
      .fetch(`${r.base}/v1/generate`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'x-request-id': 'paid-hangup-retry' },
        body: JSON.stringify({ model: 'ideogram-v1-turbo', prompt: 'a deer told to wait' }),
        signal: leave.signal,
      })
      .catch((err: unknown) => err);
    const refused = () => r.simulator.received.filter((x) => x.method === 'POST').length === 1;
    for (let i = 0; i < 500 && !refused(); i++) await new Promise((done) => setTimeout(done, 10));
    expect(refused()).toBe(true);
    // Upstream answered 429: the gateway waits its Retry-After (1 s) before sending again.
    await new Promise((done) => setTimeout(done, 200));
    expect(await spentUsd()).toBeCloseTo(0.02, 6);
    leave.abort();
    await answer;
    for (let i = 0; i < 500 && (await spentUsd()) > 0; i++) await new Promise((done) => setTimeout(done, 10));
    expect(await spentUsd()).toBe(0);
    await r.app.usageLog.flush();
    expect(await usageRecordOf(r, 'paid-hangup-retry')).toMatchObject({ status: 499, estimated_cost_usd: 0 });
    // Not sent again.
    await new Promise((done) => setTimeout(done, 1100));
    expect(r.simulator.received.filter((x) => x.method === 'POST')).toHaveLength(1);
  });
});
