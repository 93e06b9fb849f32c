import type { Counters } from './counters.js';

/**
 * @fastify/rate-limit's store interface over the gateway's Counters, so requests per minute share
 * Redis (and its fallback) with the other limits, and one bucket per client key covers all routes.
 */
export function rateLimitStore(counters: Counters) {
  return class CountersStore {
    incr(key: string, callback: (error: Error | null, result?: { current: number; ttl: number }) => void, timeWindow: number): void {
      counters.add(`rpm:${key}`, 1, timeWindow).then(
        (v) => callback(null, { current: v.total, ttl: v.ttlMs }),
        (err: Error) => callback(err),
      );
    }

    child(): CountersStore {
      return this;
    }
  };
}
