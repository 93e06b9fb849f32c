import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { Redis } from 'ioredis';
import { ConfigError } from '../config.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** Shared by the replicas (limits, key changes, job events); undefined without REDIS_URL. */
    redis: Redis | undefined;
  }
}

/**
 * REDIS_URL as a message may show it: scheme, user, host, port and database. Never its password,
 * whether in the userinfo or in the query (ioredis reads `?password=` too), nor any other option.
 */
export function redisUrlShown(url: string): string {
  const shown = new URL(url);
  shown.password = '';
  shown.search = '';
  shown.hash = '';
  return shown.toString();
}

/** The server's refusal of the SELECT of REDIS_URL's database, after which ioredis would go on in database 0. */
const isSelectRefused = (err: unknown) => (err as { command?: { name?: string } }).command?.name === 'select';

/** Why a connection failed, in a few words: a refusal to connect to `localhost` tries two addresses, and its own message is empty. */
function reasonOf(err: Error | undefined): string {
  if (err === undefined) return 'the connection closed';
  const first = err instanceof AggregateError ? (err.errors[0] as Error | undefined) : undefined;
  return err.message || first?.message || (err as NodeJS.ErrnoException).code || String(err);
}

async function redis(app: FastifyInstance): Promise<void> {
  const url = app.config.REDIS_URL;
  // Redis is optional: without it (or while it is down) limits are counted per replica.
  // Loaded only when asked for: ioredis is resident memory a gateway without Redis never uses (bench/README.md, seventh pass).
  // The URL's user, password, database and TLS (rediss://) are ioredis's to read.
  const redis = url ? new (await import('ioredis')).Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 2000 }) : undefined;
  app.decorate('redis', redis);
  if (!redis || !url) return;
  const shown = redisUrlShown(url);
  let selectRefused: Error | undefined;
  let started = false;
  // The connection's comings and goings are logged here, once each, for everything that uses it
  // (the limits' and the auth failures' counters, key changes, job events); a stack says nothing more.
  let lastError: Error | undefined;
  let reportedDown = false;
  let closing = false;
  redis.on('error', (err: Error) => {
    // ioredis keeps reconnecting. But a database it cannot select would leave the connection in
    // database 0, among other data: it is closed instead.
    lastError = err;
    if (!isSelectRefused(err) || selectRefused) return;
    selectRefused = err;
    redis.disconnect();
    if (started) app.log.error(`REDIS_URL ${shown}: Redis has no database ${redis.options.db} (${err.message}): limits are counted in this replica only until a restart`);
  });
  redis.on('ready', () => {
    lastError = undefined;
    if (!reportedDown) return;
    reportedDown = false;
    app.log.info(`REDIS_URL ${shown} answers again: limits are shared between replicas again`);
  });
  redis.on('close', () => {
    if (!started || closing || reportedDown || selectRefused) return;
    reportedDown = true;
    app.log.warn(`REDIS_URL ${shown} is unavailable (${reasonOf(lastError)}): limits are now counted in this replica only`);
  });
  app.addHook('onReady', async () => {
    await redis.connect().catch((err: Error) => {
      if (selectRefused) {
        throw new ConfigError(`REDIS_URL ${shown}: Redis has no database ${redis.options.db} (${selectRefused.message}); give one it has (0 to 15 unless its "databases" setting says more)`);
      }
      reportedDown = true;
      app.log.warn(`REDIS_URL ${shown} cannot be reached (${reasonOf(lastError ?? err)}): limits are counted in this replica only until it answers`);
    });
    started = true;
  });
  app.addHook('onClose', async () => {
    closing = true;
    redis.disconnect();
  });
}

/** The optional Redis connection, made once the app is ready; a start goes on without it. */
export const redisPlugin = fp(redis, { name: 'redis' });
