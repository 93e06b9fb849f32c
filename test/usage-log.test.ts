import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Logger } from '../src/observability/logger.js';
import { SqliteDatabase, type BatchResult, type BatchStatement, type Database } from '../src/storage/database.js';
import { UsageLog, isRowFault, type UsageRecord } from '../src/usage/usage-log.js';
import { DatabaseSync } from 'node:sqlite';
import { USAGE_MIGRATIONS } from '../src/usage/usage-migrations.js';

const silent = pino({ level: 'silent' });

function record(requestId: string): UsageRecord {
  return {
    timeMs: Date.UTC(2026, 10, 24, 12),
    requestId,
    keyId: 'design',
    team: 'design',
    method: 'POST',
    route: '/v1/generate',
    model: 'gpt-image-1',
    operation: 'generate',
    imagesRequested: 1,
    imagesReturned: 1,
    status: 200,
    errorCode: null,
    upstreamStatus: 200,
    upstreamMs: 812,
    totalMs: 840,
    bytesStored: 1234,
    estimatedCostUsd: 0.00405,
    upstreamTokens: { input_tokens: 10, output_tokens: 100, total_tokens: 110 },
    prompt: null,
    jobId: null,
  };
}

/** The SQLite database, with its commits watched (the rows of each INSERT) and, when told, held or failing. */
class WatchedDatabase extends SqliteDatabase {
  /** Per commit, the row count of each usage INSERT in it. */
  transactions: number[][] = [];
  failNextWrite = false;
  /** A request id whose row the database refuses, as PostgreSQL refuses a value out of its column's range. */
  refusedRequestId: string | undefined;
  /** While set, a commit waits for it before it begins. */
  hold: Promise<void> | undefined;
  override async batch(statements: BatchStatement[]): Promise<BatchResult[]> {
    // Rows per INSERT: parameters over the columns the statement names.
    const inserts = statements.filter(({ sql }) => sql.startsWith('INSERT INTO usage_records')).map(({ sql, params }) => params.length / /\(([^)]*)\) VALUES/.exec(sql)![1]!.split(',').length);
    this.transactions.push(inserts);
    if (this.hold) await this.hold;
    if (this.failNextWrite) {
      this.failNextWrite = false;
      throw new Error('disk full');
    }
    if (this.refusedRequestId !== undefined && statements.some(({ sql, params }) => sql.startsWith('INSERT INTO usage_records') && params.includes(this.refusedRequestId!))) {
      throw Object.assign(new Error('value "2147483648" is out of range for type integer'), { code: '22003' });
    }
    return super.batch(statements);
  }
}

/** A logger whose warnings and errors are kept. */
function watchedLogger() {
  const warnings: string[] = [];
  const errors: string[] = [];
  const logger = { warn: (_o: unknown, msg: string) => warnings.push(msg), error: (_o: unknown, msg: string) => errors.push(msg), info: () => {}, debug: () => {} };
  return { logger: logger as unknown as Logger, warnings, errors };
}

describe('UsageLog', () => {
  let dir: string;
  let db: WatchedDatabase;
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gw-usage-log-'));
    db = new WatchedDatabase(join(dir, 'usage.sqlite'));
    await db.migrate(USAGE_MIGRATIONS);
  });
  afterEach(async () => {
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const stored = async (database: Database = db) => (await database.all<{ request_id: string }>('SELECT request_id FROM usage_records ORDER BY id')).map((r) => r.request_id);
  /** A gate: transactions wait at it until opened. */
  const gate = () => {
    let open!: () => void;
    db.hold = new Promise<void>((resolve) => (open = resolve));
    return () => {
      db.hold = undefined;
      open();
    };
  };

  it('resolves record() only once the record is committed', async () => {
    const log = new UsageLog(db, silent);
    const release = gate();
    let answered = false;
    const recorded = log.record(record('req_1')).then(() => (answered = true));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(answered).toBe(false);
    expect(await stored()).toEqual([]);
    release();
    await recorded;
    // Read by another connection: it is in the file, not only in this one's view.
    const other = new SqliteDatabase(join(dir, 'usage.sqlite'));
    expect(await stored(other)).toEqual(['req_1']);
    await other.close();
    await log.close();
  });

  it('commits concurrent records together: one transaction, one multi-row INSERT', async () => {
    const log = new UsageLog(db, silent);
    await Promise.all([1, 2, 3, 4, 5].map((i) => log.record(record(`req_${i}`))));
    expect(db.transactions).toEqual([[5]]);
    expect(await stored()).toEqual(['req_1', 'req_2', 'req_3', 'req_4', 'req_5']);
    await log.close();
  });

  it('gathers the records that arrive while a commit is in flight for the next one', async () => {
    const log = new UsageLog(db, silent);
    const release = gate();
    const first = log.record(record('req_1'));
    await vi.waitFor(() => expect(db.transactions).toHaveLength(1), { timeout: 2000, interval: 5 });
    const later = [2, 3, 4].map((i) => log.record(record(`req_${i}`)));
    release();
    await Promise.all([first, ...later]);
    expect(db.transactions).toEqual([[1], [3]]);
    expect(await stored()).toEqual(['req_1', 'req_2', 'req_3', 'req_4']);
    await log.close();
  });

  it('writes a large group 50 rows per INSERT, in one transaction', async () => {
    const log = new UsageLog(db, silent);
    await Promise.all(Array.from({ length: 120 }, (_, i) => log.record(record(`req_${i + 1}`))));
    expect(db.transactions).toEqual([[50, 50, 20]]);
    expect(await stored()).toHaveLength(120);
    await log.close();
  });

  it('past maxWaitMs lets the answer go, keeps the record queued and retries it until it is committed', async () => {
    const { logger, warnings, errors } = watchedLogger();
    const log = new UsageLog(db, logger, { maxWaitMs: 30, retryMs: 60_000 });
    db.failNextWrite = true;
    await log.record(record('req_1'));
    expect(warnings.some((w) => /not committed within 30 ms/.test(w))).toBe(true);
    expect(errors.some((e) => /failed; retrying/.test(e))).toBe(true);
    expect(log.pending).toBe(1);
    expect(await stored()).toEqual([]);
    // The retry (here cut short by flush, as a usage read does) writes it.
    await log.flush();
    expect(log.pending).toBe(0);
    expect(await stored()).toEqual(['req_1']);
    await log.close();
  });

  it('retries a failed write by itself', async () => {
    const log = new UsageLog(db, silent, { retryMs: 10 });
    db.failNextWrite = true;
    await log.record(record('req_1'));
    expect(db.transactions).toHaveLength(2);
    expect(await stored()).toEqual(['req_1']);
    await log.close();
  });

  it('a record the database refuses for its values is found and dropped, logged whole; the records beside it and after it are written', async () => {
    const { logger, errors } = watchedLogger();
    const log = new UsageLog(db, logger, { retryMs: 60_000 });
    db.refusedRequestId = 'req_bad';
    await Promise.all(['req_1', 'req_bad', 'req_2', 'req_3'].map((id) => log.record(record(id))));
    // The group, then each of its records alone: the refused one is dropped, not retried forever.
    expect(db.transactions).toEqual([[4], [1], [1], [1], [1]]);
    expect(await stored()).toEqual(['req_1', 'req_2', 'req_3']);
    expect(log.pending).toBe(0);
    expect(errors.filter((e) => /refused by the database for its values; it is dropped/.test(e))).toHaveLength(1);
    // Groups again after it.
    db.transactions = [];
    await Promise.all(['req_4', 'req_5'].map((id) => log.record(record(id))));
    expect(db.transactions).toEqual([[2]]);
    await log.close();
  });

  it('tells a fault of the rows (no retry mends it) from a failing database', () => {
    // SQLite's own errors carry the extended code (a NOT NULL violation is 1299, a UNIQUE one 2067).
    const sqlite = new DatabaseSync(':memory:');
    sqlite.exec('CREATE TABLE t (x INTEGER NOT NULL UNIQUE)');
    sqlite.exec('INSERT INTO t VALUES (1)');
    const faultOf = (sql: string) => {
      try {
        sqlite.exec(sql);
      } catch (err) {
        return err;
      }
      throw new Error(`no fault: ${sql}`);
    };
    expect(isRowFault(faultOf('INSERT INTO t VALUES (NULL)'))).toBe(true);
    expect(isRowFault(faultOf('INSERT INTO t VALUES (1)'))).toBe(true);
    expect(isRowFault(faultOf('INSERT INTO nowhere VALUES (1)'))).toBe(false);
    sqlite.close();
    // PostgreSQL's SQLSTATE: data exceptions and integrity violations, not a connection lost or a shutdown.
    expect(isRowFault({ code: '22003' })).toBe(true);
    expect(isRowFault({ code: '23505' })).toBe(true);
    expect(isRowFault({ code: '57P01' })).toBe(false);
    expect(isRowFault({ code: '08006' })).toBe(false);
    expect(isRowFault({ code: 'ECONNREFUSED' })).toBe(false);
    expect(isRowFault(new Error('disk full'))).toBe(false);
  });

  it('writes more than one group: close() writes every group, and a group queued behind a commit in flight follows it unasked', async () => {
    const log = new UsageLog(db, silent, { groupSize: 2 });
    for (let i = 1; i <= 5; i++) log.add(record(`req_${i}`));
    await log.close();
    expect(db.transactions).toEqual([[2], [2], [1]]);
    expect(await stored()).toEqual(['req_1', 'req_2', 'req_3', 'req_4', 'req_5']);

    db.transactions = [];
    const next = new UsageLog(db, silent, { groupSize: 2 });
    const release = gate();
    for (let i = 6; i <= 10; i++) next.add(record(`req_${i}`));
    await vi.waitFor(() => expect(db.transactions).toHaveLength(1), { timeout: 2000, interval: 5 });
    release();
    // Nothing else is queued or flushed: the rest goes in the commits after the held one.
    await vi.waitFor(async () => expect(await stored()).toHaveLength(10), { timeout: 2000, interval: 5 });
    expect(db.transactions).toEqual([[2], [2], [1]]);
    await next.close();
  });

  it('add() does not wait for the commit; close() writes every queued record', async () => {
    const log = new UsageLog(db, silent);
    const release = gate();
    for (let i = 1; i <= 5; i++) log.add(record(`req_${i}`));
    expect(log.pending).toBe(5);
    release();
    await log.close();
    expect(log.pending).toBe(0);
    expect(await stored()).toEqual(['req_1', 'req_2', 'req_3', 'req_4', 'req_5']);
  });

  it('completes a job’s record: queued (committed with it), committed (updated), or not yet arrived', async () => {
    const log = new UsageLog(db, silent);
    const outcome = { status: 200, errorCode: null, imagesReturned: 2, bytesStored: 99, estimatedCostUsd: 0.08, upstreamStatus: 200, upstreamMs: 5, upstreamTokens: null };
    const accepted = (id: string, job: string) => ({ ...record(id), status: 202, imagesReturned: 0, jobId: job });
    const release = gate();
    const queued = log.record(accepted('req_q', 'job_q'));
    await log.completeJob('job_q', outcome);
    release();
    await queued;
    await log.record(accepted('req_c', 'job_c'));
    await db.transaction((tx) => log.completeJob('job_c', outcome, tx));
    await log.completeJob('job_e', outcome);
    await log.record(accepted('req_e', 'job_e'));
    const rows = await db.all<{ request_id: string; status: number; images_returned: number }>('SELECT request_id, status, images_returned FROM usage_records ORDER BY id');
    expect(rows).toEqual([
      { request_id: 'req_q', status: 200, images_returned: 2 },
      { request_id: 'req_c', status: 200, images_returned: 2 },
      { request_id: 'req_e', status: 200, images_returned: 2 },
    ]);
    await log.close();
  });

  it('a record that replaces its job’s stand-in takes the stand-in’s outcome and deletes it, in one transaction', async () => {
    const log = new UsageLog(db, silent);
    const outcome = { status: 200, errorCode: null, imagesReturned: 2, bytesStored: 99, estimatedCostUsd: 0.08, upstreamStatus: 200, upstreamMs: 5, upstreamTokens: null, model: 'flux-kontext-pro', modelsTried: ['gpt-image-1', 'flux-kontext-pro'] };
    // Another replica finished job_s, with no record of its starting request to complete: it wrote one standing for it.
    await db.transaction((tx) => log.completeJobFromElsewhere(outcome, { ...record('job_s'), ...outcome, jobId: 'job_s' }, tx));
    await log.record(record('req_other'));
    // The waiting request answers: its record counted nothing itself.
    const own = { ...record('req_s'), imagesReturned: 0, bytesStored: 0, estimatedCostUsd: 0, upstreamStatus: null, upstreamMs: null, upstreamTokens: null, jobId: 'job_s', replacesStandIn: true };
    await log.record(own);
    const rows = await db.all<Record<string, unknown>>('SELECT request_id, job_id, status, images_returned, bytes_stored, cost_usd, upstream_status, upstream_ms, model, models_tried FROM usage_records ORDER BY id');
    expect(rows).toEqual([
      { request_id: 'req_other', job_id: null, status: 200, images_returned: 1, bytes_stored: 1234, cost_usd: 0.00405, upstream_status: 200, upstream_ms: 812, model: 'gpt-image-1', models_tried: null },
      { request_id: 'req_s', job_id: 'job_s', status: 200, images_returned: 2, bytes_stored: 99, cost_usd: 0.08, upstream_status: 200, upstream_ms: 5, model: 'flux-kontext-pro', models_tried: 'gpt-image-1,flux-kontext-pro' },
    ]);
    // Without a stand-in (this replica finished the job after all), the record is kept as it is.
    await log.record({ ...own, requestId: 'req_t', jobId: 'job_t' });
    expect(await db.get('SELECT images_returned, cost_usd FROM usage_records WHERE request_id = $1', ['req_t'])).toEqual({ images_returned: 0, cost_usd: 0 });
    await log.close();
  });

  it('stores the record as given, tokens as JSON', async () => {
    const log = new UsageLog(db, silent);
    await log.record(record('req_1'));
    const row = await db.get('SELECT * FROM usage_records');
    expect(row).toMatchObject({
      time_ms: Date.UTC(2026, 10, 24, 12),
      day: '2026-11-24',
      request_id: 'req_1',
      key_id: 'design',
      images_returned: 1,
      bytes_stored: 1234,
      cost_usd: 0.00405,
      upstream_tokens: '{"input_tokens":10,"output_tokens":100,"total_tokens":110}',
      prompt: null,
    });
    await log.close();
  });

  it("leaves a record with no job and no token out of those two indexes, which the job's and the token's lookups still use", async () => {
    const log = new UsageLog(db, silent);
    await log.record(record('req_plain'));
    await log.record({ ...record('req_job'), jobId: 'job_indexed', status: 202 });
    await log.close();
    const plan = async (sql: string) => (await db.all<{ detail: string }>(`EXPLAIN QUERY PLAN ${sql}`, ['x'])).map((r) => r.detail).join('; ');
    expect(await plan('UPDATE usage_records SET status = 200 WHERE job_id = $1 AND status = 202')).toMatch(/USING INDEX usage_records_job/);
    expect(await plan('SELECT COUNT(*) FROM usage_records WHERE token_id = $1 AND operation IS NOT NULL')).toMatch(/USING INDEX usage_records_token/);
    // Partial: a row with a null job_id (token_id) has no entry there.
    const partial = await db.all<{ name: string; sql: string }>("SELECT name, sql FROM sqlite_master WHERE name IN ('usage_records_job', 'usage_records_token') ORDER BY name");
    expect(partial.map((r) => [r.name, /WHERE (job|token)_id IS NOT NULL/.test(r.sql)])).toEqual([['usage_records_job', true], ['usage_records_token', true]]);
  });
});
