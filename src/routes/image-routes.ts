import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { GatewayError, invalidField } from '../errors.js';
import { describeModel, pricePerImage, routeFor } from '../catalogue/catalogue.js';
import { EDIT_MODES } from '../catalogue/model-spec.js';
import { imageUrlsOfEditJson, parseEditJson, parseEditMultipart, parseGenerateBody, type ImageRequest } from '../request/image-request.js';
import type { GenerationResult, PreparedGeneration } from '../generation/image-generation.js';
import { requestFingerprint } from '../jobs/stored-request.js';
import type { Reservation } from '../limits/key-limits.js';
import { modelAllowed } from '../auth/key-policy.js';
import { readEditParts } from '../request/edit-parts.js';
import type { ImageOwner } from '../images/image-library.js';

function isJson(request: FastifyRequest): boolean {
  const type = request.headers['content-type'] ?? '';
  return /^application\/(.+\+)?json\b/i.test(type);
}

export class ClientGone extends Error {
  constructor() {
    super('the client closed the connection');
    this.name = 'ClientGone';
  }
}

/** Why a direct request was cut short by UPSTREAM_TIMEOUT_MS. */
class UpstreamDeadline extends Error {
  constructor() {
    super('the upstream deadline passed');
    this.name = 'UpstreamDeadline';
  }
}

/** Where returned image URLs point: PUBLIC_BASE_URL, else the origin the client called. */
function publicBaseUrl(app: FastifyInstance, request: FastifyRequest): string {
  return app.config.PUBLIC_BASE_URL?.replace(/\/+$/, '') ?? `${request.protocol}://${request.host}`;
}

/**
 * The model a request names, in its usage record even when the request is refused before it is
 * fully read (an unknown field, a bad size): a catalogue id where it is one, else as given.
 */
export function noteRequestedModel(app: FastifyInstance, request: FastifyRequest, model: unknown): void {
  if (typeof model !== 'string' || model.length === 0 || model.length > 200) return;
  request.outcome.model = app.catalogue.find(model)?.id ?? model;
}

/** Who a stored image belongs to: the client key that asked for it. */
function ownerOf(request: FastifyRequest): ImageOwner | undefined {
  return request.client ? { keyId: request.client.id, team: request.client.team } : undefined;
}

interface JobAccepted {
  id: string;
  status: string;
  status_url: string;
}

/**
 * Runs one request. A plain request goes straight upstream under UPSTREAM_TIMEOUT_MS and is aborted
 * when the client goes away. An async request, or one with an Idempotency-Key, runs as a persisted
 * job: a retry joins the first request's job instead of paying twice.
 */
export async function generateFor(
  app: FastifyInstance,
  request: FastifyRequest,
  reply: FastifyReply,
  imageRequest: ImageRequest,
): Promise<GenerationResult | JobAccepted> {
  const outcome = request.outcome;
  outcome.operation = imageRequest.operation;
  outcome.imagesRequested = typeof imageRequest.params.n === 'number' ? imageRequest.params.n : 1;
  const named = app.catalogue.find(imageRequest.model);
  outcome.model = named?.id ?? imageRequest.model;
  if (app.config.LOG_PROMPTS) outcome.prompt = imageRequest.prompt;
  const idempotencyKey = request.headers['idempotency-key'];
  if (idempotencyKey !== undefined && (typeof idempotencyKey !== 'string' || idempotencyKey.length === 0 || idempotencyKey.length > 255)) {
    throw invalidField('Idempotency-Key', 'must be one header of 1 to 255 characters');
  }
  const prepared = await app.generation.prepare(imageRequest);
  const client = request.client;
  if (!client) throw new GatewayError('unauthorized', 'a client key is required');
  app.limits.checkModel(client, prepared.model.id);
  app.limits.checkPriced(client, prepared.model.id, prepared.route.price !== undefined);
  const images = outcome.imagesRequested;
  const unitPrice = pricePerImage(prepared.route.price, imageRequest.options);
  const reservation = await app.limits.reserve(client, images, unitPrice === null ? null : unitPrice * images);
  reply.headers(reservation.headers);

  // One controller for both ends of a request, the client leaving and (for a direct request) the
  // deadline: a composite AbortSignal.any() cost more per request than the rest of the routing.
  const cancel = new AbortController();
  const onClose = () => {
    if (!reply.raw.writableFinished) cancel.abort(new ClientGone());
  };
  reply.raw.on('close', onClose);
  // A client that left during the checks above ('close' has been and gone) is not paid for either.
  if (reply.raw.destroyed) onClose();
  const viaJobs = imageRequest.async || idempotencyKey !== undefined;
  const job = { created: false };
  try {
    const result = viaJobs
      ? await viaJob(app, request, reply, prepared, idempotencyKey, cancel.signal, reservation, job)
      : await directly(app, request, prepared, cancel);
    if ('images' in result) {
      // A replayed idempotent answer made nothing and cost nothing this time: its first request counted it.
      const replayed = reply.getHeader('idempotent-replayed') === 'true';
      if (!viaJobs) await app.limits.settle(reservation, result.images.length, result.usage.estimated_cost_usd);
      if (!replayed) {
        outcome.imagesReturned = result.images.length;
        outcome.bytesStored = result.images.reduce((sum, image) => sum + image.bytes, 0);
        outcome.estimatedCostUsd = result.usage.estimated_cost_usd;
        outcome.upstreamStatus = 200;
        outcome.upstreamMs = result.usage.upstream_ms;
        if (result.usage.upstream_tokens) outcome.upstreamTokens = result.usage.upstream_tokens;
      } else {
        outcome.estimatedCostUsd = 0;
      }
    }
    return result;
  } catch (err) {
    // A client that leaves does not get its images back: upstream may have made (and charged) them.
    if (cancel.signal.reason instanceof ClientGone) throw new ClientGone();
    // A job settles its own reservation when it ends.
    if (!job.created) await app.limits.settle(reservation, 0, 0);
    throw err;
  } finally {
    reply.raw.off('close', onClose);
  }
}

async function directly(app: FastifyInstance, request: FastifyRequest, prepared: PreparedGeneration, cancel: AbortController): Promise<GenerationResult> {
  const deadline = setTimeout(() => cancel.abort(new UpstreamDeadline()), app.config.UPSTREAM_TIMEOUT_MS);
  try {
    return await app.generation.run(prepared, {
      signal: cancel.signal,
      publicBaseUrl: publicBaseUrl(app, request),
      owner: ownerOf(request),
    });
  } catch (err) {
    if (cancel.signal.reason instanceof UpstreamDeadline) {
      throw new GatewayError('upstream_timeout', `no complete upstream answer within ${app.config.UPSTREAM_TIMEOUT_MS} ms`, { cause: err });
    }
    throw err;
  } finally {
    clearTimeout(deadline);
  }
}

async function viaJob(
  app: FastifyInstance,
  request: FastifyRequest,
  reply: FastifyReply,
  prepared: PreparedGeneration,
  idempotencyKey: string | undefined,
  clientGone: AbortSignal,
  reservation: Reservation,
  job: { created: boolean },
): Promise<GenerationResult | JobAccepted> {
  const client = request.client!;
  const scope = idempotencyKey ? `${client.id}:${idempotencyKey}` : undefined;
  const { jobId, first } = await app.jobs.create(
    app.jobs.newJobId(),
    prepared,
    { client, publicBaseUrl: publicBaseUrl(app, request) },
    scope ? { scope, fingerprint: requestFingerprint(prepared.request, prepared.model.id) } : undefined,
    // Settled to what the job really made, whenever it ends, whether or not anyone still waits for it.
    (result) => app.limits.settle(reservation, result?.images.length ?? 0, result ? result.usage.estimated_cost_usd : 0),
  );
  job.created = true;
  // Joining another request's job costs nothing.
  if (!first) await app.limits.settle(reservation, 0, 0);
  if (scope) reply.header('idempotent-replayed', String(!first));
  if (prepared.request.async) {
    if (first) request.outcome.jobId = jobId;
    const row = await app.jobs.get(jobId);
    if (!row) throw new GatewayError('not_found', `job ${jobId} is gone`);
    reply.status(202).header('location', `/v1/jobs/${jobId}`);
    return { id: row.id, status: row.status, status_url: `/v1/jobs/${row.id}` };
  }
  // A synchronous request with an Idempotency-Key waits for its job; if the client leaves, the job
  // goes on, and the client's retry gets its result.
  const row = await app.jobs.waitFor(jobId, clientGone);
  const finished = await app.jobs.outcome(row);
  if ('error' in finished) throw finished.error;
  return finished.result;
}

async function readMultipartEdit(app: FastifyInstance, request: FastifyRequest): Promise<ImageRequest> {
  const { fields, images, mask } = await readEditParts(request);
  noteRequestedModel(app, request, fields.get('model'));
  return parseEditMultipart(fields, images, mask);
}

export async function imageRoutes(app: FastifyInstance): Promise<void> {
  // A key sees the models it may use.
  app.get('/v1/models', async (request) => ({
    data: app.catalogue.models.filter((m) => modelAllowed(request.client!, m.id)).map(describeModel),
  }));

  app.get<{ Params: { id: string } }>('/v1/models/:id', async (request) => {
    const model = app.catalogue.find(request.params.id);
    if (!model) throw new GatewayError('not_found', `no model "${request.params.id}"; GET /v1/models lists them`);
    return describeModel(model);
  });

  // A generate body is a prompt and a few fields: no room for megabytes.
  app.post('/v1/generate', { bodyLimit: 1024 * 1024 }, async (request, reply) => {
    if (!isJson(request)) {
      throw new GatewayError('unsupported_media_type', 'POST /v1/generate takes application/json');
    }
    noteRequestedModel(app, request, (request.body as { model?: unknown } | null)?.model);
    const result = await generateFor(app, request, reply, parseGenerateBody(request.body));
    return result;
  });

  app.post('/v1/edit', async (request, reply) => {
    let imageRequest: ImageRequest;
    if (request.isMultipart()) imageRequest = await readMultipartEdit(app, request);
    else if (isJson(request)) {
      // Images given as URLs are fetched first, under the egress policy; data URLs are decoded in the parse.
      // A key may not make the gateway fetch anything for a model it may not use.
      const body = (request.body ?? {}) as { model?: unknown; image?: unknown; mask?: unknown; mode?: unknown };
      noteRequestedModel(app, request, body.model);
      const named = app.catalogue.find(String(body.model ?? ''));
      const refs = imageUrlsOfEditJson(body);
      if (named && refs.length > 0) {
        app.limits.checkModel(request.client!, named.id);
        const mode = EDIT_MODES.find((m) => m === body.mode);
        const { route } = routeFor(named, 'edit', mode, body.mask !== undefined);
        const count = Array.isArray(body.image) ? body.image.length : 1;
        if (route.images && count > route.images.max) {
          throw invalidField('image', `${named.id} takes at most ${route.images.max} image${route.images.max === 1 ? '' : 's'}; got ${count}`);
        }
      }
      const fetched = await app.imageFetcher.fetchAll(refs);
      imageRequest = parseEditJson(request.body, app.config.MAX_UPLOAD_BYTES, fetched);
    } else throw new GatewayError('unsupported_media_type', 'POST /v1/edit takes multipart/form-data or application/json');
    return generateFor(app, request, reply, imageRequest);
  });
}
