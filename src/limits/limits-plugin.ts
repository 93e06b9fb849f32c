import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { Client } from '../auth/client-keys.js';
import { GatewayError } from '../errors.js';
import { idempotencyScope } from '../generation/generation-pipeline.js';
import { Counters } from './counters.js';
import { KeyLimits } from './key-limits.js';
import { rateLimitStore } from './rate-limit-store.js';

declare module 'fastify' {
  interface FastifyInstance {
    limits: KeyLimits;
    counters: Counters;
    /**
     * Whether the rate limit counted this request against its key's rpm (false: as a read, an
     * idempotent replay): a request that turns out to spend money after all counts it then.
     */
    countedInRpm(request: FastifyRequest): boolean;
  }
  interface FastifyContextConfig {
    /** A route whose requests can cost money upstream: counted against the key's rpm, not its reads. */
    spendsMoney?: boolean;
  }
}

async function limits(app: FastifyInstance): Promise<void> {
  const config = app.config;
  const db = app.db;
  const counters = new Counters(app.redis, app.log);
  app.decorate('counters', counters);
  app.decorate(
    'limits',
    new KeyLimits(counters, async (keyId, window) => {
      const [column, where, value] =
        'day' in window ? ['images_returned', 'day = $2', window.day] : ['cost_usd', 'day LIKE $2', `${window.month}-%`];
      const row = await db.get<{ used: number | string | null }>(`SELECT SUM(${column}) AS used FROM usage_records WHERE key_id = $1 AND ${where}`, [keyId, value]);
      return Number(row?.used ?? 0);
    },
    // The generate and edit requests that counted against the token (not those refused before their reservation).
    async (tokenId) => {
      const row = await db.get<{ requests: number | string | null; images: number | string | null }>(
        `SELECT COUNT(*) AS requests, SUM(images_returned) AS images FROM usage_records
         WHERE token_id = $1 AND operation IS NOT NULL AND (status NOT IN (400, 401, 403, 413, 415, 429) OR upstream_status IS NOT NULL)`,
        [tokenId],
      );
      return { requests: Number(row?.requests ?? 0), images: Number(row?.images ?? 0) };
    }),
  );

  // Requests per minute per client key, in two buckets, after authentication (preHandler): requests
  // that can cost money (RATE_LIMIT_RPM or the key's rpm), and reads (RATE_LIMIT_READ_RPM, default 10x
  // that), so following a job never uses up the key's generations. An idempotent replay is a read.
  const bucketOf = new WeakMap<FastifyRequest, 'rpm' | 'read_rpm'>();
  const spendsMoney = async (request: FastifyRequest, client: Client): Promise<boolean> => {
    if (request.routeOptions.config?.spendsMoney !== true) return false;
    const idempotencyKey = request.headers['idempotency-key'];
    // app.jobs is read per request: the jobs plugin registers later, as it needs the usage log,
    // whose routes are registered after this so that they are limited too.
    return typeof idempotencyKey !== 'string' || !(await app.jobs.idempotencyKeyClaimed(idempotencyScope(client, idempotencyKey)));
  };
  app.decorate('countedInRpm', (request: FastifyRequest) => bucketOf.get(request) !== 'read_rpm');
  const rpmOf = (client: Client | undefined) => client?.rpm ?? config.RATE_LIMIT_RPM;
  await app.register(rateLimit, {
    global: true,
    hook: 'preHandler',
    timeWindow: 60_000,
    keyGenerator: async (request) => {
      const client = request.client;
      if (client === undefined || client.admin) return 'anonymous';
      const bucket = (await spendsMoney(request, client)) ? 'rpm' : 'read_rpm';
      bucketOf.set(request, bucket);
      return bucket === 'rpm' ? client.id : `read:${client.id}`;
    },
    max: (request) => (bucketOf.get(request) === 'read_rpm' ? (config.RATE_LIMIT_READ_RPM ?? rpmOf(request.client) * 10) : rpmOf(request.client)),
    // The admin key is an operator's credential: not counted, so it can always manage keys.
    allowList: (request) => request.client === undefined || request.client.admin,
    store: rateLimitStore(counters),
    errorResponseBuilder: (request, context) => {
      const seconds = Math.max(1, Math.ceil(context.ttl / 1000));
      const id = request.client?.id;
      // A JSON body is parsed before this hook, so the refused request's usage record can name its
      // model; a multipart body is read by the route, which never runs (its model stays unknown).
      // app.pipeline is read per request: its plugin registers after this one, as app.jobs does.
      const body = request.body;
      if (request.routeOptions.config?.spendsMoney === true && typeof body === 'object' && body !== null && 'model' in body) {
        app.pipeline.noteRequestedModel(request.outcome, body.model);
      }
      return bucketOf.get(request) === 'read_rpm'
        ? new GatewayError(
            'rate_limited',
            `read limit reached: key ${id} may make ${context.max} reads per minute (job status and events, models, usage); retry in ${seconds} s`,
            { retryAfter: seconds, limit: 'read_rpm' },
          )
        : new GatewayError('rate_limited', `rpm limit reached: key ${id} may make ${context.max} requests per minute; retry in ${seconds} s`, {
            retryAfter: seconds,
            limit: 'rpm',
          });
    },
  });
}

/**
 * Each client key's limits: requests per minute (the rate limit on every route, registered before
 * them), images per day and monthly budget (checked by the pipeline).
 */
export const limitsPlugin = fp(limits, { name: 'limits', dependencies: ['database', 'redis', 'client-keys'] });
