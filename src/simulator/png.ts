import { createHash } from 'node:crypto';
import { crc32, deflateSync } from 'node:zlib';

export interface Rgb {
  r: number;
  g: number;
  b: number;
}

/** Width and height of every simulated image, whatever size was asked for. */
export const SIMULATED_IMAGE_SIDE = 64;

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/**
 * The colour of the `index`-th image made for `prompt`. Deterministic, so a test can tell which
 * prompt an image came from; later images of one request differ so that they are distinct files.
 */
export function colourForPrompt(prompt: string, index = 0): Rgb {
  const seed = index === 0 ? prompt : `${prompt}\u0000${index}`;
  const digest = createHash('sha256').update(seed).digest();
  return { r: digest[0] ?? 0, g: digest[1] ?? 0, b: digest[2] ?? 0 };
}

// Solid-colour PNGs are ~100 bytes, but bound the cache anyway: prompts in a benchmark are unbounded.
const MAX_CACHED_PNGS = 4096;
const pngCache = new Map<string, Buffer>();

/** A valid 64x64 RGB PNG filled with one colour. */
export function solidPng(colour: Rgb): Buffer {
  const key = `${colour.r},${colour.g},${colour.b}`;
  const cached = pngCache.get(key);
  if (cached) return cached;
  const png = encodeSolidPng(colour, SIMULATED_IMAGE_SIDE, SIMULATED_IMAGE_SIDE);
  if (pngCache.size >= MAX_CACHED_PNGS) pngCache.clear();
  pngCache.set(key, png);
  return png;
}

/**
 * `colour`'s PNG made distinct by `serial` in a tEXt chunk: the same picture, other bytes, as two
 * renders of one prompt never match byte for byte (the store is content-addressed). Not cached.
 */
export function distinctSolidPng(colour: Rgb, serial: number): Buffer {
  const png = solidPng(colour);
  const iend = png.length - 12;
  return Buffer.concat([png.subarray(0, iend), pngChunk('tEXt', Buffer.from(`Comment\u0000simulated render ${serial}`, 'latin1')), png.subarray(iend)]);
}

export function pngForPrompt(prompt: string, index = 0): Buffer {
  return solidPng(colourForPrompt(prompt, index));
}

function encodeSolidPng(colour: Rgb, width: number, height: number): Buffer {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // colour type: truecolour RGB
  header[10] = 0; // compression: deflate
  header[11] = 0; // filter method
  header[12] = 0; // no interlace

  const rowLength = 1 + width * 3;
  const raw = Buffer.alloc(rowLength * height);
  for (let y = 0; y < height; y++) {
    const rowStart = y * rowLength;
    raw[rowStart] = 0; // filter type: none
    for (let x = 0; x < width; x++) {
      const pixel = rowStart + 1 + x * 3;
      raw[pixel] = colour.r;
      raw[pixel + 1] = colour.g;
      raw[pixel + 2] = colour.b;
    }
  }

  return Buffer.concat([
    PNG_SIGNATURE,
    pngChunk('IHDR', header),
    pngChunk('IDAT', deflateSync(raw)),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

function pngChunk(type: string, data: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length, 0);
  const typeAndData = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(typeAndData), 0);
  return Buffer.concat([length, typeAndData, crc]);
}
