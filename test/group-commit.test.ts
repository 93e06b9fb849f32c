import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ImageRecords, type ImageRecord } from '../src/images/image-records.js';
import type { Logger } from '../src/observability/logger.js';
import { SqliteDatabase, type BatchResult } from '../src/storage/database.js';
import { GroupCommit, type CommitShare, type CommitSource } from '../src/storage/group-commit.js';
import { UsageLog, type UsageRecord } from '../src/usage/usage-log.js';
import { USAGE_MIGRATIONS } from '../src/usage/usage-migrations.js';

const silent = { warn: () => {}, error: () => {}, info: () => {}, debug: () => {} } as unknown as Logger;

/** A source that writes the ids it is given into `things`, and tells what it heard. */
class Things implements CommitSource {
  waiting: string[] = [];
  heard: Array<{ committed: BatchResult[] } | { failed: string }> = [];
  constructor(private readonly commits: GroupCommit) {
    commits.register(this);
  }
  add(...ids: string[]): void {
    this.waiting.push(...ids);
    this.commits.wake();
  }
  take(): CommitShare | undefined {
    if (this.waiting.length === 0) return undefined;
    const ids = this.waiting.splice(0);
    return {
      statements: ids.map((id) => ({ sql: 'INSERT INTO things (id) VALUES ($1)', params: [id] })),
      committed: (results) => this.heard.push({ committed: results }),
      failed: (err) => this.heard.push({ failed: (err as Error).message }),
    };
  }
}

let counter = 0;
function image(): ImageRecord {
  const sha256 = createHash('sha256').update(`group ${counter++}`).digest('hex');
  return { name: `img_${sha256}.png`, sha256, mimeType: 'image/png', bytes: 10, width: 1, height: 1, keyId: 'k', team: 't', createdAt: 1_700_000_000_000, expiresAt: 2_000_000_000 };
}

function usage(requestId: string): UsageRecord {
  return {
    timeMs: 1_700_000_000_000, requestId, keyId: 'k', team: 't', method: 'POST', route: '/v1/generate', model: 'gpt-image-1', operation: 'generate',
    imagesRequested: 1, imagesReturned: 1, status: 200, errorCode: null, upstreamStatus: 200, upstreamMs: 5, totalMs: 9, bytesStored: 10,
    estimatedCostUsd: 0.01, upstreamTokens: null, prompt: null, jobId: null,
  };
}

describe.each([
  ['on the event loop', 'when-busy' as const],
  ['on its SQLite thread', 'always' as const],
])('GroupCommit, statements %s', (_where, statementsOnThread) => {
  let dir: string;
  let db: SqliteDatabase;
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gw-group-commit-'));
    db = new SqliteDatabase(join(dir, 'x.sqlite'), { statementsOnThread });
    await db.migrate([{ id: 'things', sqlite: ['CREATE TABLE things (id TEXT PRIMARY KEY)'], postgres: [] }]);
  });
  afterEach(async () => {
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const stored = async () => (await db.all<{ id: string }>('SELECT id FROM things ORDER BY id')).map((r) => r.id);

  it('commits what two sources queue in one turn together, each told its own results', async () => {
    const commits = new GroupCommit(db);
    const a = new Things(commits);
    const b = new Things(commits);
    const batch = vi.spyOn(db, 'batch');
    a.add('a1', 'a2');
    b.add('b1');
    await vi.waitFor(() => expect(a.heard.length + b.heard.length).toBe(2), { timeout: 2000, interval: 5 });
    expect(batch).toHaveBeenCalledTimes(1);
    expect(a.heard).toEqual([{ committed: [1, 1] }]);
    expect(b.heard).toEqual([{ committed: [1] }]);
    expect(await stored()).toEqual(['a1', 'a2', 'b1']);
  });

  it("tries a failed group again share by share: only the share at fault fails, the other's rows land", async () => {
    const commits = new GroupCommit(db);
    const good = new Things(commits);
    const bad = new Things(commits);
    await db.run('INSERT INTO things (id) VALUES ($1)', ['taken']);
    good.add('fine');
    bad.add('taken'); // a primary key already there
    await vi.waitFor(() => expect(good.heard.length + bad.heard.length).toBe(2), { timeout: 2000, interval: 5 });
    expect(good.heard).toEqual([{ committed: [1] }]);
    expect(bad.heard).toEqual([{ failed: expect.stringMatching(/UNIQUE/) }]);
    expect(await stored()).toEqual(['fine', 'taken']);
  });

  it('puts what comes while a commit is in flight in the next one, and flush() waits for both', async () => {
    const commits = new GroupCommit(db);
    const things = new Things(commits);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const batch = db.batch.bind(db);
    const calls: string[][] = [];
    vi.spyOn(db, 'batch').mockImplementation(async (statements) => {
      calls.push(statements.map((s) => String(s.params[0])));
      if (calls.length === 1) await held;
      return batch(statements);
    });
    things.add('first');
    await vi.waitFor(() => expect(calls).toHaveLength(1), { timeout: 2000, interval: 5 });
    things.add('second', 'third');
    const flushed = commits.flush();
    release();
    await flushed;
    expect(calls).toEqual([['first'], ['second', 'third']]);
    expect(await stored()).toEqual(['first', 'second', 'third']);
  });

  it("hears of a source's own fault without stranding the others: a take() or a committed() that throws", async () => {
    const faults: string[] = [];
    const commits = new GroupCommit(db, (err) => faults.push((err as Error).message));
    const broken: CommitSource = { take: () => { throw new Error('take broke'); } };
    commits.register(broken);
    const things = new Things(commits);
    const careless = new Things(commits);
    careless.take = function (this: Things) {
      const share = Things.prototype.take.call(this);
      return share && { ...share, committed: () => { throw new Error('committed broke'); } };
    };
    const other = new Things(commits);
    things.add('t1');
    careless.add('c1');
    other.add('o1');
    await vi.waitFor(() => expect(things.heard.length + other.heard.length).toBe(2), { timeout: 2000, interval: 5 });
    expect(things.heard).toEqual([{ committed: [1] }]);
    expect(other.heard).toEqual([{ committed: [1] }]);
    expect(faults).toEqual(['take broke', 'committed broke']);
    expect(await stored()).toEqual(['c1', 'o1', 't1']);
    // And it goes on.
    things.add('t2');
    await commits.flush();
    expect(await stored()).toContain('t2');
  });

  it("commits an image's row and a usage record queued in the same turn together", async () => {
    await db.migrate(USAGE_MIGRATIONS);
    const commits = new GroupCommit(db);
    const records = new ImageRecords(db, commits);
    await records.migrate();
    const usageLog = new UsageLog(db, silent, { commits });
    const batch = vi.spyOn(db, 'batch');
    const one = image();
    const [saved] = await Promise.all([records.save(one), usageLog.record(usage('req-together'))]);
    expect(saved).toEqual(one);
    expect(batch).toHaveBeenCalledTimes(1);
    expect(batch.mock.calls[0]![0].map(({ sql }) => sql.split('(')[0]!.trim())).toEqual(['INSERT INTO images', 'INSERT INTO usage_records']);
    expect(await db.get('SELECT request_id FROM usage_records')).toEqual({ request_id: 'req-together' });
    expect(await records.find(one.name)).toEqual(one);
    await usageLog.close();
  });
});
