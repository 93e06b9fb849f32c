import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SqliteDatabase, type Database, type SqlValue } from '../src/storage/database.js';
import { UsageLog, type UsageRecord } from '../src/usage/usage-log.js';
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

/** The SQLite database, with its writes counted and, when told, failing. */
class WatchedDatabase extends SqliteDatabase {
  writes = 0;
  failNextWrite = false;
  override async run(sql: string, params?: SqlValue[]): Promise<number> {
    if (sql.startsWith('INSERT INTO usage_records')) {
      if (this.failNextWrite) {
        this.failNextWrite = false;
        throw new Error('disk full');
      }
      this.writes += 1;
    }
    return super.run(sql, params);
  }
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

  it('writes nothing on the request path: records wait for the next flush', async () => {
    const log = new UsageLog(db, silent, { flushIntervalMs: 60_000 });
    log.add(record('req_1'));
    expect(log.pending).toBe(1);
    expect(await stored()).toEqual([]);
    await log.close();
  });

  it('writes a batch as one multi-row INSERT', async () => {
    const log = new UsageLog(db, silent, { flushIntervalMs: 60_000 });
    for (let i = 1; i <= 5; i++) log.add(record(`req_${i}`));
    await log.flush();
    expect(db.writes).toBe(1);
    expect(await stored()).toEqual(['req_1', 'req_2', 'req_3', 'req_4', 'req_5']);
    await log.close();
  });

  it('writes within the flush interval without being asked', async () => {
    const log = new UsageLog(db, silent, { flushIntervalMs: 20 });
    log.add(record('req_1'));
    await vi.waitFor(async () => expect(await stored()).toEqual(['req_1']), { timeout: 2000, interval: 10 });
    await log.close();
  });

  it('writes as soon as a full batch is queued', async () => {
    const log = new UsageLog(db, silent, { flushIntervalMs: 60_000, batchSize: 3 });
    for (let i = 1; i <= 3; i++) log.add(record(`req_${i}`));
    await vi.waitFor(async () => expect(await stored()).toHaveLength(3), { timeout: 2000, interval: 10 });
    await log.close();
  });

  it('writes every queued record on close', async () => {
    const log = new UsageLog(db, silent, { flushIntervalMs: 60_000, batchSize: 2 });
    for (let i = 1; i <= 5; i++) log.add(record(`req_${i}`));
    await log.close();
    expect(log.pending).toBe(0);
    expect(await stored()).toEqual(['req_1', 'req_2', 'req_3', 'req_4', 'req_5']);
  });

  it('writes a long queue 50 rows at a time, letting other work run between the INSERTs', async () => {
    const log = new UsageLog(db, silent, { flushIntervalMs: 60_000, batchSize: 1000 });
    for (let i = 1; i <= 120; i++) log.add(record(`req_${i}`));
    const writesBefore = db.writes;
    let ranBetween = false;
    const flushed = log.flush();
    setImmediate(() => (ranBetween = db.writes - writesBefore < 3));
    await flushed;
    expect(db.writes - writesBefore).toBe(3);
    expect(ranBetween).toBe(true);
    expect(await stored()).toHaveLength(120);
    await log.close();
  });

  it('keeps the records of a failed write and writes them on the next flush', async () => {
    const log = new UsageLog(db, silent, { flushIntervalMs: 60_000 });
    log.add(record('req_1'));
    db.failNextWrite = true;
    await log.flush();
    expect(log.pending).toBe(1);
    expect(await stored()).toEqual([]);
    await log.flush();
    expect(await stored()).toEqual(['req_1']);
    await log.close();
  });

  it('stores the record as given, tokens as JSON', async () => {
    const log = new UsageLog(db, silent, { flushIntervalMs: 60_000 });
    log.add(record('req_1'));
    await log.close();
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
  });
});
