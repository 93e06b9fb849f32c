import type { Redis } from 'ioredis';

/**
 * The name of a pub/sub channel on this connection's Redis. Channels belong to the whole server,
 * not to a database: a deployment on another database of the same server (staging on /1,
 * production on /0) would otherwise hear this one's job events, signed image URLs among them, and
 * its key changes. Database 0 keeps the plain name, so replicas of an earlier version still hear
 * each other during a rollout.
 */
export function channelName(redis: Redis, name: string): string {
  const db = Number(redis.options.db ?? 0);
  return db === 0 ? `gw:${name}` : `gw:db${db}:${name}`;
}
