import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { PaidImageLost } from '../generation/image-generation.js';
import { GatewayError } from '../errors.js';
import { imagesAskedOf } from '../catalogue/catalogue.js';
import { JobRunner } from './job-runner.js';
import { parseJobChain } from './job-chain.js';
import type { JobRow } from './job-records.js';
import type { JobOutcome, UsageRecord } from '../usage/usage-log.js';
import { reservationFromStored, type StoredReservation } from '../limits/key-limits.js';

/** A job with a fallback chain: the model its usage record counts under and the models it tried. */
function servedBy(row: JobRow): { model?: string; modelsTried?: string[] } {
  const chain = parseJobChain(row.chain_json);
  return chain ? { model: row.model, modelsTried: chain.tried } : {};
}

/** Where each operation's request is made: the route of a job whose row keeps none (written before jobs kept theirs). */
const ROUTE_OF_OPERATION: Record<string, string> = { generate: '/v1/generate', edit: '/v1/edit', upscale: '/v1/upscale' };

/**
 * The record of a synchronous job's starting request whose replica died before it answered: the
 * request's id died with it, so the job's id stands for it; its time is the job's creation.
 */
function recordOfUnansweredJob(row: JobRow, outcome: JobOutcome): UsageRecord & { jobId: string } {
  const createdAt = Number(row.created_at);
  const stored = row.request_json ? (JSON.parse(row.request_json) as { params?: Record<string, unknown>; options?: Record<string, unknown> }) : undefined;
  return {
    timeMs: createdAt,
    requestId: row.id,
    keyId: row.key_id,
    team: row.team,
    method: 'POST',
    // The route it came in on (the OpenAI façade's, say), as its own record would have named it.
    route: row.route ?? ROUTE_OF_OPERATION[row.operation] ?? null,
    model: outcome.model ?? row.model,
    operation: row.operation,
    imagesRequested: imagesAskedOf({ params: stored?.params ?? {}, options: stored?.options }),
    totalMs: Math.max(0, Date.now() - createdAt),
    prompt: null,
    jobId: row.id,
    tokenId: row.token_id,
    ...outcome,
    modelsTried: outcome.modelsTried ?? null,
  };
}

declare module 'fastify' {
  interface FastifyInstance {
    jobs: JobRunner;
    /**
     * Aborts when the gateway starts to stop: open-ended waits (a job's event stream, a long-poll)
     * end then, so a graceful stop does not wait for jobs that will finish elsewhere.
     */
    stopping: AbortSignal;
  }
}

export interface JobsPluginOptions {
  /** See JobRunnerOptions.callbackWait (tests). */
  callbackWait?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** See JobRunnerOptions.followPollMs (tests). */
  followPollMs?: number;
}

async function jobs(app: FastifyInstance, options: JobsPluginOptions): Promise<void> {
  const config = app.config;
  const jobs = new JobRunner({
    instanceId: app.jobEvents.replicaId,
    events: app.jobEvents,
    db: app.db,
    generation: app.generation,
    log: app.log,
    upstreamTimeoutMs: config.UPSTREAM_TIMEOUT_MS,
    retentionDays: config.IMAGE_RETENTION_DAYS,
    leaseMs: config.JOB_LEASE_MS,
    shutdownGraceMs: config.JOB_SHUTDOWN_GRACE_MS,
    ...app.jobCallbacks,
    ...(options.callbackWait ? { callbackWait: options.callbackWait } : {}),
    ...(options.followPollMs !== undefined ? { followPollMs: options.followPollMs } : {}),
    readImage: (name) => app.images.read(name),
    // As the starting replica's settle (GenerationPipeline.viaJob): to what the job made; images
    // paid for and lost to full storage at what they cost; a failure gives the rest back. Only with
    // counters shared in Redis, where the reservation is: counters in memory never held it here (a
    // restarted process counts from the usage records), so there is nothing to give back.
    settleKept: async (reservationJson, result, failure) => {
      if (app.counters.mode !== 'redis') return;
      await app.limits.settle(
        reservationFromStored(JSON.parse(reservationJson) as StoredReservation),
        result?.images.length ?? 0,
        result ? result.usage.estimated_cost_usd : failure instanceof PaidImageLost ? failure.costUsd : 0,
      );
    },
    recordOutcome: {
      ready: async (row, starter) => {
        if (!starter.answers) await app.usageLog.whenCommitted(row.id);
      },
      write: async (tx, row, result, failure, starter) => {
        // A synchronous request that still waits for its job answers with the outcome, and records it.
        if (starter.answers) return;
        const outcome: JobOutcome = {
          status: failure ? failure.status : 200,
          errorCode: failure ? failure.code : null,
          imagesReturned: result?.images.length ?? 0,
          bytesStored: result?.images.reduce((sum, image) => sum + image.bytes, 0) ?? 0,
          // Images paid for and lost to full storage: the record keeps what they cost.
          estimatedCostUsd: result ? result.usage.estimated_cost_usd : failure instanceof PaidImageLost ? failure.costUsd : null,
          upstreamStatus: result ? 200 : (failure?.upstreamStatus ?? null),
          upstreamMs: result?.usage.upstream_ms ?? null,
          upstreamTokens: result?.usage.upstream_tokens ?? null,
          // Moved along a fallback chain: counted under the model that served (or failed last), naming those tried.
          ...servedBy(row),
        };
        if (starter.here || Number(row.is_async)) return app.usageLog.completeJob(row.id, outcome, tx);
        await app.usageLog.completeJobFromElsewhere(outcome, recordOfUnansweredJob(row, outcome), tx);
      },
    },
  });
  app.decorate('jobs', jobs);

  const stopping = new AbortController();
  app.decorate('stopping', stopping.signal);
  /**
   * Stops the jobs within one grace period, side by side with requests whose client left (still on
   * their way to a 499 record once their connection is gone); jobs write their state before the
   * database closes. Once the grace is over, a synchronous request still waiting for a job this
   * replica no longer runs (no other replica finished it within the grace) answers 503: its usage
   * record is committed before the usage log closes, and a retry under the same Idempotency-Key gets
   * the job's outcome once it is carried on (elsewhere, or here after a restart).
   */
  async function stopJobs(): Promise<void> {
    await Promise.all([app.apiHandlersSettled(config.JOB_SHUTDOWN_GRACE_MS), jobs.close()]);
    jobs.endWaits(
      new GatewayError('service_unavailable', 'the gateway stopped before this request’s job finished; the job goes on (another replica, or this one once restarted, carries it on): retry with the same Idempotency-Key for its result', {
        retryAfter: 1,
        expected: true,
      }),
    );
    // They answer at once (the other handlers had the grace already).
    await app.apiHandlersSettled(Math.min(config.JOB_SHUTDOWN_GRACE_MS, 1000));
  }
  let stopped: Promise<void> | undefined;

  app.addHook('preClose', async () => {
    // Expected: a stream or a wait it ends is logged as one warning line, not an error with a stack.
    stopping.abort(new GatewayError('service_unavailable', 'the gateway is stopping; follow the job again (another replica, or this one once restarted, carries it on)', { retryAfter: 1, expected: true }));
    // Started with the stop, not awaited: a listening server's close waits for its open connections
    // before any onClose hook runs, and a client waiting for its job holds one until the grace ends it.
    stopped = stopJobs();
    stopped.catch(() => {}); // awaited, and so reported, by the onClose hook
  });
  // Migrates the jobs table and takes over jobs that a stopped replica left.
  app.addHook('onReady', async () => jobs.start());
  // Fastify runs onClose hooks one at a time; the usage log closes next (the usage plugin registers
  // before this one), once the jobs have stopped.
  app.addHook('onClose', async () => {
    await (stopped ?? stopJobs());
  });
}

/** The job runner, and the signal that ends waits on jobs when the gateway stops. */
export const jobsPlugin = fp(jobs, { name: 'jobs', dependencies: ['database', 'images', 'image-generation', 'job-events', 'job-callbacks', 'usage', 'limits'] });
