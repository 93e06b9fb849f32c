import { describe, expect, it } from 'vitest';
import sharp, { type Sharp } from 'sharp';
import { imageDimensions } from '../src/images/image-dimensions.js';

/** An image of the given size with some detail, so every encoder writes a real frame. */
function source(width: number, height: number): Sharp {
  const raw = Buffer.alloc(width * height * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 7919) % 251;
  return sharp(raw, { raw: { width, height, channels: 3 } });
}

const encodings: Array<[string, (s: Sharp) => Sharp]> = [
  ['PNG', (s) => s.png()],
  ['interlaced PNG', (s) => s.png({ progressive: true })],
  ['baseline JPEG', (s) => s.jpeg()],
  ['progressive JPEG', (s) => s.jpeg({ progressive: true })],
  ['JPEG with EXIF and an ICC profile', (s) => s.withMetadata({ exif: { IFD0: { Copyright: 'bench' } } }).withIccProfile('p3').jpeg()],
  ['lossy WebP', (s) => s.webp({ quality: 80 })],
  ['lossless WebP', (s) => s.webp({ lossless: true })],
  ['lossy WebP with alpha (extended format)', (s) => s.ensureAlpha(0.5).webp({ quality: 80 })],
];

describe('image dimensions read from the header', () => {
  for (const [name, encode] of encodings) {
    for (const [width, height] of [[1, 1], [37, 19], [640, 333]] as const) {
      it(`match sharp's for a ${width}x${height} ${name}`, async () => {
        const bytes = await encode(source(width, height)).toBuffer();
        const meta = await sharp(bytes).metadata();
        expect(imageDimensions(bytes)).toEqual({ width: meta.width, height: meta.height });
        expect(meta).toMatchObject({ width, height });
      });
    }
  }

  it('are unknown for a header cut short, so the caller asks sharp', async () => {
    const png = await source(10, 10).png().toBuffer();
    const jpeg = await source(10, 10).jpeg().toBuffer();
    const webp = await source(10, 10).webp().toBuffer();
    expect(imageDimensions(png.subarray(0, 20))).toBeUndefined();
    expect(imageDimensions(jpeg.subarray(0, 4))).toBeUndefined();
    expect(imageDimensions(webp.subarray(0, 16))).toBeUndefined();
  });

  it('are unknown for a JPEG whose frame header lies past the bytes given', async () => {
    const jpeg = await source(10, 10).withIccProfile('p3').jpeg().toBuffer();
    // The ICC profile segment (hundreds of bytes) comes before the frame header.
    expect(imageDimensions(jpeg.subarray(0, 200))).toBeUndefined();
    expect(imageDimensions(jpeg)).toEqual({ width: 10, height: 10 });
  });

  it('are unknown for bytes that are not PNG, JPEG or WebP', () => {
    expect(imageDimensions(Buffer.from('GIF89a\x01\x00\x01\x00', 'latin1'))).toBeUndefined();
    expect(imageDimensions(Buffer.alloc(0))).toBeUndefined();
  });
});
