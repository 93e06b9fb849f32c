import type { Worker } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { GatewayError } from '../errors.js';
import { Base64Text } from '../http/base64-json.js';
import { decodeBase64File, encodeFileBase64, type DecodedImage } from './image-work.js';
import type { ImageTask, ImageTaskFailure } from './image-worker.js';

/** The worker's own file, with this module's extension (.ts under the tests, .js from dist/). */
const WORKER_FILE = new URL(import.meta.url.endsWith('.ts') ? './image-worker.ts' : './image-worker.js', import.meta.url).href;

/** How much image work ran where: on worker threads, or on the main thread (WORKERS=0). */
export interface ImageWorkStats {
  inWorkers: number;
  onMainThread: number;
  /** Tasks whose worker thread ended under them (the pool starts another). */
  workerFailures: number;
}

/**
 * The CPU-heavy image work of the large images (decoding an upstream's base64, hashing, reading the
 * type and dimensions, encoding a `b64_json` answer) on `size` worker threads (WORKERS, default one
 * per core), so the main thread is left with the network, the database and the answers. WORKERS=0
 * runs it all on the main thread. Tasks name files in the image store's staging directory: no image
 * bytes are copied to a worker, and what comes back (an answer's base64) is moved, not copied.
 *
 * The threads start with the first task: a gateway that never meets a large image starts none.
 */
export class ImageWorkers {
  private pool: Piscina<ImageTask, unknown> | undefined;
  private closed = false;
  readonly stats: ImageWorkStats = { inWorkers: 0, onMainThread: 0, workerFailures: 0 };

  constructor(
    /** Worker threads; 0: everything on the main thread. */
    readonly size: number,
    /** The worker's module: a test gives one that crashes on demand. */
    private readonly workerFile = WORKER_FILE,
  ) {}

  /** The worker threads running now. */
  get threads(): readonly Worker[] {
    return this.pool?.threads ?? [];
  }

  /**
   * Decodes a staged file of base64 text into the image, in place; `keepText` also answers the
   * upstream's text when it is exactly the image's standard base64 (for a `b64_json` answer).
   */
  async decodeBase64File(path: string, keepText: boolean): Promise<DecodedImage> {
    if (this.size === 0) {
      this.stats.onMainThread++;
      return decodeBase64File(path, keepText).catch(asGatewayError);
    }
    return (await this.run({ op: 'decode-base64-file', path, keepText })) as DecodedImage;
  }

  /** The standard base64 of the image file at `path`, for a `b64_json` answer. */
  async encodeFileBase64(path: string): Promise<Base64Text> {
    if (this.size === 0) {
      this.stats.onMainThread++;
      return new Base64Text(Buffer.from(await encodeFileBase64(path)));
    }
    return new Base64Text(Buffer.from((await this.run({ op: 'encode-file-base64', path })) as ArrayBuffer));
  }

  /** The sha256 of a staged download; only with worker threads (on the main thread it is hashed as it streams in). */
  async hashFile(path: string): Promise<string> {
    return (await this.run({ op: 'hash-file', path })) as string;
  }

  private async run(task: ImageTask): Promise<unknown> {
    if (this.closed) throw new GatewayError('service_unavailable', 'the gateway is stopping');
    this.pool ??= new Piscina<ImageTask, unknown>({
      filename: this.workerFile,
      minThreads: this.size,
      maxThreads: this.size,
      // Kept: a thread costs ~30 ms to start and a few MB idle.
      idleTimeout: Number.POSITIVE_INFINITY,
    });
    let result: unknown;
    try {
      result = await this.pool.run(task);
    } catch (err) {
      // The task's thread ended (a crash, out of memory): piscina starts another for the next task.
      this.stats.workerFailures++;
      throw new GatewayError('internal_error', 'the image could not be processed: its worker thread failed', { cause: err });
    }
    this.stats.inWorkers++;
    if (isFailure(result)) throw asGatewayError(result);
    return result;
  }

  /** Waits for the tasks running, then ends every thread. */
  async close(): Promise<void> {
    this.closed = true;
    await this.pool?.close();
  }
}

function isFailure(result: unknown): result is ImageTaskFailure {
  return typeof result === 'object' && result !== null && 'failure' in result;
}

/**
 * A task's failure in the gateway's terms: an input that is not an image is the upstream's (502);
 * a file-system error passes as it is (the staging's, which the caller reports as storage).
 */
function asGatewayError(err: unknown): never {
  if (isFailure(err)) {
    if (err.failure === 'not-an-image') throw new GatewayError('upstream_error', err.message);
    throw Object.assign(new Error(err.message), err.code ? { code: err.code } : {});
  }
  if (err instanceof Error && err.name === 'NotAnImage') throw new GatewayError('upstream_error', err.message);
  throw err;
}
