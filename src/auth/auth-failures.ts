import { isIP } from 'node:net';
import type { Redis } from 'ioredis';
import { GatewayError } from '../errors.js';
import { Counters } from '../limits/counters.js';
import type { Logger } from '../observability/logger.js';

const WINDOW_MS = 60_000;

/**
 * The address failed authentications are counted under: an IPv4 address as it is (an IPv4-mapped
 * IPv6 address as its IPv4), an IPv6 address by its /64, the block one subscriber usually holds,
 * so that walking through one's own /64 does not reset the count.
 */
export function addressGroup(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (isIP(address) !== 6) return address;
  const halves = address.split('%', 1)[0]!.toLowerCase().split('::');
  const groupsOf = (part: string | undefined) =>
    !part ? [] : part.split(':').flatMap((g) => (g.includes('.') ? ['0', '0'] : [g])); // an embedded IPv4 tail is the last two groups
  const head = groupsOf(halves[0]);
  const tail = groupsOf(halves[1]);
  const groups = halves.length > 1 ? [...head, ...Array<string>(Math.max(0, 8 - head.length - tail.length)).fill('0'), ...tail] : head;
  return `${groups
    .slice(0, 4)
    .map((g) => parseInt(g, 16).toString(16))
    .join(':')}::/64`;
}

/**
 * Failed authentications per client address and minute (AUTH_FAILURES_PER_MINUTE). Past the limit an
 * address is answered 429 before its key is even looked at, so a guesser learns nothing more until
 * the minute is over, whether its next guess is right or not. Counted in Redis when REDIS_URL is set
 * (every replica sees every failure), in memory otherwise.
 */
export class AuthFailures {
  private readonly counters: Counters;

  constructor(
    redis: Redis | undefined,
    log: Logger,
    private readonly perMinute: number,
  ) {
    this.counters = new Counters(redis, log, 'gw:auth-failures:');
  }

  private refused(ttlMs: number): GatewayError {
    const seconds = Math.max(1, Math.ceil(ttlMs / 1000));
    return new GatewayError(
      'rate_limited',
      `too many failed authentications from this address: at most ${this.perMinute} a minute; retry in ${seconds} s`,
      { retryAfter: seconds, limit: 'auth_failures' },
    );
  }

  /** Throws 429 when this address is past its failures for the minute. */
  async check(address: string): Promise<void> {
    const { total, ttlMs } = await this.counters.peek(addressGroup(address));
    if (total >= this.perMinute) throw this.refused(ttlMs);
  }

  /** Counts a failure; answers the 429 to give instead of the 401 when this one went past the limit. */
  async failed(address: string): Promise<GatewayError | undefined> {
    const { total, ttlMs } = await this.counters.add(addressGroup(address), 1, WINDOW_MS);
    return total > this.perMinute ? this.refused(ttlMs) : undefined;
  }
}
