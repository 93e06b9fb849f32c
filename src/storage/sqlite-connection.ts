// One connection to the gateway's SQLite file, as SqliteDatabase uses it on the event loop and its
// SQLite thread uses it beside. The thread loads this file on its own (as .js from dist/, or as .ts
// with the types stripped under the tests): node: imports only.
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';

/** Distinct statements kept prepared; the usage log's batch INSERTs vary by row count, so bounded. */
const MAX_PREPARED_STATEMENTS = 256;
export const MIGRATIONS_TABLE = 'CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)';

// node:sqlite numbers its placeholders ?1, ?2; PostgreSQL $1, $2. Where they come in order, each
// once, plain `?` does: node:sqlite binds numbered ones in time that grows with their count (the
// usage log's 200-row INSERT bound 30 times slower).
const toSqlite = (sql: string) => {
  let next = 1;
  const inOrder = sql.replace(/\$(\d+)/g, (_, n: string) => (Number(n) === next++ ? '?' : '\u0000'));
  return inOrder.includes('\u0000') ? sql.replace(/\$(\d+)/g, '?$1') : inOrder;
};

/** A statement of a batch, its parameters as node:sqlite takes them: `rows` for its rows, else the count it changed. */
export interface SqliteBatchStatement {
  sql: string;
  params: SQLInputValue[];
  rows?: boolean;
}

export class SqliteConnection {
  private readonly db: DatabaseSync;
  // Compiling the SQL cost more than running it on every request's INSERT and SELECT.
  private readonly prepared = new Map<string, StatementSync>();

  private readonly begin: StatementSync;
  private readonly commit: StatementSync;
  private readonly rollback: StatementSync;

  /** `autocheckpointPages`: the WAL size at which a commit checkpoints by itself (a file, not `:memory:`). */
  constructor(path: string, autocheckpointPages?: number) {
    this.db = new DatabaseSync(path);
    // WAL lets readers (usage queries) run beside the batch writer; busy_timeout rides out brief locks.
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;');
    if (autocheckpointPages !== undefined) this.exec(`PRAGMA wal_autocheckpoint = ${autocheckpointPages}`);
    // Prepared once: a batch's BEGIN and COMMIT are not compiled again each time.
    this.begin = this.db.prepare('BEGIN IMMEDIATE');
    this.commit = this.db.prepare('COMMIT');
    this.rollback = this.db.prepare('ROLLBACK');
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

  run(sql: string, params: SQLInputValue[]): number {
    return Number(this.statement(sql).run(...params).changes);
  }

  all(sql: string, params: SQLInputValue[]): unknown[] {
    return this.statement(sql).all(...params);
  }

  get(sql: string, params: SQLInputValue[]): unknown {
    return this.statement(sql).get(...params);
  }

  /**
   * `statements` in one transaction (BEGIN IMMEDIATE ... COMMIT), each one's rows (`rows`) or the
   * count it changed; rolled back, and the error thrown, if one fails or the commit does.
   */
  batch(statements: SqliteBatchStatement[]): Array<number | Record<string, unknown>[]> {
    this.begin.run();
    try {
      const results = statements.map(({ sql, params, rows }) => (rows ? (this.all(sql, params) as Record<string, unknown>[]) : this.run(sql, params)));
      this.commit.run();
      return results;
    } catch (err) {
      // A failed COMMIT (busy, disk full) leaves the transaction open too; a ROLLBACK's own failure
      // (nothing open) does not hide the first error.
      try {
        this.rollback.run();
      } catch {
        // Nothing was open.
      }
      throw err;
    }
  }

  exec(sql: string): void {
    this.db.exec(sql);
  }

  migrate(migrations: Array<{ id: string; sqlite: string[] }>): void {
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

  get isOpen(): boolean {
    return this.db.isOpen;
  }

  close(): void {
    if (this.db.isOpen) this.db.close();
  }
}
