import type { StagedImage } from '../images/image-library.js';
import { DecodedBase64 } from './image-reply-parser.js';

/**
 * The predictions family answers in several shapes (see UPSTREAM.md); the OpenAI-compatible and
 * Ideogram routes in their own. This reads all of them into one list of images or one task.
 */
export interface UpstreamImage {
  b64?: string;
  /** A large base64 image, decoded into the image store's staging as the reply arrived. */
  staged?: StagedImage;
  url?: string;
  revisedPrompt?: string;
  seed?: number;
}

export type UpstreamReply =
  | { kind: 'images'; images: UpstreamImage[]; unsafeCount: number; usage?: Record<string, unknown> }
  | { kind: 'task'; taskId: string; pollingUrl?: string };

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v.length > 0 ? v : undefined);

const staged = (v: unknown): StagedImage | undefined => (v instanceof DecodedBase64 ? (v.result as StagedImage) : undefined);

function imageOf(item: unknown): UpstreamImage | undefined {
  if (item instanceof DecodedBase64) return { staged: item.result as StagedImage };
  if (typeof item === 'string') return item.startsWith('http') ? { url: item } : { b64: item };
  if (!isObject(item)) return undefined;
  const decoded = staged(item.bytesBase64) ?? staged(item.b64_json) ?? staged(item.base64) ?? staged(item.b64);
  const b64 = str(item.bytesBase64) ?? str(item.b64_json) ?? str(item.base64) ?? str(item.b64);
  const url = str(item.url) ?? str(item.image_url);
  if (!decoded && !b64 && !url) return undefined;
  const image: UpstreamImage = decoded ? { staged: decoded } : b64 ? { b64 } : { url: url! };
  const revised = str(item.revised_prompt) ?? str(item.revisedPrompt);
  if (revised) image.revisedPrompt = revised;
  if (typeof item.seed === 'number') image.seed = item.seed;
  return image;
}

function taskOf(item: unknown): UpstreamReply | undefined {
  if (!isObject(item)) return undefined;
  const taskId = str(item.taskId) ?? str(item.task_id);
  if (!taskId) return undefined;
  const pollingUrl = str(item.polling_url);
  return pollingUrl ? { kind: 'task', taskId, pollingUrl } : { kind: 'task', taskId };
}

function collect(list: unknown[]): { images: UpstreamImage[]; unsafeCount: number } {
  const images: UpstreamImage[] = [];
  let unsafeCount = 0;
  for (const item of list) {
    const image = imageOf(item);
    if (image) images.push(image);
    // Ideogram: an item judged unsafe may come without a URL.
    else if (isObject(item) && item.is_image_safe === false) unsafeCount++;
  }
  return { images, unsafeCount };
}

/** undefined when the reply has neither images nor a task: the caller reports it as malformed. */
export function normalizeOutput(body: unknown): UpstreamReply | undefined {
  if (!isObject(body)) return undefined;
  const usage = isObject(body.usage) ? body.usage : undefined;
  const withUsage = (r: { images: UpstreamImage[]; unsafeCount: number }): UpstreamReply =>
    usage ? { kind: 'images', ...r, usage } : { kind: 'images', ...r };

  if (Array.isArray(body.data)) return withUsage(collect(body.data));

  const output = body.output;
  if (Array.isArray(output)) {
    const task = taskOf(output[0]);
    if (task) return task;
    return withUsage(collect(output));
  }
  if (output instanceof DecodedBase64) return withUsage(collect([output]));
  if (isObject(output)) {
    const task = taskOf(output);
    if (task) return task;
    const list: unknown[] = [];
    for (const key of ['b64_json', 'images', 'data', 'urls', 'url']) {
      const v = output[key];
      if (Array.isArray(v)) list.push(...v);
      else if (v !== undefined) list.push(v);
    }
    return withUsage(collect(list));
  }
  if (typeof output === 'string') return withUsage(collect([output]));
  const task = taskOf(body);
  if (task) return task;
  return undefined;
}

/** The message an upstream error body carries, in any of the shapes seen. */
export function upstreamErrorMessage(body: unknown): string | undefined {
  if (!isObject(body)) return undefined;
  const error = body.error;
  if (typeof error === 'string') return error;
  if (isObject(error)) return str(error.message) ?? str(error.code);
  if (typeof body.detail === 'string') return body.detail;
  if (Array.isArray(body.detail)) {
    return body.detail
      .map((d) => (isObject(d) ? `${Array.isArray(d.loc) ? d.loc.join('.') + ': ' : ''}${str(d.msg) ?? ''}` : String(d)))
      .join('; ');
  }
  return str(body.message);
}

export function upstreamErrorCode(body: unknown): string | undefined {
  if (!isObject(body) || !isObject(body.error)) return undefined;
  return str(body.error.code) ?? str(body.error.type);
}
