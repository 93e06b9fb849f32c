// The CPU-heavy image work, as plain functions over files: run by the image worker threads
// (image-worker.ts), or on the main thread when WORKERS=0. A worker thread loads this file on its
// own (as .js from dist/, or as .ts with the types stripped under the tests): node: imports only,
// its siblings imported with the extension it was loaded with.
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import type * as ImageBytesModule from '../images/image-bytes.js';
import type * as ImageDimensionsModule from '../images/image-dimensions.js';

const TS = import.meta.url.endsWith('.ts');
const { sniffImageType } = (await import(TS ? '../images/image-bytes.ts' : '../images/image-bytes.js')) as typeof ImageBytesModule;
const { imageDimensions, DIMENSION_HEADER_BYTES } = (await import(TS ? '../images/image-dimensions.ts' : '../images/image-dimensions.js')) as typeof ImageDimensionsModule;

/** Base64 characters read at a time: a whole number of groups of four (1 MiB; 768 KiB decoded). */
const TEXT_CHUNK = 1024 * 1024;
/** Image bytes read at a time: a whole number of groups of three. */
const BYTES_CHUNK = 768 * 1024;
/**
 * Strings are made of at most this many characters at a time: a young object. Strings of a MiB went
 * to V8's large-object space, which only a full collection frees: on the main thread (WORKERS=0)
 * they made most of its time garbage collection.
 */
const STRING_SLICE = 64 * 1024;

/** What decoding a staged base64 image found. */
export interface DecodedImage {
  sha256: string;
  bytes: number;
  mime: ImageBytesModule.ImageMime;
  width?: number;
  height?: number;
  /**
   * The upstream's base64 text itself (ASCII), when asked for and it is exactly what encoding the
   * image would give (the standard alphabet, padded): a `b64_json` answer reuses it as it is.
   */
  text?: ArrayBuffer;
}

/** The image is not a PNG, JPEG or WebP: the message is the one the client sees (a 502). */
export class NotAnImage extends Error {
  constructor() {
    super('upstream returned data that is not a PNG, JPEG or WebP image');
    this.name = 'NotAnImage';
  }
}

/**
 * Decodes the base64 text in the file at `path` into the same file, in place (the bytes written
 * always lie before the text still to be read: 3 bytes for every 4 characters), hashing them and
 * reading their type and dimensions from the first chunk. `keepText`: also answers the text itself.
 */
export async function decodeBase64File(path: string, keepText: boolean): Promise<DecodedImage> {
  const file = await open(path, 'r+');
  try {
    const textBytes = (await file.stat()).size;
    const text = keepText ? new Uint8Array(new ArrayBuffer(textBytes)) : undefined;
    const chunk = Buffer.allocUnsafeSlow(TEXT_CHUNK);
    const decoded = Buffer.allocUnsafeSlow((TEXT_CHUNK / 4) * 3);
    const hash = createHash('sha256');
    let standardAlphabet = true;
    let readAt = 0;
    let writeAt = 0;
    let found: Pick<DecodedImage, 'mime' | 'width' | 'height'> | undefined;
    while (readAt < textBytes) {
      const length = await readFully(file, chunk, Math.min(TEXT_CHUNK, textBytes - readAt), readAt);
      const piece = chunk.subarray(0, length);
      text?.set(piece, readAt);
      // Base64url's two characters: decodable, but not the text a standard encoder gives.
      if (standardAlphabet && (piece.includes(0x2d) || piece.includes(0x5f))) standardAlphabet = false;
      let n = 0;
      for (let at = 0; at < length; at += STRING_SLICE) n += decoded.write(piece.toString('latin1', at, Math.min(at + STRING_SLICE, length)), n, 'base64');
      const bytes = decoded.subarray(0, n);
      if (!found) {
        const mime = sniffImageType(bytes);
        if (!mime) throw new NotAnImage();
        found = { mime, ...imageDimensions(bytes.subarray(0, DIMENSION_HEADER_BYTES)) };
      }
      hash.update(bytes);
      await writeFully(file, bytes, writeAt);
      readAt += length;
      writeAt += n;
    }
    if (!found) throw new NotAnImage();
    await file.truncate(writeAt);
    const image: DecodedImage = { sha256: hash.digest('hex'), bytes: writeAt, ...found };
    if (text && standardAlphabet && (await isCanonical(file, text, writeAt))) image.text = text.buffer as ArrayBuffer;
    return image;
  } finally {
    await file.close();
  }
}

/**
 * Whether `text` is exactly the standard base64 of the `bytes` decoded from it: padded to groups of
 * four, no padding inside, and its last group the encoding of the last bytes (unused bits zero).
 */
async function isCanonical(file: FileHandle, text: Uint8Array, bytes: number): Promise<boolean> {
  if (text.length % 4 !== 0 || text.length / 4 !== Math.ceil(bytes / 3)) return false;
  if (text.length === 0) return true;
  const lastBytes = bytes - (text.length / 4 - 1) * 3;
  const tail = Buffer.alloc(lastBytes);
  await readFully(file, tail, lastBytes, bytes - lastBytes);
  return Buffer.from(tail.toString('base64'), 'latin1').equals(text.subarray(text.length - 4));
}

/** The standard base64 of the file at `path`, as ASCII bytes in an ArrayBuffer of its own (to be moved, not copied). */
export async function encodeFileBase64(path: string): Promise<ArrayBuffer> {
  const file = await open(path, 'r');
  try {
    const bytes = (await file.stat()).size;
    const out = Buffer.from(new ArrayBuffer(Math.ceil(bytes / 3) * 4));
    const chunk = Buffer.allocUnsafeSlow(BYTES_CHUNK);
    let readAt = 0;
    let writeAt = 0;
    while (readAt < bytes) {
      const length = await readFully(file, chunk, Math.min(BYTES_CHUNK, bytes - readAt), readAt);
      for (let at = 0; at < length; at += (STRING_SLICE / 4) * 3) {
        writeAt += out.write(chunk.toString('base64', at, Math.min(at + (STRING_SLICE / 4) * 3, length)), writeAt, 'latin1');
      }
      readAt += length;
    }
    return out.buffer as ArrayBuffer;
  } finally {
    await file.close();
  }
}

/** The sha256 of the file at `path` (a downloaded image, staged). */
export async function hashFile(path: string): Promise<string> {
  const file = await open(path, 'r');
  try {
    const hash = createHash('sha256');
    const chunk = Buffer.allocUnsafeSlow(BYTES_CHUNK);
    for (;;) {
      const { bytesRead } = await file.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) break;
      hash.update(chunk.subarray(0, bytesRead));
    }
    return hash.digest('hex');
  } finally {
    await file.close();
  }
}

async function readFully(file: FileHandle, into: Buffer, length: number, position: number): Promise<number> {
  let read = 0;
  while (read < length) {
    const { bytesRead } = await file.read(into, read, length - read, position + read);
    if (bytesRead === 0) break;
    read += bytesRead;
  }
  return read;
}

async function writeFully(file: FileHandle, data: Buffer, position: number): Promise<void> {
  let written = 0;
  while (written < data.length) {
    const { bytesWritten } = await file.write(data, written, data.length - written, position + written);
    written += bytesWritten;
  }
}
