import { createHash } from 'node:crypto';
import { rm, type FileHandle } from 'node:fs/promises';
import { GatewayError } from '../errors.js';
import { Base64Text } from '../http/base64-json.js';
import type { Base64Sink } from '../upstream/image-reply-parser.js';
import { sniffImageType } from './image-bytes.js';
import { DIMENSION_HEADER_BYTES, imageDimensions } from './image-dimensions.js';
import type { StagedImage } from './image-library.js';
import type { WarmStagingFiles } from './warm-staging-files.js';

/**
 * Decoded bytes gathered before each write to the temp file: one thread-pool trip per MiB (256 KiB
 * writes staged a 4 MiB image in ~25 ms here, 1 MiB ones in ~10-15 ms). With hundreds of replies
 * in flight, how many are staged at once is bounded by MAX_INFLIGHT_IMAGE_BYTES instead.
 */
const WRITE_BYTES = 1024 * 1024;
/** The smallest last buffer: room for whole groups of four, whatever the bound says. */
const MIN_TAIL_BYTES = 4096;
/** Idle write buffers kept for the next image (two per image in flight). */
const MAX_POOLED_BUFFERS = 32;
const pool: Buffer[] = [];

/**
 * A large base64 image from an upstream reply, decoded into the image store's staging as it
 * arrives: hashed and written to a temp file a MiB at a time, its type and dimensions read from
 * its first bytes; the same StagedImage a download gives.
 *
 * Two buffers take turns: while one MiB is being written (on libuv's thread pool), the next is
 * decoded into the other; waiting for each write before decoding on put the two end to end. The
 * file is a warm one when one is ready (WarmStagingFiles): a new 4 MiB file cost ~14 ms to write
 * here, more than receiving, decoding and hashing it. The buffers are reused from image to image:
 * fresh buffers for every piece made V8 collect garbage (a full collection every other 4 MiB
 * image) to give back their memory.
 *
 * `keepText` (a `b64_json` answer): the upstream's own text is kept as it arrived, and answered
 * when it is exactly the image's standard base64, so the answer needs no second encoding of the
 * file (what PooledBase64Staging's worker checks, checked here as the text is decoded).
 */
export class Base64Staging implements Base64Sink<StagedImage> {
  /** Taken when first filled: an image of a MiB or less never takes the second. */
  private readonly buffers: [Buffer | undefined, Buffer | undefined] = [undefined, undefined];
  /** Which buffer is being filled; the other may be in a write. */
  private current: 0 | 1 = 0;
  private readonly writing: [Promise<void> | undefined, Promise<void> | undefined] = [undefined, undefined];
  private filled = 0;
  /** Base64 characters that do not yet make a whole group of four. */
  private carry = '';
  private readonly hash = createHash('sha256');
  /** Bytes handed to the file so far: where the next write goes. */
  private bytes = 0;
  private path: string | undefined;
  private file: FileHandle | undefined;
  /** The staging file's length when taken: longer than the image, it is cut to the image's. */
  private warmBytes = 0;
  private staged: Omit<StagedImage, 'path' | 'sha256' | 'bytes'> | undefined;
  private done = false;
  /** The text as it arrived, while it can still be the image's standard base64 (keepText). */
  private text: Buffer[] | undefined;
  private textLength = 0;
  /** The text's last (up to) four characters: its last group, checked at the end. */
  private lastGroup = '';
  /** A group with padding was decoded: it must be the text's last. */
  private padded = false;

  constructor(
    private readonly stagingFiles: WarmStagingFiles,
    /** What the image can decode to at most (its reply's length), when known. */
    private readonly maxBytes = Number.POSITIVE_INFINITY,
    keepText = false,
  ) {
    if (keepText) this.text = [];
  }

  async write(base64: Buffer): Promise<void> {
    if (this.text) this.keep(base64);
    let start = 0;
    // First the group of four the last piece left open, so the rest is decoded straight from this
    // piece's string (joining the two strings cost a copy of every piece).
    if (this.carry.length > 0) {
      start = Math.min(4 - this.carry.length, base64.length);
      this.carry += base64.toString('latin1', 0, start);
      if (this.carry.length < 4) return;
      await this.decode(this.carry);
      this.carry = '';
    }
    const end = base64.length - ((base64.length - start) % 4);
    this.carry = base64.toString('latin1', end);
    if (end > start) await this.decode(base64.toString('latin1', start, end));
  }

  /** Decodes whole groups of four into the buffers, in slices that fit their free room (3 bytes per 4 characters). */
  private async decode(text: string): Promise<void> {
    let at = 0;
    while (at < text.length) {
      const buffer = (this.buffers[this.current] ??= this.takeBuffer());
      const room = Math.floor((buffer.length - this.filled) / 3) * 4;
      if (room === 0) {
        await this.flush();
        continue;
      }
      const slice = at === 0 && text.length <= room ? text : text.slice(at, at + room);
      const written = buffer.write(slice, this.filled, 'base64');
      if (this.text) this.checkDecoded(slice, written);
      this.filled += written;
      at += slice.length;
    }
  }

  async end(): Promise<StagedImage> {
    try {
      if (this.carry.length > 0) {
        // Unpadded base64 ends in 2 or 3 characters (1 or 2 bytes): room for them first.
        if ((this.buffers[this.current]?.length ?? WRITE_BYTES) - this.filled < 2) await this.flush();
        this.filled += (this.buffers[this.current] ??= this.takeBuffer()).write(this.carry, this.filled, 'base64');
      }
      await this.flush();
      await Promise.all(this.writing);
      if (!this.staged) throw notAnImage();
      this.stagingFiles.noteImageBytes(this.bytes);
      if (this.warmBytes > this.bytes) await this.file!.truncate(this.bytes);
      await this.file!.close();
      this.file = undefined;
      const base64 = this.keptText();
      return { path: this.path!, sha256: this.hash.digest('hex'), bytes: this.bytes, ...this.staged, ...(base64 ? { base64 } : {}) };
    } catch (err) {
      await this.abort();
      throw err;
    } finally {
      this.release();
    }
  }

  async abort(): Promise<void> {
    // A write still running holds a buffer: wait for it before the buffers go back to the pool.
    await Promise.allSettled(this.writing);
    this.release();
    await this.file?.close().catch(() => {});
    this.file = undefined;
    if (this.path) await rm(this.path, { force: true });
  }

  /**
   * Hashes what the current buffer holds and starts writing it; the first time, checks it is an
   * image and opens the file. Then turns to the other buffer, once its own write has finished.
   */
  private async flush(): Promise<void> {
    if (this.filled === 0) return;
    const data = this.buffers[this.current]!.subarray(0, this.filled);
    if (!this.staged) {
      const mime = sniffImageType(data);
      if (!mime) throw notAnImage();
      this.staged = { mime, dimensions: imageDimensions(data.subarray(0, DIMENSION_HEADER_BYTES)) };
      const staging = await this.stagingFiles.take();
      if (this.done) {
        // Aborted while the file was being taken: its buffers are back in the pool already.
        await staging.file.close().catch(() => {});
        await rm(staging.path, { force: true });
        throw new Error('the staging was aborted');
      }
      ({ path: this.path, file: this.file, warmBytes: this.warmBytes } = staging);
    }
    this.hash.update(data);
    // Positioned, so the order the two writes finish in does not matter.
    const write = writeAll(this.file!, data, this.bytes);
    // Awaited later (here, by end() or by abort()); a failure before then is not an unhandled one.
    write.catch(() => {});
    this.writing[this.current] = write;
    this.bytes += this.filled;
    this.filled = 0;
    this.current = this.current === 0 ? 1 : 0;
    await this.writing[this.current];
    this.writing[this.current] = undefined;
  }

  /**
   * Keeps a piece of the text (the reply's own buffer: no copy). Base64url's two characters decode
   * like + and /, but they are not the text a standard encoder gives.
   */
  private keep(base64: Buffer): void {
    if (base64.includes(0x2d) || base64.includes(0x5f)) {
      this.text = undefined;
      return;
    }
    this.text!.push(base64);
    this.textLength += base64.length;
    this.lastGroup = (this.lastGroup + base64.toString('latin1', Math.max(0, base64.length - 4))).slice(-4);
  }

  /**
   * Whole groups of four decode to three bytes each, but for padding in the text's last group: a
   * character outside the alphabet (skipped by the decoder), padding inside the text, or fewer
   * bytes for any other reason means the text is not the image's standard base64.
   */
  private checkDecoded(groups: string, written: number): void {
    const padding = groups.endsWith('==') ? 2 : groups.endsWith('=') ? 1 : 0;
    if (this.padded || written !== (groups.length / 4) * 3 - padding) this.text = undefined;
    if (padding > 0) this.padded = true;
  }

  /** The kept text, when it is exactly the standard base64 of the bytes staged (padded, its unused bits zero). */
  private keptText(): Base64Text | undefined {
    if (!this.text || this.textLength % 4 !== 0 || this.textLength / 4 !== Math.ceil(this.bytes / 3)) return undefined;
    if (this.lastGroup.length === 4 && Buffer.from(this.lastGroup, 'base64').toString('base64') !== this.lastGroup) return undefined;
    return new Base64Text(this.text);
  }

  private release(): void {
    if (this.done) return;
    this.done = true;
    for (const buffer of this.buffers) if (buffer?.length === WRITE_BYTES && pool.length < MAX_POOLED_BUFFERS) pool.push(buffer);
  }

  /**
   * A write buffer from the pool; but the second one, when what is left of the image is known to
   * fit in less, is only that large: an image just over a MiB (a 1 MiB render) would otherwise
   * hold a second MiB for its last few KB, and with dozens of replies in flight that is most of
   * their staging memory.
   */
  private takeBuffer(): Buffer {
    const left = this.maxBytes - this.bytes - this.filled;
    if (this.bytes > 0 && left < WRITE_BYTES) return Buffer.allocUnsafe(Math.max(MIN_TAIL_BYTES, left + 3));
    return pool.pop() ?? Buffer.allocUnsafe(WRITE_BYTES);
  }
}

/** Writes all of `data` at `position` (one write may write less than asked). */
async function writeAll(file: FileHandle, data: Buffer, position: number): Promise<void> {
  let written = 0;
  while (written < data.length) {
    const { bytesWritten } = await file.write(data, written, data.length - written, position + written);
    written += bytesWritten;
  }
}

const notAnImage = () => new GatewayError('upstream_error', 'upstream returned data that is not a PNG, JPEG or WebP image');
