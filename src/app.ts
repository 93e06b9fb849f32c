import { createHmac, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { access, constants } from 'node:fs/promises';
import { join } from 'node:path';
import Fastify, { LogController, type FastifyInstance, type FastifyError } from 'fastify';
import multipart from '@fastify/multipart';
import type { DestinationStream } from 'pino';
import type { Config } from './config.js';
import { GatewayError, errorBody } from './errors.js';
import { ModelCatalogue } from './catalogue/catalogue.js';
import { ClientKeys, authenticate, type Client } from './auth/client-keys.js';
import { UpstreamClient } from './upstream/upstream-client.js';
import { FileImageStore, type ImageStore } from './images/image-store.js';
import { UrlSigner } from './images/url-signer.js';
import { ImageGeneration } from './generation/image-generation.js';
import { ClientGone, imageRoutes } from './routes/image-routes.js';
import { docsRoutes } from './routes/docs-routes.js';
import { jobRoutes } from './routes/job-routes.js';
import { JobRunner } from './jobs/job-runner.js';
import { newOutcome, type RequestOutcome } from './usage/request-outcome.js';
import { openDatabase, type Database } from './storage/database.js';

declare module 'fastify' {
  interface FastifyInstance {
    config: Config;
    catalogue: ModelCatalogue;
    clientKeys: ClientKeys;
    upstream: UpstreamClient;
    store: ImageStore;
    signer: UrlSigner;
    generation: ImageGeneration;
    /** SQLite in DATA_DIR, or PostgreSQL with DATABASE_URL. */
    db: Database;
    jobs: JobRunner;
  }
  interface FastifyRequest {
    client?: Client;
    /** What this request did; see RequestOutcome. */
    outcome: RequestOutcome;
  }
}

export interface AppOptions {
  /** Where log lines go; tests pass a stream to read them. Defaults to stdout. */
  logStream?: DestinationStream;
}

/** The URL-signing secret: IMAGE_URL_SECRET, else one kept in DATA_DIR so URLs outlive a restart. */
function signingSecret(config: Config): Buffer {
  if (config.IMAGE_URL_SECRET) return Buffer.from(config.IMAGE_URL_SECRET, 'utf8');
  const path = join(config.DATA_DIR, 'url-signing.key');
  if (existsSync(path)) return Buffer.from(readFileSync(path, 'utf8').trim(), 'base64');
  const secret = randomBytes(32);
  writeFileSync(path, secret.toString('base64'), { mode: 0o600, flag: 'wx' });
  return secret;
}

const REQUEST_ID = /^[\w.:-]{1,128}$/;

/** Fastify's own errors (bad JSON, body too large, ...) in the gateway's terms. */
function asGatewayError(err: unknown): GatewayError {
  if (err instanceof GatewayError) return err;
  const e = err as FastifyError & { part?: unknown };
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
    case 'FST_REQ_FILE_TOO_LARGE':
    case 'FST_PARTS_LIMIT':
    case 'FST_FILES_LIMIT':
    case 'FST_FIELDS_LIMIT':
      return new GatewayError('payload_too_large', `the request is over the size limit (${e.message})`);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_INVALID_MULTIPART_CONTENT_TYPE':
      return new GatewayError('unsupported_media_type', e.message);
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new GatewayError('invalid_request', `the body is not valid JSON: ${e.message}`);
  }
  if (err instanceof SyntaxError) return new GatewayError('invalid_request', `the body is not valid JSON: ${err.message}`);
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    if (e.statusCode === 413) return new GatewayError('payload_too_large', e.message);
    if (e.statusCode === 415) return new GatewayError('unsupported_media_type', e.message);
    return new GatewayError('invalid_request', e.message);
  }
  return new GatewayError('internal_error', 'internal error', { cause: err });
}

export async function buildApp(config: Config, options: AppOptions = {}): Promise<FastifyInstance> {
  mkdirSync(config.DATA_DIR, { recursive: true });

  const app = Fastify({
    logger: {
      level: config.LOG_LEVEL,
      redact: {
        paths: ['req.headers.authorization', 'req.headers["x-api-key"]', 'req.headers["api-key"]', 'headers.authorization', 'headers["api-key"]'],
        censor: '[redacted]',
      },
      ...(options.logStream ? { stream: options.logStream } : {}),
    },
    // The onResponse hook below writes the one line per request.
    logController: new LogController({ disableRequestLogging: true }),
    // JSON edits carry images as data URLs: room for several uploads, base64 included.
    bodyLimit: Math.ceil(config.MAX_UPLOAD_BYTES * 1.4) * 4,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : `req_${randomBytes(12).toString('base64url')}`;
    },
    trustProxy: true,
  });

  const clientKeys = new ClientKeys();
  for (const k of config.GATEWAY_API_KEYS) clientKeys.add(k.key, { id: k.id, team: k.team, admin: false });
  if (config.GATEWAY_ADMIN_KEY) clientKeys.add(config.GATEWAY_ADMIN_KEY, { id: 'admin', team: 'admin', admin: true });
  if (clientKeys.size === 0) app.log.warn('no client keys configured (GATEWAY_API_KEYS, GATEWAY_ADMIN_KEY): every /v1 request will be refused');

  const upstream = new UpstreamClient({
    baseUrl: config.AIHUBMIX_BASE_URL,
    apiKey: config.AIHUBMIX_API_KEY ?? '',
    maxConcurrency: config.UPSTREAM_MAX_CONCURRENCY,
    pollIntervalMs: config.TASK_POLL_INTERVAL_MS,
    maxReplyBytes: 512 * 1024 * 1024,
    maxDownloadBytes: 64 * 1024 * 1024,
  });
  const store = new FileImageStore(config.DATA_DIR);
  const secret = signingSecret(config);
  const signer = new UrlSigner(secret);
  const catalogue = new ModelCatalogue();
  const db = openDatabase(config);

  app.decorate('config', config);
  app.decorate('catalogue', catalogue);
  app.decorate('clientKeys', clientKeys);
  app.decorate('upstream', upstream);
  app.decorate('store', store);
  app.decorate('signer', signer);
  const generation = new ImageGeneration({ catalogue, upstream, store, signer, retentionDays: config.IMAGE_RETENTION_DAYS });
  app.decorate('generation', generation);
  app.decorate('db', db);
  const jobs = new JobRunner({
    db,
    generation,
    log: app.log,
    upstreamTimeoutMs: config.UPSTREAM_TIMEOUT_MS,
    retentionDays: config.IMAGE_RETENTION_DAYS,
    leaseMs: config.JOB_LEASE_MS,
    shutdownGraceMs: config.JOB_SHUTDOWN_GRACE_MS,
    callbackSecret: config.CALLBACK_SECRET ? Buffer.from(config.CALLBACK_SECRET, 'utf8') : createHmac('sha256', secret).update('job callbacks').digest(),
  });
  app.decorate('jobs', jobs);
  app.addHook('onReady', async () => jobs.start());
  app.addHook('onClose', async () => {
    // Jobs first: they write their state to the database before it closes.
    await jobs.close();
    await upstream.close();
    await db.close();
  });

  await app.register(multipart, {
    limits: { fileSize: config.MAX_UPLOAD_BYTES, files: 17, fields: 40, fieldSize: 1024 * 1024 },
  });

  app.decorateRequest('outcome', null as unknown as RequestOutcome);
  app.addHook('onRequest', async (request, reply) => {
    request.outcome = newOutcome();
    reply.header('x-request-id', request.id);
    const path = request.url.split('?', 1)[0]!;
    if (path.startsWith('/v1/') && !path.startsWith('/v1/images/')) {
      request.client = authenticate(clientKeys, request);
    }
  });

  // One line per request: who, which model, what status, how long. Never the query (image signatures) or bodies.
  app.addHook('onResponse', async (request, reply) => {
    request.log.info(
      {
        method: request.method,
        path: request.url.split('?', 1)[0],
        status: reply.statusCode,
        ms: Math.round(reply.elapsedTime * 10) / 10,
        key_id: request.client?.id,
        team: request.client?.team,
        model: request.outcome.model,
      },
      'request completed',
    );
  });

  app.setErrorHandler((err, request, reply) => {
    if (err instanceof ClientGone) {
      request.log.info('client disconnected; upstream call aborted');
      return reply.status(499).send();
    }
    const gw = asGatewayError(err);
    request.outcome.errorCode = gw.code;
    if (gw.upstreamStatus !== undefined) request.outcome.upstreamStatus = gw.upstreamStatus;
    if (gw.status >= 500) {
      request.log.error({ code: gw.code, upstream_status: gw.upstreamStatus, err: gw.cause ?? gw }, gw.message);
    } else {
      request.log.info({ code: gw.code, upstream_status: gw.upstreamStatus }, gw.message);
    }
    if (gw.retryAfter !== undefined) reply.header('retry-after', String(gw.retryAfter));
    return reply.status(gw.status).send(errorBody(gw, request.id));
  });

  app.setNotFoundHandler((request, reply) => {
    const gw = new GatewayError('not_found', `no route ${request.method} ${request.url.split('?', 1)[0]}`);
    return reply.status(404).send(errorBody(gw, request.id));
  });

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const [storage, database] = await Promise.all([
      access(config.DATA_DIR, constants.W_OK).then(() => 'ok', () => 'unavailable'),
      db.ping().then(() => 'ok', () => 'unavailable'),
    ]);
    const ready = storage === 'ok' && database === 'ok';
    return reply.status(ready ? 200 : 503).send({ status: ready ? 'ok' : 'unavailable', checks: { storage, database } });
  });

  await app.register(imageRoutes);
  await app.register(jobRoutes);
  await app.register(docsRoutes);
  return app;
}
