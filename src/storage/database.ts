import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';
import { Worker } from 'node:worker_threads';
import pg from 'pg';

/** Uint8Array for BLOB (SQLite) and BYTEA (PostgreSQL) columns. */
export type SqlValue = string | number | bigint | null | boolean | Uint8Array;

/** A schema change, written once per dialect where they differ. */
export interface Migration {
  id: string;
  sqlite: string[];
  postgres: string[];
}

/**
 * The gateway's relational state: SQLite in DATA_DIR by default, PostgreSQL with DATABASE_URL.
 * SQL is written with `$1, $2, ...` placeholders, which both dialects take.
 */
export interface Database {
  readonly dialect: 'sqlite' | 'postgres';
  run(sql: string, params?: SqlValue[]): Promise<number>;
  all<T = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<T[]>;
  get<T = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<T | undefined>;
  migrate(migrations: Migration[]): Promise<void>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** The column types the dialects spell differently, so a migration is written once. */
export interface SqlTypes {
  bigint: string;
  double: string;
  /** An auto-incrementing integer primary key. */
  serialKey: string;
}

const SQLITE_TYPES: SqlTypes = { bigint: 'INTEGER', double: 'REAL', serialKey: 'INTEGER PRIMARY KEY AUTOINCREMENT' };
const POSTGRES_TYPES: SqlTypes = { bigint: 'BIGINT', double: 'DOUBLE PRECISION', serialKey: 'BIGSERIAL PRIMARY KEY' };

/** `($1, $2), ($3, $4)` for `rows` rows of `width` values: a multi-row INSERT's VALUES. */
export function valuesPlaceholders(rows: number, width: number): string {
  return Array.from({ length: rows }, (_, r) => `(${Array.from({ length: width }, (_, c) => `$${r * width + c + 1}`).join(', ')})`).join(', ');
}

/**
 * A multi-row statement's SQL for each row count, built once. Building it (and hashing the fresh
 * string to find its prepared statement) on every INSERT was ~1 % of the gateway's CPU under load.
 */
export function sqlByRowCount(build: (rows: number) => string): (rows: number) => string {
  const built = new Map<number, string>();
  return (rows) => {
    let sql = built.get(rows);
    if (sql === undefined) built.set(rows, (sql = build(rows)));
    return sql;
  };
}

export function migration(id: string, statements: (types: SqlTypes) => string[]): Migration {
  return { id, sqlite: statements(SQLITE_TYPES), postgres: statements(POSTGRES_TYPES) };
}

const MIGRATIONS_TABLE = 'CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)';

// node:sqlite numbers its placeholders ?1, ?2; PostgreSQL $1, $2. Where they come in order, each
// once, plain `?` does: node:sqlite binds numbered ones in time that grows with their count (the
// usage log's 200-row INSERT bound 30 times slower).
const toSqlite = (sql: string) => {
  let next = 1;
  const inOrder = sql.replace(/\$(\d+)/g, (_, n: string) => (Number(n) === next++ ? '?' : '\u0000'));
  return inOrder.includes('\u0000') ? sql.replace(/\$(\d+)/g, '?$1') : inOrder;
};
const sqliteParams = (params: SqlValue[]): SQLInputValue[] => params.map((p) => (typeof p === 'boolean' ? (p ? 1 : 0) : p));

// Under the tests this module runs as TypeScript, and so does the worker (Node strips the types).
const CHECKPOINT_WORKER = new URL(import.meta.url.endsWith('.ts') ? './sqlite-checkpoint-worker.ts' : './sqlite-checkpoint-worker.js', import.meta.url);
const CHECKPOINT_INTERVAL_MS = 100;
/** WAL pages past which a commit checkpoints by itself: only if the worker falls behind or is gone. */
const BACKSTOP_CHECKPOINT_PAGES = 8192;

/**
 * Checkpoints the database from a worker thread. SQLite's own automatic checkpoint runs inside the
 * commit that takes the log past 1000 pages, with an fsync: image-row commits stalled the event
 * loop for 20-25 ms at their p99 on this VM, and cost ~100 µs a row on average; with checkpoints
 * on this thread, ~0.7 ms and ~38 µs.
 */
class SqliteCheckpointer {
  private readonly worker: Worker;
  private readonly exited: Promise<void>;
  private stopping = false;

  /** `onLost` hears of a worker that ended without stop(): its error, if it had one. */
  constructor(path: string, onLost: (err: Error | undefined) => void) {
    this.worker = new Worker(CHECKPOINT_WORKER, { workerData: { path, intervalMs: CHECKPOINT_INTERVAL_MS } });
    this.worker.unref();
    let failure: Error | undefined;
    this.worker.on('error', (err: Error) => (failure = err));
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    void this.exited.then(() => {
      if (!this.stopping) onLost(failure);
    });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.worker.postMessage('stop');
    const stopped = await Promise.race([this.exited.then(() => true), new Promise<false>((resolve) => setTimeout(resolve, 2000, false).unref())]);
    if (!stopped) await this.worker.terminate();
  }
}

/** Distinct statements kept prepared; the usage log's batch INSERTs vary by row count, so bounded. */
const MAX_PREPARED_STATEMENTS = 256;

export class SqliteDatabase implements Database {
  readonly dialect = 'sqlite' as const;
  private readonly db: DatabaseSync;
  // Compiling the SQL cost more than running it on every request's INSERT and SELECT.
  private readonly prepared = new Map<string, StatementSync>();
  private readonly checkpointer: SqliteCheckpointer | undefined;

  /** `onCheckpointerLost`: the checkpoint thread ended on its own; SQLite checkpoints inside commits again. */
  constructor(path: string, options: { onCheckpointerLost?: (err: Error | undefined) => void } = {}) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new DatabaseSync(path);
    // WAL lets readers (usage queries) run beside the batch writer; busy_timeout rides out brief locks.
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;');
    if (path !== ':memory:') {
      this.db.exec(`PRAGMA wal_autocheckpoint = ${BACKSTOP_CHECKPOINT_PAGES}`);
      this.checkpointer = new SqliteCheckpointer(path, (err) => {
        if (!this.db.isOpen) return;
        this.db.exec('PRAGMA wal_autocheckpoint = 1000');
        options.onCheckpointerLost?.(err);
      });
    }
  }

  private statement(sql: string): StatementSync {
    let statement = this.prepared.get(sql);
    if (!statement) {
      if (this.prepared.size >= MAX_PREPARED_STATEMENTS) this.prepared.clear();
      statement = this.db.prepare(toSqlite(sql));
      this.prepared.set(sql, statement);
    }
    return statement;
  }

  async run(sql: string, params: SqlValue[] = []): Promise<number> {
    return Number(this.statement(sql).run(...sqliteParams(params)).changes);
  }

  async all<T>(sql: string, params: SqlValue[] = []): Promise<T[]> {
    return this.statement(sql).all(...sqliteParams(params)) as T[];
  }

  async get<T>(sql: string, params: SqlValue[] = []): Promise<T | undefined> {
    return this.statement(sql).get(...sqliteParams(params)) as T | undefined;
  }

  async migrate(migrations: Migration[]): Promise<void> {
    this.db.exec(MIGRATIONS_TABLE);
    for (const m of migrations) {
      if (this.db.prepare('SELECT 1 FROM schema_migrations WHERE id = ?').get(m.id)) continue;
      this.db.exec('BEGIN IMMEDIATE');
      try {
        for (const statement of m.sqlite) this.db.exec(statement);
        this.db.prepare('INSERT INTO schema_migrations (id, applied_at) VALUES (?, ?)').run(m.id, Date.now());
        this.db.exec('COMMIT');
      } catch (err) {
        this.db.exec('ROLLBACK');
        throw err;
      }
    }
  }

  async ping(): Promise<void> {
    this.db.prepare('SELECT 1').get();
  }

  async close(): Promise<void> {
    await this.checkpointer?.stop();
    if (this.db.isOpen) this.db.close();
  }
}

export class PostgresDatabase implements Database {
  readonly dialect = 'postgres' as const;
  private readonly pool: pg.Pool;

  constructor(connectionString: string) {
    this.pool = new pg.Pool({ connectionString, max: 10 });
    // An idle client's error (server restart) must not crash the process; the next query reconnects.
    this.pool.on('error', () => {});
  }

  async run(sql: string, params: SqlValue[] = []): Promise<number> {
    return (await this.pool.query(sql, params)).rowCount ?? 0;
  }

  async all<T>(sql: string, params: SqlValue[] = []): Promise<T[]> {
    return (await this.pool.query(sql, params)).rows as T[];
  }

  async get<T>(sql: string, params: SqlValue[] = []): Promise<T | undefined> {
    return (await this.pool.query(sql, params)).rows[0] as T | undefined;
  }

  async migrate(migrations: Migration[]): Promise<void> {
    const client = await this.pool.connect();
    try {
      // One migrator at a time across replicas.
      await client.query('SELECT pg_advisory_lock(7314159)');
      await client.query(MIGRATIONS_TABLE);
      for (const m of migrations) {
        const done = await client.query('SELECT 1 FROM schema_migrations WHERE id = $1', [m.id]);
        if (done.rowCount) continue;
        await client.query('BEGIN');
        try {
          for (const statement of m.postgres) await client.query(statement);
          await client.query('INSERT INTO schema_migrations (id, applied_at) VALUES ($1, $2)', [m.id, Date.now()]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK');
          throw err;
        }
      }
    } finally {
      await client.query('SELECT pg_advisory_unlock(7314159)').catch(() => {});
      client.release();
    }
  }

  async ping(): Promise<void> {
    await this.pool.query('SELECT 1');
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

export function openDatabase(
  config: { DATABASE_URL?: string | undefined; DATA_DIR: string },
  options: { onCheckpointerLost?: (err: Error | undefined) => void } = {},
): Database {
  if (config.DATABASE_URL) return new PostgresDatabase(config.DATABASE_URL);
  return new SqliteDatabase(`${config.DATA_DIR.replace(/\/+$/, '')}/gateway.sqlite`, options);
}
