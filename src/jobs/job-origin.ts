import type { GenerationEvent } from '../generation/generation-events.js';
import type { GenerationResult, ImageResult } from '../generation/image-generation.js';

/**
 * Job rows keep image URLs without an origin unless PUBLIC_BASE_URL is set: the origin a client
 * called (its Host header) is its own to see, never saved for others to be handed. A reader's
 * origin is put in front when the job is read: GET /v1/jobs/{id}, its events, a request waiting on it.
 */
export function storedJobOrigin(configured: string | undefined): string {
  return configured?.replace(/\/+$/, '') ?? '';
}

const withOrigin = (image: ImageResult, origin: string): ImageResult =>
  image.url?.startsWith('/') ? { ...image, url: `${origin}${image.url}` } : image;

/** A job's result with `origin` in front of its image paths (URLs that have an origin stay as they are). */
export function resultWithOrigin(result: GenerationResult, origin: string): GenerationResult {
  return result.images.some((image) => image.url?.startsWith('/')) ? { ...result, images: result.images.map((image) => withOrigin(image, origin)) } : result;
}

/** A job's event with `origin` in front of the image paths it carries. */
export function eventWithOrigin(event: GenerationEvent, origin: string): GenerationEvent {
  if (event.type === 'image') return { ...event, image: withOrigin(event.image, origin) };
  if (event.type === 'succeeded') return { ...event, result: resultWithOrigin(event.result, origin) };
  return event;
}
