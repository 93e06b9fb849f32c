import { statfs } from 'node:fs/promises';
import { GatewayError } from '../errors.js';
import type { Logger } from '../observability/logger.js';

/** What the file system under DATA_DIR has room for, in bytes. */
export interface FreeSpace {
  /** Free to an unprivileged process (statfs `bavail`). */
  freeBytes: number;
  totalBytes: number;
}

/** Reads the free space of the file system holding `dir`; tests inject their own. */
export type FreeSpaceProbe = (dir: string) => Promise<FreeSpace>;

export const statfsProbe: FreeSpaceProbe = async (dir) => {
  const s = await statfs(dir);
  return { freeBytes: s.bavail * s.bsize, totalBytes: s.blocks * s.bsize };
};

/** `ok`; `full`: DATA_DIR below its floor; `unavailable`: the S3 store refuses writes. */
export type StorageState = 'ok' | 'full' | 'unavailable';

/** The floor when STORAGE_MIN_FREE_BYTES is not set: the smaller of 1 GiB and 5 % of the file system. */
export function defaultMinFreeBytes(totalBytes: number): number {
  return Math.min(1024 ** 3, Math.floor(totalBytes * 0.05));
}

/** Seconds a refused client is told to wait: a sweep or an operator needs a while. */
export const STORAGE_RETRY_AFTER_SECONDS = 60;

/**
 * Why the store failed a check, in a few words: an S3 answer's status and name (its message is often
 * just "UnknownError"), or the connection's error (a refusal to connect to a name with two addresses
 * has an empty message of its own).
 */
function storeFailure(err: unknown): string {
  const e = err as Error & { code?: string; $metadata?: { httpStatusCode?: number }; errors?: Error[] };
  const status = e.$metadata?.httpStatusCode;
  if (status !== undefined) return `HTTP ${status} ${e.name}`;
  return e.message || e.errors?.[0]?.message || e.code || String(err);
}

/** Consecutive S3 write failures that mark the store unavailable (one may be a passing fault). */
const S3_FAILURES_UNAVAILABLE = 3;

/**
 * A write to the image store or its staging that failed: the disk is full, or the S3 store refused.
 * Thrown once upstream has made (and been paid for) the image; the generation answers the bytes
 * inline where it still has them, else this.
 */
export class StorageWriteFailed extends GatewayError {
  /** The image's bytes, when they were still in hand and fit in memory. */
  salvaged: Buffer | undefined;

  constructor(what: string, cause: unknown) {
    super('storage_full', `${what} could not be written (image storage is full or unavailable)`, { cause, retryAfter: STORAGE_RETRY_AFTER_SECONDS });
    this.name = 'StorageWriteFailed';
  }
}

/**
 * Whether a failed write means "no room": a full disk (ENOSPC, a quota), SQLite's SQLITE_FULL
 * ("database or disk is full"), PostgreSQL's disk_full (53100). Looks through `cause` too.
 */
export function isStorageFullError(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e !== null && typeof e === 'object' && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const { code, errcode, message } = e as { code?: unknown; errcode?: unknown; message?: unknown };
    if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL' || code === '53100' || errcode === 13) return true;
    if (typeof message === 'string' && /database or disk is full|no space left on device|could not extend file/i.test(message)) return true;
  }
  return false;
}

export interface StoragePressureOptions {
  dataDir: string;
  /** STORAGE_MIN_FREE_BYTES: undefined for the default (see defaultMinFreeBytes), 0 turns the disk check off. */
  minFreeBytes: number | undefined;
  /** Whether images go to S3 (then its write failures count too). */
  s3: boolean;
  /** Readiness of the S3 store: a successful check ends its unavailability. */
  checkStore: () => Promise<void>;
  /** The store, as log lines name it (ImageStore.where). */
  storeWhere: string;
  log: Logger;
  probe?: FreeSpaceProbe;
  intervalMs?: number;
}

/**
 * Watches the free space of DATA_DIR (polled, and again after a failed write) and the S3 store's
 * write failures. While storage is under pressure, new generations and edits are refused before
 * anything is sent upstream (refuseIfPressed), and /readyz reports it. Listeners added with
 * onPressure run when pressure begins (the retention sweeper).
 */
export class StoragePressure {
  private diskFull = false;
  /** A write failed for want of room (the database's included, wherever it lives): when, in ms. */
  private fullReportedAt: number | undefined;
  private s3Failures = 0;
  private s3Down = false;
  private timer: NodeJS.Timeout | undefined;
  private checking: Promise<StorageState> | undefined;
  private readonly listeners: Array<() => void> = [];
  private readonly probe: FreeSpaceProbe;
  /** From the last probe; undefined before the first or when the probe failed. */
  freeBytes: number | undefined;
  /** The floor in force (0: the disk check is off); undefined until the first probe when defaulted. */
  minFreeBytes: number | undefined;
  private lastState: StorageState = 'ok';
  /** The store failed its readiness check, and that was logged. */
  private storeUnreachable = false;

  constructor(private readonly options: StoragePressureOptions) {
    this.probe = options.probe ?? statfsProbe;
    this.minFreeBytes = options.minFreeBytes;
  }

  get state(): StorageState {
    if (this.diskFull || this.fullReportedAt !== undefined) return 'full';
    if (this.s3Down) return 'unavailable';
    return 'ok';
  }

  /** Runs `listener` each time pressure begins. */
  onPressure(listener: () => void): void {
    this.listeners.push(listener);
  }

  /** A first check, then one every intervalMs (unref'd: never keeps the process alive). */
  async start(): Promise<void> {
    await this.check();
    if (this.timer) return;
    this.timer = setInterval(() => {
      this.check().catch((err: unknown) => this.options.log.error({ err }, 'storage check failed'));
    }, this.options.intervalMs ?? 10_000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.checking?.catch(() => {});
  }

  /** Probes now (joining a probe in flight) and answers the state. */
  check(): Promise<StorageState> {
    this.checking ??= this.probeNow().finally(() => {
      this.checking = undefined;
    });
    return this.checking;
  }

  private async probeNow(): Promise<StorageState> {
    // A reported "full" holds for one interval: then writes are tried again (and reported again if
    // they still fail). The database may live on a disk this probe cannot see.
    if (this.fullReportedAt !== undefined && Date.now() - this.fullReportedAt >= (this.options.intervalMs ?? 10_000)) this.fullReportedAt = undefined;
    if (this.options.minFreeBytes !== 0) {
      try {
        const space = await this.probe(this.options.dataDir);
        this.freeBytes = space.freeBytes;
        this.minFreeBytes = this.options.minFreeBytes ?? defaultMinFreeBytes(space.totalBytes);
        this.diskFull = space.freeBytes < this.minFreeBytes;
      } catch (err) {
        // A DATA_DIR that cannot even be asked is not refused for that; the store check reports it.
        this.options.log.warn({ err }, 'the free space of DATA_DIR could not be read');
      }
    }
    if (this.s3Down) {
      try {
        await this.options.checkStore();
        this.s3Down = false;
        this.s3Failures = 0;
      } catch {
        // Still down.
      }
    }
    this.noteState();
    return this.state;
  }

  /**
   * The store's readiness check (/readyz). Probed often: only a change is logged, a warning with the
   * reason when it stops answering and an info line when it answers again.
   */
  async storeReady(): Promise<boolean> {
    try {
      await this.options.checkStore();
    } catch (err) {
      if (!this.storeUnreachable) {
        this.storeUnreachable = true;
        this.options.log.warn(`the image store (${this.options.storeWhere}) cannot be reached (${storeFailure(err)}): /readyz answers 503 until it answers`);
      }
      return false;
    }
    if (this.storeUnreachable) {
      this.storeUnreachable = false;
      this.options.log.info(`the image store (${this.options.storeWhere}) answers again`);
    }
    return true;
  }

  /**
   * A write to the store or its staging failed: a disk is probed again at once; S3 failures are
   * counted, and the store is probed again at the next interval (a bucket that answers its
   * readiness check may still refuse writes).
   */
  noteWriteFailure(where: 'disk' | 's3' | 'database', err: unknown): void {
    if (where === 'database') {
      this.reportWriteFailure(err);
      return;
    }
    if (where === 's3' && this.options.s3) {
      this.s3Failures++;
      if (this.s3Failures >= S3_FAILURES_UNAVAILABLE) this.s3Down = true;
      this.noteState(err);
      return;
    }
    this.check().catch(() => {});
  }

  /**
   * Any write that failed (an image row, a usage record, a file): one that means "no room" marks
   * storage full at once (/readyz 503, new generations 507) and probes the disk again. Answers
   * whether it did.
   */
  reportWriteFailure(err: unknown): boolean {
    if (!isStorageFullError(err)) return false;
    this.fullReportedAt = Date.now();
    this.noteState(err);
    this.check().catch(() => {});
    return true;
  }

  /** A write to the S3 store succeeded: it is available again. */
  noteWriteSuccess(): void {
    if (this.s3Failures === 0 && !this.s3Down) return;
    this.s3Failures = 0;
    this.s3Down = false;
    this.noteState();
  }

  /** Throws 507 storage_full while storage is under pressure: before a request is sent upstream. */
  refuseIfPressed(): void {
    const state = this.state;
    if (state === 'ok') return;
    const why =
      state === 'full'
        ? this.diskFull
          ? `image storage is full: DATA_DIR has ${this.freeBytes} bytes free, below STORAGE_MIN_FREE_BYTES (${this.minFreeBytes})`
          : 'image storage is full: a write failed for want of space (disk or database full)'
        : 'image storage is unavailable: the S3 image store refuses writes';
    throw new GatewayError('storage_full', `${why}; new generations are refused until space returns, retry later`, { retryAfter: STORAGE_RETRY_AFTER_SECONDS });
  }

  /** Logs a change of state (a warning when pressure begins) and tells the listeners. */
  private noteState(err?: unknown): void {
    const state = this.state;
    if (state === this.lastState) return;
    const before = this.lastState;
    this.lastState = state;
    const facts = { storage: state, free_bytes: this.freeBytes, min_free_bytes: this.minFreeBytes };
    if (state === 'ok') {
      this.options.log.warn(facts, 'image storage has room again: generations are accepted');
      return;
    }
    this.options.log.warn({ ...facts, ...(err ? { err } : {}) }, `image storage is ${state}: new generations and edits are refused with 507 storage_full`);
    if (before === 'ok') for (const listener of this.listeners) listener();
  }
}
