import { open, rm, type FileHandle } from 'node:fs/promises';
import { PRIVATE_FILE_MODE } from '../storage/private-files.js';
import { basename, join } from 'node:path';
import { randomHex } from '../ids.js';
import { inDirectory } from './image-store.js';

/** A staging file open for writing from offset 0; `warmBytes` of it already have page cache. */
export interface StagingFile {
  path: string;
  file: FileHandle;
  /** The file's length as handed out: a writer that writes less truncates it to what it wrote. */
  warmBytes: number;
}

export interface WarmStagingOptions {
  /** How many warm files to keep ready. 0 turns warming off: every staging file is new. */
  count: number;
  /**
   * The longest a warm file is made. Each is as long as the largest of the last few images staged
   * (rounded up to 256 KiB), this until one has been: an image that fits is written over warm pages
   * and the file cut to it; a longer one writes its tail to new pages.
   */
  maxBytes: number;
}

/** A full-size render is 1.5-4 MB as PNG; four in flight at once is a busy replica. */
export const DEFAULT_WARM_STAGING: WarmStagingOptions = { count: 4, maxBytes: 4 * 1024 * 1024 };

/** How many recent images size the next warm file. */
const RECENT_IMAGES = 8;
const SIZE_STEP = 256 * 1024;
/**
 * Ready files get a new mtime this often. The stale-staging sweep (in this process or another one
 * sharing the directory) removes staging files untouched for an hour; a warm file may wait longer
 * than that on an idle gateway, and is still in use for a while after it is taken.
 */
const TOUCH_INTERVAL_MS = 10 * 60 * 1000;

const WARM_PREFIX = 'warm-';
const PREPARE_READ_BYTES = 1024 * 1024;

/**
 * Staging files whose pages are already in the page cache, so that writing a downloaded or decoded
 * image into one does not wait for the kernel to find fresh memory. On a VM the first touch of a
 * guest page is a fault on the host: here a new 4 MiB file cost ~14 ms to write, and the same bytes
 * over a file prepared this way ~1.3 ms (overwrite, truncate, rename). Like a database recycling
 * its log segments, the cost is paid ahead, one file at a time, off the request path.
 *
 * A file is prepared by making it sparse (no disk blocks) and reading it once: the reads put zeroed
 * pages in the page cache, and nothing is written to disk until a writer fills them. The first file
 * is prepared when the first is taken, so a gateway that never stages an image (a download, or a
 * base64 image of 64 KiB or more) makes none.
 */
export class WarmStagingFiles {
  private readonly ready: StagingFile[] = [];
  private preparing: Promise<void> | undefined;
  /** The file being prepared, which is not ready yet but is no stray either. */
  private preparingPath: string | undefined;
  private scratch: Buffer | undefined;
  private closed = false;
  private readonly recentBytes: number[] = [];
  private toucher: NodeJS.Timeout | undefined;

  constructor(
    readonly dir: string,
    private readonly options: WarmStagingOptions = DEFAULT_WARM_STAGING,
  ) {}

  /** A warm file when one is ready, else a new empty one (`warmBytes` 0). */
  async take(): Promise<StagingFile> {
    const warm = this.ready.shift();
    this.prepareMore();
    if (warm) return warm;
    const path = join(this.dir, `${randomHex(8)}.tmp`);
    const file = await inDirectory(this.dir, () => open(path, 'w', PRIVATE_FILE_MODE));
    return { path, file, warmBytes: 0 };
  }

  /**
   * A staged image's length, which sizes the files prepared next: cutting a 4 MiB warm file to a
   * 1 MiB image (and freeing the rest of its pages) cost more here than the warm pages saved.
   */
  noteImageBytes(bytes: number): void {
    // Small images (thumbnails) need no warm pages, and must not shrink the files for large ones.
    if (bytes < SIZE_STEP) return;
    this.recentBytes.push(bytes);
    if (this.recentBytes.length > RECENT_IMAGES) this.recentBytes.shift();
  }

  /** The length the next warm file is made. */
  nextWarmBytes(): number {
    if (this.recentBytes.length === 0) return this.options.maxBytes;
    const largest = Math.max(...this.recentBytes);
    return Math.min(this.options.maxBytes, Math.max(SIZE_STEP, Math.ceil(largest / SIZE_STEP) * SIZE_STEP));
  }

  /** Resolves once the files being prepared are ready (or preparing them has failed). */
  async prepared(): Promise<void> {
    await this.preparing;
  }

  /** Whether `name` (in `dir`) is a file kept ready or being prepared, which the stale-staging sweep must leave. */
  holds(name: string): boolean {
    return (this.preparingPath !== undefined && basename(this.preparingPath) === name) || this.ready.some((warm) => basename(warm.path) === name);
  }

  /** Gives the files kept ready a new mtime, so that no stale-staging sweep takes them for strays. */
  async touchReady(): Promise<void> {
    const now = new Date();
    await Promise.all(this.ready.map((warm) => warm.file.utimes(now, now).catch(() => {})));
  }

  /** Removes the files kept ready; takes after this get new files. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.toucher);
    await this.preparing;
    const files = this.ready.splice(0);
    await Promise.all(files.map(async ({ path, file }) => {
      await file.close().catch(() => {});
      await rm(path, { force: true });
    }));
  }

  private prepareMore(): void {
    if (this.preparing || this.closed || this.ready.length >= this.options.count) return;
    if (!this.toucher) {
      this.toucher = setInterval(() => void this.touchReady(), TOUCH_INTERVAL_MS);
      this.toucher.unref();
    }
    this.preparing = (async () => {
      while (!this.closed && this.ready.length < this.options.count) await this.prepareOne();
    })()
      // Warming is an optimisation: when it fails (a full disk), staging files are made new, and
      // the next take tries again.
      .catch(() => {})
      .finally(() => {
        this.preparing = undefined;
      });
  }

  private async prepareOne(): Promise<void> {
    const path = join(this.dir, `${WARM_PREFIX}${randomHex(8)}.tmp`);
    this.preparingPath = path;
    const bytes = this.nextWarmBytes();
    try {
      const file = await inDirectory(this.dir, () => open(path, 'w+', PRIVATE_FILE_MODE));
      try {
        await file.truncate(bytes);
        this.scratch ??= Buffer.allocUnsafe(PREPARE_READ_BYTES);
        for (let at = 0; at < bytes; at += this.scratch.length) await file.read(this.scratch, 0, Math.min(this.scratch.length, bytes - at), at);
      } catch (err) {
        await file.close().catch(() => {});
        throw err;
      }
      this.ready.push({ path, file, warmBytes: bytes });
    } catch (err) {
      await rm(path, { force: true });
      throw err;
    } finally {
      this.preparingPath = undefined;
    }
  }
}
