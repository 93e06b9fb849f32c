/**
 * Width and height read straight from a PNG, JPEG or WebP header: a few bytes, on the calling
 * thread. sharp's metadata() answers the same, but costs a trip through libvips' thread pool and
 * a sharp instance for every stored image. Undefined when the header does not say (truncated
 * input, a JPEG whose frame header lies past the bytes given): the caller then asks sharp.
 */
export interface ImageDimensions {
  width: number;
  height: number;
}

/** Enough for every PNG and WebP, and for a JPEG unless metadata segments before its frame header are larger. */
export const DIMENSION_HEADER_BYTES = 64 * 1024;

export function imageDimensions(bytes: Uint8Array): ImageDimensions | undefined {
  if (isPng(bytes)) return pngDimensions(bytes);
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return jpegDimensions(bytes);
  if (isWebp(bytes)) return webpDimensions(bytes);
  return undefined;
}

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

function isPng(b: Uint8Array): boolean {
  return b.length >= 8 && PNG_SIGNATURE.every((byte, i) => b[i] === byte);
}

function isWebp(b: Uint8Array): boolean {
  return b.length >= 12 && ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 4) === 'WEBP';
}

const ascii = (b: Uint8Array, at: number, length: number) => String.fromCharCode(...b.subarray(at, at + length));
const u16be = (b: Uint8Array, at: number) => (b[at]! << 8) | b[at + 1]!;
const u16le = (b: Uint8Array, at: number) => b[at]! | (b[at + 1]! << 8);
const u24le = (b: Uint8Array, at: number) => b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16);
const u32be = (b: Uint8Array, at: number) => ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;

const positive = (width: number, height: number): ImageDimensions | undefined =>
  width > 0 && height > 0 ? { width, height } : undefined;

/** IHDR is the first chunk: width and height at bytes 16 and 20. */
function pngDimensions(b: Uint8Array): ImageDimensions | undefined {
  if (b.length < 24 || ascii(b, 12, 4) !== 'IHDR') return undefined;
  return positive(u32be(b, 16), u32be(b, 20));
}

/** Start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC). */
const isStartOfFrame = (marker: number) => marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;

/** Walks the marker segments to the frame header; its height and width follow the precision byte. */
function jpegDimensions(b: Uint8Array): ImageDimensions | undefined {
  let at = 2;
  while (at + 4 <= b.length) {
    if (b[at] !== 0xff) return undefined;
    const marker = b[at + 1]!;
    if (marker === 0xff) {
      at++; // fill byte
      continue;
    }
    // Markers without a length: TEM, RSTn, SOI, EOI.
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd9)) {
      at += 2;
      continue;
    }
    // Start of scan before any frame header: not a JPEG this reader understands.
    if (marker === 0xda) return undefined;
    const length = u16be(b, at + 2);
    if (length < 2) return undefined;
    if (isStartOfFrame(marker)) {
      if (at + 9 > b.length) return undefined;
      return positive(u16be(b, at + 7), u16be(b, at + 5));
    }
    at += 2 + length;
  }
  return undefined;
}

/** The first chunk after the RIFF header says which of the three WebP formats it is. */
function webpDimensions(b: Uint8Array): ImageDimensions | undefined {
  if (b.length < 30) return undefined;
  switch (ascii(b, 12, 4)) {
    case 'VP8 ':
      // Lossy: a key frame's start code 9d 01 2a, then 14-bit width and height (2 bits of scale above).
      if (b[23] !== 0x9d || b[24] !== 0x01 || b[25] !== 0x2a) return undefined;
      return positive(u16le(b, 26) & 0x3fff, u16le(b, 28) & 0x3fff);
    case 'VP8L': {
      // Lossless: signature 0x2f, then width - 1 and height - 1 in 14 bits each.
      if (b[20] !== 0x2f) return undefined;
      const bits = (b[21]! | (b[22]! << 8) | (b[23]! << 16) | (b[24]! << 24)) >>> 0;
      return positive((bits & 0x3fff) + 1, ((bits >>> 14) & 0x3fff) + 1);
    }
    case 'VP8X':
      // Extended: the canvas, width - 1 and height - 1 in 24 bits each.
      return positive(u24le(b, 24) + 1, u24le(b, 27) + 1);
    default:
      return undefined;
  }
}
