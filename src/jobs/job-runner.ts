import { createHmac, randomBytes } from 'node:crypto';
import { egressRefusalOf } from '../images/image-fetch.js';
import { randomId } from '../ids.js';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../observability/logger.js';
import { request as httpRequest, type Dispatcher } from 'undici';
import { GatewayError, NO_AUTOMATIC_RETRY, errorBody, retryCannotHelp, type ErrorCode } from '../errors.js';
import { UpstreamFailure, toGatewayError } from '../upstream/upstream-failure.js';
import type { Client } from '../auth/client-keys.js';
import type { Database, Statements } from '../storage/database.js';
import { PaidImageLost, type GenerationResult, type ImageGeneration, type PreparedGeneration } from '../generation/image-generation.js';
import type { TaskHooks } from '../upstream/upstream-client.js';
import { deserializeRequest, serializeRequest } from './stored-request.js';
import { declarationOf, modelFromDeclaration } from '../catalogue/catalogue-schema.js';
import type { ModelSpec } from '../catalogue/model-spec.js';
import { imagesAskedOf, inputImagesOf, maxCostUsd } from '../catalogue/catalogue.js';
import { billedToo, fallbackAllowed, type FallbackTaken } from '../generation/fallbacks.js';
import { advancedChain, leftMayHaveBilled, newJobChain, parseJobChain, type JobChain } from './job-chain.js';
import { JobRecords, type JobRow, type JobStatus } from './job-records.js';
import type { ProgressEvent } from '../generation/generation-events.js';
import type { JobEventBus, JobNotice } from './job-events.js';
import type { Span } from '@opentelemetry/api';
import { injectTraceHeaders, inSpan, markSpanError } from '../observability/tracing.js';

export type { JobRow, JobStatus } from './job-records.js';

/** Where a running job stands with upstream, told by its task hooks. */
interface JobProgress {
  /** Sent (or being sent): a stop then waits for its task id before leaving it to another replica. */
  sending: boolean;
  /** Its upstream task id is kept in the row: another replica can poll it. */
  taskKnown: boolean;
}

/** What a finished job failed with: the HTTP status it would have had, and the error object. */
interface StoredError {
  status: number;
  error: ReturnType<typeof errorBody>['error'];
  /** Seconds, for a 429/503 answer replayed to a waiting request. */
  retry_after?: number;
  /** Made and paid for upstream then lost, or may have been billed: its answers tell client libraries not to resend it. */
  paid?: true;
  /** A resend cannot help (retryCannotHelp: upstream refused the gateway's own key, ...): its answers say so too. */
  retry_cannot_help?: true;
}

/**
 * A failure that cost nothing upstream (throttled, refused, never sent): a retry under the same
 * Idempotency-Key should try again rather than replay it.
 */
function neverPaid(failure: GatewayError): boolean {
  // Made and paid for (its upstreamStatus may be a result download's 404, not the call's).
  if (failure instanceof PaidImageLost) return false;
  // An upstream failure that may have been billed (toGatewayError), whatever the last status was.
  if (failure.headers['x-should-retry'] === 'false') return false;
  if (failure.code === 'rate_limited' || failure.code === 'service_unavailable') return true;
  const status = failure.upstreamStatus;
  return status !== undefined && ((status >= 400 && status < 500) || status === 503);
}

export interface JobView {
  id: string;
  status: JobStatus;
  status_url: string;
  model: string;
  created: number;
  result?: GenerationResult;
  error?: StoredError['error'];
  /** With a callback_url: pending, delivered, failed, or refused: <why>. */
  callback_status?: string;
}

export interface JobRunnerOptions {
  /** This replica's name in job leases and job notices. */
  instanceId?: string;
  db: Database;
  generation: ImageGeneration;
  log: Logger;
  upstreamTimeoutMs: number;
  retentionDays: number;
  /** How long a replica's claim on a running job lasts without renewal; a dead replica's jobs are taken over after it. */
  leaseMs: number;
  /** How long a graceful stop waits for synchronous upstream calls that cannot be resumed. */
  shutdownGraceMs: number;
  callbackSecret: Buffer;
  /** Why a callback URL may not be called (the egress policy), or undefined when it may. */
  callbackRefusal?: (url: URL) => Promise<string | undefined>;
  /** Connections for callbacks: the egress policy's DNS check on every connection. */
  callbackDispatcher?: Dispatcher;
  /** The bytes of a stored image by its name, to answer b64_json from the store instead of keeping base64 in the jobs table. */
  readImage?: (name: string) => Promise<Buffer | undefined>;
  /**
   * Told of a job's end inside the transaction that marks it finished, with what it made or why it
   * failed (usage completes its record): both are committed together, before anyone sees the job
   * finished. `ready` is awaited before that transaction (the starting request's record committed).
   */
  recordOutcome?: {
    ready: (row: JobRow, starter: JobStarter) => Promise<void>;
    write: (tx: Statements, row: JobRow, result: GenerationResult | undefined, failure: GatewayError | undefined, starter: JobStarter) => Promise<void>;
  };
  /**
   * Settles the reservation a job kept in its row (`reservation_json`) once it ends on a replica
   * that did not start it (or started it before a restart): as the starting replica's settle would.
   */
  settleKept?: (reservationJson: string, result: GenerationResult | undefined, failure: GatewayError | undefined) => Promise<void>;
  /** Where a job's progress is told to its followers, here and on the other replicas. */
  events: JobEventBus;
  /**
   * How often a follower reads the job store when no notices can reach it (the job runs on another
   * replica and Redis is not shared); five times less often when they can, in case one is missed.
   */
  followPollMs?: number;
  /** The pause before a callback is tried again (1 s, 5 s, 25 s); a test passes one that records it and returns at once. */
  callbackWait?: (ms: number, signal: AbortSignal) => Promise<void>;
}

/**
 * Where the request that started a job stands as the job ends, which decides who records its
 * outcome: a synchronous request still following it in this process answers with it (and records
 * it); one whose client left, or that was stopped, has a record the outcome completes; one that
 * started it in another process (that replica died, or this one restarted) may have none at all.
 */
export interface JobStarter {
  /** The starting request is in this process and still waits for the job. */
  answers: boolean;
  /** The job was created in this process (its starting request's record is written here). */
  here: boolean;
}

/** A stored image's name, from the URL the gateway gave for it. */
function imageNameOf(url: string): string {
  return new URL(url, 'http://gateway').pathname.split('/').pop() ?? '';
}

const FINAL: JobStatus[] = ['succeeded', 'failed'];

/** A job about to be sent upstream that its replica no longer holds (another took it over). */
class LeaseLost extends Error {
  constructor() {
    super('the job is held by another replica');
    this.name = 'LeaseLost';
  }
}

/** Base64 images stay out of the jobs table (kept for days, read on every poll): a flag says to read them back. */
function resultToStore(result: GenerationResult): string {
  if (!result.images.some((image) => image.b64_json !== undefined && image.url !== undefined)) return JSON.stringify(result);
  // An image answered only inline (storage full: no URL) has no stored copy: its bytes stay in the row.
  const images = result.images.map(({ b64_json, ...image }) => (image.url === undefined && b64_json !== undefined ? { ...image, b64_json } : image));
  return JSON.stringify({ ...result, images, inline_images: true });
}
const IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000;

function declarationJson(model: ModelSpec): string | null {
  const declaration = declarationOf(model);
  return declaration ? JSON.stringify(declaration) : null;
}

/**
 * The model a job was created with, from its row; undefined (the catalogue decides) for a row
 * without one, or whose declaration this version no longer reads (logged).
 */
function keptModel(row: JobRow, log: Logger): ModelSpec | undefined {
  if (!row.model_json) return undefined;
  try {
    return modelFromDeclaration(JSON.parse(row.model_json));
  } catch (err) {
    log.warn({ job_id: row.id, reason: (err as Error).message }, "a job's kept model declaration does not validate; the catalogue's model is used");
    return undefined;
  }
}

/**
 * Runs asynchronous and idempotent requests as persisted jobs. The upstream task id is written as
 * soon as it is known, so a job whose gateway died is taken over (after its lease lapses) and
 * polled to the end without being submitted, and paid for, again.
 */
export class JobRunner {
  readonly instanceId: string;
  private readonly active = new Map<string, { controller: AbortController; done: Promise<void>; resumable: () => boolean }>();
  private timers: NodeJS.Timeout[] = [];
  /** Callback deliveries in progress; a stop cuts their waits short and lets them record where they got. */
  private readonly deliveries = new Set<Promise<void>>();
  private readonly stopDeliveries = new AbortController();
  /** Synchronous jobs whose starting request, in this process, still waits for them. */
  private readonly startersWaiting = new Set<string>();
  /**
   * Jobs finished here while their starting request waited: what records the outcome if that
   * request leaves before answering with it (claimStarterOutcome takes it when it does answer).
   */
  private readonly outcomesForStarters = new Map<string, () => Promise<void>>();
  /** Jobs created in this process and not finished (or given up) yet. */
  private readonly createdHere = new Set<string>();
  /** Told once when a job this replica started has ended (settling the limits it reserved). */
  private readonly finishWatchers = new Map<string, Array<(result: GenerationResult | undefined, failure?: GatewayError) => Promise<void>>>();
  private closing = false;
  /**
   * Aborted once a graceful stop's grace is over (endWaits): a request still following a job this
   * replica no longer runs answers then, before the usage log closes, rather than wait on.
   */
  private readonly waitsEnded = new AbortController();
  /** Told of every job this replica finished (the metrics set it: they are made after the runner); `code`: a failure's error code. */
  observeFinished: ((status: 'succeeded' | 'failed', code: string) => void) | undefined;
  /** Told of every fallback a job takes here (the metrics set it). */
  observeFallback: ((fallback: FallbackTaken) => void) | undefined;

  /** The job rows: every statement about jobs goes through it. */
  readonly records: JobRecords;

  constructor(private readonly o: JobRunnerOptions) {
    this.instanceId = o.instanceId ?? `gw_${randomBytes(6).toString('hex')}`;
    this.records = new JobRecords(o.db);
  }

  async start(): Promise<void> {
    await this.records.migrate();
    await this.takeOverAbandoned();
    const every = (ms: number, fn: () => Promise<unknown>) => {
      const t = setInterval(() => fn().catch((err) => this.o.log.error({ err }, 'job maintenance failed')), ms);
      t.unref();
      this.timers.push(t);
    };
    every(Math.max(50, Math.floor(this.o.leaseMs / 3)), () => this.renewLeases());
    every(this.o.leaseMs, () => this.takeOverAbandoned());
    every(3600_000, () => this.forgetExpired());
  }

  /** Stops polling (those jobs resume elsewhere or on restart), waits for unresumable calls, frees the leases. */
  async close(): Promise<void> {
    this.closing = true;
    for (const t of this.timers) clearInterval(t);
    const waits: Promise<void>[] = [];
    for (const [id, job] of this.active) {
      if (job.resumable()) job.controller.abort(new Error('gateway shutting down'));
      waits.push(job.done);
      void id;
    }
    const grace = new AbortController();
    await Promise.race([Promise.allSettled(waits), sleep(this.o.shutdownGraceMs, undefined, { signal: grace.signal }).catch(() => {})]);
    grace.abort();
    for (const job of this.active.values()) job.controller.abort(new Error('gateway shutting down'));
    await Promise.allSettled([...this.active.values()].map((j) => j.done));
    this.stopDeliveries.abort();
    await Promise.allSettled([...this.deliveries]);
    // A database out of reach does not stop the stop: the leases then run out by themselves, and another replica takes the jobs over after that.
    await this.records.releaseLeases(this.instanceId).catch((err: unknown) => this.o.log.warn({ err }, 'giving up this replica’s job leases failed; they expire by themselves and another replica takes the jobs over then'));
  }

  /**
   * Ends every wait on a job (follow) with `reason`: called once a graceful stop's grace is over,
   * so a synchronous request still waiting for a job that goes on elsewhere (or after a restart)
   * answers, and its usage record is written, before the usage log closes.
   */
  endWaits(reason: Error): void {
    this.waitsEnded.abort(reason);
  }

  /** Whether endWaits has been called (a follow that failed for it was ended by the stop). */
  get waitsHaveEnded(): boolean {
    return this.waitsEnded.signal.aborted;
  }

  get activeCount(): number {
    return this.active.size;
  }

  counts(): Promise<Record<JobStatus, number>> {
    return this.records.counts();
  }

  newJobId(): string {
    return randomId('job', 12);
  }

  /**
   * Persists a job, then runs it in the background. With an Idempotency-Key, the job row is
   * written before the key is claimed, so whoever sees the claim finds its job; a request that
   * loses the claim drops its own row and joins the first one's job.
   */
  async create(
    id: string,
    /** The requested model's prepared request, then its fallback models' (the job moves along them as they fail). */
    chain: PreparedGeneration[],
    /** `route`: the route pattern the request came in on, for the usage record that may stand for it. */
    owner: { client: Client; publicBaseUrl: string; route?: string },
    /**
     * `onFirstClaim`: run once this request holds the key as its first claimant, before the job
     * starts; if it throws, the job is dropped and the key given back.
     */
    idempotency?: { scope: string; fingerprint: string; onFirstClaim?: () => Promise<void> },
    whenFinished?: (result: GenerationResult | undefined, failure?: GatewayError) => Promise<void>,
    /**
     * What the request reserved of its key's limits, kept in the row (StoredReservation as JSON):
     * a replica that finishes the job after this one stopped settles it (settleKept). Read at the
     * insert and again once `onFirstClaim` has reserved.
     */
    keptReservation?: () => string | null,
  ): Promise<{ jobId: string; first: boolean }> {
    // A stop has begun (close() stops jobs from its start, while requests in flight go on): no job is
    // made here that the stop would not wait for. Nothing was sent or reserved for good: the caller
    // gives its reservation back.
    if (this.closing) throw new GatewayError('service_unavailable', 'the gateway is stopping; send the request again (another replica takes it)', { retryAfter: 1, expected: true });
    const now = Date.now();
    const prepared = chain[0]!;
    const request = prepared.request;
    await inSpan('db.job_row', { 'db.operation.name': 'INSERT', 'db.collection.name': 'jobs', 'gateway.job_id': id }, () => this.records.insert({
      id,
      keyId: owner.client.id,
      team: owner.client.team,
      operation: request.operation,
      model: prepared.model.id,
      requestJson: serializeRequest(request),
      callbackUrl: request.callbackUrl ?? null,
      publicBaseUrl: owner.publicBaseUrl,
      leaseOwner: this.instanceId,
      leaseUntil: now + this.o.leaseMs,
      createdAt: now,
      expiresAt: now + this.o.retentionDays * 86_400_000,
      isAsync: request.async,
      tokenId: owner.client.token?.id ?? null,
      modelJson: declarationJson(prepared.model),
      chainJson: chain.length > 1 ? JSON.stringify(newJobChain(chain)) : null,
      route: owner.route ?? null,
      reservationJson: keptReservation?.() ?? null,
    }));
    if (idempotency) {
      let claim: { jobId: string; first: boolean };
      try {
        claim = await this.claimIdempotencyKey(idempotency.scope, idempotency.fingerprint, id);
      } catch (err) {
        await this.records.remove(id);
        throw err;
      }
      if (!claim.first) {
        await this.records.remove(id);
        return claim;
      }
      if (idempotency.onFirstClaim) {
        try {
          await idempotency.onFirstClaim();
          if (keptReservation) await this.records.setReservation(id, keptReservation());
        } catch (err) {
          await this.records.releaseIdempotencyKeysOf(id);
          await this.records.remove(id);
          throw err;
        }
      }
    }
    if (whenFinished) this.finishWatchers.set(id, [whenFinished]);
    this.createdHere.add(id);
    // Followed at once by the request that made it (JobRunner.follow with `starter`).
    if (!request.async) this.startersWaiting.add(id);
    // The stop began while the row was written: it stays queued, never sent, for another replica
    // (or this one after a restart) to take over once its lease runs out.
    if (this.closing) {
      this.o.log.warn({ job_id: id }, 'a job made as the gateway began to stop is left queued, not sent: another replica (or this one after a restart) runs it');
      return { jobId: id, first: true };
    }
    this.launch(id, chain, undefined);
    return { jobId: id, first: true };
  }

  async get(id: string): Promise<JobRow | undefined> {
    const row = await this.records.find(id);
    if (!row || Number(row.expires_at) < Date.now()) return undefined;
    return row;
  }

  async view(row: JobRow): Promise<JobView> {
    const view: JobView = {
      id: row.id,
      status: row.status,
      status_url: `/v1/jobs/${row.id}`,
      model: row.model,
      created: Math.floor(Number(row.created_at) / 1000),
    };
    if (row.result_json) view.result = await this.storedResult(row.result_json);
    if (row.error_json) view.error = (JSON.parse(row.error_json) as StoredError).error;
    if (row.callback_url) view.callback_status = row.callback_status ?? 'pending';
    return view;
  }

  /** A result as kept: base64 images are not stored in the row; they are read back from the image store. */
  private async storedResult(json: string): Promise<GenerationResult> {
    const { inline_images, ...result } = JSON.parse(json) as GenerationResult & { inline_images?: boolean };
    if (!inline_images || !this.o.readImage) return result;
    const images = await Promise.all(
      result.images.map(async (image) => {
        if (image.url === undefined) return image;
        const bytes = await this.o.readImage!(imageNameOf(image.url));
        return bytes ? { ...image, b64_json: bytes.toString('base64') } : image;
      }),
    );
    return { ...result, images };
  }

  /** The finished job's answer, as the synchronous request would have had it. */
  async outcome(row: JobRow): Promise<{ result: GenerationResult } | { error: GatewayError }> {
    if (row.status === 'succeeded' && row.result_json) return { result: await this.storedResult(row.result_json) };
    const stored = row.error_json ? (JSON.parse(row.error_json) as StoredError) : undefined;
    const code = (stored?.error.code ?? 'upstream_error') as ErrorCode;
    return {
      error: new GatewayError(code, stored?.error.message ?? 'the job failed', {
        // The status the job's failure had (paid_image_lost is 503 or 504).
        ...(stored?.status !== undefined ? { status: stored.status } : {}),
        details: stored?.error.details ?? [],
        ...(stored?.retry_after !== undefined ? { retryAfter: stored.retry_after } : {}),
        // As the edge answers a PaidImageLost (src/app.ts): OpenAI's SDKs retry any 5xx on their own.
        ...(stored?.paid || stored?.retry_cannot_help ? { headers: { ...NO_AUTOMATIC_RETRY } } : {}),
      }),
    };
  }

  /**
   * Tells `onEvent` where the job stands (`queued` or `running`), then what it does as it happens
   * (here or on another replica), and resolves with its row once it has finished. Rejects with
   * `signal`'s reason when that aborts first, and with a 404 when the job is gone.
   */
  /** `starter`: the synchronous request that created the job (it answers with the outcome, and records it, unless it leaves first). */
  async follow(id: string, opts: { signal: AbortSignal; onEvent?: (event: ProgressEvent) => void; starter?: boolean }): Promise<JobRow> {
    const ended = this.waitsEnded.signal;
    const followOpts = { ...opts, signal: opts.signal.aborted ? opts.signal : AbortSignal.any([opts.signal, ended]) };
    if (!opts.starter) return this.followJob(id, followOpts);
    let answered = false;
    try {
      const row = await this.followJob(id, followOpts);
      answered = true;
      return row;
    } finally {
      this.starterStopped(id, answered);
    }
  }

  /**
   * Whether this replica finished the job while its starting request waited, so that request's
   * answer counts what the job made; taken once, by that request. False when another replica
   * carried the job on (this one stalled past its lease): that one counted it.
   */
  claimStarterOutcome(id: string): boolean {
    return this.outcomesForStarters.delete(id);
  }

  /** The starting request stopped waiting: answered, or gone before it could answer (the outcome is then recorded here). */
  private starterStopped(id: string, answered: boolean): void {
    this.startersWaiting.delete(id);
    if (answered) return;
    const record = this.outcomesForStarters.get(id);
    if (!record) return;
    this.outcomesForStarters.delete(id);
    void record().catch((err: unknown) => this.o.log.error({ err, job_id: id }, 'recording a finished job’s usage failed'));
  }

  private async followJob(id: string, opts: { signal: AbortSignal; onEvent?: (event: ProgressEvent) => void }): Promise<JobRow> {
    const { signal } = opts;
    signal.throwIfAborted();
    const report = opts.onEvent ?? (() => {});
    const notices: JobNotice[] = [];
    let wake: (() => void) | undefined;
    // Listening before the first read: nothing that happens after it is missed.
    const stopListening = this.o.events.listen(id, (notice) => {
      notices.push(notice);
      wake?.();
    });
    const told = { queued: false, running: false, taskId: undefined as string | undefined, images: new Set<number>() };
    const tellRunning = (taskId: string | undefined) => {
      if (told.running && (taskId === undefined || taskId === told.taskId)) return;
      told.running = true;
      told.taskId = taskId ?? told.taskId;
      report({ type: 'running', ...(told.taskId !== undefined ? { task_id: told.taskId } : {}) });
    };
    const tell = async (notice: Exclude<JobNotice, { type: 'finished' }>) => {
      switch (notice.type) {
        case 'queued':
          return; // a job's queued is told from its row
        case 'running':
          return tellRunning(notice.task_id);
        case 'progress':
          return report(notice);
        case 'image': {
          if (told.images.has(notice.index)) return;
          told.images.add(notice.index);
          const { b64_in_store, ...event } = notice;
          if (b64_in_store && this.o.readImage && event.image.url !== undefined) {
            const bytes = await this.o.readImage(imageNameOf(event.image.url));
            if (bytes) event.image = { ...event.image, b64_json: bytes.toString('base64') };
          }
          return report(event);
        }
        case 'partial_image':
          return report(notice);
        case 'fallback':
          // The next model is sent anew: its running (and task id) is told again.
          told.running = false;
          told.taskId = undefined;
          return report(notice);
      }
    };
    /** True once a notice has arrived, false when it is time to read the job store again. */
    const nextNotice = (ms: number) =>
      new Promise<boolean>((resolve, reject) => {
        if (notices.length > 0) return resolve(true);
        const settle = (noticed: boolean) => {
          cleanup();
          resolve(noticed);
        };
        const onAbort = () => {
          cleanup();
          reject(signal.reason);
        };
        const timer = setTimeout(() => settle(false), ms);
        const cleanup = () => {
          clearTimeout(timer);
          wake = undefined;
          signal.removeEventListener('abort', onAbort);
        };
        wake = () => settle(true);
        signal.addEventListener('abort', onAbort, { once: true });
      });
    const pollMs = this.o.followPollMs ?? 1000;
    try {
      let row = await this.get(id);
      for (;;) {
        if (!row) throw new GatewayError('not_found', `job ${id} is gone`);
        if (FINAL.includes(row.status)) return row;
        if (row.status === 'queued' && !told.queued && !told.running) {
          told.queued = true;
          report({ type: 'queued', job_id: row.id });
        }
        if (row.status === 'running') tellRunning(row.upstream_task_id ?? undefined);
        let finished = false;
        while (!finished) {
          const heard = this.active.has(id) || this.o.events.sharedAcrossReplicas;
          if (!(await nextNotice(heard ? pollMs * 5 : pollMs))) break;
          for (const notice of notices.splice(0)) {
            if (notice.type === 'finished') finished = true;
            else await tell(notice);
          }
        }
        row = await this.get(id);
      }
    } finally {
      stopListening();
    }
  }

  /** Whether a request under this Idempotency-Key scope has been made already (a retry of it replays or joins it). */
  async idempotencyKeyClaimed(scope: string): Promise<boolean> {
    return this.records.idempotencyKeyLive(scope, Date.now());
  }

  /**
   * Claims the first use of an Idempotency-Key. Returns the job id to run (ours) or to join (the
   * first request's); a different request under the same key is a 409.
   */
  private async claimIdempotencyKey(scope: string, fingerprint: string, jobId: string): Promise<{ jobId: string; first: boolean }> {
    const now = Date.now();
    if (await this.records.claimIdempotencyKey(scope, fingerprint, jobId, now, now + IDEMPOTENCY_TTL_MS)) return { jobId, first: true };
    const row = await this.records.idempotencyClaim(scope);
    if (!row) return this.claimIdempotencyKey(scope, fingerprint, jobId);
    if (row.request_hash !== fingerprint) {
      throw new GatewayError('conflict', 'this Idempotency-Key was already used with a different request body', {
        details: [{ field: 'Idempotency-Key', message: 'reuse a key only to retry the identical request' }],
      });
    }
    return { jobId: row.job_id, first: false };
  }

  /** `chain`: prepared here (a new job); undefined: prepared from its row (a job taken over). */
  private launch(id: string, chain: PreparedGeneration[] | undefined, resumeTaskId: string | undefined): void {
    const controller = new AbortController();
    // A stop may cut a job short where nothing is lost: before it is sent, or once its task id is kept.
    const progress: JobProgress = { sending: false, taskKnown: resumeTaskId !== undefined };
    // In the context of the request that created the job (same process): its trace goes on. A job
    // taken over after a restart starts a trace of its own.
    const done = inSpan('job.run', { 'gateway.job_id': id, 'gateway.job.resumed': resumeTaskId !== undefined || chain === undefined }, (span) =>
      this.execute(id, chain, resumeTaskId, controller.signal, progress, span),
    )
      .catch((err) => this.o.log.error({ err, job_id: id }, 'job bookkeeping failed'))
      .finally(() => {
        this.active.delete(id);
        this.createdHere.delete(id);
      });
    this.active.set(id, { controller, done, resumable: () => progress.taskKnown || !progress.sending });
  }

  private async execute(
    id: string,
    given: PreparedGeneration[] | undefined,
    resumeTaskId: string | undefined,
    stop: AbortSignal,
    progress: JobProgress,
    span?: Span,
  ): Promise<void> {
    let row = await this.get(id);
    if (!row) return;
    let chain = parseJobChain(row.chain_json);
    let result: GenerationResult | undefined;
    let failure: GatewayError | undefined;
    // Upstream said it was not billed (never sent, refused unbilled): the Idempotency-Key is freed.
    let unbilled = false;
    // Once per model of the chain: each has UPSTREAM_TIMEOUT_MS of its own, as in a direct request.
    for (;;) {
      const deadlineAt = Date.now() + this.o.upstreamTimeoutMs;
      const deadline = AbortSignal.timeout(this.o.upstreamTimeoutMs);
      const signal = AbortSignal.any([stop, deadline]);
      let prepared: PreparedGeneration | undefined;
      try {
        // A job sent again or resumed runs with the model it started with (or moved on to), not the catalogue's today.
        prepared = given?.[chain ? chain.tried.length - 1 : 0] ?? (await this.preparedFromRow(row));
        result = await this.o.generation.run(prepared, {
          signal,
          publicBaseUrl: row.public_base_url,
          owner: { keyId: row.key_id, team: row.team },
          deadline: deadlineAt,
          // A job's queued is told from its row.
          onEvent: (event) => {
            if (event.type !== 'queued') this.o.events.publish(id, event);
          },
          task: this.taskHooks(id, resumeTaskId, row.upstream_key_tag, progress),
        });
        break;
      } catch (err) {
        // Another replica holds the job now, or will once this one has stopped: it carries the job on.
        // The reservation stays counted until then: the replica that finishes it settles it (from the row).
        if (err instanceof LeaseLost || (stop.aborted && !deadline.aborted)) {
          this.finishWatchers.delete(id);
          return;
        }
        // A deadline that passed after upstream answered is a paid image lost (504), not a timeout to fall back from.
        const cause = deadline.aborted && !(err instanceof PaidImageLost)
          ? new UpstreamFailure('timeout', `no complete upstream answer within ${this.o.upstreamTimeoutMs} ms`, {
              cause: err,
              ...(err instanceof UpstreamFailure ? { mayHaveBilled: err.mayHaveBilled } : {}),
            })
          : err;
        if (chain && chain.next.length > 0 && prepared && fallbackAllowed(cause, prepared.request)) {
          const moved = await this.moveAlongChain(row, chain, cause.kind, cause.mayHaveBilled);
          if (!moved) {
            this.finishWatchers.delete(id);
            return;
          }
          ({ row, chain } = moved);
          resumeTaskId = undefined;
          progress.sending = false;
          progress.taskKnown = false;
          continue;
        }
        // The chain's last model failed as the others did: the answer says all were tried.
        const tried = chain?.tried ?? [];
        const allTried = tried.length > 1 && prepared && fallbackAllowed(cause, prepared.request)
          ? cause.with({}, `${cause.message}; every model of the chain failed (tried ${tried.join(', ')})`)
          : cause;
        // A model left after a timeout (fallback_on_timeout) may have billed: so may the job, however its last model failed.
        const told = chain && leftMayHaveBilled(chain) ? billedToo(allTried) : allTried;
        unbilled = told instanceof UpstreamFailure && !told.mayHaveBilled;
        failure =
          told instanceof GatewayError
            ? told
            : told instanceof UpstreamFailure
              ? toGatewayError(told)
              : new GatewayError('internal_error', 'internal error', { cause: told });
        // The one error line of a job's failure, with what it ran and how it failed: a synchronous
        // request waiting for it logs its answer as a warning only (GenerationPipeline.viaJob).
        if (failure.status >= 500) {
          this.o.log.error(
            {
              err: failure.cause ?? failure,
              job_id: id,
              model: row.model,
              code: failure.code,
              ...(cause instanceof UpstreamFailure ? { failure_kind: cause.kind } : {}),
              ...(failure.upstreamStatus !== undefined ? { upstream_status: failure.upstreamStatus } : {}),
            },
            failure.message,
          );
        }
        if (span) markSpanError(span, failure);
        break;
      }
    }
    if (result && chain) result = { ...result, requested_model: chain.requested };
    await this.finish(row, result, failure, unbilled);
  }

  /** The job's request for its model now, from its row (a job taken over, or moved along its chain). */
  private preparedFromRow(row: JobRow): Promise<PreparedGeneration> {
    const request = deserializeRequest(row.request_json ?? 'null');
    const chain = parseJobChain(row.chain_json);
    // Along a chain the row's model is the one to run, with the params prepared for it (not the
    // first model's: the OpenAI façade's size may be a ratio for one, a size for the next); the
    // request still names the one asked for.
    const forModel = chain ? { ...request, model: row.model, ...(chain.params !== undefined ? { params: chain.params } : {}) } : request;
    return this.o.generation.prepare(forModel, keptModel(row, this.o.log));
  }

  private taskHooks(id: string, resumeTaskId: string | undefined, keyTag: string | null, progress: JobProgress): TaskHooks {
    return {
      ...(resumeTaskId ? { resumeTaskId, ...(keyTag ? { resumeKeyTag: keyTag } : {}) } : {}),
      // A job is queued until it has an upstream slot: one that dies queued is sent again elsewhere.
      // Sent only while this replica's lease holds, renewed here: no other replica can send it too.
      onSent: async () => {
        progress.sending = true;
        const now = Date.now();
        const mine = await inSpan('db.job_row', { 'db.operation.name': 'UPDATE', 'db.collection.name': 'jobs', 'gateway.job.status': 'running' }, () =>
          this.records.markRunning(id, this.instanceId, now, now + this.o.leaseMs),
        );
        if (mine === 0) throw new LeaseLost();
      },
      onTaskId: async (taskId: string, taskKeyTag?: string) => {
        await inSpan('db.job_row', { 'db.operation.name': 'UPDATE', 'db.collection.name': 'jobs', 'gateway.upstream.task_id': taskId }, () =>
          this.records.setUpstreamTask(id, taskId, taskKeyTag ?? null, Date.now()),
        );
        progress.taskKnown = true;
      },
    };
  }

  /**
   * Moves a job to the next model of its chain (the one that failed was not billed): kept in its
   * row first, so a restart goes on from there; then told to followers and the metrics. Undefined
   * when this replica no longer holds the job.
   */
  private async moveAlongChain(row: JobRow, chain: JobChain, reason: string, mayHaveBilled: boolean): Promise<{ row: JobRow; chain: JobChain } | undefined> {
    const moved = advancedChain(chain, reason, mayHaveBilled);
    const next = chain.next[0]!;
    const modelJson = next.declaration === null ? null : JSON.stringify(next.declaration);
    const chainJson = JSON.stringify(moved);
    const kept = await this.records.advanceChain(row.id, this.instanceId, { model: next.model, modelJson, chainJson }, Date.now());
    if (kept === 0) return undefined;
    const fallback = moved.fallbacks[moved.fallbacks.length - 1]!;
    this.o.log.info({ job_id: row.id, ...fallback }, 'job falls back to its next model');
    this.o.events.publish(row.id, { type: 'fallback', ...fallback });
    this.observeFallback?.(fallback);
    const updated: JobRow = { ...row, model: next.model, model_json: modelJson, chain_json: chainJson, status: 'queued', upstream_task_id: null, upstream_key_tag: null };
    return { row: updated, chain: moved };
  }

  /** `unbilled`: upstream said the failure cost nothing, though its answer may not show it (no upstream status: nothing was sent). */
  private async finish(row: JobRow, result: GenerationResult | undefined, failure: GatewayError | undefined, unbilled = false): Promise<void> {
    const id = row.id;
    const error: StoredError | null = failure
      ? {
          status: failure.status,
          error: errorBody(failure, id).error,
          ...(failure.retryAfter !== undefined ? { retry_after: failure.retryAfter } : {}),
          // Paid for and lost, or an upstream failure that may have been billed (toGatewayError).
          ...(failure instanceof PaidImageLost || failure.headers['x-should-retry'] === 'false' ? { paid: true as const } : {}),
          // What the edge tells from the failure's upstream status, which the row does not keep.
          ...(retryCannotHelp(failure) ? { retry_cannot_help: true as const } : {}),
        }
      : null;
    const recorder = this.o.recordOutcome;
    const starter: JobStarter = { answers: this.startersWaiting.has(id), here: this.createdHere.has(id) };
    this.createdHere.delete(id);
    await recorder?.ready(row, starter);
    // Fenced by the lease: if this replica stalled and another took the job over, that one finishes it.
    // With its usage in the same transaction: the job never shows finished before what it cost is kept.
    const written = await inSpan('db.job_finish', { 'db.operation.name': 'UPDATE', 'db.collection.name': 'jobs', 'gateway.job.status': result ? 'succeeded' : 'failed' }, () => this.o.db.transaction(async (tx) => {
      const changed = await this.records.finish(tx, id, this.instanceId, {
        status: result ? 'succeeded' : 'failed',
        resultJson: result ? resultToStore(result) : null,
        errorJson: error ? JSON.stringify(error) : null,
        now: Date.now(),
      });
      if (changed === 1) await recorder?.write(tx, row, result, failure, starter);
      return changed;
    }));
    if (written === 0) {
      this.o.log.warn({ job_id: id }, 'job was taken over by another replica; leaving its outcome to that one');
      this.finishWatchers.delete(id);
      return;
    }
    if (starter.answers && recorder) {
      // Its starting request answers with the outcome, unless it leaves first (or left during the commit).
      const record = () => recorder.write(this.o.db, row, result, failure, { answers: false, here: true });
      if (this.startersWaiting.has(id)) this.outcomesForStarters.set(id, record);
      else await record().catch((err: unknown) => this.o.log.error({ err, job_id: id }, 'recording a finished job’s usage failed'));
    }
    // Settled before anyone hears the job finished: the request waiting for it answers with its
    // limits as settled (x-ratelimit-*-remaining), not as reserved.
    const watchers = this.finishWatchers.get(id);
    this.finishWatchers.delete(id);
    for (const watch of watchers ?? []) await watch(result, failure).catch((err) => this.o.log.error({ err, job_id: id }, 'settling a finished job failed'));
    this.observeFinished?.(result ? 'succeeded' : 'failed', result ? '' : (failure?.code ?? 'internal_error'));
    this.o.events.publish(id, { type: 'finished' });
    if (failure && (unbilled || neverPaid(failure))) await this.records.releaseIdempotencyKeysOf(id);
    // A job carried on from a replica that stopped (or died, or stalled past its lease), or from
    // this process before a restart: its reservation, kept in the row, is settled here, once.
    if (!watchers && row.reservation_json && this.o.settleKept) {
      await this.o.settleKept(row.reservation_json, result, failure).catch((err) => this.o.log.error({ err, job_id: id }, 'settling a finished job’s kept reservation failed'));
    }
    const finished = row.callback_url ? await this.get(id) : undefined;
    if (finished?.callback_url) {
      const delivery: Promise<void> = this.deliverCallback(finished)
        .catch((err) => this.o.log.error({ err, job_id: id }, 'job callback failed'))
        .finally(() => this.deliveries.delete(delivery));
      this.deliveries.add(delivery);
    }
  }

  private async renewLeases(): Promise<void> {
    if (this.closing || this.active.size === 0) return;
    const until = Date.now() + this.o.leaseMs;
    for (const [id, job] of this.active) {
      const kept = await this.records.renewLease(id, this.instanceId, until);
      // Lost the lease (this replica stalled past it): stop, the new owner carries the job on.
      if (kept === 0) job.controller.abort(new Error('lease lost'));
    }
  }

  /** Jobs whose replica stopped renewing its lease: claim each one atomically and carry it on. */
  async takeOverAbandoned(): Promise<number> {
    if (this.closing) return 0;
    const now = Date.now();
    const candidates = await this.records.abandoned(now, 100);
    let taken = 0;
    /** Jobs failed here for their upstream call in flight when their replica stopped: one warning for them all. */
    const failedInFlight: string[] = [];
    for (const job of candidates) {
      if (this.active.has(job.id)) continue;
      // Claimed only as read: a replica that sent the job (or learned its task) since then keeps it.
      const claimed = await this.records.claim(job, this.instanceId, now, now + this.o.leaseMs);
      if (claimed !== 1) continue;
      taken++;
      if (job.upstream_task_id) {
        this.o.log.info({ job_id: job.id }, 'resuming a job: polling its upstream task again');
        this.launch(job.id, undefined, job.upstream_task_id);
      } else if (job.status === 'queued') {
        this.o.log.info({ job_id: job.id }, 'resuming a job that was never sent upstream');
        this.launch(job.id, undefined, undefined);
      } else {
        // Its synchronous upstream call was in flight when the gateway died: sending it again could
        // pay twice, and the first answer is lost. Say so rather than guess. Upstream may have made
        // and billed it: the budget and the usage record keep the most it may have cost.
        await this.finish(
          job,
          undefined,
          PaidImageLost.inFlightWhenStopped(
            await this.mostCostOf(job),
            'the gateway stopped while this job’s upstream call was in flight; it was not sent again, to avoid paying twice. Submit it again to retry, with a new Idempotency-Key if it had one (the same key replays this failure).',
          ),
        );
        failedInFlight.push(job.id);
      }
    }
    if (failedInFlight.length > 0) {
      this.o.log.warn(
        { jobs_failed: failedInFlight.length, job_ids: failedInFlight },
        `${failedInFlight.length} job(s) failed: their upstream call was in flight when their replica stopped, and is not sent again (to avoid paying twice)`,
      );
    }
    return taken;
  }

  /** The most a job's request may cost at the model it runs on (what its budget reserved for it), or null when unknown. */
  private async mostCostOf(row: JobRow): Promise<number | null> {
    try {
      const { route, request } = await this.preparedFromRow(row);
      return maxCostUsd(route.price, { images: imagesAskedOf(request), prompt: request.prompt, params: request.params, options: request.options, inputImages: inputImagesOf(request) });
    } catch (err) {
      this.o.log.warn({ err, job_id: row.id }, 'the most a job in flight may have cost could not be worked out; its reservation is kept as it was');
      return null;
    }
  }

  private async forgetExpired(): Promise<void> {
    await this.records.forgetExpired(Date.now());
  }

  /** POSTs the finished job to its callback_url, signed, retried with backoff. */
  private async deliverCallback(row: JobRow): Promise<void> {
    const { callback_status: _pending, ...job } = await this.view(row);
    const body = JSON.stringify(job);
    const timestamp = Math.floor(Date.now() / 1000);
    const signature = createHmac('sha256', this.o.callbackSecret).update(`${timestamp}.${body}`).digest('hex');
    let status = 'failed';
    const stop = this.stopDeliveries.signal;
    for (const wait of [0, 1000, 5000, 25_000]) {
      if (stop.aborted) break;
      if (wait) await (this.o.callbackWait ?? ((ms, signal) => sleep(ms, undefined, { signal })))(wait, stop).catch(() => {});
      if (stop.aborted) break;
      try {
        const refusal = await this.o.callbackRefusal?.(new URL(row.callback_url!));
        if (refusal) {
          status = `refused: ${refusal}`;
          break;
        }
        const res = await httpRequest(row.callback_url!, {
          ...(this.o.callbackDispatcher ? { dispatcher: this.o.callbackDispatcher } : {}),
          method: 'POST',
          // The job's traceparent, while traces are on.
          headers: injectTraceHeaders({
            'content-type': 'application/json',
            'x-gateway-event': 'job.finished',
            'x-gateway-signature': `t=${timestamp},v1=${signature}`,
          }),
          body,
          headersTimeout: 10_000,
          bodyTimeout: 10_000,
          signal: stop,
        });
        await res.body.dump();
        if (res.statusCode >= 200 && res.statusCode < 300) {
          status = 'delivered';
          break;
        }
        status = `failed: the callback URL answered HTTP ${res.statusCode}`;
        if (res.statusCode < 500 && res.statusCode !== 429) break;
      } catch (err) {
        // The connection's own egress check (the name now resolves elsewhere): final, like the one above.
        const refused = egressRefusalOf(err);
        if (refused) {
          status = `refused: ${refused}`;
          break;
        }
        // A network failure: try again after the next wait.
        status = `failed: ${(err as Error).message}`.slice(0, 300);
      }
    }
    await this.records.setCallbackStatus(row.id, status);
    if (status !== 'delivered') this.o.log.warn({ job_id: row.id, callback_status: status }, 'job callback not delivered');
  }
}
