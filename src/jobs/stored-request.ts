import { createHash } from 'node:crypto';
import type { ImageRequest, InputImage } from '../request/image-request.js';

/**
 * An ImageRequest as kept in the jobs table until upstream has it, so a job queued before a restart
 * can still be sent. Image bytes travel as base64 there and are dropped once the job has finished.
 */
interface StoredImage {
  mime: InputImage['mime'];
  filename: string;
  base64: string;
}
type StoredRequest = Omit<ImageRequest, 'images' | 'mask' | 'styleReferences'> & { images: StoredImage[]; mask?: StoredImage; styleReferences?: StoredImage[] };

const toStored = (image: InputImage): StoredImage => ({ mime: image.mime, filename: image.filename, base64: image.bytes.toString('base64') });
const fromStored = (image: StoredImage): InputImage => ({ mime: image.mime, filename: image.filename, bytes: Buffer.from(image.base64, 'base64') });

export function serializeRequest(request: ImageRequest): string {
  const { images, mask, styleReferences, ...rest } = request;
  const stored: StoredRequest = {
    ...rest,
    images: images.map(toStored),
    ...(mask ? { mask: toStored(mask) } : {}),
    ...(styleReferences ? { styleReferences: styleReferences.map(toStored) } : {}),
  };
  return JSON.stringify(stored);
}

export function deserializeRequest(json: string): ImageRequest {
  const { images, mask, styleReferences, ...rest } = JSON.parse(json) as StoredRequest;
  return {
    ...rest,
    images: images.map(fromStored),
    ...(mask ? { mask: fromStored(mask) } : {}),
    ...(styleReferences ? { styleReferences: styleReferences.map(fromStored) } : {}),
  };
}

function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((k) => [k, canonical((value as Record<string, unknown>)[k])]),
    );
  }
  return value;
}

/** The same request, however its fields were ordered or its images sent (multipart or data URL), hashes the same. */
export function requestFingerprint(request: ImageRequest, resolvedModel: string): string {
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  // How the images were sent (a list or one) names them in errors only: not part of what is asked.
  const { images, imagesListed: _listed, mask, styleReferences, model: _model, ...rest } = request;
  const shape = canonical({
    ...rest,
    model: resolvedModel,
    images: images.map((i) => sha(i.bytes)),
    mask: mask ? sha(mask.bytes) : null,
    // Absent for requests without any, so fingerprints of jobs kept before style references stay as they were.
    ...(styleReferences ? { styleReferences: styleReferences.map((i) => sha(i.bytes)) } : {}),
  });
  return createHash('sha256').update(JSON.stringify(shape)).digest('hex');
}
