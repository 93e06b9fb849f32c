import { GatewayError, invalidField, restated } from '../errors.js';
import type { Client } from '../auth/client-keys.js';
import { imagesAsked, inputImagesOf, maxCostUsd, type ModelCatalogue } from '../catalogue/catalogue.js';
import { MAX_FALLBACK_MODELS, isPending, type ImageRequest } from '../request/image-request.js';
import { UNKNOWN_MODEL, type ModelSpec, type UpstreamRoute } from '../catalogue/model-spec.js';
import { storedReservation, type KeyLimits, type Reservation } from '../limits/key-limits.js';
import type { JobRow, JobRunner } from '../jobs/job-runner.js';
import { requestFingerprint } from '../jobs/stored-request.js';
import type { RequestOutcome } from '../usage/request-outcome.js';
import { PaidImageLost, type GenerationResult, type ImageGeneration, type PreparedGeneration } from './image-generation.js';
import type { ReportEvent } from './generation-events.js';
import { eventWithOrigin, resultWithOrigin, storedJobOrigin } from '../jobs/job-origin.js';
import { UpstreamFailure, toGatewayError } from '../upstream/upstream-failure.js';
import { billedToo, fallbackAllowed } from './fallbacks.js';
import { parseJobChain } from '../jobs/job-chain.js';

/** Why a request was cut short: its caller went away (the connection closed). */
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
    // As AbortSignal.timeout()'s reason is named (a job's deadline): the upstream client tells a deadline by it.
    this.name = 'TimeoutError';
  }
}

/** A refusal of one fallback model, naming it: the chain is checked whole before anything is sent. */
function forFallback(err: unknown, index: number, modelName: string): unknown {
  if (!(err instanceof GatewayError)) return err;
  const field = `fallback_models[${index}]`;
  const named = err.details.find((d) => d.field !== undefined)?.field;
  return new GatewayError(err.code, `${field}: model ${modelName} cannot take this request: ${err.message}`, {
    details: [
      { field, message: `model ${modelName} cannot take this request${named ? ` (field ${named})` : ''}` },
      ...err.details.map((d) => ({ ...d, message: `${d.message} (for fallback model ${modelName})` })),
    ],
    cause: err,
  });
}

/** One request to generate or edit, as its caller made it. */
export interface GenerationCall {
  client: Client;
  request: ImageRequest;
  /** Aborts when the caller leaves (reason: ClientGone): a direct request stops its upstream call; a job goes on. */
  signal: AbortSignal;
  /** The origin of the image URLs in the answer. */
  publicBaseUrl: string;
  /** A retry under the same key joins the first request's job instead of paying twice. */
  idempotencyKey?: string;
  /**
   * With an Idempotency-Key: whether the rate limit counted the request against its key's rpm
   * (false: as a read, the key then held by a first request). Absent: counted.
   */
  countedInRpm?: boolean;
  /** What the request did, filled in as it goes, for its usage record, metrics and log line. */
  outcome: RequestOutcome;
  /** The route pattern it came in on (`/v1/images/generations`), kept with its job for the record that may stand for it. */
  route?: string;
  /**
   * Reads the request's pending images (URLs to fetch, uploads on disk; see pendingImage): called
   * only once the model, the key's allow-list and its limits have passed, so a refused request
   * fetches nothing.
   */
  loadImages?: (request: ImageRequest, signal: AbortSignal) => Promise<ImageRequest>;
  /**
   * The request as one model takes it, where a field is translated per model (the OpenAI façade's
   * `size`, sent as an aspect ratio to a model that takes only that): called with the request as
   * asked, its `model` set to the requested model and then to each fallback model in turn, so each
   * model of a chain gets parameters of its own, never the first model's. A refusal is that model's.
   */
  forModel?: (request: ImageRequest) => ImageRequest;
}

/** A model of a request's chain, checked, with the request as that model takes it (GenerationCall.forModel). */
interface ChainModel {
  model: ModelSpec;
  route: UpstreamRoute;
  request: ImageRequest;
}

/** What a direct request has sent upstream so far: the model last sent (each retry or fallback sends again). */
interface SentUpstream {
  sent?: PreparedGeneration;
}

/** An asynchronous request's answer: the job to follow. */
export interface JobAccepted {
  id: string;
  status: string;
  status_url: string;
}

export type GenerationAnswer =
  | {
      kind: 'result';
      result: GenerationResult;
      /** With an Idempotency-Key: whether this is the first request's answer again. */
      replayed?: boolean;
      /** What the job made was counted by the replica that finished it, not by this answer. */
      countedElsewhere?: boolean;
    }
  | { kind: 'job'; job: JobAccepted; replayed?: boolean };

/** A request that passed every check and holds its reservation: ready to run once. */
export interface AdmittedGeneration {
  /** What the answer tells the client of its limits. */
  headers: Record<string, string>;
  /** Runs the request, telling `onEvent` what happens, `succeeded` or `failed` last. */
  run(onEvent?: ReportEvent): Promise<GenerationAnswer>;
}

export interface GenerationPipelineDeps {
  catalogue: ModelCatalogue;
  generation: ImageGeneration;
  limits: KeyLimits;
  jobs: JobRunner;
  upstreamTimeoutMs: number;
  /** RATE_LIMIT_RPM: the rpm of a key without its own. */
  defaultRpm: number;
  /** LOG_PROMPTS: keep the prompt in the usage record. */
  keepPrompts: boolean;
  /** PUBLIC_BASE_URL, the one origin a job row may keep; without it job rows keep image paths (src/jobs/job-origin.ts). */
  publicBaseUrl?: string;
  /** Refuses (507 storage_full) while image storage is full or unavailable: nothing is sent upstream then. */
  storage?: { refuseIfPressed(): void };
  /** Refuses (503 service_unavailable) while the database is known to be unreachable: nothing is sent upstream then. */
  database?: { refuseIfUnreachable(): void };
  /** Why a job's callback URL may not be called (the egress policy, as at delivery), or undefined. */
  callbackRefusal?: (url: URL) => Promise<string | undefined>;
}

/** Idempotency-Keys are the client key's (or browser token's) own: the same string from two keys names two requests. */
export function idempotencyScope(client: Client, idempotencyKey: string): string {
  return client.token ? `${client.id}/${client.token.id}:${idempotencyKey}` : `${client.id}:${idempotencyKey}`;
}

/**
 * What a failure is in the gateway's terms: an upstream failure is given its HTTP answer here (the
 * edge); anything unforeseen is an internal error.
 */
/** What a job keeps of its request's reservation (JSON), or null when the key has no limit it counts against. */
function keptReservationJson(reservation: Reservation): string | null {
  const kept = storedReservation(reservation);
  if (!kept.perDay && !kept.budget && (kept.token?.maxImages ?? null) === null) return null;
  return JSON.stringify(kept);
}

export function asFailure(err: unknown): GatewayError {
  if (err instanceof GatewayError) return err;
  if (err instanceof UpstreamFailure) return toGatewayError(err);
  return new GatewayError('internal_error', 'internal error', { cause: err });
}

/**
 * The use case behind every way of asking for images (/v1/generate, /v1/edit, their streams and
 * OpenAI's forms): check the request against its model and the key's limits, reserve what it may
 * cost, run it directly or as a persisted job, settle the reservation and note what it did.
 *
 * A plain request goes straight upstream under UPSTREAM_TIMEOUT_MS and stops when its caller leaves.
 * An async request, or one with an Idempotency-Key, runs as a persisted job: a retry joins the
 * first request's job instead of paying twice.
 */
export class GenerationPipeline {
  constructor(private readonly deps: GenerationPipelineDeps) {}

  /**
   * The model a request names, noted in its outcome even when the request is refused before it is
   * fully read (an unknown field, a bad size): a catalogue id where it is one, else `unknown`. Never
   * the client's text: usage records reach reports and spreadsheets.
   */
  noteRequestedModel(outcome: RequestOutcome, model: unknown): void {
    if (model === undefined || model === null || model === '') return;
    outcome.model = (typeof model === 'string' && model.length <= 200 ? this.deps.catalogue.find(model)?.id : undefined) ?? UNKNOWN_MODEL;
  }

  /** Everything checked and reserved before anything is sent; a refusal throws and costs nothing. */
  async admit(call: GenerationCall): Promise<AdmittedGeneration> {
    const { client, outcome } = call;
    const asModel = call.forModel ?? ((asked: ImageRequest) => asked);
    outcome.operation = call.request.operation;
    // n below 1 is refused by the model's rule below; a refused request's record never counts fewer than none.
    const asked = imagesAsked(call.request);
    outcome.imagesRequested = Math.max(0, asked.count);
    this.noteRequestedModel(outcome, call.request.model);
    // An upscale may have no prompt: none is recorded then.
    if (this.deps.keepPrompts && call.request.prompt !== '') outcome.prompt = call.request.prompt;
    // The request as its own model takes it; each fallback model's is made from the request as asked.
    const request = asModel(call.request);
    // First: an image that cannot be stored would be paid for and lost.
    this.deps.storage?.refuseIfPressed();
    // Nor kept where the database is out of reach: its rows, its job, its cost would be lost.
    this.deps.database?.refuseIfUnreachable();
    // A model outside the key's allow-list is refused as such (403) before the catalogue says it is
    // retired (410), whose replacement the key may not be allowed either.
    const named = this.deps.catalogue.find(request.model);
    if (named) this.deps.limits.checkNamedModel(client, named);
    // With images still to read, what does not need their bytes is checked first (the same checks again once they are read).
    let prepared = call.loadImages ? undefined : await this.deps.generation.prepare(request);
    const { model, route, mode } = prepared ?? this.deps.generation.check(request);
    this.deps.limits.checkPriced(client, model.id, route.price !== undefined, mode);
    // The whole fallback chain is checked now: each model must take the request, the key, its budget.
    const fallbacks = this.checkFallbacks(call, model);
    if (fallbacks.length > 0) outcome.modelsTried = [];
    // Refused now, not after the job ran and was paid for.
    if (request.callbackUrl !== undefined && this.deps.callbackRefusal) {
      // A host that does not resolve now is refused too: the job would have nowhere to call.
      const refusal = await this.deps.callbackRefusal(new URL(request.callbackUrl)).catch((err: Error) => err.message);
      if (refusal) throw invalidField('callback_url', `${refusal}; give a URL of a public host (or name the host in ALLOWED_CALLBACK_HOSTS)`);
    }
    const images = outcome.imagesRequested;
    // A chain reserves the most its dearest model may cost; the reservation settles to what ran.
    const mostCost = [{ route, request }, ...fallbacks]
      .map((m) => maxCostUsd(m.route.price, { images, prompt: m.request.prompt, params: m.request.params, options: m.request.options, inputImages: inputImagesOf(m.request) }))
      .reduce<number | null>((dearest, cost) => (cost === null ? dearest : dearest === null ? cost : Math.max(dearest, cost)), null);
    // A retry of a request already made joins or replays it: it reserves nothing, so a spent quota does not refuse it.
    // A refusing image limit names the field that set the count (n, or a Seedream group's max_images).
    const reserve = () => this.deps.limits.reserve(client, images, mostCost, asked.field);
    const asRetry = call.idempotencyKey !== undefined && (await this.deps.jobs.idempotencyKeyClaimed(idempotencyScope(client, call.idempotencyKey)));
    // The rate limit, earlier, may have found the key held (and counted this request as a read)
    // where it is free now (its first request failed unbilled since, or a multipart body took its
    // time): this request spends money, so its rpm counts now, once, before anything is reserved.
    let rpmToCount = call.countedInRpm === false;
    const countRpm = async () => {
      if (!rpmToCount) return;
      await this.deps.limits.countRequest(client, this.deps.defaultRpm);
      rpmToCount = false;
    };
    if (!asRetry) await countRpm();
    const reservation = asRetry ? this.deps.limits.nothingReserved(client) : await reserve();
    // The first request may free the key (its job failed unbilled) before this one claims it: this
    // one then starts a job of its own, and counts the key's limits (rpm included, if it was counted
    // as a read) before the job starts.
    const reserveIfFirst = asRetry
      ? async () => {
          await countRpm();
          const taken = await reserve();
          reservation.images = taken.images;
          reservation.microUsd = taken.microUsd;
          if (taken.tokenImages !== undefined) reservation.tokenImages = taken.tokenImages;
          Object.assign(reservation.headers, taken.headers);
        }
      : undefined;
    // The request as asked, its images read: what each fallback model's own request is made from.
    let loadedRequest = call.request;
    if (!prepared) {
      try {
        const loaded = await call.loadImages!(call.request, call.signal);
        if (loaded.images.some(isPending) || (loaded.mask && isPending(loaded.mask)) || loaded.styleReferences?.some(isPending)) {
          throw new GatewayError('internal_error', 'an input image was not read before the request was prepared');
        }
        loadedRequest = loaded;
        prepared = await this.deps.generation.prepare(asModel(loaded));
      } catch (err) {
        await this.deps.limits.settle(reservation, 0, 0);
        throw err;
      }
    }
    const ready = prepared;
    const readRequest = loadedRequest;
    let chain: PreparedGeneration[];
    try {
      // A default chain's model that cannot take the request once its images are read is left out, not refused.
      const named = call.request.fallbackModels !== undefined;
      const next = await Promise.all(
        fallbacks.map(async (f, i) => {
          try {
            return await this.deps.generation.prepare(asModel({ ...readRequest, model: f.model.id }));
          } catch (err) {
            if (named) throw forFallback(err, i, f.model.id);
            return undefined;
          }
        }),
      );
      chain = [ready, ...next.filter((p): p is PreparedGeneration => p !== undefined)];
      if (chain.length === 1) delete outcome.modelsTried;
    } catch (err) {
      await this.deps.limits.settle(reservation, 0, 0);
      throw err;
    }
    let started = false;
    return {
      headers: reservation.headers,
      run: (onEvent = () => {}) => {
        if (started) throw new Error('an admitted generation runs once');
        started = true;
        return this.run(call, chain, reservation, onEvent, reserveIfFirst);
      },
    };
  }

  /**
   * The request's fallback models, resolved and checked as the requested one is (its fields, the
   * key's allow-list, a price for a budgeted key); a refusal names the model. A request that names
   * none (no `fallback_models`; `[]` turns them off) gets the key's `fallbacks` (GATEWAY_KEYS_FILE),
   * else the model's (CATALOGUE_FILE): the caller did not name those, so one that cannot take this
   * request is left out silently.
   */
  private checkFallbacks(call: GenerationCall, requested: ModelSpec): ChainModel[] {
    const { request, client } = call;
    const requestedId = requested.id;
    if (request.fallbackModels === undefined) return this.defaultFallbacks(call, requested);
    const names = request.fallbackModels;
    if (names.length === 0) return [];
    const seen = new Set([requestedId]);
    return names.map((name, i) => {
      const field = `fallback_models[${i}]`;
      const spec = this.deps.catalogue.find(name);
      if (!spec) throw invalidField(field, `model ${name} is not in the catalogue (GET /v1/models lists them)`);
      if (spec.id === requestedId) throw invalidField(field, `names the requested model ${spec.id}: a fallback must be another model`);
      if (seen.has(spec.id)) throw invalidField(field, `names model ${spec.id} twice`);
      seen.add(spec.id);
      try {
        return this.checkFallback(call, spec);
      } catch (err) {
        throw forFallback(err, i, spec.id);
      }
    });
  }

  /** One fallback model, checked with the request as that model takes it (made from the request as asked, not the first model's). */
  private checkFallback(call: GenerationCall, spec: ModelSpec): ChainModel {
    const asked = { ...call.request, model: spec.id };
    const request = call.forModel ? call.forModel(asked) : asked;
    // The key's allow-list first: a retired model outside it is refused as such (403), not as retired (410).
    this.deps.limits.checkNamedModel(call.client, spec);
    const { model, route, mode } = this.deps.generation.check(request);
    this.deps.limits.checkPriced(call.client, model.id, route.price !== undefined, mode);
    return { model, route, request };
  }

  /** The key's, else the model's `fallbacks`, keeping only the models that can take this request. */
  private defaultFallbacks(call: GenerationCall, requested: ModelSpec): ChainModel[] {
    const names = call.client.fallbacks ?? requested.fallbacks ?? [];
    if (names.length === 0) return [];
    const seen = new Set([requested.id]);
    const chain: ChainModel[] = [];
    for (const name of names) {
      const spec = this.deps.catalogue.find(name);
      if (!spec || seen.has(spec.id) || chain.length >= MAX_FALLBACK_MODELS) continue;
      seen.add(spec.id);
      try {
        chain.push(this.checkFallback(call, spec));
      } catch {
        // Cannot take this request's fields, outside the allow-list, unpriced for a budget: left out.
      }
    }
    return chain;
  }

  private async run(
    call: GenerationCall,
    chain: PreparedGeneration[],
    reservation: Reservation,
    onEvent: ReportEvent,
    reserveIfFirst?: () => Promise<void>,
  ): Promise<GenerationAnswer> {
    const { outcome } = call;
    const prepared = chain[0]!;
    const viaJobs = call.request.async || call.idempotencyKey !== undefined;
    const job = { created: false };
    // The model last sent upstream (directly): what a caller that leaves is charged for.
    const upstream: SentUpstream = {};
    let answer: GenerationAnswer;
    try {
      answer = viaJobs
        ? await this.viaJob(call, chain, reservation, job, onEvent, reserveIfFirst)
        : { kind: 'result', result: await this.alongChain(call, chain, onEvent, upstream) };
      if (answer.kind === 'result') {
        const { result } = answer;
        if (!viaJobs) await this.deps.limits.settle(reservation, result.images.length, result.usage.estimated_cost_usd);
        // A replayed answer made nothing and cost nothing this time: its first request counted it.
        if (answer.replayed || answer.countedElsewhere) {
          outcome.estimatedCostUsd = 0;
        } else {
          outcome.imagesReturned = result.images.length;
          outcome.bytesStored = result.images.reduce((sum, image) => sum + image.bytes, 0);
          outcome.estimatedCostUsd = result.usage.estimated_cost_usd;
          outcome.upstreamStatus = 200;
          outcome.upstreamMs = result.usage.upstream_ms;
          if (result.usage.upstream_tokens) outcome.upstreamTokens = result.usage.upstream_tokens;
        }
      }
    } catch (err) {
      // A caller that leaves does not get its images back: upstream may have made (and charged) them.
      // A job settles its own reservation when it ends; a direct request settles here.
      if (call.signal.aborted && call.signal.reason instanceof ClientGone) {
        if (!job.created) await this.settleHangUp(call, reservation, upstream.sent, err);
        throw new ClientGone();
      }
      // Paid for and lost (storage failed after upstream answered): what it cost still counts.
      if (err instanceof PaidImageLost) {
        outcome.estimatedCostUsd = err.costUsd;
        if (err.upstreamMs !== undefined) outcome.upstreamMs = err.upstreamMs;
      }
      // A job settles its own reservation when it ends.
      if (!job.created) await this.deps.limits.settle(reservation, 0, err instanceof PaidImageLost ? err.costUsd : 0);
      if (err instanceof UpstreamFailure) outcome.failureKind = err.kind;
      const failure = asFailure(err);
      onEvent({ type: 'failed', error: failure });
      throw failure;
    }
    // Told once all is settled: nothing a listener does can undo the request's bookkeeping.
    if (answer.kind === 'result') onEvent({ type: 'succeeded', result: answer.result });
    return answer;
  }

  /**
   * A direct request whose caller left: once something was sent upstream it may have been made and
   * billed, so the reservation settles to the sent model's estimated cost (what it really cost,
   * when upstream had answered), its images counted; with nothing sent, to nothing. The usage
   * record says the same cost the budget was charged.
   */
  private async settleHangUp(call: GenerationCall, reservation: Reservation, sent: PreparedGeneration | undefined, err: unknown): Promise<void> {
    const { outcome } = call;
    if (!sent) {
      await this.deps.limits.settle(reservation, 0, 0);
      outcome.estimatedCostUsd = 0;
      return;
    }
    const { route, request } = sent;
    const images = outcome.imagesRequested ?? 0;
    const estimate = { images, prompt: request.prompt, params: request.params, options: request.options, inputImages: inputImagesOf(request) };
    const cost = err instanceof PaidImageLost ? err.costUsd : maxCostUsd(route.price, estimate);
    // Unpriced (null): the reservation stays as it was, and the record says the cost is unknown.
    await this.deps.limits.settle(reservation, images, cost);
    outcome.estimatedCostUsd = cost;
  }

  /**
   * Runs the first model of the chain, and on a failure another model may serve (and upstream did
   * not bill) the next one: the answer's `model` is the one that served, `requested_model` the first.
   */
  private async alongChain(call: GenerationCall, chain: PreparedGeneration[], onEvent: ReportEvent, upstream: SentUpstream): Promise<GenerationResult> {
    if (chain.length === 1) return this.directly(call, chain[0]!, onEvent, upstream);
    const { outcome } = call;
    const tried = (outcome.modelsTried ??= []);
    // A model left after a timeout (fallback_on_timeout) may have billed: so may the request, however the last model failed.
    let billedBefore = false;
    for (let i = 0; ; i++) {
      const prepared = chain[i]!;
      tried.push(prepared.model.id);
      outcome.model = prepared.model.id;
      try {
        const result = await this.directly(call, prepared, onEvent, upstream);
        return { ...result, requested_model: chain[0]!.model.id };
      } catch (err) {
        const answered = (failure: unknown) => (billedBefore ? billedToo(failure) : failure);
        const next = chain[i + 1];
        // The chain's last model failed as the others did: the answer says all were tried.
        if (!next && i > 0 && !call.signal.aborted && fallbackAllowed(err, call.request)) {
          throw answered(err.with({}, `${err.message}; every model of the chain failed (tried ${tried.join(', ')})`));
        }
        if (!next || call.signal.aborted || !fallbackAllowed(err, call.request)) throw answered(err);
        billedBefore ||= err.mayHaveBilled;
        // Upstream said it did not bill that model (no channel, throttled, ...): a caller leaving
        // before the next model is sent is charged nothing for it.
        if (!err.mayHaveBilled) delete upstream.sent;
        const fallback = { from: prepared.model.id, to: next.model.id, reason: err.kind };
        (outcome.fallbacks ??= []).push(fallback);
        onEvent({ type: 'fallback', ...fallback });
      }
    }
  }

  private async directly(call: GenerationCall, prepared: PreparedGeneration, onEvent: ReportEvent, upstream: SentUpstream): Promise<GenerationResult> {
    // One controller for both ends of a request, the caller leaving and the deadline: a composite
    // AbortSignal.any() costs more per request than the rest of the routing.
    const cancel = new AbortController();
    const onLeave = () => cancel.abort(call.signal.reason);
    if (call.signal.aborted) onLeave();
    else call.signal.addEventListener('abort', onLeave, { once: true });
    const deadline = setTimeout(() => cancel.abort(new UpstreamDeadline()), this.deps.upstreamTimeoutMs);
    try {
      return await this.deps.generation.run(prepared, {
        signal: cancel.signal,
        deadline: Date.now() + this.deps.upstreamTimeoutMs,
        publicBaseUrl: call.publicBaseUrl,
        owner: { keyId: call.client.id, team: call.client.team },
        onEvent,
        task: {
          onSent: () => {
            upstream.sent = prepared;
          },
          // Refused unbilled (429, 503) and waiting to be sent again: not in upstream's hands meanwhile.
          onRetryWait: (waiting) => {
            if (waiting) delete upstream.sent;
            else upstream.sent = prepared;
          },
        },
      });
    } catch (err) {
      // A deadline that passed after upstream answered is a paid image lost (504), not a timeout to fall back from.
      if (cancel.signal.reason instanceof UpstreamDeadline && !(err instanceof PaidImageLost)) {
        throw new UpstreamFailure('timeout', `no complete upstream answer within ${this.deps.upstreamTimeoutMs} ms`, {
          cause: err,
          ...(err instanceof UpstreamFailure ? { mayHaveBilled: err.mayHaveBilled } : {}),
        });
      }
      throw err;
    } finally {
      clearTimeout(deadline);
      call.signal.removeEventListener('abort', onLeave);
    }
  }

  /** As a persisted job, which moves along the fallback chain itself (and goes on along it after a restart). */
  private async viaJob(
    call: GenerationCall,
    chain: PreparedGeneration[],
    reservation: Reservation,
    job: { created: boolean },
    onEvent: ReportEvent,
    reserveIfFirst?: () => Promise<void>,
  ): Promise<GenerationAnswer> {
    const { client, idempotencyKey } = call;
    const jobs = this.deps.jobs;
    const scope = idempotencyKey ? idempotencyScope(client, idempotencyKey) : undefined;
    const prepared = chain[0]!;
    // A paid image the job lost, as the job's runner settled it here: the failure this request then
    // answers is read back from the job's row, without its cost, which its usage record still says.
    let paidAndLost: PaidImageLost | undefined;
    const { jobId, first } = await jobs.create(
      jobs.newJobId(),
      chain,
      // Never the caller's Host: the job row keeps PUBLIC_BASE_URL or image paths; the caller's origin is added below.
      { client, publicBaseUrl: storedJobOrigin(this.deps.publicBaseUrl), ...(call.route !== undefined ? { route: call.route } : {}) },
      scope ? { scope, fingerprint: requestFingerprint(prepared.request, prepared.model.id), ...(reserveIfFirst ? { onFirstClaim: reserveIfFirst } : {}) } : undefined,
      // Settled to what the job really made, whenever it ends, whether or not anyone still waits for it.
      // Images paid for and lost to full storage count at what they cost.
      (result, failure) => {
        if (failure instanceof PaidImageLost) paidAndLost = failure;
        return this.deps.limits.settle(reservation, result?.images.length ?? 0, result ? result.usage.estimated_cost_usd : failure instanceof PaidImageLost ? failure.costUsd : 0);
      },
      // Kept with the job: a replica that finishes it after this one stopped settles it the same way.
      () => keptReservationJson(reservation),
    );
    job.created = true;
    // Joining another request's job costs nothing.
    if (!first) await this.deps.limits.settle(reservation, 0, 0);
    const replayed = scope ? !first : undefined;
    if (prepared.request.async) {
      if (first) call.outcome.jobId = jobId;
      const row = await jobs.get(jobId);
      if (!row) throw new GatewayError('not_found', `job ${jobId} is gone`);
      return { kind: 'job', job: { id: row.id, status: row.status, status_url: `/v1/jobs/${row.id}` }, ...(replayed !== undefined ? { replayed } : {}) };
    }
    // A synchronous request with an Idempotency-Key waits for its job; if the caller leaves, the job
    // goes on, and the caller's retry gets its result. The job's outcome then completes the record
    // of the request that started it, found by its job id.
    if (first) call.outcome.jobId = jobId;
    let row: JobRow;
    try {
      row = await jobs.follow(jobId, { signal: call.signal, onEvent: (event) => onEvent(eventWithOrigin(event, call.publicBaseUrl)), starter: first });
    } catch (err) {
      // A graceful stop ended the wait (503) while the job goes on elsewhere or after a restart: the
      // replica that finishes it adds what it made and cost to this request's record (or, if it
      // wrote a stand-in for it first, this record takes its place): one request, one record.
      if (first && jobs.waitsHaveEnded && !call.signal.aborted) call.outcome.replacesStandIn = true;
      throw err;
    }
    // Another replica carried the job on (this one stalled past its lease, or stopped) and wrote a
    // record standing for this request, with what the job made and cost: this request's record
    // takes its place (one request, one record), counting nothing here.
    const countedElsewhere = first && !jobs.claimStarterOutcome(jobId);
    if (countedElsewhere) call.outcome.replacesStandIn = true;
    // Along a chain: the record counts under the model that served (or failed last), naming those
    // tried. The job's runner counted its fallbacks in the metrics.
    const moved = parseJobChain(row.chain_json);
    if (moved) {
      call.outcome.model = row.model;
      call.outcome.modelsTried = moved.tried;
    }
    const finished = await jobs.outcome(row);
    if ('error' in finished) {
      // Paid for and lost: this request's record (it started the job, and answers it) says what the budget was charged.
      if (first && !countedElsewhere && paidAndLost) {
        call.outcome.estimatedCostUsd = paidAndLost.costUsd;
        if (paidAndLost.upstreamMs !== undefined) call.outcome.upstreamMs = paidAndLost.upstreamMs;
      }
      // The job's runner logged its failure as an error (with the job, its model and how it failed;
      // a 5xx: see JobRunner.execute), or the first request's answer did: this request's telling of
      // it is one warning. A stored failure replayed is told apart as a replayed success is.
      const told = replayed === true || finished.error.status >= 500;
      throw restated(finished.error, { ...(replayed !== undefined ? { headers: { 'idempotent-replayed': String(replayed) } } : {}), ...(told ? { expected: true } : {}) });
    }
    return {
      kind: 'result',
      result: resultWithOrigin(finished.result, call.publicBaseUrl),
      ...(replayed !== undefined ? { replayed } : {}),
      ...(countedElsewhere ? { countedElsewhere } : {}),
    };
  }
}
