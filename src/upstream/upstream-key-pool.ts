import { createHash } from 'node:crypto';
import { UpstreamFailure } from './upstream-failure.js';

/** A short, non-reversible name for an upstream key, safe to store beside a task id. */
export function keyTag(key: string): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 16);
}

/**
 * The configured upstream keys, taken in turn; a key upstream refused (401/403: bad key, no
 * balance) is set aside for a while so the others carry the load.
 */
export class UpstreamKeyPool {
  private readonly keys: Array<{ key: string; setAsideUntil: number }>;
  private nextKey = 0;

  constructor(
    apiKeys: string[],
    private readonly cooldownMs: number,
  ) {
    this.keys = apiKeys.map((key) => ({ key, setAsideUntil: 0 }));
  }

  get size(): number {
    return this.keys.length;
  }

  /** Every key, to cut them from anything upstream says. */
  get secrets(): string[] {
    return this.keys.map((k) => k.key);
  }

  /** The next key in rotation that upstream has not recently refused. */
  pick(): string {
    const now = Date.now();
    for (let i = 0; i < this.keys.length; i++) {
      const candidate = this.keys[(this.nextKey + i) % this.keys.length]!;
      if (candidate.setAsideUntil <= now) {
        this.nextKey = (this.nextKey + i + 1) % this.keys.length;
        return candidate.key;
      }
    }
    // Retry-After: when the first key set aside is tried again (UPSTREAM_KEY_COOLDOWN_MS), past which a
    // client library's own retries (within a minute) would only meet this refusal again.
    if (this.keys.length === 0) throw new UpstreamFailure('auth', 'no upstream key is configured (AIHUBMIX_API_KEY); an operator must set one');
    const soonest = Math.min(...this.keys.map((k) => k.setAsideUntil)) - now;
    throw new UpstreamFailure('auth', 'upstream has refused every configured upstream key recently (HTTP 401/403); an operator must check the keys and balance', {
      retryAfterSeconds: Math.max(1, Math.ceil(soonest / 1000)),
    });
  }

  setAside(key: string): void {
    const entry = this.keys.find((k) => k.key === key);
    if (entry) entry.setAsideUntil = Date.now() + this.cooldownMs;
  }

  /** The configured key with this tag, if it is still configured. */
  byTag(tag: string): string | undefined {
    return this.keys.find((k) => keyTag(k.key) === tag)?.key;
  }
}
