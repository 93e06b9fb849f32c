import { describe, expect, it } from 'vitest';
import { randomBytesPooled, randomHex, randomId } from '../src/ids.js';

describe('random ids from the pooled CSPRNG', () => {
  it('never repeats, across many refills of the pool', () => {
    // 12 bytes do not divide the 4096-byte pool: ids straddle refills.
    const ids = Array.from({ length: 20_000 }, () => randomId('req', 12));
    expect(new Set(ids).size).toBe(ids.length);
    for (const id of ids.slice(0, 50)) expect(id).toMatch(/^req_[A-Za-z0-9_-]{16}$/);
  });

  it('hands out copies: changing one id bytes does not change the next', () => {
    const a = randomBytesPooled(16);
    const before = Buffer.from(a);
    a.fill(0);
    const b = randomBytesPooled(16);
    expect(b.equals(Buffer.alloc(16))).toBe(false);
    expect(before.equals(Buffer.alloc(16))).toBe(false);
  });

  it('serves requests larger than the pool', () => {
    const big = randomBytesPooled(10_000);
    expect(big.length).toBe(10_000);
    expect(new Set(big).size).toBeGreaterThan(200);
    expect(randomHex(8)).toMatch(/^[0-9a-f]{16}$/);
    expect(randomId(undefined, 3)).toMatch(/^[A-Za-z0-9_-]{4}$/);
  });
});
