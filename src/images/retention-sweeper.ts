import type { Logger } from '../observability/logger.js';
import type { ImageLibrary, SweepResult } from './image-library.js';

export interface RetentionSweeperOptions {
  library: ImageLibrary;
  log: Logger;
  intervalMs: number;
  /** IMAGE_STORE_MAX_BYTES; absent: no cap. */
  maxBytes?: number | undefined;
  /** Called after every sweep that removed something; the metrics hook. */
  onSwept?: (removed: SweepResult) => void;
}

/**
 * Removes expired images (and, over IMAGE_STORE_MAX_BYTES, the oldest) every `intervalMs`. The
 * timer is unref'd so it never keeps a process alive; stop() ends it and waits for a sweep in flight.
 */
export class RetentionSweeper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<SweepResult> | undefined;

  constructor(private readonly options: RetentionSweeperOptions) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      this.sweepNow().catch((err: unknown) => this.options.log.error({ err }, 'image retention sweep failed'));
    }, this.options.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.running?.catch(() => {});
  }

  /** One sweep now; joins the one in flight rather than running two at once. */
  sweepNow(): Promise<SweepResult> {
    this.running ??= this.sweep().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async sweep(): Promise<SweepResult> {
    const removed = await this.options.library.sweep({ maxBytes: this.options.maxBytes });
    if (removed.images > 0) {
      this.options.log.info({ images_removed: removed.images, bytes_removed: removed.bytes }, 'image retention sweep removed images');
      this.options.onSwept?.(removed);
    }
    return removed;
  }
}
