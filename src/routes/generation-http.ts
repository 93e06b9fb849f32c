/**
 * The HTTP side of the generation pipeline (src/generation/generation-pipeline.ts), shared by
 * /v1/generate, /v1/edit and OpenAI's forms: a request becomes a GenerationCall, its answer a JSON
 * body, a 202 with a job, or an event stream.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { errorBody, invalidField, type GatewayError } from '../errors.js';
import type { ImageRequest } from '../request/image-request.js';
import { ClientGone, asFailure, type AdmittedGeneration, type GenerationCall } from '../generation/generation-pipeline.js';
import type { GenerationEvent } from '../generation/generation-events.js';
import { EventStream } from './event-stream.js';

/** One event of a stream: its name and its data. */
export type StreamEvent = [name: string, data: unknown];

/** How a stream writes the pipeline's events: the gateway's own names, or OpenAI's. */
export type StreamDialect = (event: GenerationEvent, request: FastifyRequest) => StreamEvent[];

/** The gateway's own stream: each event under its own name; `succeeded` carries the success body, `failed` the error object. */
export const gatewayEvents: StreamDialect = (event, request) => {
  switch (event.type) {
    case 'queued':
      return [['queued', event.job_id !== undefined ? { job_id: event.job_id } : {}]];
    case 'running':
      return [['running', event.task_id !== undefined ? { task_id: event.task_id } : {}]];
    case 'progress':
      return [['progress', { upstream_status: event.upstream_status, ...(event.progress !== undefined ? { progress: event.progress } : {}) }]];
    case 'fallback':
      return [['fallback', { from: event.from, to: event.to, reason: event.reason }]];
    case 'partial_image':
      return []; // previews are OpenAI's (partial_images); none are sent today
    case 'image':
      return [['image', { index: event.index, image: event.image }]];
    case 'succeeded':
      return [['succeeded', event.result]];
    case 'failed':
      return [['failed', errorBody(event.error, request.id).error]];
  }
};

/** Writes each of the pipeline's events to `stream` as `dialect` says. */
export function writeEvents(stream: EventStream, dialect: StreamDialect, request: FastifyRequest): (event: GenerationEvent) => void {
  return (event) => {
    for (const [name, data] of dialect(event, request)) void stream.send(name, data);
  };
}

/** Where returned image URLs point: PUBLIC_BASE_URL, else the origin the client called. */
export function publicBaseUrl(app: FastifyInstance, request: FastifyRequest): string {
  return app.config.PUBLIC_BASE_URL?.replace(/\/+$/, '') ?? `${request.protocol}://${request.host}`;
}

/** A request's `stream` field: JSON true/false, or in a multipart form (text only) "true"/"false"; absent: false. */
export function streamFlag(value: unknown, form: boolean): boolean {
  if (value === undefined || value === null || value === false || (form && value === 'false')) return false;
  if (value === true || (form && value === 'true')) return true;
  throw invalidField('stream', 'must be true or false', [true, false]);
}

/** Aborts with ClientGone when the connection closes before the answer is complete; `release` stops watching. */
export function whileConnected(reply: FastifyReply): { signal: AbortSignal; release: () => void } {
  const left = new AbortController();
  const onClose = () => {
    if (!reply.raw.writableFinished) left.abort(new ClientGone());
  };
  reply.raw.on('close', onClose);
  // A client that left while the body was read ('close' has been and gone) is not paid for either.
  if (reply.raw.destroyed) onClose();
  return { signal: left.signal, release: () => reply.raw.off('close', onClose) };
}

/** The request as a call to the pipeline, for as long as its client is connected. */
function generationCall(
  app: FastifyInstance,
  request: FastifyRequest,
  reply: FastifyReply,
  imageRequest: ImageRequest,
  loadImages?: GenerationCall['loadImages'],
  forModel?: GenerationCall['forModel'],
): { call: GenerationCall; release: () => void } {
  const idempotencyKey = request.headers['idempotency-key'];
  if (idempotencyKey !== undefined && (typeof idempotencyKey !== 'string' || idempotencyKey.length === 0 || idempotencyKey.length > 255)) {
    throw invalidField('Idempotency-Key', 'must be one header of 1 to 255 characters');
  }
  const { signal, release } = whileConnected(reply);
  return {
    call: {
      client: request.client!,
      request: imageRequest,
      signal,
      publicBaseUrl: publicBaseUrl(app, request),
      ...(idempotencyKey !== undefined ? { idempotencyKey, countedInRpm: app.countedInRpm(request) } : {}),
      outcome: request.outcome,
      ...(request.routeOptions.url !== undefined ? { route: request.routeOptions.url } : {}),
      ...(loadImages ? { loadImages } : {}),
      ...(forModel ? { forModel } : {}),
    },
    release,
  };
}

/**
 * Answers with an event stream that `produce` writes. A client that leaves mid-stream gets no end
 * of it and is recorded as abandoned (499); a failure after the headers is recorded with its status
 * and, where `tellFailure` says how, written as the stream's last event.
 */
export async function streamAnswer(
  app: FastifyInstance,
  request: FastifyRequest,
  reply: FastifyReply,
  produce: (stream: EventStream) => Promise<unknown>,
  tellFailure?: (failure: GatewayError) => StreamEvent,
): Promise<FastifyReply> {
  // The usage record is committed here, before the events that tell the outcome (held back till then).
  request.outcome.streaming = true;
  const stream = EventStream.open(reply, app.config.STREAM_KEEPALIVE_MS);
  stream.hold();
  let finished = false;
  let producing = true;
  let abandoned = false;
  reply.raw.once('finish', () => (finished = true));
  reply.raw.once('close', () => {
    if (finished) return;
    // Recorded once the pipeline has settled what the request cost (it stops soon after the client
    // leaves): the record then says the cost the budget was charged.
    if (producing) abandoned = true;
    else app.recordAbandonedRequest(request, 'client disconnected during the stream');
  });
  try {
    await produce(stream);
  } catch (err) {
    if (!(err instanceof ClientGone)) {
      const failure = asFailure(err);
      app.noteFailure(request, failure);
      request.outcome.status = failure.status;
      if (tellFailure) void stream.send(...tellFailure(failure));
    }
  } finally {
    producing = false;
    if (abandoned) app.recordAbandonedRequest(request, 'client disconnected during the stream');
    if (stream.open) await app.commitUsage(request, request.outcome.status ?? reply.statusCode);
    await stream.release();
    await stream.end();
  }
  return reply;
}

/** The `error` event that ends a stream whose failure has no event of its own. */
export function errorEvent(failure: GatewayError): StreamEvent {
  return ['error', { type: 'error', error: { code: failure.code, message: failure.message } }];
}

/**
 * Runs one generate or edit and answers it: the success body, a 202 with the job (async), or,
 * with a `dialect`, an event stream. Anything refused before the stream opens is the usual error.
 */
export async function answerGeneration(
  app: FastifyInstance,
  request: FastifyRequest,
  reply: FastifyReply,
  imageRequest: ImageRequest,
  dialect?: StreamDialect,
  /** Reads the request's pending images once it is admitted (see GenerationCall.loadImages). */
  loadImages?: GenerationCall['loadImages'],
  /** The request as each model of its chain takes it (see GenerationCall.forModel). */
  forModel?: GenerationCall['forModel'],
): Promise<unknown> {
  const { call, release } = generationCall(app, request, reply, imageRequest, loadImages, forModel);
  try {
    const admitted = await app.pipeline.admit(call);
    reply.headers(admitted.headers);
    if (dialect) return await streamGeneration(app, request, reply, admitted, dialect);
    let answer;
    try {
      answer = await admitted.run();
    } finally {
      // Again, as settled: a failure gave back what it reserved, a success counts what it cost (and
      // a retry that became the first request under its Idempotency-Key counted its limits while it ran).
      reply.headers(admitted.headers);
    }
    if (answer.replayed !== undefined) reply.header('idempotent-replayed', String(answer.replayed));
    if (answer.kind === 'job') {
      reply.status(202).header('location', answer.job.status_url);
      return answer.job;
    }
    return answer.result;
  } finally {
    release();
  }
}

/** The pipeline's events as a stream; the pipeline tells its own failure (`failed`), which the dialect writes. */
function streamGeneration(app: FastifyInstance, request: FastifyRequest, reply: FastifyReply, admitted: AdmittedGeneration, dialect: StreamDialect): Promise<FastifyReply> {
  return streamAnswer(app, request, reply, (stream) => admitted.run(writeEvents(stream, dialect, request)));
}
