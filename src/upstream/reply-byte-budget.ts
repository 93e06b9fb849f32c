/**
 * What a reply waiting for room holds, as counted against the budget to hold the queue: what was
 * read before its socket paused, undici's buffer and a socket read (docs/held-load.md).
 */
export const WAITING_REPLY_BYTES = 128 * 1024;

/**
 * The image bytes of upstream replies being received at once on this replica (MAX_INFLIGHT_IMAGE_BYTES).
 *
 * A successful reply takes what it holds while received from the budget before its body is read
 * (for a streamed one, what its declared length decodes to: upstream-exchange.ts), and gives it
 * back once the body is read and its images staged; a reply without a declared length takes its
 * bytes as they arrive. A reply that does not fit waits, its body unread: the socket stays paused,
 * so upstream's send waits in the kernel instead of in the gateway's heap.
 * Replies are let in in the order they asked; one larger than the whole budget goes in alone.
 *
 * A waiting reply still holds what was read before its socket paused (undici's buffer, a socket
 * read): once the waiting replies hold as much as the budget itself, `open` is false and the
 * upstream queue sends nothing new (fair-queue.ts): past that, requests wait there, unsent. The
 * queue is not held while the budget is merely in use: a call sent now is answered seconds later
 * (a render), by when the replies being received are done; holding it until then left the gateway
 * idle for a render's length after every burst (bench/README.md, seventh pass).
 */
export class ReplyByteBudget {
  private used = 0;
  private readonly waiters: { bytes: number; admit: () => void }[] = [];
  private readonly roomListeners: (() => void)[] = [];

  constructor(
    readonly limit: number,
    /** Told of every reservation as it ends its wait: seconds waited (0 when it fit at once) and how. */
    private readonly observeWait: (seconds: number, outcome: 'granted' | 'abandoned') => void = () => {},
  ) {}

  /** Bytes taken by replies being received now. */
  get inUse(): number {
    return this.used;
  }

  /** Replies whose body waits for room. */
  get waiting(): number {
    return this.waiters.length;
  }

  /** Whether a new upstream call may be sent: the replies waiting for room hold less than the budget. */
  get open(): boolean {
    return this.waiters.length * WAITING_REPLY_BYTES < this.limit;
  }

  /** `listener` is called whenever room is given back (the upstream queue sends what waits). */
  onRoom(listener: () => void): void {
    this.roomListeners.push(listener);
  }

  /**
   * Takes `bytes` (0 for a reply of unknown length), waiting until they fit; rejects with the
   * signal's reason if it is aborted first, having taken nothing.
   */
  async reserve(bytes: number, signal: AbortSignal): Promise<ReplyReservation> {
    signal.throwIfAborted();
    if (this.waiters.length === 0 && this.fits(bytes)) {
      this.observeWait(0, 'granted');
      return this.take(bytes);
    }
    const since = performance.now();
    const waited = () => (performance.now() - since) / 1000;
    return new Promise<ReplyReservation>((resolve, reject) => {
      const waiter = {
        bytes,
        // Taken at once, so that the next waiter's fit counts it.
        admit: () => {
          signal.removeEventListener('abort', onAbort);
          this.observeWait(waited(), 'granted');
          resolve(this.take(bytes));
        },
      };
      const onAbort = () => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        this.observeWait(waited(), 'abandoned');
        // The first in line leaving may let the next ones in, or open the upstream queue.
        this.roomChanged();
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  private fits(bytes: number): boolean {
    // Alone, any reply fits: one larger than the budget is still received.
    return this.used === 0 || (this.used < this.limit && this.used + bytes <= this.limit);
  }

  private take(bytes: number): ReplyReservation {
    this.used += bytes;
    return new ReplyReservation(this, bytes);
  }

  /** @internal Called by a reservation that grows (a reply of unknown length) or ends. */
  adjust(delta: number): void {
    this.used += delta;
    if (delta < 0) this.roomChanged();
  }

  private roomChanged(): void {
    // In order: a large reply at the head is not overtaken by smaller ones behind it.
    while (this.waiters.length > 0 && this.fits(this.waiters[0]!.bytes)) this.waiters.shift()!.admit();
    if (this.open) for (const listener of this.roomListeners) listener();
  }
}

/** One reply's share of the budget: grows as a reply of unknown length arrives (or keeps more than counted), given back once. */
export class ReplyReservation {
  private released = false;

  constructor(
    private readonly budget: ReplyByteBudget,
    private bytes: number,
  ) {}

  /** Bytes counted as they arrive or are kept (never waiting: the reply is let in already). */
  grow(bytes: number): void {
    if (this.released) return;
    this.bytes += bytes;
    this.budget.adjust(bytes);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    this.budget.adjust(-this.bytes);
  }
}
