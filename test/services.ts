/**
 * Real PostgreSQL and Redis for the tests that need them. Without a server, those tests skip and
 * say why, unless REQUIRE_SERVICES=1 (CI), where a missing server is a failure.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { Redis } from 'ioredis';

export const requireServices = process.env.REQUIRE_SERVICES === '1';
const POSTGRES_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const REDIS_URL = process.env.TEST_REDIS_URL ?? process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

async function reachable(check: () => Promise<unknown>): Promise<string | undefined> {
  try {
    await check();
    return undefined;
  } catch (err) {
    return (err as Error).message || String(err);
  }
}

export const postgresProblem = await reachable(async () => {
  const client = new pg.Client({ connectionString: POSTGRES_URL, connectionTimeoutMillis: 2000 });
  await client.connect();
  await client.end();
});

export const redisProblem = await reachable(async () => {
  const redis = new Redis(REDIS_URL, { lazyConnect: true, connectTimeout: 2000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  try {
    await redis.connect();
    await redis.ping();
  } finally {
    redis.disconnect();
  }
});

if (requireServices && (postgresProblem || redisProblem)) {
  throw new Error(`REQUIRE_SERVICES=1 but ${postgresProblem ? `PostgreSQL is unreachable (${postgresProblem})` : `Redis is unreachable (${redisProblem})`}`);
}
if (postgresProblem) console.warn(`skipping PostgreSQL tests: ${POSTGRES_URL} is unreachable (${postgresProblem}); set REQUIRE_SERVICES=1 to make this a failure`);
if (redisProblem) console.warn(`skipping Redis tests: ${REDIS_URL} is unreachable (${redisProblem}); set REQUIRE_SERVICES=1 to make this a failure`);

/** A fresh, empty schema of its own for one test file; dropped by the returned cleanup. */
export async function freshPostgres(): Promise<{ url: string; drop(): Promise<void> }> {
  const schema = `t_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: POSTGRES_URL });
  await admin.connect();
  await admin.query(`CREATE SCHEMA ${schema}`);
  await admin.end();
  const url = new URL(POSTGRES_URL);
  url.searchParams.set('options', `-c search_path=${schema}`);
  return {
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: POSTGRES_URL });
      await c.connect();
      await c.query(`DROP SCHEMA ${schema} CASCADE`);
      await c.end();
    },
  };
}

/** A Redis URL and a key prefix no other test uses. */
export function freshRedis(): { url: string; prefix: string } {
  return { url: REDIS_URL, prefix: `gwtest:${randomBytes(6).toString('hex')}:` };
}
