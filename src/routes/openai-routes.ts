/**
 * OpenAI's Images API in front of the gateway: `POST /v1/images/generations` (JSON) and
 * `POST /v1/images/edits` (multipart), so OpenAI's SDKs work with only `baseURL` and `apiKey` changed.
 * Each body is translated into an ImageRequest and run by the generation pipeline, as /v1/generate
 * and /v1/edit are: validation, limits, storage, usage and idempotency are the same. With
 * `stream: true` the answer is OpenAI's image event stream. OpenAI's `size` reaches a model that
 * takes its shape only as an aspect ratio as that ratio (sizeAsAspectRatio), translated for each
 * model of a fallback chain in turn.
 */
import { readEditParts, type EditParts } from '../request/edit-parts.js';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { GatewayError, clipName, invalidField, type ErrorCode } from '../errors.js';
import { parseEditMultipart, parseGenerateBody, type ImageRequest } from '../request/image-request.js';
import type { GenerationResult, ImageResult } from '../generation/image-generation.js';
import { noteRequestedModel } from './image-routes.js';
import { answerGeneration, streamFlag, type StreamDialect } from './generation-http.js';
import { routeFor } from '../catalogue/catalogue.js';
import type { ModelSpec, UpstreamRoute } from '../catalogue/model-spec.js';
import { wrongBodyType } from '../http/body-types.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** `openai`: the one error handler (app.ts) answers this route's errors in OpenAI's shape. */
    errorShape?: 'openai';
  }
}

/** OpenAI's parameters that the catalogue holds as model-specific upstream options. */
const OPTION_FIELDS = ['moderation', 'input_fidelity', 'output_compression'] as const;

const OPENAI_FIELDS = [
  'model',
  'prompt',
  'n',
  'size',
  'quality',
  'response_format',
  'output_format',
  'background',
  'style',
  ...OPTION_FIELDS,
  'user',
  'stream',
  'partial_images',
];

/** Gateway fields the façade also takes, for models that OpenAI's parameters cannot fully reach (aspect ratios, seeds, ...). */
const GATEWAY_FIELDS = ['aspect_ratio', 'seed', 'negative_prompt', 'options', 'fallback_models', 'fallback_on_timeout'];

const GENERATION_FIELDS = [...OPENAI_FIELDS, ...GATEWAY_FIELDS];
const EDIT_FIELDS = [...OPENAI_FIELDS, ...GATEWAY_FIELDS, 'mode'];

interface OpenAiBody {
  /** The fields under the gateway's own names, for parseGenerateBody / parseEditMultipart. */
  gatewayFields: Record<string, unknown>;
  /** OPTION_FIELDS given, merged into the request's options after parsing. */
  options: Record<string, unknown>;
  /** `stream: true`: the answer is an event stream. */
  stream: boolean;
}

/** OpenAI's partial_images: 0 to 3 previews before each image (multipart sends the number as text). */
function checkPartialImages(value: unknown): void {
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 3) throw invalidField('partial_images', 'must be an integer from 0 to 3', [0, 1, 2, 3]);
}

/**
 * Sorts an OpenAI body into the gateway's fields and options. Nothing is dropped silently except
 * `user`, which OpenAI takes for abuse monitoring: here the client key already identifies the caller.
 */
function splitOpenAiBody(body: Record<string, unknown>, accepted: readonly string[], form: boolean): OpenAiBody {
  const gatewayFields: Record<string, unknown> = {};
  const options: Record<string, unknown> = {};
  let stream = false;
  for (const [name, value] of Object.entries(body)) {
    if (!accepted.includes(name)) throw invalidField(clipName(name), 'is not a parameter of this endpoint', accepted);
    // OpenAI's parameters are nullable: null asks for the default.
    if (value === null || name === 'user') continue;
    if (name === 'stream') {
      stream = streamFlag(value, form);
    } else if (name === 'partial_images') {
      // No upstream sends previews today, so a stream has only the completed images (OpenAI allows fewer partials than asked).
      checkPartialImages(value);
    } else if ((OPTION_FIELDS as readonly string[]).includes(name)) {
      // Multipart sends every field as text; the option's rule expects the number.
      options[name] = name === 'output_compression' && typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
    } else {
      gatewayFields[name] = value;
    }
  }
  return { gatewayFields, options, stream };
}

/** OpenAI answers its gpt-image models with base64 and dall-e with URLs unless asked otherwise; so does the façade. */
function defaultResponseFormat(app: FastifyInstance, model: unknown): 'url' | 'b64_json' {
  const spec = typeof model === 'string' ? app.catalogue.find(model) : undefined;
  return spec?.id.startsWith('gpt-image') ? 'b64_json' : 'url';
}

function withOptions(request: ImageRequest, options: Record<string, unknown>): ImageRequest {
  return Object.keys(options).length === 0 ? request : { ...request, options: { ...request.options, ...options } };
}

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/** The route a request would take, or none where the pipeline will refuse it (no such operation or mode) in its own words. */
function routeOf(model: ModelSpec, request: ImageRequest): UpstreamRoute | undefined {
  try {
    return routeFor(model, request.operation, request.mode, request.mask !== undefined).route;
  } catch {
    return undefined;
  }
}

/**
 * OpenAI's `size` for a model whose route takes its shape only as `aspect_ratio` (Ideogram 3.0,
 * FLUX.1 Kontext, ...; the catalogue says which): `WxH` becomes the reduced ratio `W:H`, the
 * gateway's own form of aspect_ratio, which the model's rule then judges and its transform writes
 * in the upstream's form (Ideogram `1x1`); `auto` becomes no ratio (the model's default). A ratio
 * the model does not take, a size of another form, or both fields given: a 400 on `size`. A model
 * taking `size` keeps it, but `auto` where its sizes have none becomes no size (its default). Any
 * other request (an unknown model, a route the model lacks) is left as it is, for the pipeline's
 * usual checks and errors. /v1/generate and /v1/edit do not translate.
 * The pipeline calls it once per model of a chain, with the request as asked and that model's id
 * (GenerationCall.forModel): a fallback model gets its own shape, not the first model's.
 */
function sizeAsAspectRatio(app: FastifyInstance, request: ImageRequest): ImageRequest {
  const { size, ...params } = request.params;
  if (size === undefined) return request;
  const model = app.catalogue.find(request.model);
  const route = model && !model.retired ? routeOf(model, request) : undefined;
  const ratioRule = route?.params.aspect_ratio?.rule;
  if (!model || !route) return request;
  const sizeParam = route.params.size;
  if (sizeParam) {
    // OpenAI's "auto" is the model's default: a model whose sizes have no "auto" (dall-e-3, FLUX.2;
    // often a fallback after a gpt-image model) is sent no size, unless the route cannot go without one.
    const autoAsDefault = size === 'auto' && !sizeParam.required && sizeParam.rule.check('auto') !== undefined;
    return autoAsDefault ? { ...request, params } : request;
  }
  // OpenAI's default: a route that takes no shape at all (an Ideogram masked edit) makes its own.
  if (size === 'auto' && !ratioRule) return { ...request, params };
  if (!ratioRule) return request;
  const ratios = ratioRule.values ?? ratioRule.allowed;
  const takes = `${model.id} takes its shape as aspect_ratio (${ratioRule.allowed})`;
  // "auto" asks for the model's default shape, which an aspect_ratio given beside it sets.
  if (size === 'auto') return { ...request, params };
  if (params.aspect_ratio !== undefined) {
    throw invalidField('size', `give size or aspect_ratio, not both: ${takes}, to which size is translated`, ratios);
  }
  // Any sides, small ones too: only their ratio goes upstream (9x16 is 9:16).
  const sides = typeof size === 'string' ? /^(\d{1,5})x(\d{1,5})$/.exec(size) : null;
  const dimensions = sides ? { width: Number(sides[1]), height: Number(sides[2]) } : undefined;
  if (!dimensions || dimensions.width === 0 || dimensions.height === 0) {
    throw invalidField('size', `must be WIDTHxHEIGHT or "auto" for ${model.id}: ${takes}, and a size is sent as its reduced ratio (1024x1024 as 1:1)`, ratios);
  }
  const { width, height } = dimensions;
  const divisor = gcd(width, height);
  const ratio = `${width / divisor}:${height / divisor}`;
  if (ratioRule.check(ratio) !== undefined) {
    throw invalidField('size', `${size} has the aspect ratio ${ratio}, which ${model.id} does not take: ${takes}; give a size whose width:height reduces to one of those, or aspect_ratio`, ratios);
  }
  return { ...request, params: { ...params, aspect_ratio: ratio } };
}

/** An OpenAI request in the gateway's terms, and whether it asked for a stream. */
interface OpenAiRequest {
  imageRequest: ImageRequest;
  stream: boolean;
  /** An edit's uploads, read from disk once the request is admitted. */
  load?: EditParts['load'];
}

/** A stream's images always come as base64, as OpenAI's do; otherwise OpenAI's default for the model. */
function responseFormatOf(app: FastifyInstance, fields: Record<string, unknown>, stream: boolean): void {
  if (stream) fields.response_format = 'b64_json';
  else fields.response_format ??= defaultResponseFormat(app, fields.model);
}

function generationRequest(app: FastifyInstance, raw: unknown): OpenAiRequest {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalidField('(body)', 'must be a JSON object');
  const { gatewayFields, options, stream } = splitOpenAiBody(raw as Record<string, unknown>, GENERATION_FIELDS, false);
  responseFormatOf(app, gatewayFields, stream);
  return { imageRequest: withOptions(parseGenerateBody(gatewayFields), options), stream };
}

/** OpenAI's multipart edit: files `image` (or repeated `image[]`) and `mask`, the rest text fields. */
async function editRequest(app: FastifyInstance, request: FastifyRequest): Promise<OpenAiRequest> {
  const { fields: parts, images, imagesListed, mask, load } = await readEditParts(app, request);
  const fields = Object.fromEntries(parts);
  noteRequestedModel(app, request, fields.model);
  const { gatewayFields, options, stream } = splitOpenAiBody(fields, EDIT_FIELDS, true);
  responseFormatOf(app, gatewayFields, stream);
  const text = new Map(Object.entries(gatewayFields).map(([name, value]) => [name, String(value)]));
  return { imageRequest: withOptions(parseEditMultipart(text, images, mask, [], imagesListed), options), stream, load };
}

/** The gateway's answer in OpenAI's ImagesResponse shape. */
function toImagesResponse(result: GenerationResult, responseFormat: 'url' | 'b64_json') {
  return {
    created: result.created,
    data: result.images.map((image) => ({
      // An image storage could not take (no URL) comes inline whatever was asked.
      ...(responseFormat === 'b64_json' || image.url === undefined ? { b64_json: image.b64_json } : { url: image.url }),
      ...(image.revised_prompt !== undefined ? { revised_prompt: image.revised_prompt } : {}),
    })),
    // OpenAI's token counts where the upstream reply carries them (gpt-image), plus the gateway's own.
    usage: { ...result.usage.upstream_tokens, images: result.usage.images, estimated_cost_usd: result.usage.estimated_cost_usd },
  };
}

/** OpenAI's error `type` (and `code`, where OpenAI has a well-known one) for each gateway code. */
const OPENAI_ERROR_KIND: Record<ErrorCode, { type: string; code?: string }> = {
  invalid_request: { type: 'invalid_request_error' },
  unauthorized: { type: 'authentication_error', code: 'invalid_api_key' },
  forbidden: { type: 'permission_error' },
  not_found: { type: 'invalid_request_error' },
  conflict: { type: 'invalid_request_error' },
  request_timeout: { type: 'invalid_request_error' },
  model_retired: { type: 'invalid_request_error' },
  payload_too_large: { type: 'invalid_request_error' },
  unsupported_media_type: { type: 'invalid_request_error' },
  content_rejected: { type: 'invalid_request_error', code: 'content_policy_violation' },
  rate_limited: { type: 'rate_limit_error', code: 'rate_limit_exceeded' },
  upstream_error: { type: 'server_error' },
  upstream_timeout: { type: 'server_error' },
  service_unavailable: { type: 'server_error' },
  storage_full: { type: 'server_error' },
  paid_image_lost: { type: 'server_error' },
  internal_error: { type: 'server_error' },
};

/** A field as the OpenAI caller wrote it: `options.moderation` was `moderation`, `image[1]` was one of the `image` files. */
function openAiParam(field: string): string | null {
  if (field === '(body)') return null;
  const option = field.startsWith('options.') ? field.slice('options.'.length) : undefined;
  if (option !== undefined && (OPTION_FIELDS as readonly string[]).includes(option)) return option;
  return field.replace(/\[\d+\]$/, '');
}

/** The gateway's routes as the façade names them; upscale and describe have no façade route. */
const FACADE_ROUTE: Readonly<Record<string, string>> = { 'POST /v1/generate': 'POST /v1/images/generations', 'POST /v1/edit': 'POST /v1/images/edits' };

/** `{"error":{"message","type","param","code"}}`; the request id travels in the `x-request-id` header, where the SDKs read it. */
export function openAiErrorBody(err: GatewayError) {
  const kind = OPENAI_ERROR_KIND[err.code];
  const field = err.details.find((d) => d.field !== undefined)?.field;
  const param = field === undefined ? null : openAiParam(field);
  let message = err.message;
  for (const name of OPTION_FIELDS) message = message.replaceAll(`options.${name}`, name);
  // A model asked for an operation it lacks is told where to go (catalogue.ts endpointsOf), here in the façade's routes.
  message = message.replace(/use (POST \/v1\/\w+(?: or POST \/v1\/\w+)*)$/, (_, routes: string) => `use ${routes.split(' or ').map((r) => FACADE_ROUTE[r] ?? r).join(' or ')}`);
  return { error: { message, type: kind.type, param, code: kind.code ?? err.code } };
}

/** Routes registered with `config: { errorShape: 'openai' }` answer errors in OpenAI's shape. */
export function answersOpenAiErrors(request: FastifyRequest): boolean {
  return request.routeOptions.config?.errorShape === 'openai';
}

/**
 * OpenAI's `usage` of one image's event: its share of the request's token counts (where upstream
 * reports them, gpt-image; else 0) and of the gateway's `images` and `estimated_cost_usd`, so the
 * events of a request add up to its usage.
 */
function eventUsage(result: GenerationResult, index: number) {
  const n = Math.max(1, result.images.length);
  const tokens = (result.usage.upstream_tokens ?? {}) as Record<string, unknown>;
  const details = (tokens.input_tokens_details ?? {}) as Record<string, unknown>;
  // Whole tokens: the last image takes what an even split leaves over.
  const share = (total: unknown) => {
    if (typeof total !== 'number') return 0;
    const each = Math.floor(total / n);
    return index === n - 1 ? total - each * (n - 1) : each;
  };
  const cost = result.usage.estimated_cost_usd;
  return {
    input_tokens: share(tokens.input_tokens),
    input_tokens_details: { image_tokens: share(details.image_tokens), text_tokens: share(details.text_tokens) },
    output_tokens: share(tokens.output_tokens),
    total_tokens: share(tokens.total_tokens),
    images: 1,
    estimated_cost_usd: cost === null ? null : Math.round((cost / n) * 1e6) / 1e6,
  };
}

/** OpenAI's image events know four qualities; dall-e-3's `hd` and `standard` are its high and medium. */
const OPENAI_QUALITY: Record<string, string> = { low: 'low', medium: 'medium', high: 'high', auto: 'auto', hd: 'high', standard: 'medium' };

const FORMAT_OF_MIME: Record<string, string> = { 'image/png': 'png', 'image/jpeg': 'jpeg', 'image/webp': 'webp' };

/** What OpenAI's image events say of an image besides its bytes: as asked, or as made. */
function imageSettings(request: ImageRequest, image: Pick<ImageResult, 'width' | 'height' | 'mime_type'> | undefined) {
  return {
    size: image ? `${image.width}x${image.height}` : typeof request.params.size === 'string' ? request.params.size : 'auto',
    quality: Object.hasOwn(OPENAI_QUALITY, String(request.params.quality)) ? OPENAI_QUALITY[String(request.params.quality)]! : 'auto',
    background: typeof request.params.background === 'string' ? request.params.background : 'auto',
    output_format: image ? (Object.hasOwn(FORMAT_OF_MIME, image.mime_type) ? FORMAT_OF_MIME[image.mime_type]! : 'png') : typeof request.params.output_format === 'string' ? request.params.output_format : 'png',
  };
}

/**
 * OpenAI's image events: `<prefix>.partial_image` for previews (none today: no upstream sends
 * them), one `<prefix>.completed` per image once the request has succeeded (its usage is known only
 * then), and an `error` event for a failure. The gateway's other events have no OpenAI form: the
 * stream's keep-alive comments hold the connection while they happen.
 */
function openAiEvents(prefix: 'image_generation' | 'image_edit', imageRequest: ImageRequest): StreamDialect {
  return (event) => {
    const createdAt = Math.floor(Date.now() / 1000);
    switch (event.type) {
      case 'partial_image': {
        const type = `${prefix}.partial_image`;
        return [[type, { type, b64_json: event.b64_json, created_at: createdAt, ...imageSettings(imageRequest, undefined), partial_image_index: event.partial_image_index }]];
      }
      case 'succeeded': {
        const type = `${prefix}.completed`;
        return event.result.images.map((image, index) => [
          type,
          { type, b64_json: image.b64_json, created_at: createdAt, ...imageSettings(imageRequest, image), usage: eventUsage(event.result, index) },
        ]);
      }
      case 'failed':
        return [['error', { type: 'error', error: openAiErrorBody(event.error).error }]];
      default:
        return [];
    }
  };
}

async function run(app: FastifyInstance, request: FastifyRequest, reply: FastifyReply, openAi: OpenAiRequest, prefix: 'image_generation' | 'image_edit') {
  const { stream, load, imageRequest } = openAi;
  // The pipeline translates size for each model it tries (the first, then each fallback), recording a refusal as its own.
  const forModel = (asked: ImageRequest) => sizeAsAspectRatio(app, asked);
  // The events echo the size as asked (a preview's) or as made (an image's), never the ratio it became.
  if (stream) return answerGeneration(app, request, reply, imageRequest, openAiEvents(prefix, imageRequest), load, forModel);
  const result = (await answerGeneration(app, request, reply, imageRequest, undefined, load, forModel)) as GenerationResult | { status_url: string };
  // The façade never runs async (OpenAI's shape has no job), so a job is always waited for.
  if (!('images' in result)) throw new GatewayError('internal_error', 'an OpenAI-compatible request answered with a job');
  return toImagesResponse(result, imageRequest.responseFormat);
}

export async function openAiRoutes(app: FastifyInstance): Promise<void> {
  const config = { errorShape: 'openai' as const, spendsMoney: true };

  // A prompt and a few fields: the default body limit of 1 MiB (app.ts), refused by its Content-Length before it is read.
  app.post('/v1/images/generations', { config }, async (request, reply) => {
    // Another body type is refused before it is read (src/http/body-types.ts); this is a request with no body.
    if (!/^application\/json\b/i.test(request.headers['content-type'] ?? '')) throw wrongBodyType(request);
    noteRequestedModel(app, request, (request.body as { model?: unknown } | null)?.model);
    return run(app, request, reply, generationRequest(app, request.body), 'image_generation');
  });

  app.post('/v1/images/edits', { config: { ...config, bodyTypes: ['multipart/form-data'] } }, async (request, reply) => {
    if (!request.isMultipart()) throw wrongBodyType(request);
    return run(app, request, reply, await editRequest(app, request), 'image_edit');
  });
}
