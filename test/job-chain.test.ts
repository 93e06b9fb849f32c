import { describe, expect, it } from 'vitest';
import { advancedChain, leftMayHaveBilled, type JobChain } from '../src/jobs/job-chain.js';

const chain = (): JobChain => ({
  requested: 'gpt-image-1',
  tried: ['gpt-image-1'],
  fallbacks: [],
  next: [
    { model: 'gpt-image-1.5', declaration: null },
    { model: 'gpt-image-2', declaration: null },
  ],
});

describe('a job chain: whether a model it left may have billed', () => {
  it('is kept as the chain moves on, and once true stays true', () => {
    const unbilled = advancedChain(chain(), 'timeout', false);
    expect(leftMayHaveBilled(unbilled)).toBe(false);
    const billed = advancedChain(advancedChain(chain(), 'timeout', true), 'no_channel', false);
    expect(billed.tried).toEqual(['gpt-image-1', 'gpt-image-1.5', 'gpt-image-2']);
    expect(leftMayHaveBilled(billed)).toBe(true);
  });

  it('a step taken by a replica that does not record it (a rolling upgrade) counts as billed when it left a timeout', () => {
    // This version recorded an unbilled timeout; an earlier one then took the job over and left a
    // timeout of its own, copying the record as it was.
    const recorded = advancedChain(chain(), 'timeout', false);
    const byEarlier: JobChain = { ...recorded, tried: [...recorded.tried, 'gpt-image-2'], fallbacks: [...recorded.fallbacks, { from: 'gpt-image-1.5', to: 'gpt-image-2', reason: 'timeout' }], next: [] };
    expect(leftMayHaveBilled(byEarlier)).toBe(true);
    expect(leftMayHaveBilled({ ...byEarlier, fallbacks: [...recorded.fallbacks, { from: 'gpt-image-1.5', to: 'gpt-image-2', reason: 'no_channel' }] })).toBe(false);
  });

  it('in a row kept before it was recorded, any timeout left counts as billed', () => {
    const older = (reason: string): JobChain => ({ ...chain(), tried: ['gpt-image-1', 'gpt-image-1.5'], fallbacks: [{ from: 'gpt-image-1', to: 'gpt-image-1.5', reason }] });
    expect(leftMayHaveBilled(older('timeout'))).toBe(true);
    expect(leftMayHaveBilled(older('no_channel'))).toBe(false);
    // Kept as JSON in the row, read back the same.
    expect(leftMayHaveBilled(JSON.parse(JSON.stringify(advancedChain(chain(), 'timeout', false))) as JobChain)).toBe(false);
  });
});
