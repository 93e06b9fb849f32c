import type { FastifyInstance, FastifyRequest } from 'fastify';
import { GatewayError, clipName, invalidField } from '../errors.js';
import { describeModel } from '../catalogue/catalogue.js';
import {
  parseDescribeJson,
  parseDescribeMultipart,
  parseEditJson,
  parseEditMultipart,
  parseGenerateBody,
  parseUpscaleJson,
  parseUpscaleMultipart,
  takeStyleReferences,
  withFetched,
  type DescribeRequest,
  type ImageRequest,
  type ImageUrlRef,
} from '../request/image-request.js';
import { modelAllowed } from '../auth/key-policy.js';
import { readEditParts, type EditParts } from '../request/edit-parts.js';
import type { GenerationCall } from '../generation/generation-pipeline.js';
import type { DescribeCall } from '../generation/image-description.js';
import { answerGeneration, gatewayEvents, streamFlag, whileConnected } from './generation-http.js';
import { wrongBodyType, type BodyType } from '../http/body-types.js';

/** The routes that take files: multipart, or JSON with images as data URLs or URLs. */
const FILES_OR_JSON: readonly BodyType[] = ['multipart/form-data', 'application/json'];

function isJson(request: FastifyRequest): boolean {
  const type = request.headers['content-type'] ?? '';
  return /^application\/(.+\+)?json\b/i.test(type);
}

/** The model a request names, in its usage record even when the request is refused before it is fully read. */
export function noteRequestedModel(app: FastifyInstance, request: FastifyRequest, model: unknown): void {
  app.pipeline.noteRequestedModel(request.outcome, model);
}

/**
 * `"stream": true` asks for the pipeline's events as a stream. It is taken off the body, which the
 * request parsers then read as before; an async job is followed at GET /v1/jobs/{id}/events instead.
 */
function takeStreamFlag(fields: Record<string, unknown> | Map<string, string>): boolean {
  const value = fields instanceof Map ? fields.get('stream') : fields.stream;
  if (fields instanceof Map) fields.delete('stream');
  else delete fields.stream;
  const stream = streamFlag(value, fields instanceof Map);
  const async = fields instanceof Map ? fields.get('async') : fields.async;
  if (stream && (async === true || async === 'true')) {
    throw invalidField('stream', 'cannot be combined with "async": true; follow the job at GET /v1/jobs/{id}/events instead');
  }
  return stream;
}

/** A JSON body as a fresh object (the stream flag is taken off it); anything else is left for the parser to refuse. */
function jsonBody(body: unknown): unknown {
  return typeof body === 'object' && body !== null && !Array.isArray(body) ? { ...(body as Record<string, unknown>) } : body;
}

async function readMultipartEdit(app: FastifyInstance, request: FastifyRequest): Promise<{ imageRequest: ImageRequest; stream: boolean; load: NonNullable<GenerationCall['loadImages']> }> {
  const { fields, images, imagesListed, mask, styleReferences, load } = await readEditParts(app, request, { styleReferences: true });
  noteRequestedModel(app, request, fields.get('model'));
  const stream = takeStreamFlag(fields);
  // Style references may come as files or, as in JSON, in options (data URLs or URLs, fetched once admitted).
  const styled = takeStyleReferences(parseEditMultipart(fields, images, mask, styleReferences, imagesListed), app.config.MAX_UPLOAD_BYTES);
  const fetch = fetchUrls(app, styled.urls);
  return { imageRequest: styled.request, stream, load: fetch ? async (admitted, signal) => fetch(await load(admitted), signal) : load };
}

/** The most input images (a mask and style references included) any model of the catalogue takes in one edit. */
function mostInputImages(app: FastifyInstance): number {
  const counts = app.catalogue.models.flatMap((m) =>
    Object.values(m.edit ?? {}).map((route) => (route?.images?.max ?? 1) + (route?.mask ? 1 : 0) + (route?.styleReferences?.max ?? 0)),
  );
  return Math.max(1, ...counts);
}

/** The most style reference images any model of the catalogue takes in one generate. */
function mostStyleReferences(app: FastifyInstance): number {
  return Math.max(0, ...app.catalogue.models.map((m) => m.generate?.styleReferences?.max ?? 0));
}

const perImageInJson = (app: FastifyInstance) => Math.ceil((app.config.MAX_UPLOAD_BYTES * 4) / 3) + 64;

/**
 * A JSON edit's body limit: room for the most images a model takes, each up to MAX_UPLOAD_BYTES in
 * base64 (4/3 of it), plus 256 KiB for the other fields; never over MAX_REQUEST_BYTES.
 */
export function jsonEditBodyLimit(app: FastifyInstance): number {
  return Math.min(app.config.MAX_REQUEST_BYTES, perImageInJson(app) * mostInputImages(app) + 256 * 1024);
}

/**
 * A generate body is a prompt and a few fields (the default limit, 1 MiB, app.ts), unless a model
 * takes style reference images: then room for them as data URLs, as for an edit's images.
 */
export function generateBodyLimit(app: FastifyInstance): number | undefined {
  const most = mostStyleReferences(app);
  return most === 0 ? undefined : Math.min(app.config.MAX_REQUEST_BYTES, perImageInJson(app) * most + 256 * 1024);
}

/** Fetches a request's images given as URLs under the egress policy, once the pipeline has admitted it. */
function fetchUrls(app: FastifyInstance, urls: ImageUrlRef[]): GenerationCall['loadImages'] {
  if (urls.length === 0) return undefined;
  return async (admitted, signal) => withFetched(admitted, await app.imageFetcher.fetchAll(urls, signal));
}

/** A JSON body with one image (upscale, describe): that image up to MAX_UPLOAD_BYTES in base64, plus 256 KiB; never over MAX_REQUEST_BYTES. */
function oneImageBodyLimit(app: FastifyInstance): number {
  return Math.min(app.config.MAX_REQUEST_BYTES, Math.ceil((app.config.MAX_UPLOAD_BYTES * 4) / 3) + 64 + 256 * 1024);
}

export async function imageRoutes(app: FastifyInstance): Promise<void> {
  // A key sees the models it may use.
  app.get('/v1/models', async (request) => ({
    data: app.catalogue.models.filter((m) => modelAllowed(request.client!, m.id)).map(describeModel),
  }));

  app.get<{ Params: { id: string } }>('/v1/models/:id', async (request) => {
    const model = app.catalogue.find(request.params.id);
    // A model outside the key's allow-list answers as an unknown one: the key does not learn it exists.
    if (!model || !modelAllowed(request.client!, model.id)) throw new GatewayError('not_found', `no model "${clipName(request.params.id)}"; GET /v1/models lists them`);
    return describeModel(model);
  });

  const generateLimit = generateBodyLimit(app);
  app.post('/v1/generate', { ...(generateLimit ? { bodyLimit: generateLimit } : {}), config: { spendsMoney: true } }, async (request, reply) => {
    // Another body type is refused before it is read (src/http/body-types.ts); this is a request with no body.
    if (!isJson(request)) throw wrongBodyType(request);
    noteRequestedModel(app, request, (request.body as { model?: unknown } | null)?.model);
    const body = jsonBody(request.body);
    const stream = typeof body === 'object' && body !== null ? takeStreamFlag(body as Record<string, unknown>) : false;
    // Style reference images given as URLs are fetched only once the request is admitted, as an edit's.
    const { request: imageRequest, urls } = takeStyleReferences(parseGenerateBody(body), app.config.MAX_UPLOAD_BYTES);
    return answerGeneration(app, request, reply, imageRequest, stream ? gatewayEvents : undefined, fetchUrls(app, urls));
  });

  app.post('/v1/edit', { bodyLimit: jsonEditBodyLimit(app), config: { spendsMoney: true, bodyTypes: FILES_OR_JSON } }, async (request, reply) => {
    let imageRequest: ImageRequest;
    let stream = false;
    let load: GenerationCall['loadImages'];
    if (request.isMultipart()) ({ imageRequest, stream, load } = await readMultipartEdit(app, request));
    else if (isJson(request)) {
      // Images given as URLs are fetched under the egress policy, and only once the pipeline has
      // checked the model, the key's allow-list and its limits; data URLs are decoded in the parse.
      const body = (jsonBody(request.body) ?? {}) as { model?: unknown };
      noteRequestedModel(app, request, body.model);
      if (typeof body === 'object') stream = takeStreamFlag(body as Record<string, unknown>);
      const parsed = parseEditJson(body, app.config.MAX_UPLOAD_BYTES);
      const styled = takeStyleReferences(parsed.request, app.config.MAX_UPLOAD_BYTES);
      imageRequest = styled.request;
      load = fetchUrls(app, [...parsed.urls, ...styled.urls]);
    } else throw wrongBodyType(request);
    return answerGeneration(app, request, reply, imageRequest, stream ? gatewayEvents : undefined, load);
  });

  // One image, an optional prompt: through the same pipeline as an edit (limits, usage, jobs, streams).
  app.post('/v1/upscale', { bodyLimit: oneImageBodyLimit(app), config: { spendsMoney: true, bodyTypes: FILES_OR_JSON } }, async (request, reply) => {
    let imageRequest: ImageRequest;
    let stream = false;
    let load: GenerationCall['loadImages'];
    if (request.isMultipart()) {
      const parts = await readEditParts(app, request, { oneImage: true });
      noteRequestedModel(app, request, parts.fields.get('model'));
      stream = takeStreamFlag(parts.fields);
      imageRequest = parseUpscaleMultipart(parts.fields, parts.images);
      load = parts.load;
    } else if (isJson(request)) {
      const body = (jsonBody(request.body) ?? {}) as { model?: unknown };
      noteRequestedModel(app, request, body.model);
      if (typeof body === 'object') stream = takeStreamFlag(body as Record<string, unknown>);
      const parsed = parseUpscaleJson(body, app.config.MAX_UPLOAD_BYTES);
      imageRequest = parsed.request;
      if (parsed.urls.length > 0) load = async (admitted, signal) => withFetched(admitted, await app.imageFetcher.fetchAll(parsed.urls, signal));
    } else throw wrongBodyType(request);
    return answerGeneration(app, request, reply, imageRequest, stream ? gatewayEvents : undefined, load);
  });

  // Text out, nothing stored: not a job, not a stream, no Idempotency-Key (nothing to replay).
  app.post('/v1/describe', { bodyLimit: oneImageBodyLimit(app), config: { spendsMoney: true, bodyTypes: FILES_OR_JSON } }, async (request, reply) => {
    if (request.headers['idempotency-key'] !== undefined) {
      throw invalidField('Idempotency-Key', 'is not taken by POST /v1/describe: a describe is answered at once and stores nothing to replay; send it without the header');
    }
    let describeRequest: DescribeRequest;
    let loadImage: DescribeCall['loadImage'];
    if (request.isMultipart()) {
      const parts = await readEditParts(app, request, { oneImage: true });
      noteRequestedModel(app, request, parts.fields.get('model'));
      describeRequest = parseDescribeMultipart(parts.fields, parts.images);
      loadImage = async (admitted) => ({ ...admitted, image: await parts.readImage(admitted.image) });
    } else if (isJson(request)) {
      const body = (jsonBody(request.body) ?? {}) as { model?: unknown };
      noteRequestedModel(app, request, body.model);
      const parsed = parseDescribeJson(body, app.config.MAX_UPLOAD_BYTES);
      describeRequest = parsed.request;
      const url = parsed.url;
      if (url !== undefined) {
        loadImage = async (admitted, signal) => ({ ...admitted, image: (await app.imageFetcher.fetchAll([{ field: 'image', url }], signal)).get('image') ?? admitted.image });
      }
    } else throw wrongBodyType(request);
    const { signal, release } = whileConnected(reply);
    try {
      const admitted = await app.description.admit({
        client: request.client!,
        request: describeRequest,
        signal,
        outcome: request.outcome,
        ...(loadImage ? { loadImage } : {}),
      });
      reply.headers(admitted.headers);
      return await admitted.run();
    } finally {
      release();
    }
  });
}
