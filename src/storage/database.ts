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
  /** A trivial statement; with `timeoutMs`, failed past it (a database that does not answer counts as down). */
  ping(timeoutMs?: number): Promise<void>;
  /**
   * False while the database is known to be unreachable: from a failure to reach it (refused, cut,
   * timed out) until a ping succeeds (the one it then runs every few seconds, or /readyz's); its
   * statements meanwhile fail at once (PostgreSQL's DatabaseUnreachable). SQLite: always true.
   */
  readonly reachable: boolean;
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
    // Held while it stops: with the worker and the timer unreferenced, a process with nothing else
    // left would exit here, the rest of the stop never run (the database left open, the last spans unsent).
    this.worker.ref();
    this.worker.postMessage('stop');
    let timer: NodeJS.Timeout | undefined;
    const stopped = await Promise.race([this.exited.then(() => true), new Promise<false>((resolve) => (timer = setTimeout(resolve, 2000, false)))]);
    clearTimeout(timer);
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
    // Held until it has exited (its last answer unreferenced it), as SqliteCheckpointer.stop().
    this.worker.ref();
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

  /** A file on this machine: never unreachable the way a server is (its failures are the disk's). */
  readonly reachable = true;

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

/**
 * How long PostgreSQL may take, fixed defaults an operator rarely needs to change (the tests pass
 * short ones). Without them a network that stops answering (a black hole: packets dropped, no
 * refusal) held every pooled connection and every request that touched the database forever:
 * /readyz and /metrics never answered, the pool never recovered, a stop never finished.
 */
export interface PostgresTimeouts {
  /** A new connection, and a wait for a free one of the pool: past it, an error (5 s). */
  connectMs?: number;
  /**
   * The server cancels a statement running longer (`statement_timeout`, 30 s): the gateway's are
   * point reads and writes of a few rows, and the hourly sweeps delete an hour's expired rows by an
   * index; the migrations run on a connection of their own, with no limit.
   */
  statementMs?: number;
  /**
   * The client gives up on an answer that does not come (`query_timeout`, statementMs + 5 s): the
   * server's own cancel comes first while it is reachable; past this the network is taken for dead,
   * the connection is discarded, and the pool opens a fresh one for the next statement.
   */
  queryMs?: number;
  /**
   * How often the database is pinged while it is unreachable, so it comes back by itself; also how
   * long a statement may go unanswered before the database is pinged to see whether it is there (2 s).
   */
  probeIntervalMs?: number;
  /** How long close() waits for statements in flight before cutting their connections (5 s). */
  closeMs?: number;
}

const POSTGRES_DEFAULTS = { connectMs: 5000, statementMs: 30_000, probeIntervalMs: 2000, closeMs: 5000 };

/**
 * Whether a failure means the database could not be reached (the connection refused, cut or timed
 * out; the server shutting down), not a fault of a statement: a server's error with a SQLSTATE other
 * than class 08 (connection exception) or 57P01-57P03 (shutdown, cannot connect now) is the
 * statement's, as is its own statement_timeout cancel (57014: the server answered).
 */
export function isUnreachable(err: unknown): boolean {
  if (err instanceof pg.DatabaseError) return /^(08|57P0[123])/.test(err.code ?? '');
  return err instanceof Error;
}

/** A statement not tried: the database is known to be unreachable (`cause`: the failure that showed it). */
export class DatabaseUnreachable extends Error {
  constructor(cause: unknown) {
    super(`the database cannot be reached (${(cause as Error | undefined)?.message ?? 'no answer'}); statements fail at once until it answers again`, { cause });
    this.name = 'DatabaseUnreachable';
  }
}

export class PostgresDatabase implements Database {
  readonly dialect = 'postgres' as const;
  private readonly pool: pg.Pool;
  private readonly timeouts: Required<PostgresTimeouts>;
  private readonly clients = new Set<pg.Client>();
  private down: unknown = undefined;
  private probeTimer: NodeJS.Timeout | undefined;
  private probing = false;
  /** The ping's own connection (see ping), and the ping in flight. */
  private pingClient: pg.Client | undefined;
  private pinging: Promise<void> | undefined;
  private closed = false;

  /**
   * `onReachability` hears when the database becomes unreachable (with the failure that showed it)
   * and when it answers again.
   */
  constructor(
    private readonly connectionString: string,
    options: { timeouts?: PostgresTimeouts; onReachability?: (reachable: boolean, err?: unknown) => void } = {},
  ) {
    // DATABASE_URL's own `statement_timeout` (and `query_timeout`) parameters win over these (pg
    // reads them from the URL): the client's limit then follows the server's, not cutting it short.
    const inUrl = (name: string) => {
      const value = Number(URL.parse(connectionString)?.searchParams.get(name) ?? NaN);
      return Number.isFinite(value) && value >= 0 ? value : undefined;
    };
    const statementMs = inUrl('statement_timeout') ?? options.timeouts?.statementMs ?? POSTGRES_DEFAULTS.statementMs;
    // 0 is no limit, for pg as for PostgreSQL.
    const queryMs = inUrl('query_timeout') ?? options.timeouts?.queryMs ?? (statementMs === 0 ? 0 : statementMs + 5000);
    this.timeouts = { ...POSTGRES_DEFAULTS, ...options.timeouts, statementMs, queryMs };
    this.onReachability = options.onReachability;
    this.pool = new pg.Pool({
      connectionString,
      max: 10,
      connectionTimeoutMillis: this.timeouts.connectMs,
      statement_timeout: this.timeouts.statementMs,
      query_timeout: this.timeouts.queryMs,
      // A peer gone silent (a NAT or firewall dropping the connection) is found by TCP itself.
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
    this.pool.on('connect', (client) => this.clients.add(client));
    this.pool.on('remove', (client) => this.clients.delete(client));
    // An idle client's error (server restart, connection cut) must not crash the process; the pool
    // drops that client, and the next statement connects again. It may mean the database is gone: a ping tells.
    this.pool.on('error', () => this.verify());
  }

  private readonly onReachability: ((reachable: boolean, err?: unknown) => void) | undefined;

  /** False from a ping that failed (the probe's, or /readyz's) until one succeeds again. */
  get reachable(): boolean {
    return this.down === undefined;
  }

  /**
   * A statement could not reach the database: a ping tells whether it is away (one lost connection
   * is not an outage, and a pool busy to its limit is not the database away).
   */
  private failed(err: unknown): void {
    if (isUnreachable(err)) this.verify();
  }

  /**
   * Pings the database at once, then every probeIntervalMs while it fails: a database that was
   * away is found back without any traffic.
   */
  private verify(): void {
    if (this.probing || this.closed) return;
    this.probing = true;
    const attempt = () => {
      this.probeTimer = undefined;
      this.ping(this.timeouts.connectMs).then(
        () => (this.probing = false),
        () => {
          if (this.closed) return;
          this.probeTimer = setTimeout(attempt, this.timeouts.probeIntervalMs);
          this.probeTimer.unref();
        },
      );
    };
    attempt();
  }

  /**
   * Runs `statement`; a failure to reach the database has it pinged. While it is known to be
   * unreachable, fails at once (DatabaseUnreachable) without trying: each statement would otherwise
   * wait out its timeout in turn (a stop's writes one after another, a request's reads), and the
   * probe finds the database back.
   */
  private async observed<T>(statement: () => Promise<T>): Promise<T> {
    if (this.down !== undefined) throw new DatabaseUnreachable(this.down);
    // One still unanswered after probeIntervalMs has the database pinged too: a network gone silent
    // is found in seconds, not once the statement's own limit is out.
    const slow = setTimeout(() => this.verify(), this.timeouts.probeIntervalMs);
    slow.unref();
    try {
      return await statement();
    } catch (err) {
      this.failed(err);
      throw err;
    } finally {
      clearTimeout(slow);
    }
  }

  async run(sql: string, params: SqlValue[] = []): Promise<number> {
    return (await this.observed(() => this.pool.query(sql, params))).rowCount ?? 0;
  }

  async all<T>(sql: string, params: SqlValue[] = []): Promise<T[]> {
    return (await this.observed(() => this.pool.query(sql, params))).rows as T[];
  }

  async get<T>(sql: string, params: SqlValue[] = []): Promise<T | undefined> {
    return (await this.observed(() => this.pool.query(sql, params))).rows[0] as T | undefined;
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
    const client = await this.observed(() => this.pool.connect());
    // A connection left in no known state (a failed BEGIN, COMMIT or ROLLBACK; a statement that
    // could not reach the server) is not given back to the pool.
    let broken: Error | undefined;
    const query = async (sql: string, params: SqlValue[] = []) => {
      try {
        return await this.observed(() => client.query(sql, params));
      } catch (err) {
        if (isUnreachable(err)) broken ??= err as Error;
        throw err;
      }
    };
    const tx: Statements = {
      dialect: 'postgres',
      run: async (sql, params = []) => (await query(sql, params)).rowCount ?? 0,
      all: async <R>(sql: string, params: SqlValue[] = []) => (await query(sql, params)).rows as R[],
      get: async <R>(sql: string, params: SqlValue[] = []) => (await query(sql, params)).rows[0] as R | undefined,
    };
    try {
      await query('BEGIN').catch((err: Error) => {
        throw (broken = err);
      });
      let result: T;
      try {
        result = await fn(tx);
      } catch (err) {
        // Not on a connection already lost: the ROLLBACK would wait its own timeout behind the lost statement.
        if (!broken) await query('ROLLBACK').catch((rollbackFailed: Error) => (broken = rollbackFailed));
        throw err;
      }
      await query('COMMIT').catch((err: Error) => {
        throw (broken = err);
      });
      return result;
    } finally {
      client.release(broken);
    }
  }

  /**
   * On a connection of its own, without the statement timeouts: a migration may rewrite a large
   * table, and waits for another replica's to finish (the advisory lock).
   */
  async migrate(migrations: Migration[]): Promise<void> {
    const client = new pg.Client({ connectionString: this.connectionString, connectionTimeoutMillis: this.timeouts.connectMs, keepAlive: true, keepAliveInitialDelayMillis: 10_000 });
    // An error of the connection while idle between statements is the next statement's to report.
    client.on('error', () => {});
    await client.connect();
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
      // Not waited for: a peer gone silent would never answer the goodbye. Ending the session releases the lock too.
      void client.end().catch(() => {});
    }
  }

  /**
   * SELECT 1 on a connection of its own (not the pool's: a pool busy to its limit is not the
   * database away), answered within `timeoutMs` or failed, and the database marked unreachable
   * until a ping succeeds: one that does not answer is reported as fast as one that refuses.
   * Pings at once share one try.
   */
  ping(timeoutMs = this.timeouts.connectMs): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the database is closed'));
    const shared = (this.pinging ??= this.selectOne(timeoutMs).finally(() => (this.pinging = undefined)));
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the database did not answer within ${timeoutMs} ms`)), timeoutMs);
    });
    return Promise.race([shared, deadline]).then(
      () => {
        clearTimeout(timer);
        this.markUp();
      },
      (err: unknown) => {
        clearTimeout(timer);
        this.markDown(err);
        throw err;
      },
    );
  }

  private markUp(): void {
    if (this.down === undefined) return;
    this.down = undefined;
    this.onReachability?.(true);
  }

  private markDown(err: unknown): void {
    if (this.closed) return;
    const was = this.down === undefined;
    this.down = err;
    if (was) this.onReachability?.(false, err);
    this.verify();
  }

  /** SELECT 1 on the ping's connection; a kept one that fails (closed while idle, say) is replaced by a fresh one, tried once. */
  private async selectOne(timeoutMs: number): Promise<void> {
    const selectOn = (client: pg.Client) => client.query({ text: 'SELECT 1', query_timeout: timeoutMs } as pg.QueryConfig);
    const kept = this.pingClient;
    if (kept) {
      try {
        await selectOn(kept);
        return;
      } catch {
        this.dropPingClient(kept);
      }
    }
    if (this.closed) throw new Error('the database is closed');
    const client = new pg.Client({ connectionString: this.connectionString, connectionTimeoutMillis: timeoutMs, keepAlive: true, keepAliveInitialDelayMillis: 10_000 });
    // Reported by its next ping.
    client.on('error', () => {});
    this.pingClient = client;
    try {
      await client.connect();
      await selectOn(client);
    } catch (err) {
      this.dropPingClient(client);
      throw err;
    }
  }

  /** Ends the ping's connection (at once if a statement is in flight on it); the next ping opens another. */
  private dropPingClient(client: pg.Client): void {
    if (this.pingClient === client) this.pingClient = undefined;
    void client.end().catch(() => {});
  }

  /** Waits closeMs for the statements in flight, then cuts their connections: a stop stays bounded. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.probeTimer);
    void this.pingClient?.end().catch(() => {});
    const ended = this.pool.end();
    let timer: NodeJS.Timeout | undefined;
    const inTime = await Promise.race([ended.then(() => true), new Promise<false>((resolve) => (timer = setTimeout(resolve, this.timeouts.closeMs, false)))]);
    clearTimeout(timer);
    if (inTime) return;
    // end() on a client with a statement in flight destroys its socket: the statement fails, and the pool lets the client go.
    for (const client of this.clients) void client.end().catch(() => {});
    await ended;
  }
}

export function openDatabase(
  config: { DATABASE_URL?: string | undefined; DATA_DIR: string },
  options: {
    onCheckpointerLost?: (err: Error | undefined) => void;
    onThreadLost?: (err: Error | undefined) => void;
    /** PostgreSQL's limits (the defaults of PostgresTimeouts unless given). */
    postgresTimeouts?: PostgresTimeouts;
    /** PostgreSQL became unreachable (with why), or answers again. */
    onReachability?: (reachable: boolean, err?: unknown) => void;
  } = {},
): Database {
  if (config.DATABASE_URL) {
    return new PostgresDatabase(config.DATABASE_URL, {
      ...(options.postgresTimeouts ? { timeouts: options.postgresTimeouts } : {}),
      ...(options.onReachability ? { onReachability: options.onReachability } : {}),
    });
  }
  return new SqliteDatabase(`${config.DATA_DIR.replace(/\/+$/, '')}/gateway.sqlite`, options);
}
