import { PassThrough } from 'node:stream';
import type { FastifyReply } from 'fastify';

/** Events that tell only where the work stands (nothing made, nothing failed): never held back. */
function tellsProgressOnly(event: string): boolean {
  return event === 'queued' || event === 'running' || event === 'progress' || event.endsWith('.partial_image');
}

/**
 * A `text/event-stream` answer, as OpenAI's SDKs and EventSource read it: each event an `event:`
 * line and one `data:` line of JSON. Headers go out at once; a `: keepalive` comment is written
 * whenever nothing else has been for `keepAliveMs`, so proxies that cut silent connections do not;
 * each write waits until the client has taken the one before (back-pressure).
 */
export class EventStream {
  private readonly body = new PassThrough();
  private writing: Promise<void> = Promise.resolve();
  private keepAlive: NodeJS.Timeout | undefined;
  /**
   * Events held back until release(): from the first one that tells an outcome (an image, the
   * result, a failure) on, so that none goes out before the request's usage record is committed.
   */
  private held: Array<[string, unknown]> | undefined;
  private holding = false;

  private constructor(private readonly keepAliveMs: number) {}

  /** Answers `reply` with an event stream; the status and headers already set on it go out with it. */
  static open(reply: FastifyReply, keepAliveMs: number): EventStream {
    const stream = new EventStream(keepAliveMs);
    reply
      .header('content-type', 'text/event-stream; charset=utf-8')
      .header('cache-control', 'no-cache, no-transform')
      // nginx passes the stream on as it comes instead of buffering it.
      .header('x-accel-buffering', 'no');
    void reply.send(stream.body);
    // A first line, so the headers leave now rather than with the first event.
    void stream.write(': stream opened\n\n');
    return stream;
  }

  /** False once the client has gone or the stream has ended. */
  get open(): boolean {
    return !this.body.destroyed && !this.body.writableEnded;
  }

  send(event: string, data: unknown): Promise<void> {
    if (this.holding && (this.held !== undefined || !tellsProgressOnly(event))) {
      (this.held ??= []).push([event, data]);
      return this.writing;
    }
    return this.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  /** From now on, events that tell an outcome (and all after them) wait for release(). */
  hold(): void {
    this.holding = true;
  }

  /** Sends the events held back, in order, and stops holding. */
  release(): Promise<void> {
    this.holding = false;
    const held = this.held ?? [];
    this.held = undefined;
    for (const [event, data] of held) void this.send(event, data);
    return this.writing;
  }

  /** Ends the stream once everything sent before has been written. */
  async end(): Promise<void> {
    await this.writing;
    clearTimeout(this.keepAlive);
    if (this.open) this.body.end();
  }

  private write(text: string): Promise<void> {
    this.writing = this.writing.then(() => this.writeNow(text));
    return this.writing;
  }

  private async writeNow(text: string): Promise<void> {
    if (!this.open) return;
    clearTimeout(this.keepAlive);
    this.keepAlive = setTimeout(() => void this.write(': keepalive\n\n'), this.keepAliveMs);
    if (this.body.write(text)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.body.off('drain', done).off('close', done);
        resolve();
      };
      this.body.on('drain', done).on('close', done);
    });
  }
}
