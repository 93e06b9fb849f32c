import type { ImageOperation } from '../catalogue/model-spec.js';
import { createHash, hash } from 'node:crypto';
import { readFile } from 'node:fs';
import { readdir, rm, stat, truncate } from 'node:fs/promises';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import sharp from 'sharp';
import { GatewayError } from '../errors.js';
import { sniffImageType, type ImageMime } from './image-bytes.js';
import { DIMENSION_HEADER_BYTES, imageDimensions, type ImageDimensions } from './image-dimensions.js';
import type { GalleryImage, GalleryQuery, ImageOwnership, ImageRecord, ImageRecords } from './image-records.js';
import { imageNameOf, type ByteRange, type ImageStore } from './image-store.js';
import { DEFAULT_WARM_STAGING, WarmStagingFiles, type WarmStagingOptions } from './warm-staging-files.js';
import { StorageWriteFailed, isStorageFullError, type StoragePressure } from './storage-pressure.js';
import { inSpan } from '../observability/tracing.js';
import { Base64Text } from '../http/base64-json.js';
import { ImageWorkers } from '../workers/image-workers.js';

export interface ImageOwner {
  keyId: string;
  team: string;
}

/** A download written to a temp file, hashed and type-checked on the way, not yet in the store. */
export interface StagedImage {
  path: string;
  sha256: string;
  mime: ImageMime;
  bytes: number;
  /** Read from the first bytes as they streamed by, when the header tells them. */
  dimensions?: ImageDimensions | undefined;
  /** The staging could not be written (storage full): the image was received and dropped; no file. */
  lost?: StorageWriteFailed | undefined;
  /** The upstream's own base64 of the image, kept for a `b64_json` answer (see PooledBase64Staging). */
  base64?: Base64Text | undefined;
}

/** What the request that made an image asked for, kept with the owner's entry (IMAGE_KEEP_PROMPTS). */
export interface ImageProvenance {
  model: string;
  operation: ImageOperation;
  /** Null with IMAGE_KEEP_PROMPTS=0, or for an upscale without a prompt. */
  prompt: string | null;
  parameters: Record<string, unknown> | null;
  seed: number | null;
  costUsd: number | null;
}

export interface KeepOptions {
  owner?: ImageOwner | undefined;
  provenance?: ImageProvenance | undefined;
  /** Unix seconds. */
  expiresAt: number;
}

export interface SweepResult {
  images: number;
  bytes: number;
}

// fs.promises.readFile took 1.5 ms for a 1 MiB file here, the callback one 0.4 ms.
const readFileQuickly = promisify(readFile);

const notAnImage = () => new GatewayError('upstream_error', 'upstream returned data that is not a PNG, JPEG or WebP image');
const SNIFF_BYTES = 12;
const STAGING_WRITE_BYTES = 1024 * 1024;
const SWEEP_BATCH = 500;
/** A staged file older than this was left by a crash; a live download is far shorter. */
const STALE_STAGING_MS = 60 * 60 * 1000;
/** An image the store could not take is answered inline (base64) up to this size; a larger one is lost. */
export const INLINE_FALLBACK_MAX_BYTES = 32 * 1024 * 1024;

export interface ImageLibraryOptions {
  /**
   * IMAGE_INLINE_MAX_BYTES: images up to this size live in their database row, not in the store:
   * one row write where a file cost four more thread-pool trips (open, write, close, rename; ~135 µs
   * of CPU and ~0.4 ms here) or an S3 PUT. Thumbnails and icons; a full-size render is far larger.
   */
  inlineMaxBytes: number;
  /** Staging files prepared ahead (see WarmStagingFiles); DEFAULT_WARM_STAGING when not given. */
  warmStaging?: WarmStagingOptions;
  /** Told of failed writes (a full disk is probed again; S3 failures are counted) and of S3 writes that worked. */
  pressure?: StoragePressure;
  /** Where a `b64_json` answer's base64 is encoded (WORKERS); the main thread when not given. */
  workers?: ImageWorkers;
}

/** The database did not take an image's row (out of reach, a statement refused): the image is not kept. */
export class ImageRowFailed extends Error {
  constructor(cause: unknown) {
    super(`the image record could not be written to the database: ${(cause as Error | undefined)?.message ?? String(cause)}`, { cause });
    this.name = 'ImageRowFailed';
  }
}

/**
 * The stored result images: bytes in an ImageStore (files or S3), facts in the `images` table.
 * Storing writes the row before the bytes and retention deletes the row before the bytes, both
 * under a per-image lock, so an image made again while it is being swept is never left without
 * its bytes (within one replica; across replicas the window is the few milliseconds between the
 * sweeper's two deletes).
 */
export class ImageLibrary {
  private readonly locks = new Map<string, Promise<unknown>>();
  /** Where downloads and decoded base64 images are written before they have a name. */
  readonly stagingFiles: WarmStagingFiles;

  constructor(
    readonly store: ImageStore,
    private readonly records: ImageRecords,
    private readonly settings: ImageLibraryOptions = { inlineMaxBytes: 0 },
  ) {
    this.stagingFiles = new WarmStagingFiles(store.stagingDir, settings.warmStaging ?? DEFAULT_WARM_STAGING);
    this.workers = settings.workers ?? new ImageWorkers(0);
  }

  /** The image work's threads (WORKERS): decoding, hashing, encoding of large images. */
  readonly workers: ImageWorkers;

  /** Removes the staging files kept ready; the store and the records are closed by their owners. */
  close(): Promise<void> {
    return this.stagingFiles.close();
  }

  /** Creates the `images` table where it is missing. */
  migrate(): Promise<void> {
    return this.records.migrate();
  }

  /** Runs `work` after any other work on the same image has finished. */
  private async locked<T>(name: string, work: () => Promise<T>): Promise<T> {
    const before = this.locks.get(name) ?? Promise.resolve();
    const mine = before.catch(() => {}).then(work);
    this.locks.set(name, mine);
    try {
      return await mine;
    } finally {
      if (this.locks.get(name) === mine) this.locks.delete(name);
    }
  }

  /**
   * Writes a download to a temp file through a sha256 hash, checking its first bytes are an image,
   * so a large image is never held whole in memory. Starts afresh on each call (a retried download).
   */
  async stage(body: AsyncIterable<Uint8Array>): Promise<StagedImage> {
    const { path, file, warmBytes } = await this.stagingFiles.take().catch((err: unknown) => {
      throw this.writeFailed('the image staging file', 'disk', err);
    });
    const hasher = createHash('sha256');
    const hashOnThread = this.workers.size > 0;
    let bytes = 0;
    let mime: ImageMime | undefined;
    let head = Buffer.alloc(0);
    let writeError: unknown;
    // A failed read (a broken download, bytes over the cap, not an image) reaches the file too: the
    // pipeline destroys it with that error. It is the download's failure, not the disk's.
    let readError: unknown;
    async function* inspect(source: AsyncIterable<Uint8Array>) {
      try {
        yield* inspected(source);
      } catch (err) {
        readError = err;
        throw err;
      }
    }
    async function* inspected(source: AsyncIterable<Uint8Array>) {
      for await (const chunk of source) {
        // The first bytes are kept for the type and, later, the dimensions (no second read of the file).
        if (head.length < DIMENSION_HEADER_BYTES) {
          head = Buffer.concat([head, chunk.subarray(0, DIMENSION_HEADER_BYTES - head.length)]);
          if (mime === undefined && head.length >= SNIFF_BYTES) {
            mime = sniffImageType(head);
            if (!mime) throw notAnImage();
          }
        }
        // With worker threads the file is hashed by one once written (hashFile), not here.
        if (!hashOnThread) hasher.update(chunk);
        bytes += chunk.length;
        yield chunk;
      }
    }
    try {
      // A large buffer lets the file stream write many pieces at once (one thread-pool trip for them all).
      // The stream closes the file when it ends or fails.
      const sinkFile = file.createWriteStream({ start: 0, highWaterMark: STAGING_WRITE_BYTES });
      sinkFile.once('error', (err) => {
        writeError = err;
      });
      await pipeline(body, inspect, sinkFile);
      mime ??= sniffImageType(head);
      if (!mime) throw notAnImage();
      this.stagingFiles.noteImageBytes(bytes);
      if (warmBytes > bytes) {
        await truncate(path, bytes).catch((err: unknown) => {
          writeError = err;
          throw err;
        });
      }
    } catch (err) {
      await rm(path, { force: true });
      // What the file refused (ENOSPC, EIO, ...) is storage; a bad or broken download is not.
      if (writeError !== undefined && writeError !== readError) throw this.writeFailed('the image staging file', 'disk', writeError);
      throw err;
    }
    let sha256: string;
    try {
      sha256 = hashOnThread ? await this.workers.hashFile(path) : hasher.digest('hex');
    } catch (err) {
      await rm(path, { force: true });
      throw err;
    }
    return { path, sha256, mime, bytes, dimensions: imageDimensions(head) };
  }

  /**
   * Stores a staged download (a small one in its row); `answerBase64` also returns the image's
   * base64 for a `b64_json` answer: the upstream's own text when the staging kept it, else encoded
   * (on a worker thread with WORKERS), before the file moves into the store.
   */
  async keepStaged(staged: StagedImage, options: KeepOptions & { answerBase64?: boolean }): Promise<{ record: ImageRecord; base64?: Base64Text }> {
    try {
      const { width, height } = staged.dimensions ?? (await dimensionsOf(staged.path));
      if (staged.bytes <= this.settings.inlineMaxBytes) {
        const bytes = await readFileQuickly(staged.path);
        const record = await this.save({ ...staged, inlineBytes: bytes }, width, height, options, () => rm(staged.path, { force: true }));
        return options.answerBase64 ? { record, base64: staged.base64 ?? new Base64Text(Buffer.from(bytes.toString('base64'), 'latin1')) } : { record };
      }
      const base64 = options.answerBase64 ? (staged.base64 ?? (await this.workers.encodeFileBase64(staged.path))) : undefined;
      const record = await this.save(staged, width, height, options, (name) => this.store.putFile(name, staged.path, staged.bytes, staged.mime));
      return base64 ? { record, base64 } : { record };
    } catch (err) {
      // The bytes are still in hand: a failed store write answers them inline when they fit in memory.
      if (err instanceof StorageWriteFailed && staged.bytes <= INLINE_FALLBACK_MAX_BYTES) {
        err.salvaged = await readFileQuickly(staged.path).catch(() => undefined);
      }
      // On success putFile has moved (or uploaded and removed) the staged file already.
      await rm(staged.path, { force: true });
      throw err;
    }
  }

  /** Stores bytes already in memory (a base64 reply, decoded once); a small image in its row. */
  async keepBytes(bytes: Buffer, options: KeepOptions): Promise<ImageRecord> {
    const mime = sniffImageType(bytes);
    if (!mime) throw notAnImage();
    const { width, height } = await dimensionsOf(bytes);
    const sha256 = hash('sha256', bytes, 'hex');
    if (bytes.length <= this.settings.inlineMaxBytes) {
      return this.save({ sha256, mime, bytes: bytes.length, inlineBytes: bytes }, width, height, options, async () => {});
    }
    return this.save({ sha256, mime, bytes: bytes.length }, width, height, options, (name) => this.store.putBytes(name, bytes, mime));
  }

  private async save(
    image: { sha256: string; mime: ImageMime; bytes: number; inlineBytes?: Buffer },
    width: number,
    height: number,
    options: KeepOptions,
    write: (name: string) => Promise<void>,
  ): Promise<ImageRecord> {
    const name = imageNameOf(image.sha256, image.mime);
    const attributes = { 'gateway.image.name': name, 'gateway.image.bytes': image.bytes, 'gateway.image.store': image.inlineBytes ? 'row' : this.store.kind };
    return inSpan('image.store', attributes, () => this.locked(name, async () => {
      const createdAt = Date.now();
      const owner: ImageOwnership | undefined = options.owner && {
        name,
        team: options.owner.team,
        keyId: options.owner.keyId,
        model: options.provenance?.model ?? null,
        operation: options.provenance?.operation ?? null,
        prompt: options.provenance?.prompt ?? null,
        parameters: options.provenance?.parameters ?? null,
        seed: options.provenance?.seed ?? null,
        costUsd: options.provenance?.costUsd ?? null,
        createdAt,
        expiresAt: options.expiresAt,
      };
      const record = await inSpan('db.image_row', { 'db.operation.name': 'save', 'db.collection.name': 'images' }, () => this.records.save({
        name,
        sha256: image.sha256,
        mimeType: image.mime,
        bytes: image.bytes,
        width,
        height,
        keyId: options.owner?.keyId ?? null,
        team: options.owner?.team ?? null,
        createdAt,
        expiresAt: options.expiresAt,
        inlineBytes: image.inlineBytes,
      }, owner)).catch((err: unknown) => {
        // A database out of room (SQLITE_FULL, PostgreSQL's disk_full) is storage too: the paid
        // image is answered inline, and storage is marked full.
        if (isStorageFullError(err)) throw this.writeFailed('the image record (database)', 'database', err);
        // Any other failure is the database's (out of reach, a statement refused): told apart, as it
        // comes after upstream made (and was paid for) the image.
        throw new ImageRowFailed(err);
      });
      // Written every time, even when already stored: the same bytes, and a retention sweep on
      // another replica may have just removed them.
      await write(name).catch(async (err: unknown) => {
        // A row this save made names bytes that were never stored: it goes (an older row keeps its older bytes).
        if (record.createdAt === createdAt) await this.records.removeIfUnchanged(record).catch(() => {});
        throw this.writeFailed(`the image store (${this.store.kind})`, this.store.kind === 's3' ? 's3' : 'disk', err);
      });
      if (this.store.kind === 's3') this.settings.pressure?.noteWriteSuccess();
      return record;
    }));
  }

  /** A failed write, told to the storage watcher. */
  writeFailed(what: string, where: 'disk' | 's3' | 'database', err: unknown): StorageWriteFailed {
    this.settings.pressure?.noteWriteFailure(where, err);
    return err instanceof StorageWriteFailed ? err : new StorageWriteFailed(what, err);
  }

  /** A stored image that has not expired, or undefined. */
  async find(name: string, nowSeconds = Math.floor(Date.now() / 1000)): Promise<ImageRecord | undefined> {
    const record = await this.records.find(name);
    return record && record.expiresAt > nowSeconds ? record : undefined;
  }

  /**
   * A stored image that a URL may serve, or undefined: without `ownerTag` (a URL signed before
   * images had owners, or one made outside a client request), any live image; with it, only while
   * the team it names still owns the image and its entry has not expired.
   */
  async findFor(name: string, ownerTag: string | undefined, tagOf: (team: string) => string, nowSeconds: number): Promise<ImageRecord | undefined> {
    if (ownerTag === undefined) return this.find(name, nowSeconds);
    const found = await this.records.findWithOwners(name);
    if (!found || found.image.expiresAt <= nowSeconds) return undefined;
    return found.owners.some((o) => o.expiresAt > nowSeconds && tagOf(o.team) === ownerTag) ? found.image : undefined;
  }

  /** Teams' entries, newest first (GET /v1/images). */
  list(query: GalleryQuery): Promise<GalleryImage[]> {
    return this.records.list(query);
  }

  /**
   * Removes a team's entry for an image (every team's when `team` is absent); once no team owns
   * it, its row, its bytes and its cached thumbnails go. False when there was no such entry.
   */
  async deleteImage(name: string, team: string | undefined): Promise<boolean> {
    return this.locked(name, async () => {
      const { removed, orphaned } = await this.records.removeOwners(name, team);
      if (orphaned) await this.removeBytes(orphaned);
      return removed;
    });
  }

  private async removeBytes(record: ImageRecord): Promise<void> {
    if (!record.inlineBytes) await this.store.delete(record.name);
    await this.removeThumbnails(record);
  }

  /** Best effort: a thumbnail left behind is never served (its image's row is gone), only kept. */
  private async removeThumbnails(record: ImageRecord): Promise<void> {
    await this.store.deleteThumbnails(record.sha256).catch(() => {});
  }

  /**
   * A resized copy (WebP, fitting inside `width` × `width`, never enlarged): from the store's cache,
   * else made with sharp and cached. `cached` tells which.
   */
  thumbnail(image: ImageRecord, width: number): Promise<{ bytes: Buffer; cached: boolean } | undefined> {
    // A gallery page asks for many at once, and browsers may repeat: one resize per thumbnail at a time.
    const key = `${image.sha256}-w${width}`;
    let making = this.thumbnailsInFlight.get(key);
    if (!making) {
      // Under the image's lock: a delete or a sweep of it never runs while its thumbnail is being cached.
      making = this.locked(image.name, () => this.makeThumbnail(image, width)).finally(() => this.thumbnailsInFlight.delete(key));
      this.thumbnailsInFlight.set(key, making);
    }
    return making;
  }

  private readonly thumbnailsInFlight = new Map<string, Promise<{ bytes: Buffer; cached: boolean } | undefined>>();

  private async makeThumbnail(image: ImageRecord, width: number): Promise<{ bytes: Buffer; cached: boolean } | undefined> {
    const hit = await this.store.readThumbnail(image.sha256, width).catch(() => undefined);
    if (hit) return { bytes: hit, cached: true };
    // Deleted while this waited for the lock: nothing is made, nothing cached.
    if (!(await this.records.find(image.name))) return undefined;
    const source = image.inlineBytes ?? (await this.open(image).then(async (stream) => (stream ? Buffer.concat(await stream.toArray()) : undefined)));
    if (!source) return undefined;
    const bytes = await sharp(source).resize({ width, height: width, fit: 'inside', withoutEnlargement: true }).webp().toBuffer();
    // A cache that cannot be written (a full disk, S3 down) only costs the next request a resize.
    await this.store.putThumbnail(image.sha256, width, bytes).catch(() => {});
    return { bytes, cached: false };
  }

  /** The bytes of a stored image (or one range of them), or undefined when they are gone. */
  async open(image: ImageRecord, range?: ByteRange): Promise<Readable | undefined> {
    if (image.inlineBytes) return Readable.from([range ? image.inlineBytes.subarray(range.start, range.end + 1) : image.inlineBytes]);
    return this.store.open(image.name, range).catch((err: unknown) => {
      throw new GatewayError('service_unavailable', `the image store (${this.store.kind}) could not be read; try again`, { cause: err });
    });
  }

  /**
   * The 404 for an image found but whose bytes `open` or `thumbnail` did not find. Retention and
   * deletes remove the row before the bytes, so a row gone now was removed meanwhile; a row still
   * there names bytes this store never had (another replica's DATA_DIR) or lost outside the gateway.
   */
  async bytesMissing(image: ImageRecord): Promise<GatewayError> {
    if (!(await this.records.find(image.name))) return new GatewayError('not_found', 'no such image (deleted or removed by retention just now)');
    const why =
      this.store.kind !== 'file'
        ? 'the image is recorded but its object is missing from S3_BUCKET: it was removed outside the gateway (a bucket lifecycle rule?)'
        : this.records.shared
          ? "the image is not in this replica's store: replicas share images only through S3_BUCKET (or a DATA_DIR on storage they all mount)"
          : 'the image is recorded but its file is missing from DATA_DIR: it was removed outside the gateway';
    return new GatewayError('not_found', why);
  }

  /** A stored image's bytes, whole, or undefined when it has expired or is gone. */
  async read(name: string): Promise<Buffer | undefined> {
    const image = await this.find(name);
    if (!image) return undefined;
    if (image.inlineBytes) return image.inlineBytes;
    const stream = await this.open(image);
    return stream ? Buffer.concat(await stream.toArray()) : undefined;
  }

  /**
   * Removes expired images, then, over `maxBytes`, the oldest until the rest fit. A reader already
   * streaming an image finishes it (an open file outlives its unlink; an S3 GET its DELETE).
   */
  async sweep(options: { maxBytes?: number | undefined; nowSeconds?: number } = {}): Promise<SweepResult> {
    const now = options.nowSeconds ?? Math.floor(Date.now() / 1000);
    const removed: SweepResult = { images: 0, bytes: 0 };
    for (;;) {
      const batch = await this.records.expired(now, SWEEP_BATCH);
      let progress = 0;
      for (const record of batch) if (await this.remove(record, removed)) progress++;
      if (batch.length < SWEEP_BATCH || progress === 0) break;
    }
    // A team's entry past its own expiry, while the image lives on for another team.
    await this.records.removeExpiredOwners(now);
    if (options.maxBytes !== undefined) {
      let total = await this.records.totalBytes();
      while (total > options.maxBytes) {
        const batch = await this.records.oldest(SWEEP_BATCH);
        let progress = 0;
        for (const record of batch) {
          if (total <= options.maxBytes) break;
          if (await this.remove(record, removed)) {
            total -= record.bytes;
            progress++;
          }
        }
        if (progress === 0) break;
        total = await this.records.totalBytes();
      }
    }
    await this.removeStaleStaging();
    return removed;
  }

  private async remove(record: ImageRecord, removed: SweepResult): Promise<boolean> {
    return this.locked(record.name, async () => {
      if (!(await this.records.removeIfUnchanged(record))) return false;
      await this.store.delete(record.name);
      await this.removeThumbnails(record);
      removed.images++;
      removed.bytes += record.bytes;
      return true;
    });
  }

  private async removeStaleStaging(): Promise<void> {
    const names = await readdir(this.store.stagingDir).catch(() => [] as string[]);
    const cutoff = Date.now() - STALE_STAGING_MS;
    for (const name of names) {
      if (this.stagingFiles.holds(name)) continue;
      const path = join(this.store.stagingDir, name);
      const info = await stat(path).catch(() => undefined);
      if (info && info.mtimeMs < cutoff) await rm(path, { force: true });
    }
  }
}

/**
 * Width and height from the image's header: read here for bytes in memory (no trip through
 * libvips' thread pool), else by sharp, which reads no more of the file than it needs.
 */
async function dimensionsOf(input: string | Buffer): Promise<{ width: number; height: number }> {
  const fromHeader = typeof input === 'string' ? undefined : imageDimensions(input);
  if (fromHeader) return fromHeader;
  try {
    const meta = await sharp(input).metadata();
    return { width: meta.width, height: meta.height };
  } catch (err) {
    throw new GatewayError('upstream_error', 'upstream returned an image that cannot be read', { cause: err });
  }
}
