import { accessSync, constants } from 'node:fs';
import { randomId } from './ids.js';
import { makePrivateDirSync, tightenDataDirSync } from './storage/private-files.js';
import Fastify, { LogController, type FastifyInstance, type FastifyError } from 'fastify';
import multipart from '@fastify/multipart';
import type { DestinationStream } from 'pino';
import { ConfigError, type Config } from './config.js';
import { GatewayError, NO_AUTOMATIC_RETRY, clipName, errorBody, retryCannotHelp } from './errors.js';
import { UpstreamFailure, toGatewayError } from './upstream/upstream-failure.js';
import { cataloguePlugin } from './catalogue/catalogue-plugin.js';
import { hintOptionsSentAsFields, hintedOperationOf } from './request/option-hints.js';
import { modelAllowed } from './auth/key-policy.js';
import type { ModelSpec } from './catalogue/model-spec.js';
import { clientKeysPlugin } from './auth/client-keys-plugin.js';
import { limitsPlugin } from './limits/limits-plugin.js';
import { keyRoutes } from './routes/key-routes.js';
import { tokenRoutes } from './routes/token-routes.js';
import { upstreamPlugin } from './upstream/upstream-plugin.js';
import { imagesPlugin } from './images/images-plugin.js';
import { workersPlugin } from './workers/workers-plugin.js';
import type { ImageWorkers } from './workers/image-workers.js';
import { serializeJson, SplicedJson } from './http/base64-json.js';
import { imageFilesPlugin } from './routes/image-file-routes.js';
import { imageListRoutes } from './routes/image-list-routes.js';
import { urlSignerPlugin } from './images/url-signer-plugin.js';
import { imageGenerationPlugin } from './generation/image-generation-plugin.js';
import { PaidImageLost } from './generation/image-generation.js';
import { imageRoutes } from './routes/image-routes.js';
import { ClientGone } from './generation/generation-pipeline.js';
import { generationPipelinePlugin } from './generation/generation-pipeline-plugin.js';
import { jobCallbacksPlugin } from './jobs/job-callbacks-plugin.js';
import { jobEventsPlugin } from './jobs/job-events-plugin.js';
import { jobsPlugin } from './jobs/jobs-plugin.js';
import { requestRecordsPlugin } from './observability/request-records.js';
import { docsRoutes } from './routes/docs-routes.js';
import { answersOpenAiErrors, openAiErrorBody, openAiRoutes } from './routes/openai-routes.js';
import { jobRoutes } from './routes/job-routes.js';
import { newOutcome, type RequestOutcome } from './usage/request-outcome.js';
import { usagePlugin } from './usage/usage-routes.js';
import { metricsPlugin } from './observability/metrics.js';
import { bufferedStdout } from './observability/log-destination.js';
import { DATABASE_RETRY_AFTER_SECONDS, databasePlugin, openGatewayDatabase } from './storage/database-plugin.js';
import { DatabaseUnreachable, type PostgresTimeouts } from './storage/database.js';
import { redisPlugin } from './storage/redis-plugin.js';
import type { FreeSpaceProbe } from './images/storage-pressure.js';
import { connectionOptions, connectionsPlugin, trackRequests } from './http/connections.js';
import { securityHeaders } from './http/security-headers.js';
import { MAX_PARAM_LENGTH, answerFrameworkError } from './http/framework-errors.js';
import { registerCors } from './http/cors.js';
import { systemResolver, type HostResolver } from './images/image-fetch.js';
import { uploadsPlugin } from './request/uploads.js';
import { parseJsonBodies } from './http/json-body.js';
import { refuseOtherBodyTypes } from './http/body-types.js';
import { refuseNulInUrls } from './http/nul-characters.js';
import { startTracing, traceLogFields, tracingSettings, type Tracing } from './observability/tracing.js';
import { tracingHooks } from './observability/tracing-hooks.js';
import { rewriteConsoleUrl } from './console/console-sessions.js';
import { consoleRoutesPlugin } from './console/console-routes.js';

declare module 'fastify' {
  interface FastifyInstance {
    config: Config;
    /** How the egress policy resolves host names (image URLs, result downloads, callbacks). */
    resolveHost: HostResolver;
    /** OpenTelemetry traces (src/observability/tracing.ts): `enabled` only with an OTLP endpoint configured. */
    tracing: Tracing;
    /**
     * What SIGHUP does: reads CATALOGUE_FILE and GATEWAY_KEYS_FILE again (those set), each served
     * at once when it validates, else logged and the last good one kept. Never throws.
     */
    reloadFiles(): void;
  }
  interface FastifyRequest {
    /** What this request did; see RequestOutcome. */
    outcome: RequestOutcome;
  }
}

export interface AppOptions {
  /** Where log lines go; tests pass a stream to read them. Defaults to stdout. */
  logStream?: DestinationStream;
  /** Reads DATA_DIR's free space (storage pressure); tests inject one. Defaults to statfs. */
  freeSpaceProbe?: FreeSpaceProbe;
  /**
   * How the egress policy resolves host names, at its check and on every connection; the system
   * resolver by default. Tests give one that answers differently at the two (DNS rebinding).
   */
  resolveHost?: HostResolver;
  /** How often client keys are re-read from the database (1 s by default); a test sets it long to prove Redis alone carries a revocation. */
  keyPollIntervalMs?: number;
  /** PostgreSQL's connect, statement and probe limits (src/storage/database.ts's defaults unless given); tests make them short. */
  postgresTimeouts?: PostgresTimeouts;
  /** The pause before a job's callback is tried again (1 s, 5 s, 25 s by default); a test records it instead. */
  callbackWait?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** The clock browser tokens are minted and expire by (Date.now by default); a test moves it past a token's expiry. */
  now?: () => number;
  /** How often a job's follower reads the job store for news it was not told (1 s, 5 s with notices); a test sets it long so only notices count. */
  jobFollowPollMs?: number;
  /** The models served, instead of the built-in catalogue (loadCatalogue's result); a test gives models declared in data only. */
  catalogue?: readonly ModelSpec[];
  /** The image work's threads instead of WORKERS of them; a test gives a pool whose worker crashes on demand. */
  imageWorkers?: ImageWorkers;
}

const REQUEST_ID = /^[\w.:-]{1,128}$/;

/** The nearest `hops` proxies are trusted, as Fastify does for a number (its types take only a function). */
const trustHops = (hops: number) => (_address: string, hop: number) => hop < hops;

/** The default body limit: every JSON route but a JSON edit's (see jsonEditBodyLimit) takes a prompt and a few fields. */
const BODY_LIMIT = 1024 * 1024;
/** How long /readyz waits for the database's SELECT 1: past it, `database: unavailable` (503). */
const READINESS_PING_MS = 2000;

/** Headers that describe a route's answer (its body, caching, ranges), dropped when it fails instead; the error handler sets its own type. */
const REPRESENTATION_HEADERS = ['content-type', 'content-length', 'content-disposition', 'content-range', 'accept-ranges', 'etag', 'last-modified', 'cache-control'] as const;

const MALFORMED_MULTIPART =
  /^(Unexpected end of multipart data|Multipart: Boundary not found|Boundary required|\w+ terminated early due to unexpected end of multipart data|The needle cannot have a length bigger than 256\.)$/;

/**
 * Any request that failed for want of its database (a statement not tried, or tried while the
 * database is known to be out of reach) is a 503 to retry, not an internal error: nothing is wrong
 * with the request, and generations were refused before anything went upstream.
 */
function databaseOutOfReach(app: FastifyInstance, err: unknown): GatewayError | undefined {
  if (err instanceof GatewayError || err instanceof UpstreamFailure) return undefined;
  if (!(err instanceof DatabaseUnreachable) && (!app.hasDecorator('db') || app.db.reachable)) return undefined;
  return new GatewayError('service_unavailable', 'the gateway cannot reach its database just now: retry later', { retryAfter: DATABASE_RETRY_AFTER_SECONDS, cause: err });
}

/** Fastify's own errors (bad JSON, body too large, ...) in the gateway's terms; `bodyLimit` and `contentType`: the request's. */
function asGatewayError(err: unknown, bodyLimit?: number, contentType?: string): GatewayError {
  if (err instanceof GatewayError) return err;
  if (err instanceof UpstreamFailure) return toGatewayError(err);
  const e = err as FastifyError & { part?: unknown };
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      if (bodyLimit !== undefined) {
        const size = bodyLimit >= 1024 * 1024 ? `${Math.round((bodyLimit / (1024 * 1024)) * 10) / 10} MiB` : `${Math.round(bodyLimit / 1024)} KiB`;
        return new GatewayError('payload_too_large', `the request body is over this endpoint's size limit of ${bodyLimit} bytes (${size})`, {
          details: [{ field: '(body)', message: `must be at most ${bodyLimit} bytes` }],
        });
      }
      return new GatewayError('payload_too_large', `the request is over the size limit (${e.message})`);
    case 'FST_PROTO_VIOLATION':
      return new GatewayError('invalid_request', 'a multipart field is named after a property of Object.prototype (constructor, __proto__, ...), which is no field of this request');
    case 'FST_REQ_FILE_TOO_LARGE':
    case 'FST_PARTS_LIMIT':
    case 'FST_FILES_LIMIT':
    case 'FST_FIELDS_LIMIT':
      return new GatewayError('payload_too_large', `the request is over the size limit (${e.message})`);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': {
      // Fastify says only "Unsupported Media Type" of a body it has no parser for (curl -d sends a form).
      const sent = contentType ? ` (${contentType.split(';')[0]!.trim().slice(0, 100)})` : '';
      return new GatewayError('unsupported_media_type', `the body's Content-Type${sent} is not one the gateway reads: send application/json, or multipart/form-data to the routes that take files`);
    }
    case 'FST_INVALID_MULTIPART_CONTENT_TYPE':
      return new GatewayError('unsupported_media_type', e.message);
  }
  if (err instanceof SyntaxError) return new GatewayError('invalid_request', `the body is not valid JSON: ${err.message}`);
  // busboy's own errors carry no code or status: a body cut short, or one with no boundary to split it by.
  if (err instanceof Error && MALFORMED_MULTIPART.test(err.message)) {
    const message = `is not well-formed multipart/form-data (${err.message}): each part opens with "--" and the boundary that Content-Type names, and the body ends with "--" + boundary + "--"`;
    return new GatewayError('invalid_request', `the body ${message}`, { details: [{ field: '(body)', message }] });
  }
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    if (e.statusCode === 413) return new GatewayError('payload_too_large', e.message);
    if (e.statusCode === 415) return new GatewayError('unsupported_media_type', e.message);
    return new GatewayError('invalid_request', e.message);
  }
  return new GatewayError('internal_error', 'internal error', { cause: err });
}

export async function buildApp(config: Config, options: AppOptions = {}): Promise<FastifyInstance> {
  let looseFiles: string[] = [];
  try {
    makePrivateDirSync(config.DATA_DIR);
    // Checked here, not at the first of many writes (uploads, the database, the signing key) to fail.
    accessSync(config.DATA_DIR, constants.W_OK | constants.X_OK);
    looseFiles = tightenDataDirSync(config.DATA_DIR);
  } catch (err) {
    throw new ConfigError(`DATA_DIR ${config.DATA_DIR} cannot be used as a directory: ${(err as Error).message}; set DATA_DIR to a directory this user can create and write to`);
  }

  const bufferedLog = options.logStream ? undefined : bufferedStdout();
  // Loaded (and registered with the OpenTelemetry API) only when an OTLP endpoint is set.
  const traces = tracingSettings(config);
  const tracing = await startTracing(traces, { warn: (obj, msg) => console.warn(msg, obj) });
  const app = Fastify({
    logger: {
      level: config.LOG_LEVEL,
      // With traces on, every line logged inside a request (or a job) names its trace_id and span_id.
      ...(tracing.enabled ? { mixin: traceLogFields } : {}),
      redact: {
        // Cookies too: the console's session cookie stands for a key.
        paths: ['req.headers.authorization', 'req.headers["x-api-key"]', 'req.headers["api-key"]', 'headers.authorization', 'headers["api-key"]', 'req.headers.cookie', 'headers.cookie'],
        censor: '[redacted]',
      },
      stream: options.logStream ?? bufferedLog!.stream,
    },
    // The onResponse hook below writes the one line per request.
    logController: new LogController({ disableRequestLogging: true }),
    // JSON edits, whose images may come as data URLs, set their own (image-routes.ts).
    bodyLimit: BODY_LIMIT,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomId('req', 12);
    },
    // Off by default: otherwise any client's X-Forwarded-* would set its address and shape its image URLs.
    // A hop count or the proxies' addresses (TRUST_PROXY), never every hop.
    trustProxy: typeof config.TRUST_PROXY === 'number' ? trustHops(config.TRUST_PROXY) : config.TRUST_PROXY,
    // Timeouts, and answers to what Node refuses before a route runs: src/http/connections.ts.
    ...connectionOptions(config),
    // The console's /console/api/v1/... is the /v1 API, authenticated by its session (src/console).
    rewriteUrl: rewriteConsoleUrl,
    // A long path parameter reaches its route (authenticated, answered as any unknown id); the
    // router's own refusals (a path that does not decode) answer in the contract's shape.
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    frameworkErrors: answerFrameworkError,
  });
  app.decorate('config', config);
  app.decorate('resolveHost', options.resolveHost ?? systemResolver);
  app.decorate('tracing', tracing);
  tracing.logTo(app.log);
  if (looseFiles.length > 0) app.log.warn({ paths: looseFiles }, 'DATA_DIR files readable by other users could not be made private (owned by another user); change their mode to 0600 (0700 for DATA_DIR)');
  reloadOnHangup(app, config);
  if (traces) app.log.info({ endpoint: traces.url.replace(/^(\w+:\/\/)[^@/]*@/, '$1'), protocol: traces.protocol, service: traces.serviceName }, 'OpenTelemetry traces on');
  // Fastify runs onClose hooks last-registered first: this one runs after every other.
  // Lines logged after this still reach stdout: pino writes the buffer out when the process exits.
  if (bufferedLog) app.addHook('onClose', async () => bufferedLog.close());
  // Before the log closes: spans still buffered are exported (the last ones of a graceful stop included).
  if (tracing.enabled) app.addHook('onClose', async () => tracing.shutdown().catch((err: unknown) => app.log.warn({ err }, 'exporting the last spans failed')));

  try {
    await registerAll(app, config, options);
  } catch (err) {
    // A failed start leaves nothing open: what was registered so far closes as in a stop. Not waited
    // for: SQLite's threads do not keep the process alive, so a close waiting on them could outlast
    // the process and lose this error, the one to report.
    void app.close().catch(() => {});
    throw err;
  }
  return app;
}

/**
 * SIGHUP reloads the files that can be reloaded (app.reloadFiles), and never ends the process: Node's
 * default for it is to terminate, and tooling sends it to reload (the README says the files are
 * reloaded on SIGHUP), with CATALOGUE_FILE or GATEWAY_KEYS_FILE set or not. Installed here, before
 * any plugin, for as long as the app lives; removed when it closes (its onClose hook runs last).
 */
function reloadOnHangup(app: FastifyInstance, config: Config): void {
  app.decorate('reloadFiles', () => {
    try {
      const files = [config.CATALOGUE_FILE && 'CATALOGUE_FILE', config.GATEWAY_KEYS_FILE && 'GATEWAY_KEYS_FILE'].filter(Boolean);
      app.log.info({ signal: 'SIGHUP', files }, files.length > 0 ? `SIGHUP: reloading ${files.join(' and ')}` : 'SIGHUP: no file to reload (CATALOGUE_FILE and GATEWAY_KEYS_FILE unset)');
      const reloadCatalogue = () => (config.CATALOGUE_FILE && app.hasDecorator('reloadCatalogue') ? app.reloadCatalogue().ok : true);
      // The catalogue first: the keys' allow-lists and fallbacks are then checked against the models it serves.
      const catalogueReloaded = reloadCatalogue();
      if (config.GATEWAY_KEYS_FILE && app.hasDecorator('keyStore') && app.hasDecorator('catalogue')) {
        const keysReloaded = app.keyStore.reloadFile((name) => app.catalogue.find(name)).ok;
        // One edit of both files (a model dropped with the keys that named it): the catalogue, refused
        // for the old keys, is tried again against the new ones.
        if (!catalogueReloaded && keysReloaded && reloadCatalogue()) app.log.info('SIGHUP: CATALOGUE_FILE reloaded once GATEWAY_KEYS_FILE was');
      }
    } catch (err) {
      app.log.error({ err }, 'SIGHUP: reloading failed');
    }
  });
  const onHangup = () => app.reloadFiles();
  process.on('SIGHUP', onHangup);
  app.addHook('onClose', async () => {
    process.off('SIGHUP', onHangup);
  });
}

/**
 * The plugins and routes. fastify-plugin checks that each plugin comes after its `dependencies`;
 * onReady hooks run in this order and onClose hooks in reverse (Fastify runs them last-registered
 * first), so a service closes after everything registered after it, including what uses it. The
 * services stop in this order: jobs (with requests whose client left), usage log, client keys, job
 * events, job callbacks, upstream, images, image workers, database, Redis.
 */
async function registerAll(app: FastifyInstance, config: Config, options: AppOptions): Promise<void> {
  // Files are streamed to DATA_DIR/uploads (request/edit-parts.ts), the whole request within MAX_REQUEST_BYTES.
  await app.register(multipart, {
    limits: { fileSize: config.MAX_UPLOAD_BYTES, files: 17, fields: 40, fieldSize: 1024 * 1024 },
  });
  await app.register(uploadsPlugin);
  parseJsonBodies(app);
  refuseOtherBodyTypes(app);
  refuseNulInUrls(app);
  // JSON answers with a b64_json image splice its base64 bytes in, not through JSON.stringify (src/http/base64-json.ts).
  // Fastify's types want a string; it pipes a stream as it is (reply.js onSendEnd), with the length set here.
  app.setReplySerializer(serializeJson as (payload: unknown) => string);
  app.addHook('onSend', async (_request, reply, payload) => {
    if (payload instanceof SplicedJson) reply.header('content-length', payload.byteLength);
    return payload;
  });
  app.decorateRequest('outcome', null as unknown as RequestOutcome);
  // Before authentication (client-keys), which may refuse the request.
  app.addHook('onRequest', async (request, reply) => {
    request.outcome = newOutcome();
    reply.header('x-request-id', request.id);
  });
  // The server span of each request (only while traces are on); before authentication, which may refuse it.
  tracingHooks(app);
  trackRequests(app);
  securityHeaders(app);
  // Once a graceful stop has begun, each answer closes its connection: the client's next request
  // opens a new one, to a replica that stays, rather than reusing one that is about to end.
  app.addHook('onSend', async (_request, reply, payload) => {
    if (app.hasDecorator('stopping') && app.stopping.aborted) reply.header('connection', 'close');
    return payload;
  });
  // An answer whose headers left before the stop (an event stream) ends its connection once it is
  // done: the server's close waits for every connection, and this one would idle until keep-alive ends.
  app.addHook('onResponse', async (request) => {
    if (app.hasDecorator('stopping') && app.stopping.aborted) request.raw.socket?.end();
  });

  // Set before any plugin adds routes: a route takes the error handler set when it is added.
  app.setErrorHandler((err, request, reply) => {
    // A client that has left gets no answer and onResponse never runs for it: recorded here, as 499,
    // whatever failed after it left (the deadline, say, in the moment before it noticed).
    if (err instanceof ClientGone || reply.raw.destroyed) {
      app.recordAbandonedRequest(request, err instanceof ClientGone ? 'client disconnected; upstream call aborted' : `client disconnected; then: ${asGatewayError(err).code}`);
      return reply.status(499).send();
    }
    const refused = databaseOutOfReach(app, err) ?? asGatewayError(err, request.routeOptions.bodyLimit, request.headers['content-type']);
    // The model the request named (noted before its body was judged), when the key may use it: an
    // option sent as a field is told where it goes.
    const named = request.outcome?.model;
    const model = named !== undefined && request.client && app.hasDecorator('catalogue') ? app.catalogue.find(named) : undefined;
    const gw =
      model && modelAllowed(request.client!, model.id)
        ? hintOptionsSentAsFields(refused, model, hintedOperationOf(request.routeOptions.url), request.isMultipart())
        : refused;
    app.noteFailure(request, gw);
    // What a route set to describe the answer it meant to send (an image's ETag, its immutable
    // Cache-Control) must not describe this error: a cache would keep the error as that image.
    for (const name of REPRESENTATION_HEADERS) reply.removeHeader(name);
    reply.headers(gw.headers);
    if (gw.retryAfter !== undefined) reply.header('retry-after', String(gw.retryAfter));
    // Made and paid for, then lost: a client library must not send it again on its own (OpenAI's SDKs
    // retry any 5xx, honouring Retry-After), each retry paying upstream again; the caller decides.
    // So also for the other answers of an image paid for and lost: storage full, a result not fetched.
    // (An upstream failure that may have been billed carries it in gw.headers: toGatewayError.)
    if (gw.code === 'paid_image_lost' || err instanceof PaidImageLost || retryCannotHelp(gw)) reply.headers(NO_AUTOMATIC_RETRY);
    // The rest of a body over the limit is not read: the connection closes after the answer.
    if (gw.code === 'payload_too_large') reply.header('connection', 'close');
    // The OpenAI-compatible routes answer in OpenAI's error shape, for OpenAI's SDKs; same status.
    return reply.status(gw.status).send(answersOpenAiErrors(request) ? openAiErrorBody(gw) : errorBody(gw, request.id));
  });

  app.setNotFoundHandler((request, reply) => {
    // The path cut to its first 100 characters: a huge one is not echoed back (nor logged) whole.
    const path = request.url.split('?', 1)[0]!;
    // A `<vendor>/<model>` alias put in the path as it is: its slash makes another route.
    const hint = /^\/v1\/models\/[^/]+\/[^/]+$/.test(path) ? `; a model id with a "/" goes URL-encoded, e.g. GET /v1/models/openai%2Fgpt-image-1` : '';
    const gw = new GatewayError('not_found', `no route ${request.method} ${clipName(path)}${hint}`);
    return reply.status(404).send(errorBody(gw, request.id));
  });

  // After the error and not-found handlers (its OPTIONS route takes them), before authentication
  // (client-keys) and the rate limit: a listed origin's preflight is answered in its onRequest hook.
  await registerCors(app, config.CORS_ORIGINS);
  await app.register(urlSignerPlugin);
  await app.register(cataloguePlugin, options.catalogue ? { models: options.catalogue } : {});
  await app.register(redisPlugin);
  // Opened out here: avvio gives a plugin 10 s to load, and an unreachable PostgreSQL may take
  // longer to fail; it must fail with its ConfigError.
  await app.register(databasePlugin, { db: await openGatewayDatabase(config, app.log, options.postgresTimeouts) });
  await app.register(workersPlugin, { workers: options.imageWorkers });
  await app.register(imagesPlugin, { freeSpaceProbe: options.freeSpaceProbe });
  await app.register(upstreamPlugin);
  await app.register(jobCallbacksPlugin);
  await app.register(jobEventsPlugin);
  await app.register(clientKeysPlugin, { pollIntervalMs: options.keyPollIntervalMs, now: options.now });
  // Before any route: the rate limit applies to the routes added after it.
  await app.register(limitsPlugin);
  await app.register(usagePlugin);
  await app.register(imageGenerationPlugin);
  await app.register(jobsPlugin, { callbackWait: options.callbackWait, followPollMs: options.jobFollowPollMs });
  await app.register(generationPipelinePlugin);

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const [storage, database] = await Promise.all([
      // Under pressure (DATA_DIR below STORAGE_MIN_FREE_BYTES: `full`; S3 refusing writes: `unavailable`) new generations are refused.
      app.storagePressure.state !== 'ok' ? app.storagePressure.state : app.storagePressure.storeReady().then((ready) => (ready ? 'ok' : 'unavailable')),
      // Within READINESS_PING_MS: a database that does not answer (a black hole) is as unavailable as one that refuses.
      app.db.ping(READINESS_PING_MS).then(() => 'ok', () => 'unavailable'),
    ]);
    const ready = storage === 'ok' && database === 'ok';
    // Limits degrade to per-replica counting without Redis; that is reported, not fatal.
    return reply.status(ready ? 200 : 503).send({ status: ready ? 'ok' : 'unavailable', checks: { storage, database, limits: app.counters.mode } });
  });

  await app.register(metricsPlugin);
  await app.register(connectionsPlugin);
  await app.register(requestRecordsPlugin);
  await app.register(imageFilesPlugin);
  await app.register(imageRoutes);
  await app.register(imageListRoutes);
  await app.register(openAiRoutes);
  await app.register(jobRoutes);
  await app.register(keyRoutes);
  await app.register(tokenRoutes);
  await app.register(docsRoutes);
  await app.register(consoleRoutesPlugin);
}
