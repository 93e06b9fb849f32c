// The in-flight image bytes budget on its own (reply-byte-budget.ts); test/held-load.test.ts shows
// it through the gateway, with a fake upstream.
import { describe, expect, it } from 'vitest';
import { ReplyByteBudget, WAITING_REPLY_BYTES, type ReplyReservation } from '../src/upstream/reply-byte-budget.js';

const never = new AbortController().signal;

/** Resolves once every callback queued so far has run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

describe('ReplyByteBudget', () => {
  it('lets replies in in the order they asked: a large one at the head is not overtaken by a smaller one that fits', async () => {
    const budget = new ReplyByteBudget(10);
    const first = await budget.reserve(6, never);
    const admitted: string[] = [];
    const large = budget.reserve(6, never).then((r) => (admitted.push('large'), r));
    const small = budget.reserve(1, never).then((r) => (admitted.push('small'), r));
    await settle();
    expect(admitted).toEqual([]);
    expect(budget.waiting).toBe(2);
    first.release();
    await Promise.all([large, small]);
    expect(admitted).toEqual(['large', 'small']);
    expect(budget.inUse).toBe(7);
  });

  it('lets a reply larger than the whole budget in alone, once nothing else is in', async () => {
    const budget = new ReplyByteBudget(10);
    const first = await budget.reserve(4, never);
    let huge: ReplyReservation | undefined;
    const waiting = budget.reserve(25, never).then((r) => (huge = r));
    await settle();
    expect(huge).toBeUndefined();
    first.release();
    await waiting;
    expect(budget.inUse).toBe(25);
    huge!.release();
    expect(budget.inUse).toBe(0);
  });

  it('drops a waiting reply whose signal is aborted: it rejects with the reason, takes nothing, and the next in line goes', async () => {
    const outcomes: string[] = [];
    const budget = new ReplyByteBudget(10, (_seconds, outcome) => outcomes.push(outcome));
    const first = await budget.reserve(8, never);
    const leaving = new AbortController();
    const left = budget.reserve(5, leaving.signal).catch((err: unknown) => err);
    const next = budget.reserve(2, never);
    await settle();
    leaving.abort(new Error('client gone'));
    expect(await left).toMatchObject({ message: 'client gone' });
    // With the head of the line gone, the next one fits beside the first.
    await next;
    expect(budget.inUse).toBe(10);
    expect(budget.waiting).toBe(0);
    expect(outcomes).toEqual(['granted', 'abandoned', 'granted']);
    first.release();
  });

  it('stays open while merely in use: a call sent now is answered later, when the replies being received are done', async () => {
    const budget = new ReplyByteBudget(10);
    const a = await budget.reserve(6, never);
    const b = await budget.reserve(4, never);
    expect(budget.inUse).toBe(10);
    expect(budget.open).toBe(true);
    a.release();
    b.release();
  });

  it('shuts once the replies waiting for room hold as much as the budget, and tells its listeners when it opens again', async () => {
    // Room for the waiting replies of three (what each holds while its socket is paused).
    const budget = new ReplyByteBudget(3 * WAITING_REPLY_BYTES);
    let told = 0;
    budget.onRoom(() => told++);
    const first = await budget.reserve(3 * WAITING_REPLY_BYTES, never);
    const waiting = [1, 2].map(() => budget.reserve(WAITING_REPLY_BYTES, never));
    await settle();
    expect(budget.waiting).toBe(2);
    expect(budget.open).toBe(true);
    const leaving = new AbortController();
    const third = budget.reserve(WAITING_REPLY_BYTES, leaving.signal).catch((err: unknown) => err);
    await settle();
    expect(budget.open).toBe(false);
    // One waiting reply gone: open again, and the queue is told.
    leaving.abort(new Error('client gone'));
    await third;
    expect(budget.open).toBe(true);
    expect(told).toBe(1);
    // Given back once only; the two waiting replies fit and go in.
    first.release();
    first.release();
    const admitted = await Promise.all(waiting);
    expect(budget.inUse).toBe(2 * WAITING_REPLY_BYTES);
    expect(budget.waiting).toBe(0);
    for (const reservation of admitted) reservation.release();
    expect(budget.inUse).toBe(0);
  });

  it('counts a reply of unknown length as it arrives, and lets it in only while there is room', async () => {
    const budget = new ReplyByteBudget(10);
    const unknown = await budget.reserve(0, never);
    unknown.grow(7);
    unknown.grow(5);
    expect(budget.inUse).toBe(12);
    let second: ReplyReservation | undefined;
    const waiting = budget.reserve(0, never).then((r) => (second = r));
    await settle();
    expect(second).toBeUndefined();
    unknown.release();
    await waiting;
    expect(budget.inUse).toBe(0);
    second!.release();
  });
});
