import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { Redis } from 'ioredis';

declare module 'fastify' {
  interface FastifyInstance {
    /** Shared by the replicas (limits, key changes, job events); undefined without REDIS_URL. */
    redis: Redis | undefined;
  }
}

async function redis(app: FastifyInstance): Promise<void> {
  const url = app.config.REDIS_URL;
  // Redis is optional: without it (or while it is down) limits are counted per replica.
  // Loaded only when asked for: ioredis is resident memory a gateway without Redis never uses (bench/README.md, seventh pass).
  const redis = url ? new (await import('ioredis')).Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 2000 }) : undefined;
  app.decorate('redis', redis);
  if (!redis) return;
  redis.on('error', () => {}); // Counters logs the switch to local limits once; ioredis keeps reconnecting.
  app.addHook('onReady', async () => {
    await redis.connect().catch((err) => app.log.warn({ err }, 'redis is unavailable at start: limits are counted in this replica only'));
  });
  app.addHook('onClose', async () => {
    redis.disconnect();
  });
}

/** The optional Redis connection, made once the app is ready; a start goes on without it. */
export const redisPlugin = fp(redis, { name: 'redis' });
