import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ModelCatalogue } from '../catalogue/catalogue.js';
import { UNKNOWN_MODEL } from '../catalogue/model-spec.js';
import type { StoragePressure } from '../images/storage-pressure.js';
import type { ReplyByteBudget } from '../upstream/reply-byte-budget.js';
import { ConfigError } from '../config.js';
import { GatewayError, clipName } from '../errors.js';
import { randomId } from '../ids.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** This app's Prometheus metrics; other parts set the gauges they own (`metrics.jobs`). */
    metrics: GatewayMetrics;
    /** Where the separate metrics listener (METRICS_PORT) listens, once ready; undefined without one. */
    readonly metricsAddress: AddressInfo | undefined;
  }
}

// Image calls take seconds to minutes (UPSTREAM_TIMEOUT_MS defaults to 180 s).
const LATENCY_BUCKETS_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300];
// A wait for an upstream slot ends by UPSTREAM_QUEUE_TIMEOUT_MS (30 s by default); most are 0.
const QUEUE_WAIT_BUCKETS_SECONDS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120];

/**
 * The gateway's metrics in a Registry of its own, so several apps (tests) never share counters.
 * Labels hold only bounded values: route patterns, catalogue ids, team names, codes.
 */
export class GatewayMetrics {
  readonly registry = new Registry();

  readonly requests = new Counter({
    name: 'gateway_http_requests_total',
    help: 'HTTP requests answered, by route pattern, model, team and status.',
    labelNames: ['route', 'model', 'team', 'status'] as const,
    registers: [this.registry],
  });

  readonly requestDuration = new Histogram({
    name: 'gateway_http_request_duration_seconds',
    help: 'Time from request to answer, by route pattern.',
    labelNames: ['route'] as const,
    buckets: LATENCY_BUCKETS_SECONDS,
    registers: [this.registry],
  });

  readonly upstreamDuration = new Histogram({
    name: 'gateway_upstream_duration_seconds',
    help: 'Time spent in successful upstream exchanges (task polling included), by model.',
    labelNames: ['model'] as const,
    buckets: LATENCY_BUCKETS_SECONDS,
    registers: [this.registry],
  });

  readonly fallbacks = new Counter({
    name: 'gateway_fallbacks_total',
    help: 'Requests passed on to their next fallback model, by the model that failed, the next one and the failure kind.',
    labelNames: ['from', 'to', 'reason'] as const,
    registers: [this.registry],
  });

  readonly upstreamErrors = new Counter({
    name: 'gateway_upstream_errors_total',
    help: 'Requests failed by upstream, by the error code answered and model.',
    labelNames: ['code', 'model'] as const,
    registers: [this.registry],
  });

  readonly imagesStored = new Counter({
    name: 'gateway_images_stored_total',
    help: 'Result images stored, by model.',
    labelNames: ['model'] as const,
    registers: [this.registry],
  });

  readonly imageBytesStored = new Counter({
    name: 'gateway_image_bytes_stored_total',
    help: 'Bytes of result images stored, by model.',
    labelNames: ['model'] as const,
    registers: [this.registry],
  });

  readonly upstreamQueueWait = new Histogram({
    name: 'gateway_upstream_queue_wait_seconds',
    help: 'Time upstream submissions waited for a slot (UPSTREAM_MAX_CONCURRENCY) on this replica, by how the wait ended: granted, timed_out (503), abandoned (client gone).',
    labelNames: ['outcome'] as const,
    buckets: QUEUE_WAIT_BUCKETS_SECONDS,
    registers: [this.registry],
  });

  readonly inflightImageWait = new Histogram({
    name: 'gateway_inflight_image_wait_seconds',
    help: 'Time successful upstream replies waited, unread, for room in MAX_INFLIGHT_IMAGE_BYTES on this replica, by how the wait ended: granted, abandoned (client gone, deadline).',
    labelNames: ['outcome'] as const,
    buckets: QUEUE_WAIT_BUCKETS_SECONDS,
    registers: [this.registry],
  });

  readonly jobsFinished = new Counter({
    name: 'gateway_jobs_finished_total',
    help: 'Jobs (async and idempotent requests) this replica finished, by status (succeeded, failed) and the error code of a failure.',
    labelNames: ['status', 'code'] as const,
    registers: [this.registry],
  });

  readonly limitRefusals = new Counter({
    name: 'gateway_limit_refusals_total',
    help: "Requests refused with 429 by the client's own limits (not upstream throttling), by limit.",
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  constructor(
    private readonly catalogue: ModelCatalogue,
    queueDepth: () => number,
    jobCounts?: () => Promise<Record<string, number>>,
  ) {
    // Read from the jobs table at scrape time, so every replica reports the shared truth.
    new Gauge({
      name: 'gateway_jobs',
      help: 'Jobs (async and idempotent requests) by state, from the job store.',
      labelNames: ['state'] as const,
      registers: [this.registry],
      async collect() {
        if (!jobCounts) return;
        // A database out of reach leaves this gauge out of the scrape; the rest is still answered.
        const counts = await jobCounts().catch(() => undefined);
        if (!counts) {
          this.reset();
          return;
        }
        for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
      },
    });
    new Gauge({
      name: 'gateway_upstream_queue_depth',
      help: 'Upstream calls waiting for a slot (UPSTREAM_MAX_CONCURRENCY) on this replica.',
      registers: [this.registry],
      collect() {
        this.set(queueDepth());
      },
    });
    collectDefaultMetrics({ register: this.registry });
  }

  /** A model label: a catalogue id, `unknown` for a name the catalogue does not know, '' for none. */
  private modelLabel(model: string | undefined): string {
    if (model === undefined) return '';
    return this.catalogue.find(model)?.id === model ? model : UNKNOWN_MODEL;
  }

  /** Counts one fallback taken, by a direct request or a job. */
  observeFallback(f: { from: string; to: string; reason: string }): void {
    this.fallbacks.inc({ from: this.modelLabel(f.from), to: this.modelLabel(f.to), reason: f.reason });
  }

  /** Counts one finished request (answered, or abandoned as 499) from what it did (request.outcome). */
  observe(request: FastifyRequest, status: number, seconds: number): void {
    const outcome = request.outcome;
    const route = request.routeOptions.url ?? 'unmatched';
    const model = this.modelLabel(outcome?.model);
    this.requests.inc({ route, model, team: request.client?.team ?? '', status: String(status) });
    this.requestDuration.observe({ route }, seconds);
    if (!outcome) return;
    for (const f of outcome.fallbacks ?? []) this.observeFallback(f);
    if (outcome.upstreamMs !== undefined) this.upstreamDuration.observe({ model }, outcome.upstreamMs / 1000);
    if (outcome.imagesReturned > 0) {
      this.imagesStored.inc({ model }, outcome.imagesReturned);
      this.imageBytesStored.inc({ model }, outcome.bytesStored);
    }
    const code = outcome.errorCode;
    if (code === undefined) return;
    const fromUpstream = outcome.upstreamStatus !== undefined || code === 'upstream_error' || code === 'upstream_timeout';
    if (fromUpstream) this.upstreamErrors.inc({ code, model });
    else if (code === 'rate_limited') this.limitRefusals.inc({ reason: outcome.limitReason ?? 'unspecified' });
  }
}

/** The in-flight image bytes budget (MAX_INFLIGHT_IMAGE_BYTES), read at scrape time. */
function inflightImageGauges(registry: Registry, budget: ReplyByteBudget): void {
  const registers = [registry];
  new Gauge({
    name: 'gateway_inflight_image_bytes',
    help: 'Image bytes of upstream replies being received on this replica (what their declared length decodes to), out of MAX_INFLIGHT_IMAGE_BYTES.',
    registers,
    collect() {
      this.set(budget.inUse);
    },
  });
  new Gauge({
    name: 'gateway_inflight_image_bytes_limit',
    help: 'MAX_INFLIGHT_IMAGE_BYTES in force: past it, new upstream calls wait in the queue and replies wait unread.',
    registers,
    collect() {
      this.set(budget.limit);
    },
  });
  new Gauge({
    name: 'gateway_inflight_image_waiting',
    help: 'Successful upstream replies waiting, unread, for room in MAX_INFLIGHT_IMAGE_BYTES on this replica.',
    registers,
    collect() {
      this.set(budget.waiting);
    },
  });
}

/** Storage pressure, read at scrape time (the watcher polls DATA_DIR every 10 s and after a failed write). */
function storageGauges(registry: Registry, pressure: StoragePressure): void {
  const registers = [registry];
  new Gauge({
    name: 'gateway_storage_refusing',
    help: '1 while image storage is full or unavailable and new generations are refused with 507, else 0.',
    registers,
    collect() {
      this.set(pressure.state === 'ok' ? 0 : 1);
    },
  });
  new Gauge({
    name: 'gateway_storage_free_bytes',
    help: 'Free bytes of the file system holding DATA_DIR, at the last check.',
    registers,
    collect() {
      if (pressure.freeBytes !== undefined) this.set(pressure.freeBytes);
    },
  });
  new Gauge({
    name: 'gateway_storage_min_free_bytes',
    help: 'STORAGE_MIN_FREE_BYTES in force (its default: the smaller of 1 GiB and 5 % of the file system); 0: off.',
    registers,
    collect() {
      if (pressure.minFreeBytes !== undefined) this.set(pressure.minFreeBytes);
    },
  });
}

/** What an outage of the database or of Redis leaves behind, read at scrape time. */
function backlogGauges(registry: Registry, usageLog: { readonly pending: number }, counters: { readonly mode: string }, db: { readonly reachable: boolean }): void {
  const registers = [registry];
  new Gauge({
    name: 'gateway_database_unreachable',
    help: '1 while the database (DATABASE_URL) is known to be unreachable and new generations are refused with 503, else 0 (always 0 on SQLite).',
    registers,
    collect() {
      this.set(db.reachable ? 0 : 1);
    },
  });
  new Gauge({
    name: 'gateway_usage_records_pending',
    help: 'Usage records this replica has not committed yet (queued, or in a commit): they grow while the database refuses writes, and are retried.',
    registers,
    collect() {
      this.set(usageLog.pending);
    },
  });
  new Gauge({
    name: 'gateway_limits_local_fallback',
    help: '1 while REDIS_URL is set but Redis is unavailable and this replica counts the limits alone (seeded from the usage records, not shared with the others), else 0.',
    registers,
    collect() {
      this.set(counters.mode === 'memory (redis unavailable)' ? 1 : 0);
    },
  });
}

/** Whether an Authorization header holds the bearer token, compared in constant time (of the hashes, so lengths do not show). */
export function bearerMatches(authorization: string | undefined, token: string): boolean {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
  const given = createHash('sha256').update(m?.[1] ?? '').digest();
  const expected = createHash('sha256').update(token).digest();
  return timingSafeEqual(given, expected) && m !== null;
}

const UNAUTHORIZED = 'GET /metrics needs Authorization: Bearer <METRICS_TOKEN>';

/**
 * Serves /metrics and nothing else on METRICS_HOST:METRICS_PORT, apart from the API's listener, so
 * that an address reachable only by the scraper can carry it.
 */
function metricsListener(registry: Registry, token: string | undefined): Server {
  const answer = (res: ServerResponse, status: number, headers: Record<string, string>, body: string) => {
    res.writeHead(status, { 'x-content-type-options': 'nosniff', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body), ...headers });
    res.end(body);
  };
  const error = (res: ServerResponse, status: number, code: string, message: string, headers: Record<string, string> = {}) =>
    answer(res, status, { 'content-type': 'application/json; charset=utf-8', ...headers }, JSON.stringify({ error: { code, message, request_id: randomId('req', 12) } }));
  const server = createServer({ requestTimeout: 30_000, headersTimeout: 10_000 }, (req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path !== '/metrics') return error(res, 404, 'not_found', `no route ${req.method} ${clipName(path!)} (this listener serves GET /metrics only)`);
    if (req.method !== 'GET' && req.method !== 'HEAD') return error(res, 405, 'invalid_request', 'GET /metrics only', { allow: 'GET, HEAD' });
    if (token !== undefined && !bearerMatches(req.headers.authorization, token)) {
      return error(res, 401, 'unauthorized', UNAUTHORIZED, { 'www-authenticate': 'Bearer realm="metrics"' });
    }
    registry.metrics().then(
      (text) => answer(res, 200, { 'content-type': registry.contentType }, req.method === 'HEAD' ? '' : text),
      () => error(res, 500, 'internal_error', 'internal error'),
    );
  });
  server.keepAliveTimeout = 72_000;
  return server;
}

/** How long a scrape waits for the job counts (a query): a scraper's own timeout is often 10 s. */
const JOB_COUNTS_MS = 2000;

/** The job counts, or a failure at once while the database is unreachable, or past `ms`. */
function jobCountsWithin(app: FastifyInstance, ms: number): Promise<Record<string, number>> {
  if (!app.db.reachable) return Promise.reject(new Error('the database is unreachable'));
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    app.jobs.counts(),
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no job counts within ${ms} ms`)), ms))),
  ]).finally(() => clearTimeout(timer));
}

async function metrics(app: FastifyInstance): Promise<void> {
  const gatewayMetrics = new GatewayMetrics(app.catalogue, () => app.upstream.queueDepth, () => jobCountsWithin(app, JOB_COUNTS_MS));
  app.decorate('metrics', gatewayMetrics);
  app.upstream.observeQueueWait = (seconds, outcome) => gatewayMetrics.upstreamQueueWait.observe({ outcome }, seconds);
  app.upstream.observeReplyWait = (seconds, outcome) => gatewayMetrics.inflightImageWait.observe({ outcome }, seconds);
  app.jobs.observeFinished = (status, code) => gatewayMetrics.jobsFinished.inc({ status, code });
  app.jobs.observeFallback = (fallback) => gatewayMetrics.observeFallback(fallback);
  inflightImageGauges(gatewayMetrics.registry, app.upstream.replyBytes);
  storageGauges(gatewayMetrics.registry, app.storagePressure);
  backlogGauges(gatewayMetrics.registry, app.usageLog, app.counters, app.db);
  const { METRICS_TOKEN: token, METRICS_PORT: port, METRICS_HOST: host } = app.config;

  if (port === undefined) {
    // Scrapers carry no client key: the metrics token, when set, is their credential.
    app.get('/metrics', async (request, reply) => {
      if (token !== undefined && !bearerMatches(request.headers.authorization, token)) {
        reply.header('www-authenticate', 'Bearer realm="metrics"');
        throw new GatewayError('unauthorized', UNAUTHORIZED);
      }
      return reply.type(gatewayMetrics.registry.contentType).send(await gatewayMetrics.registry.metrics());
    });
    if (token === undefined) {
      // Once listening: a start that fails to bind ends with its own error, not this warning after it.
      app.addHook('onListen', async () => {
        app.log.warn('GET /metrics is open to anyone who reaches the gateway (team names, models, volumes); set METRICS_TOKEN, or METRICS_PORT to serve it on an internal address only');
      });
    }
    app.decorate('metricsAddress', { getter: () => undefined });
    return;
  }

  const listener = metricsListener(gatewayMetrics.registry, token);
  let address: AddressInfo | undefined;
  app.decorate('metricsAddress', {
    getter: () => address,
  });
  app.addHook('onReady', async () => {
    await new Promise<void>((resolve, reject) => {
      listener.once('error', (err: NodeJS.ErrnoException) => {
        reject(new ConfigError(`cannot listen for metrics on ${host}:${port} (${err.code ?? err.message}); set METRICS_PORT to a free port or METRICS_HOST to an address of this machine`));
      });
      listener.listen(port, host, () => {
        address = listener.address() as AddressInfo;
        app.log.info({ host: address.address, port: address.port }, 'metrics listening (GET /metrics), apart from the API');
        resolve();
      });
    });
  });
  app.addHook('onClose', async () => {
    if (!listener.listening) return;
    listener.closeAllConnections();
    await new Promise<void>((resolve) => listener.close(() => resolve()));
  });
}

/** Prometheus metrics at GET /metrics: on the main listener, or on METRICS_HOST:METRICS_PORT alone. */
export const metricsPlugin = fp(metrics, { name: 'metrics', dependencies: ['database', 'catalogue', 'upstream', 'jobs', 'images', 'usage', 'limits'] });
