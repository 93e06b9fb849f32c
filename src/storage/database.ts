import { dirname } from 'node:path';
import { makePrivateDirSync, makePrivateFileSync, PRIVATE_FILE_MODE, tightenIfPresent } from './private-files.js';
import type { SQLInputValue } from 'node:sqlite';
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import pg from 'pg';
import { MIGRATIONS_TABLE, SqliteConnection } from './sqlite-connection.js';
import type { SqliteReply, SqliteRequest } from './sqlite-worker.js';

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
export interface Database extends Statements {
  /**
   * Runs `fn` in one transaction: committed once it resolves (and only then does this resolve),
   * rolled back when it throws. Statements go through `tx`; on SQLite, the database's other
   * statements wait until it ends, so `fn` must not use the database itself (it would wait forever).
   */
  transaction<T>(fn: (tx: Statements) => Promise<T>): Promise<T>;
  /**
   * Runs `statements` in one transaction, in order, and resolves with each one's result (its rows
   * for `rows: true`, else the rows it changed) once committed; none is kept if one fails. Unlike
   * transaction(), the whole goes to SQLite in one call (one trip to its thread, not one per
   * statement), so writes that need no answer in between cost one commit and no waits.
   */
  batch(statements: BatchStatement[]): Promise<BatchResult[]>;
  migrate(migrations: Migration[]): Promise<void>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** A statement of a batch: `rows` for its rows (a SELECT, or RETURNING), else the count it changed. */
export interface BatchStatement {
  sql: string;
  params: SqlValue[];
  rows?: boolean;
}

/** A batch statement's rows, or the count of rows it changed. */
export type BatchResult = number | Record<string, unknown>[];

/** The statements of a database, or of one transaction in it. */
export interface Statements {
  readonly dialect: 'sqlite' | 'postgres';
  run(sql: string, params?: SqlValue[]): Promise<number>;
  all<T = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<T[]>;
  get<T = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<T | undefined>;
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

const sqliteParams = (params: SqlValue[]): SQLInputValue[] => params.map((p) => (typeof p === 'boolean' ? (p ? 1 : 0) : p));

// Under the tests this module runs as TypeScript, and so do the workers (Node strips the types).
const workerFile = (name: string) => new URL(import.meta.url.endsWith('.ts') ? `./${name}.ts` : `./${name}.js`, import.meta.url);
const CHECKPOINT_WORKER = workerFile('sqlite-checkpoint-worker');
const SQLITE_WORKER = workerFile('sqlite-worker');
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

/** A statement sent to the SQLite thread, without its id. */
type SqliteCall = SqliteRequest extends infer R ? (R extends SqliteRequest ? Omit<R, 'id'> : never) : never;

/** The SQLite thread (sqlite-worker.ts): statements sent to it are answered in order. */
class SqliteThread {
  private readonly worker: Worker;
  private readonly waiting = new Map<number, { resolve: (result: unknown) => void; reject: (err: Error) => void }>();
  private nextId = 0;
  private whenIdle: Array<() => void> = [];
  /** Why it can take no more statements: it ended, or was closed. */
  ended: Error | undefined;
  private readonly exited: Promise<void>;

  /** `onLost` hears of a thread that ended without close(): its error, if it had one. */
  constructor(path: string, autocheckpointPages: number, onLost: (err: Error | undefined) => void) {
    this.worker = new Worker(SQLITE_WORKER, { workerData: { path, autocheckpointPages } });
    // Only a statement waiting for its answer keeps the process alive.
    this.worker.unref();
    this.worker.on('message', (reply: SqliteReply) => this.answer(reply));
    let failure: Error | undefined;
    this.worker.on('error', (err: Error) => (failure = err));
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    void this.exited.then(() => {
      const lost = this.ended === undefined;
      this.ended ??= new Error(`the SQLite thread stopped${failure ? `: ${failure.message}` : ''}`);
      for (const { reject } of this.waiting.values()) reject(this.ended);
      this.waiting.clear();
      this.settle();
      if (lost) onLost(failure);
    });
  }

  /** Statements sent and not yet answered. */
  get pending(): number {
    return this.waiting.size;
  }

  call(request: SqliteCall): Promise<unknown> {
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      if (this.waiting.size === 0) this.worker.ref();
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ ...request, id });
    });
  }

  /** Resolves once every statement sent has been answered. */
  idle(): Promise<void> {
    if (this.waiting.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.whenIdle.push(resolve));
  }

  private answer(reply: SqliteReply): void {
    const waiter = this.waiting.get(reply.id);
    if (!waiter) return;
    this.waiting.delete(reply.id);
    if ('error' in reply) waiter.reject(Object.assign(new Error(reply.error.message), reply.error));
    else waiter.resolve(reply.result);
    if (this.waiting.size === 0) this.settle();
  }

  private settle(): void {
    this.worker.unref();
    const resolvers = this.whenIdle;
    this.whenIdle = [];
    for (const resolve of resolvers) resolve();
  }

  async close(): Promise<void> {
    if (!this.ended) {
      const closing = this.call({ op: 'close' });
      this.ended = new Error('the database is closed');
      await closing.catch(() => {});
    }
    await this.exited;
  }
}

/** Event-loop utilization at or above which statements go to the SQLite thread. */
const SATURATED_LOOP = 0.9;
const LOOP_SAMPLE_MS = 100;

/**
 * SQLite in DATA_DIR, through two connections to the one file: one on the event loop, one on a
 * thread of its own. node:sqlite is synchronous: while the event loop is saturated, each image
 * row's commit on it held every other request, so statements then go to the thread (+15 % small
 * images per second at c=32 here). Otherwise they run on the loop: handing one to a thread and back
 * cost ~0.4 ms of latency on this VM (a sleeping core woken twice), more than the statement. A
 * statement goes to the thread while any before it is still there, so they keep their order; the
 * two connections never write at once.
 */
export class SqliteDatabase implements Database {
  readonly dialect = 'sqlite' as const;
  private readonly connection: SqliteConnection;
  /** The file, for the thread's connection; none for ':memory:' (a second connection would be another database). */
  private readonly file: string | undefined;
  /** Started the first time a statement goes to it: a gateway that is never saturated never starts it. */
  private thread: SqliteThread | undefined;
  private threadLost = false;
  private readonly onThreadLost: ((err: Error | undefined) => void) | undefined;
  private autocheckpointPages = BACKSTOP_CHECKPOINT_PAGES;
  private readonly checkpointer: SqliteCheckpointer | undefined;
  private loopSaturated = false;
  private closed = false;
  private readonly loopSampler: NodeJS.Timeout | undefined;

  /**
   * `onCheckpointerLost`: the checkpoint thread ended on its own; SQLite checkpoints inside commits again.
   * `onThreadLost`: the SQLite thread ended on its own; every statement runs on the event loop.
   */
  constructor(
    path: string,
    options: {
      onCheckpointerLost?: (err: Error | undefined) => void;
      onThreadLost?: (err: Error | undefined) => void;
      /** `when-busy` (the default): on the thread while the loop is saturated; `always`: every statement. */
      statementsOnThread?: 'when-busy' | 'always';
    } = {},
  ) {
    this.file = path === ':memory:' ? undefined : path;
    if (this.file) {
      makePrivateDirSync(dirname(this.file));
      // Before SQLite opens it: its -wal and -shm files take the database file's mode.
      makePrivateFileSync(this.file);
      for (const suffix of ['-wal', '-shm', '-journal']) tightenIfPresent(this.file + suffix, PRIVATE_FILE_MODE);
    }
    this.connection = new SqliteConnection(path, this.file ? this.autocheckpointPages : undefined);
    this.onThreadLost = options.onThreadLost;
    if (!this.file) return;
    this.checkpointer = new SqliteCheckpointer(this.file, (err) => {
      if (!this.connection.isOpen) return;
      this.autocheckpointPages = 1000;
      this.connection.exec(`PRAGMA wal_autocheckpoint = ${this.autocheckpointPages}`);
      this.thread?.call({ op: 'exec', sql: `PRAGMA wal_autocheckpoint = ${this.autocheckpointPages}` }).catch(() => {});
      options.onCheckpointerLost?.(err);
    });
    if (options.statementsOnThread === 'always') {
      this.loopSaturated = true;
      return;
    }
    let last = performance.eventLoopUtilization();
    this.loopSampler = setInterval(() => {
      const now = performance.eventLoopUtilization();
      this.loopSaturated = performance.eventLoopUtilization(now, last).utilization >= SATURATED_LOOP;
      last = now;
    }, LOOP_SAMPLE_MS).unref();
  }

  private refuseIfClosed(): void {
    // Once closing, nothing new runs: inline, it could write beside what the thread still finishes.
    if (this.closed) throw new Error('the database is closed');
  }

  /** Set while a transaction is open (or waiting to open): other statements wait for it to end. */
  private inTransaction: Promise<void> | undefined;

  private async transactionOver(): Promise<void> {
    while (this.inTransaction) await this.inTransaction;
  }

  /**
   * BEGIN IMMEDIATE ... COMMIT on one connection: the thread's if statements are going there now
   * (they keep their order), else the event loop's. Meanwhile the database's other statements wait,
   * so none lands inside the transaction and the two connections never write at once.
   */
  async transaction<T>(fn: (tx: Statements) => Promise<T>): Promise<T> {
    // Waited for here, not through transactionOver(): its own await would leave a turn between the
    // check and the claim below, in which a second transaction could pass the check too.
    while (this.inTransaction) await this.inTransaction;
    let over!: () => void;
    this.inTransaction = new Promise((resolve) => (over = resolve));
    try {
      const thread = this.offloaded() ? this.thread! : undefined;
      const exec = async (sql: string) => {
        if (thread) await thread.call({ op: 'exec', sql });
        else this.connection.exec(sql);
      };
      // On the thread, BEGIN goes with the transaction's first statement: a trip to the thread and
      // back (a message each way, each waking a thread) saved per transaction, of three.
      let begun = !thread;
      const onThread = (op: 'run' | 'all' | 'get', sql: string, params: SqlValue[]) => {
        const begin = !begun;
        begun = true;
        return thread!.call({ op, sql, params: sqliteParams(params), ...(begin ? { begin: true as const } : {}) });
      };
      const tx: Statements = thread
        ? {
            dialect: 'sqlite',
            run: async (sql, params = []) => (await onThread('run', sql, params)) as number,
            all: async <R>(sql: string, params: SqlValue[] = []) => (await onThread('all', sql, params)) as R[],
            get: async <R>(sql: string, params: SqlValue[] = []) => (await onThread('get', sql, params)) as R | undefined,
          }
        : {
            dialect: 'sqlite',
            run: async (sql, params = []) => this.connection.run(sql, sqliteParams(params)),
            all: async <R>(sql: string, params: SqlValue[] = []) => this.connection.all(sql, sqliteParams(params)) as R[],
            get: async <R>(sql: string, params: SqlValue[] = []) => this.connection.get(sql, sqliteParams(params)) as R | undefined,
          };
      if (!thread) this.connection.exec('BEGIN IMMEDIATE');
      let result: T;
      try {
        result = await fn(tx);
      } catch (err) {
        // (A BEGIN that failed with its statement left nothing open: that ROLLBACK's own error is ignored.)
        if (begun) await exec('ROLLBACK').catch(() => {});
        throw err;
      }
      // A transaction that ran no statement on the thread was never opened there.
      if (!begun) return result;
      try {
        await exec('COMMIT');
      } catch (err) {
        // A COMMIT that failed (busy, disk full) leaves the transaction open: end it.
        await exec('ROLLBACK').catch(() => {});
        throw err;
      }
      return result;
    } finally {
      this.inTransaction = undefined;
      over();
    }
  }

  async batch(statements: BatchStatement[]): Promise<BatchResult[]> {
    // No turn between the wait and the batch: a transaction begun meanwhile would take it in.
    while (this.inTransaction) await this.inTransaction;
    const sqlite = statements.map(({ sql, params, rows }) => ({ sql, params: sqliteParams(params), ...(rows ? { rows } : {}) }));
    if (this.offloaded()) return (await this.thread!.call({ op: 'batch', statements: sqlite })) as BatchResult[];
    return this.connection.batch(sqlite);
  }

  /** Whether this statement goes to the SQLite thread (started here the first time). */
  private offloaded(): boolean {
    this.refuseIfClosed();
    if (!(this.loopSaturated || (this.thread?.pending ?? 0) > 0) || !this.file || this.threadLost) return false;
    this.thread ??= new SqliteThread(this.file, this.autocheckpointPages, (err) => {
      this.threadLost = true;
      this.onThreadLost?.(err);
    });
    return !this.thread.ended;
  }

  async run(sql: string, params: SqlValue[] = []): Promise<number> {
    // No turn between the wait and the statement: a transaction begun meanwhile would take it in.
    while (this.inTransaction) await this.inTransaction;
    if (this.offloaded()) return (await this.thread!.call({ op: 'run', sql, params: sqliteParams(params) })) as number;
    return this.connection.run(sql, sqliteParams(params));
  }

  async all<T>(sql: string, params: SqlValue[] = []): Promise<T[]> {
    // No turn between the wait and the statement: a transaction begun meanwhile would take it in.
    while (this.inTransaction) await this.inTransaction;
    if (this.offloaded()) return (await this.thread!.call({ op: 'all', sql, params: sqliteParams(params) })) as T[];
    return this.connection.all(sql, sqliteParams(params)) as T[];
  }

  async get<T>(sql: string, params: SqlValue[] = []): Promise<T | undefined> {
    // No turn between the wait and the statement: a transaction begun meanwhile would take it in.
    while (this.inTransaction) await this.inTransaction;
    if (this.offloaded()) return (await this.thread!.call({ op: 'get', sql, params: sqliteParams(params) })) as T | undefined;
    return this.connection.get(sql, sqliteParams(params)) as T | undefined;
  }

  async migrate(migrations: Migration[]): Promise<void> {
    this.refuseIfClosed();
    await this.transactionOver();
    // On the loop's connection, once the thread's statements are done (checked again after each
    // wait, since more may have been sent meanwhile): the two never write at once.
    while (this.thread && this.thread.pending > 0) await this.thread.idle();
    this.connection.migrate(migrations);
  }

  async ping(): Promise<void> {
    this.refuseIfClosed();
    this.connection.get('SELECT 1', []);
  }

  async close(): Promise<void> {
    this.closed = true;
    // A transaction open now finishes first (its statements bypass the refusal above).
    await this.transactionOver();
    clearInterval(this.loopSampler);
    await this.checkpointer?.stop();
    await this.thread?.close();
    this.connection.close();
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

  batch(statements: BatchStatement[]): Promise<BatchResult[]> {
    return this.transaction(async (tx) => {
      const results: BatchResult[] = [];
      for (const { sql, params, rows } of statements) results.push(rows ? await tx.all(sql, params) : await tx.run(sql, params));
      return results;
    });
  }

  /** BEGIN ... COMMIT on a client of the pool's own, returned to it after. */
  async transaction<T>(fn: (tx: Statements) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    const tx: Statements = {
      dialect: 'postgres',
      run: async (sql, params = []) => (await client.query(sql, params)).rowCount ?? 0,
      all: async <R>(sql: string, params: SqlValue[] = []) => (await client.query(sql, params)).rows as R[],
      get: async <R>(sql: string, params: SqlValue[] = []) => (await client.query(sql, params)).rows[0] as R | undefined,
    };
    // A connection left in no known state (a failed BEGIN, COMMIT or ROLLBACK) is not given back to the pool.
    let broken: Error | undefined;
    try {
      await client.query('BEGIN').catch((err: Error) => {
        throw (broken = err);
      });
      let result: T;
      try {
        result = await fn(tx);
      } catch (err) {
        await client.query('ROLLBACK').catch((rollbackFailed: Error) => (broken = rollbackFailed));
        throw err;
      }
      await client.query('COMMIT').catch((err: Error) => {
        throw (broken = err);
      });
      return result;
    } finally {
      client.release(broken);
    }
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
  options: { onCheckpointerLost?: (err: Error | undefined) => void; onThreadLost?: (err: Error | undefined) => void } = {},
): Database {
  if (config.DATABASE_URL) return new PostgresDatabase(config.DATABASE_URL);
  return new SqliteDatabase(`${config.DATA_DIR.replace(/\/+$/, '')}/gateway.sqlite`, options);
}
