import type { Logger } from '../observability/logger.js';
import type { Redis } from 'ioredis';

/** A counter in a time window: its value after the change, and how long the window has left. */
export interface CounterValue {
  total: number;
  ttlMs: number;
}

// INCRBY, and start the window's expiry on its first use; answer the total and the time left.
const ADD_SCRIPT = `
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {total, ttl}
`;

/**
 * Windowed counters for the limits: in Redis when REDIS_URL is set, so every replica enforces one
 * limit; in memory otherwise. If Redis stops answering, counting goes on locally (each replica then
 * enforces the limit on its own) and the change is shown by /readyz. A lost connection is logged by
 * the redis plugin; a command failing on a live one, here.
 */
export class Counters {
  private readonly local = new Map<string, { total: number; resetAt: number }>();
  private redisFailing = false;
  /** A command failed on a live connection, and that was logged: its end is logged too. */
  private failureLogged = false;

  constructor(
    private readonly redis: Redis | undefined,
    private readonly log: Logger,
    private readonly prefix = 'gw:limit:',
  ) {
    redis?.defineCommand('gwCounterAdd', { numberOfKeys: 1, lua: ADD_SCRIPT });
  }

  /** 'redis' | 'memory' | 'memory (redis unavailable)', for readiness. */
  get mode(): string {
    if (!this.redis) return 'memory';
    return this.redisFailing ? 'memory (redis unavailable)' : 'redis';
  }

  /** Starts a window at `value` unless it has started already (Redis SET NX), e.g. from the usage records after a restart. */
  async seed(key: string, value: number, windowMs: number): Promise<void> {
    if (this.redis && this.redis.status === 'ready') {
      try {
        await this.redis.set(this.prefix + key, String(value), 'PX', windowMs, 'NX');
        return;
      } catch (err) {
        this.markFailing(err);
      }
    }
    if (!this.local.has(key)) this.local.set(key, { total: value, resetAt: Date.now() + windowMs });
  }

  /** A window's current total and time left, without counting (0 when it has not started). */
  async peek(key: string): Promise<CounterValue> {
    if (this.redis && this.redis.status === 'ready') {
      try {
        // Plain commands, each awaited: a MULTI's own queued replies reject unobserved when the
        // connection drops mid-transaction (an unhandled rejection). A peek needs no atomicity. A
        // window that has not started (every request with a good key, for the auth-failure count)
        // costs one command: its time left is only asked for once it has a count.
        const total = Number((await this.redis.get(this.prefix + key)) ?? 0);
        if (total === 0) return { total: 0, ttlMs: 0 };
        const ttl = await this.redis.pttl(this.prefix + key);
        return { total, ttlMs: Math.max(0, Number(ttl)) };
      } catch (err) {
        this.markFailing(err);
      }
    }
    const entry = this.local.get(key);
    const now = Date.now();
    return entry && entry.resetAt > now ? { total: entry.total, ttlMs: entry.resetAt - now } : { total: 0, ttlMs: 0 };
  }

  async add(key: string, amount: number, windowMs: number): Promise<CounterValue> {
    if (this.redis && this.redis.status === 'ready') {
      try {
        const [total, ttl] = (await (this.redis as Redis & { gwCounterAdd(k: string, a: number, w: number): Promise<[number, number]> }).gwCounterAdd(
          this.prefix + key,
          amount,
          windowMs,
        )) as [number, number];
        if (this.redisFailing) {
          this.redisFailing = false;
          if (this.failureLogged) this.log.info('redis commands succeed again: limits are shared between replicas again');
          this.failureLogged = false;
        }
        return { total: Number(total), ttlMs: Number(ttl) };
      } catch (err) {
        this.markFailing(err);
      }
    } else if (this.redis) {
      this.markFailing(new Error(`redis connection is ${this.redis.status}`));
    }
    return this.addLocally(key, amount, windowMs);
  }

  private markFailing(err: unknown): void {
    if (this.redisFailing) return;
    this.redisFailing = true;
    // Without a connection, the redis plugin has said so.
    if (this.redis?.status !== 'ready') return;
    this.failureLogged = true;
    this.log.warn({ counters: this.prefix, reason: (err as Error).message }, 'redis commands fail: limits are now counted in this replica only');
  }

  private addLocally(key: string, amount: number, windowMs: number): CounterValue {
    const now = Date.now();
    let entry = this.local.get(key);
    if (!entry || entry.resetAt <= now) {
      entry = { total: 0, resetAt: now + windowMs };
      this.local.set(key, entry);
      if (this.local.size > 100_000) this.sweep(now);
    }
    entry.total += amount;
    return { total: entry.total, ttlMs: entry.resetAt - now };
  }

  private sweep(now: number): void {
    for (const [k, v] of this.local) if (v.resetAt <= now) this.local.delete(k);
  }
}
