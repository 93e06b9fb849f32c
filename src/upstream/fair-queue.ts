import { GatewayError } from '../errors.js';

interface Waiter {
  grant: () => void;
}

/** How a wait for a slot ended: a slot granted, the queue timeout (503), or the caller gone. */
export type QueueWaitOutcome = 'granted' | 'timed_out' | 'abandoned';

/** Told of every acquire as it ends: how long it waited (seconds; 0 for a slot free at once) and how it ended. */
export type QueueWaitObserver = (seconds: number, outcome: QueueWaitOutcome) => void;

/** Something else that may hold the queue shut (the in-flight image bytes budget, reply-byte-budget.ts). */
export interface QueueGate {
  readonly open: boolean;
}

/**
 * At most `limit` upstream calls in flight, and none sent while the gate is shut. The rest wait,
 * each team in its own line, and lines are served in turn, so one team's burst cannot starve the
 * others. A wait longer than the queue timeout is a 503: better a quick "try again" than a request
 * that hangs. Whoever shuts the gate calls `wake()` when it opens again.
 */
export class FairQueue {
  private active = 0;
  private readonly lines = new Map<string, Waiter[]>();
  private turn: string[] = [];

  constructor(
    private readonly limit: number,
    private readonly timeoutMs: number,
    private readonly observeWait: QueueWaitObserver = () => {},
    private readonly gate: QueueGate = { open: true },
  ) {}

  /** With nothing in flight the gate cannot stay shut on account of this queue's calls: never a stall. */
  private get mayGrant(): boolean {
    return this.active < this.limit && (this.active === 0 || this.gate.open);
  }

  get waiting(): number {
    let n = 0;
    for (const line of this.lines.values()) n += line.length;
    return n;
  }

  get inFlight(): number {
    return this.active;
  }

  async acquire(owner: string, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    if (this.mayGrant && this.waiting === 0) {
      this.active++;
      this.observeWait(0, 'granted');
      return;
    }
    const since = performance.now();
    const waited = () => (performance.now() - since) / 1000;
    await new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        grant: () => {
          cleanup();
          this.active++;
          this.observeWait(waited(), 'granted');
          resolve();
        },
      };
      const leave = () => {
        const line = this.lines.get(owner);
        const i = line?.indexOf(waiter) ?? -1;
        if (line && i >= 0) line.splice(i, 1);
        if (line?.length === 0) {
          this.lines.delete(owner);
          this.turn = this.turn.filter((o) => o !== owner);
        }
      };
      const onAbort = () => {
        cleanup();
        leave();
        this.observeWait(waited(), 'abandoned');
        reject(signal.reason);
      };
      const timer = setTimeout(() => {
        cleanup();
        leave();
        this.observeWait(waited(), 'timed_out');
        reject(
          new GatewayError('service_unavailable', `the gateway is at its upstream concurrency limit and this request waited ${this.timeoutMs} ms; retry shortly`, {
            retryAfter: Math.max(1, Math.ceil(this.timeoutMs / 1000)),
          }),
        );
      }, this.timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      const line = this.lines.get(owner);
      if (line) line.push(waiter);
      else {
        this.lines.set(owner, [waiter]);
        this.turn.push(owner);
      }
    });
  }

  release(): void {
    this.active--;
    this.wake();
  }

  /** Grants what waits, as far as the limit and the gate allow. */
  wake(): void {
    // Round robin: the next team in turn sends its oldest waiting request, then goes to the back.
    while (this.mayGrant && this.turn.length > 0) {
      const owner = this.turn.shift()!;
      const line = this.lines.get(owner)!;
      const waiter = line.shift()!;
      if (line.length > 0) this.turn.push(owner);
      else this.lines.delete(owner);
      waiter.grant();
    }
  }
}
