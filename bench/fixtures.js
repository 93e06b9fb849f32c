// Canned images for the benchmark: noise PNGs (they do not compress, so their size is what a
// real render of that size costs), made once with sharp and kept in bench/.cache/.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import sharp from 'sharp';

const CACHE_DIR = join(dirname(fileURLToPath(import.meta.url)), '.cache');

/** name → approximate PNG size in bytes; noise RGB at 3 bytes a pixel. */
export const IMAGE_SIZES = {
  small: 256,
  '1mib': 1024 * 1024,
  '4mib': 4 * 1024 * 1024,
};

/** A deterministic noise generator (xorshift32), so every run serves the same bytes. */
function noise(length, seed) {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

async function makeNoisePng(targetBytes, seed) {
  // Rows of 3 bytes a pixel plus a filter byte, stored uncompressed: the file is about targetBytes.
  const side = Math.max(4, Math.floor((-1 + Math.sqrt(1 + 12 * targetBytes)) / 6));
  return sharp(noise(side * side * 3, seed), { raw: { width: side, height: side, channels: 3 } })
    .png({ compressionLevel: 0, adaptiveFiltering: false })
    .toBuffer();
}

/** The canned PNGs, generated on first use. */
export async function loadImages() {
  mkdirSync(CACHE_DIR, { recursive: true });
  const images = {};
  let seed = 1;
  for (const [name, bytes] of Object.entries(IMAGE_SIZES)) {
    const path = join(CACHE_DIR, `noise-${name}.png`);
    if (!existsSync(path)) writeFileSync(path, await makeNoisePng(bytes, seed));
    images[name] = readFileSync(path);
    seed++;
  }
  return images;
}

// PNG signature (8) + IHDR chunk (25) = 33 bytes, a multiple of 3: base64 of the head, of a
// 36-byte stamp chunk and of the tail concatenate into the base64 of the whole file.
const HEAD_BYTES = 33;
const STAMP_DIGITS = 18;

/**
 * One canned PNG, made unique per reply by a tEXt chunk holding a counter, so each reply is a new
 * image to the gateway (content-addressed storage would otherwise store one file, under one lock).
 */
export class StampedPng {
  constructor(png) {
    if (png.subarray(12, 16).toString('latin1') !== 'IHDR') throw new Error('not a PNG starting with IHDR');
    this.head = png.subarray(0, HEAD_BYTES);
    this.tail = png.subarray(HEAD_BYTES);
    this.headB64 = this.head.toString('base64');
    this.tailB64 = Buffer.from(this.tail.toString('base64'), 'latin1');
    this.bytes = png.length + 12 + 6 + STAMP_DIGITS;
    this.b64Length = this.headB64.length + 48 + this.tailB64.length;
  }

  /** A tEXt chunk "bench\0<counter>": 12 + 24 bytes. */
  static stamp(counter) {
    const data = Buffer.from(`bench\0${String(counter).padStart(STAMP_DIGITS, '0')}`, 'latin1');
    const chunk = Buffer.alloc(12 + data.length);
    chunk.writeUInt32BE(data.length, 0);
    chunk.write('tEXt', 4, 'latin1');
    data.copy(chunk, 8);
    chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + data.length)), 8 + data.length);
    return chunk;
  }

  /** The PNG with stamp `counter`, as buffers to write in turn. */
  pieces(counter) {
    return [this.head, StampedPng.stamp(counter), this.tail];
  }

  /** Its base64, as buffers to write in turn. */
  base64Pieces(counter) {
    return [Buffer.from(this.headB64 + StampedPng.stamp(counter).toString('base64'), 'latin1'), this.tailB64];
  }
}
