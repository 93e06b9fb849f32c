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

/** REDIS_URL as a message may show it: without its password. */
export function redisUrlShown(url: string): string {
  const shown = new URL(url);
  shown.password = '';
  return shown.toString();
}

/** The server's refusal of the SELECT of REDIS_URL's database, after which ioredis would go on in database 0. */
const isSelectRefused = (err: unknown) => (err as { command?: { name?: string } }).command?.name === 'select';

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
  redis.on('error', (err: Error) => {
    // Counters logs the switch to local limits once; ioredis keeps reconnecting. But a database it
    // cannot select would leave the connection in database 0, among other data: it is closed instead.
    if (!isSelectRefused(err) || selectRefused) return;
    selectRefused = err;
    redis.disconnect();
    if (started) app.log.error(`REDIS_URL ${shown}: Redis has no database ${redis.options.db} (${err.message}): limits are counted in this replica only until a restart`);
  });
  app.addHook('onReady', async () => {
    await redis.connect().catch((err) => {
      if (selectRefused) {
        throw new ConfigError(`REDIS_URL ${shown}: Redis has no database ${redis.options.db} (${selectRefused.message}); give one it has (0 to 15 unless its "databases" setting says more)`);
      }
      app.log.warn({ err }, 'redis is unavailable at start: limits are counted in this replica only');
    });
    started = true;
  });
  app.addHook('onClose', async () => {
    redis.disconnect();
  });
}

/** The optional Redis connection, made once the app is ready; a start goes on without it. */
export const redisPlugin = fp(redis, { name: 'redis' });
