import sharp from 'sharp';

// A small PNG can claim enormous dimensions; refuse to decode more than this many pixels.
const MAX_PIXELS = 64 * 1024 * 1024;
const decode = (bytes: Buffer) => sharp(bytes, { limitInputPixels: MAX_PIXELS });
import { invalidField } from '../errors.js';
import type { InputImage } from '../request/image-request.js';

/**
 * The gateway's masks follow OpenAI: transparent pixels mark the area to change. Ideogram wants
 * black = change, white = keep, same size as the image; the alpha channel is exactly that picture.
 */
export async function toBlackMeansChangeMask(mask: InputImage, image: InputImage): Promise<InputImage> {
  if (mask.mime !== 'image/png') {
    throw invalidField('mask', 'must be a PNG whose transparent pixels mark the area to change');
  }
  const [maskMeta, imageMeta] = await Promise.all([decode(mask.bytes).metadata(), decode(image.bytes).metadata()]).catch((err: Error) => {
    throw invalidField('mask', `mask or image cannot be read (at most ${MAX_PIXELS} pixels): ${err.message}`);
  });
  if (!maskMeta.hasAlpha) {
    throw invalidField('mask', 'has no transparency; transparent pixels mark the area to change');
  }
  if (maskMeta.width !== imageMeta.width || maskMeta.height !== imageMeta.height) {
    throw invalidField(
      'mask',
      `is ${maskMeta.width}x${maskMeta.height} but the image is ${imageMeta.width}x${imageMeta.height}; they must match`,
    );
  }
  const bytes = await decode(mask.bytes).extractChannel('alpha').threshold(128).png().toBuffer();
  const stats = await sharp(bytes).stats();
  if ((stats.channels[0]?.min ?? 255) === 255) {
    throw invalidField('mask', 'has no transparent pixels, so nothing would change');
  }
  return { bytes, mime: 'image/png', filename: 'mask.png' };
}
