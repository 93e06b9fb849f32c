import { rm, type FileHandle } from 'node:fs/promises';
import { Base64Text } from '../http/base64-json.js';
import type { StagedImage } from '../images/image-library.js';
import type { StagingFile, WarmStagingFiles } from '../images/warm-staging-files.js';
import type { Base64Sink } from '../upstream/image-reply-parser.js';
import type { ImageWorkers } from './image-workers.js';

/** Base64 characters gathered before each write to the staging file: one thread-pool trip per MiB. */
const WRITE_BYTES = 1024 * 1024;
/** Idle write buffers kept for the next image: a fresh MiB for every image makes V8 collect garbage to give it back. */
const MAX_POOLED_BUFFERS = 16;
const pool: Buffer[] = [];

/**
 * A large base64 image from an upstream reply, staged with the image workers (WORKERS > 0): its
 * text is written to a staging file as it arrives, untouched, and a worker thread then decodes it
 * in place, hashing it and reading its type and dimensions; the same StagedImage Base64Staging
 * gives on the main thread. `keepText` (a `b64_json` answer): the upstream's text comes back too,
 * for the answer, when it is exactly the image's base64.
 */
export class PooledBase64Staging implements Base64Sink<StagedImage> {
  private buffer: Buffer | undefined = pool.pop() ?? Buffer.allocUnsafeSlow(WRITE_BYTES);
  private filled = 0;
  private written = 0;
  private staging: StagingFile | undefined;
  private file: FileHandle | undefined;
  private aborted = false;

  constructor(
    private readonly stagingFiles: WarmStagingFiles,
    private readonly workers: ImageWorkers,
    private readonly keepText: boolean,
  ) {}

  async write(base64: Buffer): Promise<void> {
    let at = 0;
    while (at < base64.length) {
      if (!this.buffer) throw new Error('the staging has ended');
      const n = base64.copy(this.buffer, this.filled, at);
      this.filled += n;
      at += n;
      if (this.filled === this.buffer.length) await this.flush();
    }
  }

  async end(): Promise<StagedImage> {
    try {
      await this.flush();
      this.release();
      const staging = this.staging ?? (await this.open());
      if (staging.warmBytes > this.written) await staging.file.truncate(this.written);
      await staging.file.close();
      this.file = undefined;
      const image = await this.workers.decodeBase64File(staging.path, this.keepText);
      this.stagingFiles.noteImageBytes(image.bytes);
      const dimensions = image.width !== undefined && image.height !== undefined ? { width: image.width, height: image.height } : undefined;
      return {
        path: staging.path,
        sha256: image.sha256,
        mime: image.mime,
        bytes: image.bytes,
        dimensions,
        ...(image.text ? { base64: new Base64Text(Buffer.from(image.text)) } : {}),
      };
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  async abort(): Promise<void> {
    this.aborted = true;
    // A write still running holds the buffer: abort() comes after it (the parser awaits each write).
    this.release();
    await this.file?.close().catch(() => {});
    this.file = undefined;
    if (this.staging) await rm(this.staging.path, { force: true });
  }

  private async open(): Promise<StagingFile> {
    const staging = await this.stagingFiles.take();
    this.staging = staging;
    this.file = staging.file;
    if (this.aborted) {
      await this.abort();
      throw new Error('the staging was aborted');
    }
    return staging;
  }

  private release(): void {
    if (this.buffer && pool.length < MAX_POOLED_BUFFERS) pool.push(this.buffer);
    this.buffer = undefined;
  }

  private async flush(): Promise<void> {
    if (this.filled === 0 || !this.buffer) return;
    const { file } = this.staging ?? (await this.open());
    const buffer = this.buffer;
    let done = 0;
    while (done < this.filled) {
      const { bytesWritten } = await file.write(buffer, done, this.filled - done, this.written + done);
      done += bytesWritten;
    }
    this.written += this.filled;
    this.filled = 0;
  }
}
