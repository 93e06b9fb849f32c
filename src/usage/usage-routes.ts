import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { GatewayError } from '../errors.js';
import type { Operation } from '../catalogue/model-spec.js';
import { newOutcome } from './request-outcome.js';
import { UsageLog, type UsageRecord } from './usage-log.js';
import { USAGE_MIGRATIONS } from './usage-migrations.js';
import {
  RECORD_COLUMNS,
  REPORT_METRIC_COLUMNS,
  checkQueryNames,
  parseCursor,
  parseFormat,
  parseGroupBy,
  parseLimit,
  parseWindow,
  toCsv,
  usageRecords,
  usageReport,
  type Query,
  type UsageScope,
} from './usage-report.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** Every /v1 request, written in batches; closed (written out) before the database. */
    usageLog: UsageLog;
    /**
     * Resolves once no /v1 handler is running, or after `timeoutMs`. A graceful stop waits for it
     * before closing the usage log: a handler whose client has left (so its connection no longer
     * holds the server open) is still on its way to the 499 record.
     */
    apiHandlersSettled(timeoutMs: number): Promise<void>;
  }
}

/**
 * The API calls: every /v1 route except image downloads, which are capability URLs fetched by
 * browsers, not calls a client makes. These need a client key and are counted in usage. OpenAI's
 * image routes (/v1/images/generations, /v1/images/edits) share the prefix but are API calls.
 */
export function isApiCall(request: FastifyRequest): boolean {
  // Judged on the route the router matched (it decodes the path), never on the raw URL: `/%761/generate` is /v1/generate.
  const route = request.routeOptions.url;
  // The signed image URLs (GET and HEAD /v1/images/{name}) need no key; the other /v1/images routes do.
  if (route !== undefined) return route.startsWith('/v1/') && !(route === '/v1/images/:name' && (request.method === 'GET' || request.method === 'HEAD'));
  let path = request.url.split('?', 1)[0]!;
  try {
    path = decodeURIComponent(path);
  } catch {
    // An undecodable path matches no route; judge it as written.
  }
  return path.startsWith('/v1/');
}

const MODEL_NAME_MAX = 200;
/** The largest count a usage record's INTEGER column holds (PostgreSQL's is 32-bit). */
const RECORDABLE_COUNT_MAX = 2_147_483_647;

/**
 * A count the record can hold, else null (unknown): a refused `n` of 2147483648 failed PostgreSQL's
 * INSERT, and with it every record of the batch it was written in, again on each retry.
 */
function recordableCount(count: number | undefined): number | null {
  return count !== undefined && Number.isSafeInteger(count) && count >= 0 && count <= RECORDABLE_COUNT_MAX ? count : null;
}

/** What each image route does: its records name it even when the request was refused before the pipeline saw it (a parse error). */
const OPERATION_OF_ROUTE = new Map<string, Operation>([
  ['POST /v1/generate', 'generate'],
  ['POST /v1/edit', 'edit'],
  ['POST /v1/upscale', 'upscale'],
  ['POST /v1/describe', 'describe'],
  ['POST /v1/images/generations', 'generate'],
  ['POST /v1/images/edits', 'edit'],
]);

/** The usage record of a finished request: what it did (request.outcome) and how it was answered. */
export function usageRecordOf(request: FastifyRequest, answer: { status: number; totalMs: number }, keepPrompt: boolean): UsageRecord {
  const outcome = request.outcome ?? newOutcome();
  const totalMs = answer.totalMs;
  return {
    timeMs: Math.round(Date.now() - totalMs),
    requestId: request.id,
    keyId: request.client?.id ?? null,
    team: request.client?.team ?? null,
    method: request.method,
    route: request.routeOptions.url ?? null,
    model: outcome.model?.slice(0, MODEL_NAME_MAX) ?? null,
    operation: outcome.operation ?? OPERATION_OF_ROUTE.get(`${request.method} ${request.routeOptions.url}`) ?? null,
    imagesRequested: recordableCount(outcome.imagesRequested),
    imagesReturned: outcome.imagesReturned,
    status: answer.status,
    errorCode: outcome.errorCode ?? null,
    upstreamStatus: outcome.upstreamStatus ?? null,
    upstreamMs: outcome.upstreamMs ?? null,
    totalMs: Math.round(totalMs),
    bytesStored: outcome.bytesStored,
    estimatedCostUsd: outcome.estimatedCostUsd,
    upstreamTokens: outcome.upstreamTokens ?? null,
    prompt: keepPrompt ? (outcome.prompt ?? null) : null,
    jobId: outcome.jobId ?? null,
    tokenId: request.client?.token?.id ?? null,
    modelsTried: outcome.modelsTried && outcome.modelsTried.length > 0 ? outcome.modelsTried.map((m) => m.slice(0, MODEL_NAME_MAX)) : null,
    ...(outcome.replacesStandIn && outcome.jobId ? { replacesStandIn: true } : {}),
  };
}

function scopeOf(request: FastifyRequest): UsageScope {
  const client = request.client;
  if (!client) throw new GatewayError('unauthorized', 'a client key is required');
  return client.admin ? {} : { team: client.team };
}

const CSV_TYPE = 'text/csv; charset=utf-8';

async function usage(app: FastifyInstance): Promise<void> {
  await app.db.migrate(USAGE_MIGRATIONS);
  // A commit refused for want of room (the records stay queued and are retried) marks storage full.
  const usageLog = new UsageLog(app.db, app.log, { onWriteFailure: (err) => app.storagePressure.reportWriteFailure(err), commits: app.groupCommit });
  app.decorate('usageLog', usageLog);
  // After the jobs and the requests whose client left have settled (the jobs plugin's onClose, run
  // before this one); the server has stopped taking requests by now. What they did is written
  // before the database closes.
  app.addHook('onClose', async () => usageLog.close());

  let handlersRunning = 0;
  const whenSettled = new Set<() => void>();
  app.addHook('onRoute', (route) => {
    if (!route.url.startsWith('/v1/')) return;
    const handler = route.handler;
    route.handler = async function (this: FastifyInstance, request, reply) {
      handlersRunning++;
      try {
        return await handler.call(this, request, reply);
      } finally {
        handlersRunning--;
        if (handlersRunning === 0) for (const settled of whenSettled) settled();
      }
    } as typeof handler;
  });
  app.decorate('apiHandlersSettled', async (timeoutMs: number) => {
    if (handlersRunning > 0) {
      let settled!: () => void;
      const done = new Promise<void>((resolve) => (settled = resolve));
      whenSettled.add(settled);
      const timer = setTimeout(settled, timeoutMs);
      await done;
      clearTimeout(timer);
      whenSettled.delete(settled);
    }
    // The error handler (which records a 499) runs just after a failed handler's promise settles.
    await new Promise((resolve) => setImmediate(resolve));
  });

  app.get<{ Querystring: Query }>('/v1/usage', async (request, reply) => {
    const query = request.query;
    checkQueryNames(query, ['from', 'to', 'group_by', 'format']);
    const window = parseWindow(query);
    const groupBy = parseGroupBy(query);
    const format = parseFormat(query);
    const scope = scopeOf(request);
    // Read-your-writes on this replica: what was just answered is in the report.
    await usageLog.flush();
    const data = await usageReport(app.db, window, scope, groupBy);
    if (format === 'csv') {
      return reply.type(CSV_TYPE).send(toCsv([...groupBy, ...REPORT_METRIC_COLUMNS], data as unknown as Record<string, unknown>[]));
    }
    return { from: new Date(window.fromMs).toISOString(), to: new Date(window.toMs).toISOString(), group_by: groupBy, data };
  });

  app.get<{ Querystring: Query }>('/v1/usage/records', async (request, reply) => {
    const query = request.query;
    checkQueryNames(query, ['from', 'to', 'limit', 'cursor', 'format']);
    const window = parseWindow(query);
    const limit = parseLimit(query);
    const after = parseCursor(query);
    const format = parseFormat(query);
    const scope = scopeOf(request);
    await usageLog.flush();
    const page = await usageRecords(app.db, window, scope, { limit, after });
    if (format === 'csv') {
      if (page.next_cursor) reply.header('x-next-cursor', page.next_cursor);
      return reply.type(CSV_TYPE).send(toCsv(RECORD_COLUMNS, page.data as unknown as Record<string, unknown>[]));
    }
    return { from: new Date(window.fromMs).toISOString(), to: new Date(window.toMs).toISOString(), ...page };
  });
}

/** The usage log (one record per API call) and the reports read from it. */
export const usagePlugin = fp(usage, { name: 'usage', dependencies: ['database'] });
