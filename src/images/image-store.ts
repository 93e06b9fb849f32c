import { access, constants, open, readdir, readFile, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { makePrivateDir, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, tightenIfPresent } from '../storage/private-files.js';
import { randomHex } from '../ids.js';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { EXTENSION_OF, MIME_OF_EXTENSION, type ImageMime } from './image-bytes.js';

/** Inclusive byte offsets, as in a `Range: bytes=start-end` header. */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * Where the bytes of stored images live: files under DATA_DIR, or an S3-compatible bucket so
 * several replicas share them. Images are content-addressed (`img_<sha256>.<ext>`), so writing the
 * same name twice writes the same bytes; each write replaces the object whole, never in part.
 * What is known about an image (owner, size, expiry) lives in the database, not here.
 */
export interface ImageStore {
  readonly kind: 'file' | 's3';
  /** Where it is, for log lines: a directory, or a bucket and its endpoint (never a credential). */
  readonly where: string;
  /** A directory on this machine where downloads are written before they have a name. */
  readonly stagingDir: string;
  /** Stores bytes already in memory (a decoded base64 reply). */
  putBytes(name: string, bytes: Buffer, mime: ImageMime): Promise<void>;
  /** Stores a finished file from `stagingDir`; the file is gone afterwards (after a failure, the caller removes it). */
  putFile(name: string, stagedPath: string, bytes: number, mime: ImageMime): Promise<void>;
  /** The image's bytes (or one range of them), or undefined when there is no such image. */
  open(name: string, range?: ByteRange): Promise<Readable | undefined>;
  /** Removes the image; removing a missing one is not an error. */
  delete(name: string): Promise<void>;
  /** Caches a resized copy (WebP) of the image with this sha256 (GET /v1/images/{id}?w=N&format=webp). */
  putThumbnail(sha256: string, width: number, bytes: Buffer): Promise<void>;
  /** A cached resized copy, or undefined. */
  readThumbnail(sha256: string, width: number): Promise<Buffer | undefined>;
  /** Removes every cached resized copy of the image with this sha256. */
  deleteThumbnails(sha256: string): Promise<void>;
  /** Readiness: throws when the store cannot be used. */
  check(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Served images are read 256 KiB at a time: a read is a trip through libuv's thread pool, and with
 * the default 64 KiB a 1 MiB image cost ~1.8-2.8 ms of CPU to stream here, ~1.0 ms with 256 KiB.
 */
const READ_CHUNK_BYTES = 256 * 1024;

const NAME_PATTERN = /^img_([0-9a-f]{64})\.(png|jpg|webp)$/;
const SHA256_PATTERN = /^[0-9a-f]{64}$/;

/** A cached thumbnail's name: `<sha256>-w<width>.webp` (S3: under `thumbs/`). */
export function thumbnailNameOf(sha256: string, width: number): string {
  if (!SHA256_PATTERN.test(sha256) || !Number.isInteger(width)) throw new Error(`not a thumbnail: ${sha256} w${width}`);
  return `${sha256}-w${width}.webp`;
}

export function imageNameOf(sha256: string, mime: ImageMime): string {
  return `img_${sha256}.${EXTENSION_OF[mime]}`;
}

/** The parts of an image name, or undefined for anything the gateway never hands out. */
export function parseImageName(name: string): { sha256: string; ext: string; mime: ImageMime } | undefined {
  const m = NAME_PATTERN.exec(name);
  if (!m) return undefined;
  return { sha256: m[1]!, ext: m[2]!, mime: MIME_OF_EXTENSION[m[2]!]! };
}

/**
 * Runs a write into `dir`, creating the directory only when the write finds it missing: each file
 * system call is a trip through libuv's thread pool, and a mkdir before every write doubled them.
 */
export async function inDirectory<T>(dir: string, write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await makePrivateDir(dir);
    return write();
  }
}

/** Files under DATA_DIR/images, written to a temp file and renamed so no half image is ever served. */
export class FileImageStore implements ImageStore {
  readonly kind = 'file' as const;
  readonly stagingDir: string;
  readonly where: string;
  private readonly root: string;

  constructor(dataDir: string) {
    this.root = join(dataDir, 'images');
    this.where = `files under ${this.root}`;
    // Inside the store's own directory tree, so rename() stays on one file system and is atomic.
    this.stagingDir = join(this.root, '.staging');
    // A store an older version made 0755: closed to other users (the directories below it too, so).
    tightenIfPresent(this.root, PRIVATE_DIR_MODE);
  }

  private pathOf(name: string): string | undefined {
    const parts = parseImageName(name);
    return parts && join(this.root, parts.sha256.slice(0, 2), `${parts.sha256}.${parts.ext}`);
  }

  private mustPathOf(name: string): string {
    const path = this.pathOf(name);
    if (!path) throw new Error(`not an image name: ${name}`);
    return path;
  }

  async putBytes(name: string, bytes: Buffer): Promise<void> {
    const staged = join(this.stagingDir, `${randomHex(8)}.tmp`);
    try {
      await inDirectory(this.stagingDir, () => writeFile(staged, bytes, { mode: PRIVATE_FILE_MODE }));
      await this.putFile(name, staged);
    } catch (err) {
      await rm(staged, { force: true });
      throw err;
    }
  }

  async putFile(name: string, stagedPath: string): Promise<void> {
    const path = this.mustPathOf(name);
    // Replacing an existing copy is harmless (same bytes) and a reader holding the old one keeps it.
    await inDirectory(dirname(path), () => rename(stagedPath, path));
  }

  async open(name: string, range?: ByteRange): Promise<Readable | undefined> {
    const path = this.pathOf(name);
    if (!path) return undefined;
    // Opened first: once open, the file reads to the end even if retention unlinks it meanwhile.
    const handle = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (!handle) return undefined;
    return handle.createReadStream({ highWaterMark: READ_CHUNK_BYTES, ...(range ? { start: range.start, end: range.end } : {}) });
  }

  async delete(name: string): Promise<void> {
    const path = this.pathOf(name);
    if (!path) return;
    await unlink(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  /** `DATA_DIR/images/thumbs/<2 hex>/<sha256>-w<N>.webp`. */
  private thumbnailDir(sha256: string): string {
    return join(this.root, 'thumbs', sha256.slice(0, 2));
  }

  async putThumbnail(sha256: string, width: number, bytes: Buffer): Promise<void> {
    const path = join(this.thumbnailDir(sha256), thumbnailNameOf(sha256, width));
    const staged = join(this.stagingDir, `${randomHex(8)}.tmp`);
    try {
      await inDirectory(this.stagingDir, () => writeFile(staged, bytes, { mode: PRIVATE_FILE_MODE }));
      await inDirectory(dirname(path), () => rename(staged, path));
    } catch (err) {
      await rm(staged, { force: true });
      throw err;
    }
  }

  async readThumbnail(sha256: string, width: number): Promise<Buffer | undefined> {
    return readFile(join(this.thumbnailDir(sha256), thumbnailNameOf(sha256, width))).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
  }

  async deleteThumbnails(sha256: string): Promise<void> {
    if (!SHA256_PATTERN.test(sha256)) return;
    const dir = this.thumbnailDir(sha256);
    const names = await readdir(dir).catch(() => [] as string[]);
    await Promise.all(names.filter((n) => n.startsWith(`${sha256}-w`)).map((n) => rm(join(dir, n), { force: true })));
  }

  async check(): Promise<void> {
    await makePrivateDir(this.root);
    await access(this.root, constants.W_OK);
  }

  async close(): Promise<void> {}
}
