import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { clipName, type GatewayError } from '../errors.js';
import type { UsageRecord } from '../usage/usage-log.js';
import { isApiCall, usageRecordOf } from '../usage/usage-routes.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** Notes a failure in the request's outcome and logs it (5xx as errors; an expected one as a warning without a stack). */
    noteFailure(request: FastifyRequest, failure: GatewayError): void;
    /**
     * Records a request whose client left before it was answered: as 499, as nginx writes it
     * (no answer goes out, so onResponse never runs for it). `why` is logged.
     */
    recordAbandonedRequest(request: FastifyRequest, why: string): void;
    /**
     * Commits an API call's usage record now, with `status`; resolves once it is committed (or
     * after the usage log's cap). An event stream calls it before its final events; other answers
     * are held for it by the onSend hook.
     */
    commitUsage(request: FastifyRequest, status: number): Promise<void>;
  }
}

/**
 * Once a request is over, one place writes all that is kept of it: its log line (who, which model,
 * what status, how long; never the query, which holds image signatures, nor bodies), its metrics,
 * and for API calls its usage record. Answered requests and abandoned ones alike.
 */
async function requestRecords(app: FastifyInstance): Promise<void> {
  /** The request's usage record, the first time it is asked for, if it is an API call. */
  const usageOf = (request: FastifyRequest, status: number, totalMs: number): UsageRecord | undefined => {
    const outcome = request.outcome;
    if (outcome.usageRecorded || !isApiCall(request)) return undefined;
    outcome.usageRecorded = true;
    return usageRecordOf(request, { status, totalMs }, app.config.LOG_PROMPTS);
  };

  const record = (request: FastifyRequest, status: number, totalMs: number) => {
    const outcome = request.outcome;
    if (outcome.recorded) return;
    outcome.recorded = true;
    request.log.info(
      {
        method: request.method,
        path: clipName(request.url.split('?', 1)[0]!),
        status,
        ms: Math.round(totalMs * 10) / 10,
        key_id: request.client?.id,
        team: request.client?.team,
        ...(request.client?.token ? { token_id: request.client.token.id } : {}),
        model: outcome.model,
        // Who was refused a key or throttled: the address (as TRUST_PROXY lets Fastify read it) to act on.
        ...(status === 401 || status === 429 ? { client_address: request.ip } : {}),
      },
      'request completed',
    );
    app.metrics.observe(request, status, totalMs / 1000);
    // Committed before the answer already, unless it never had one to wait for.
    const usage = usageOf(request, status, totalMs);
    if (usage) app.usageLog.add(usage);
  };

  app.decorate('commitUsage', async (request: FastifyRequest, status: number) => {
    const usage = usageOf(request, status, performance.now() - request.outcome.startedAt);
    if (usage) await app.usageLog.record(usage);
  });

  // The answer leaves only once its usage record is committed: a crash after it loses no record of
  // what was answered. Status and duration are known here; an event stream commits its own later.
  app.addHook('onSend', async (request, reply, payload) => {
    if (request.outcome && !request.outcome.streaming) {
      const usage = usageOf(request, request.outcome.status ?? reply.statusCode, reply.elapsedTime);
      if (usage) await app.usageLog.record(usage);
    }
    return payload;
  });

  // A stream that failed after its 200 headers is recorded with the failure's status (outcome.status).
  app.addHook('onResponse', async (request, reply) => record(request, request.outcome.status ?? reply.statusCode, reply.elapsedTime));

  app.decorate('recordAbandonedRequest', (request: FastifyRequest, why: string) => {
    if (request.outcome.recorded) return;
    request.log.info(why);
    request.outcome.errorCode ??= 'client_closed';
    record(request, 499, performance.now() - request.outcome.startedAt);
  });

  // The router's own refusals (src/http/framework-errors.ts) run no hook: recorded once their answer has gone.
  app.decorate('recordUnroutedAnswer', (request: FastifyRequest, reply: FastifyReply) => {
    reply.raw.once('close', () => record(request, reply.raw.writableEnded ? reply.statusCode : 499, reply.elapsedTime));
  });

  app.decorate('noteFailure', (request: FastifyRequest, failure: GatewayError) => {
    const outcome = request.outcome;
    outcome.errorCode = failure.code;
    if (failure.limit) outcome.limitReason = failure.limit;
    if (failure.upstreamStatus !== undefined) outcome.upstreamStatus = failure.upstreamStatus;
    if (failure.expected) {
      // Known and reported already (a replayed stored failure, a job's failure its runner logged, a
      // stream a stop ended): one line, no stack; the job it started, if any, to find that error by.
      request.log.warn({ code: failure.code, upstream_status: failure.upstreamStatus, ...(outcome.jobId !== undefined ? { job_id: outcome.jobId } : {}) }, failure.message);
    } else if (failure.status >= 500) {
      request.log.error({ code: failure.code, upstream_status: failure.upstreamStatus, err: failure.cause ?? failure }, failure.message);
    } else {
      const clientAddress = failure.status === 401 || failure.status === 429 ? { client_address: request.ip } : {};
      request.log.info({ code: failure.code, upstream_status: failure.upstreamStatus, ...clientAddress }, failure.message);
    }
  });
}

export const requestRecordsPlugin = fp(requestRecords, { name: 'request-records', dependencies: ['metrics', 'usage'] });
