import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { ConfigError, type Config } from '../config.js';
import { GatewayError } from '../errors.js';
import { openDatabase, type Database, type PostgresTimeouts } from './database.js';
import { GroupCommit } from './group-commit.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** SQLite in DATA_DIR, or PostgreSQL with DATABASE_URL. */
    db: Database;
    /** One commit for the writes of many requests: image rows, their owners and usage records. */
    groupCommit: GroupCommit;
  }
}

/** Opens the database and checks that it answers; if it cannot, a ConfigError names the setting to change. */
export async function openGatewayDatabase(config: Config, log: FastifyBaseLogger, postgresTimeouts?: PostgresTimeouts): Promise<Database> {
  let db: Database | undefined;
  // Until the first ping answers, a failure stops the start with the one line below: not logged (with its stack) as well.
  let opened = false;
  try {
    db = openDatabase(config, {
      onCheckpointerLost: (err) => log.warn({ err }, 'the SQLite checkpoint thread stopped; checkpoints run inside commits again (slower, with pauses)'),
      onThreadLost: (err) => log.warn({ err }, 'the SQLite thread stopped; every statement runs on the event loop again (slower under load)'),
      ...(postgresTimeouts ? { postgresTimeouts } : {}),
      onReachability: (reachable, err) => {
        if (!opened) return;
        if (reachable) log.info('DATABASE_URL: the PostgreSQL database answers again; new generations are taken again');
        else log.error({ err }, `DATABASE_URL: the PostgreSQL database cannot be reached (${(err as Error | undefined)?.message ?? 'no answer'}); new generations are refused with 503 until it answers (tried every few seconds)`);
      },
    });
    await db.ping();
    opened = true;
    return db;
  } catch (err) {
    // Not waited for, as in buildApp: a wait on SQLite's threads could outlast the process.
    void db?.close().catch(() => {});
    const reason = (err as Error).message;
    throw new ConfigError(
      config.DATABASE_URL
        ? `DATABASE_URL: the PostgreSQL database cannot be reached: ${reason}`
        : `DATA_DIR: the SQLite database in ${config.DATA_DIR} cannot be opened: ${reason}`,
    );
  }
}

/** Seconds a client refused while the database is unreachable is told to wait (Retry-After). */
export const DATABASE_RETRY_AFTER_SECONDS = 5;

/**
 * Throws 503 service_unavailable while the database is known to be unreachable: before anything is
 * sent upstream, since the result (its image rows, the job, the usage record with its cost) could
 * not be kept, and a paid image would be lost.
 */
export function refuseIfDatabaseUnreachable(db: Database): void {
  if (db.reachable) return;
  throw new GatewayError('service_unavailable', 'the gateway cannot reach its database, so what a generation makes could not be kept; nothing was sent upstream (nothing is charged): retry later', {
    retryAfter: DATABASE_RETRY_AFTER_SECONDS,
  });
}

async function database(app: FastifyInstance, { db }: { db: Database }): Promise<void> {
  app.decorate('db', db);
  app.decorate('groupCommit', new GroupCommit(db, (err) => app.log.error({ err }, 'a write of the group commit failed in its own code')));
  app.addHook('onClose', async () => db.close());
}

/** The database opened by openGatewayDatabase, closed with the app. */
export const databasePlugin = fp(database, { name: 'database' });
