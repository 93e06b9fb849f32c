import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { PostgresDatabase, SqliteDatabase, sqlByRowCount, valuesPlaceholders, type Database, type Migration } from '../src/storage/database.js';
import { freshPostgres, postgresProblem } from './services.js';

const migrations: Migration[] = [
  {
    id: '001-things',
    sqlite: ['CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER NOT NULL, flag INTEGER NOT NULL)'],
    postgres: ['CREATE TABLE things (id TEXT PRIMARY KEY, n BIGINT NOT NULL, flag BOOLEAN NOT NULL)'],
  },
];

function databaseContract(name: string, open: () => Promise<{ db: Database; cleanup(): Promise<void> }>) {
  describe(name, () => {
    let db: Database;
    let cleanup: () => Promise<void>;
    beforeAll(async () => {
      ({ db, cleanup } = await open());
      await db.migrate(migrations);
    });
    afterAll(async () => {
      await db.close();
      await cleanup();
    });

    it('runs each migration once, however often migrate is called', async () => {
      await db.migrate(migrations);
      const applied = await db.all<{ id: string }>('SELECT id FROM schema_migrations');
      expect(applied.map((r) => r.id)).toEqual(['001-things']);
    });

    it("fails a statement with the database's own words", async () => {
      await expect(db.run('INSERT INTO missing_table (id) VALUES ($1)', ['x'])).rejects.toThrow(/missing_table/);
      expect(await db.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['after-error', 1, false])).toBe(1);
    });

    it('writes and reads rows with numbered placeholders', async () => {
      expect(await db.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['a', 41, true])).toBe(1);
      await db.run('UPDATE things SET n = n + $1 WHERE id = $2', [1, 'a']);
      const row = await db.get<{ id: string; n: number | string }>('SELECT id, n FROM things WHERE id = $1', ['a']);
      expect(Number(row?.n)).toBe(42);
      expect(await db.get('SELECT id FROM things WHERE id = $1', ['missing'])).toBeUndefined();
    });

    it('commits a transaction once its function resolves, with what it returned', async () => {
      const result = await db.transaction(async (tx) => {
        await tx.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['tx-1', 1, true]);
        await tx.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['tx-2', 2, false]);
        return (await tx.all<{ id: string }>("SELECT id FROM things WHERE id LIKE 'tx-%' ORDER BY id")).map((r) => r.id);
      });
      expect(result).toEqual(['tx-1', 'tx-2']);
      expect((await db.all<{ id: string }>("SELECT id FROM things WHERE id LIKE 'tx-%' ORDER BY id")).map((r) => r.id)).toEqual(['tx-1', 'tx-2']);
    });

    it('rolls a transaction back when its function throws, and goes on after', async () => {
      await expect(
        db.transaction(async (tx) => {
          await tx.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['rb-1', 1, true]);
          await tx.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['rb-1', 2, true]); // duplicate key
        }),
      ).rejects.toThrow();
      await expect(
        db.transaction(async (tx) => {
          await tx.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['rb-2', 1, true]);
          throw new Error('changed my mind');
        }),
      ).rejects.toThrow('changed my mind');
      expect(await db.all("SELECT id FROM things WHERE id LIKE 'rb-%'")).toEqual([]);
      expect(await db.transaction((tx) => tx.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['rb-3', 1, true]))).toBe(1);
    });

    it('rolls back a transaction whose very first statement fails, commits one that ran none, and goes on after', async () => {
      // On the SQLite thread the first statement carries the BEGIN: a failure there must still end the transaction.
      await expect(db.transaction((tx) => tx.run('INSERT INTO nowhere (id) VALUES ($1)', ['first-fails']))).rejects.toThrow();
      expect(await db.transaction(async () => 'nothing to write')).toBe('nothing to write');
      expect(await db.transaction((tx) => tx.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['after-first-fails', 1, true]))).toBe(1);
      expect(await db.all("SELECT id FROM things WHERE id = 'after-first-fails'")).toEqual([{ id: 'after-first-fails' }]);
    });

    it('keeps statements made beside an open transaction out of it', async () => {
      let inside!: () => void;
      const opened = new Promise<void>((resolve) => (inside = resolve));
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      const tx = db.transaction(async (t) => {
        await t.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['side-tx', 1, true]);
        inside();
        await held;
        throw new Error('rolled back');
      });
      await opened;
      // Made while the transaction is open: committed on its own, not rolled back with it.
      const beside = db.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['side-other', 1, true]);
      release();
      await expect(tx).rejects.toThrow('rolled back');
      expect(await beside).toBe(1);
      expect((await db.all<{ id: string }>("SELECT id FROM things WHERE id LIKE 'side-%'")).map((r) => r.id)).toEqual(['side-other']);
    });

    it('commits a batch in one transaction, answering each statement with its rows or its count', async () => {
      const results = await db.batch([
        { sql: 'INSERT INTO things (id, n, flag) VALUES ($1, $2, $3), ($4, $5, $6)', params: ['batch-1', 1, true, 'batch-2', 2, false] },
        { sql: 'UPDATE things SET n = n + $1 WHERE id LIKE $2 RETURNING id, n', params: [10, 'batch-%'], rows: true },
        { sql: 'UPDATE things SET n = n WHERE id = $1', params: ['batch-none'] },
      ]);
      expect(results[0]).toBe(2);
      expect((results[1] as Array<{ id: string; n: number | string }>).map((r) => [r.id, Number(r.n)]).sort()).toEqual([['batch-1', 11], ['batch-2', 12]]);
      expect(results[2]).toBe(0);
      expect((await db.all<{ id: string }>("SELECT id FROM things WHERE id LIKE 'batch-%' ORDER BY id")).map((r) => r.id)).toEqual(['batch-1', 'batch-2']);
    });

    it('keeps none of a batch whose statement fails, and goes on after', async () => {
      await expect(
        db.batch([
          { sql: 'INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', params: ['batch-undone', 1, true] },
          { sql: 'INSERT INTO missing_table (id) VALUES ($1)', params: ['x'] },
        ]),
      ).rejects.toThrow(/missing_table/);
      expect(await db.get("SELECT id FROM things WHERE id = 'batch-undone'")).toBeUndefined();
      // Nothing left open: a statement and another batch after it both land.
      expect(await db.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['batch-after', 1, true])).toBe(1);
      expect(await db.batch([{ sql: 'DELETE FROM things WHERE id = $1', params: ['batch-after'] }])).toEqual([1]);
    });

    it('runs transactions begun in the same turn one after another, each committed', async () => {
      const ids = ['same-turn-1', 'same-turn-2', 'same-turn-3'];
      const results = await Promise.allSettled(
        ids.map((id) =>
          db.transaction(async (tx) => {
            await tx.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', [id, 1, true]);
            return tx.run('UPDATE things SET n = n + 1 WHERE id = $1', [id]);
          }),
        ),
      );
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled']);
      expect((await db.all<{ id: string; n: number }>("SELECT id, n FROM things WHERE id LIKE 'same-turn-%' ORDER BY id")).map((r) => [r.id, Number(r.n)])).toEqual(
        ids.map((id) => [id, 2]),
      );
    });
  });
}

databaseContract('SQLite', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-db-'));
  return { db: new SqliteDatabase(join(dir, 'x.sqlite')), cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
});

databaseContract('SQLite, every statement on its thread', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-db-'));
  return { db: new SqliteDatabase(join(dir, 'x.sqlite'), { statementsOnThread: 'always' }), cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
});

describe.skipIf(postgresProblem !== undefined)('PostgreSQL (skipped when unreachable and REQUIRE_SERVICES is unset)', () => {
  databaseContract('PostgreSQL', async () => {
    const pgdb = await freshPostgres();
    return { db: new PostgresDatabase(pgdb.url), cleanup: pgdb.drop };
  });
});

describe('SQLite checkpoints', () => {
  it('copies the write-ahead log into the database file from a worker thread, between commits', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gw-db-'));
    const path = join(dir, 'x.sqlite');
    const db = new SqliteDatabase(path);
    try {
      await db.migrate(migrations);
      await db.run('ALTER TABLE things ADD COLUMN blob BLOB');
      const blob = new Uint8Array(2048).fill(7);
      // One commit of ~200 pages: short of SQLite's own 1000-page checkpoint, so only the worker moves it.
      const rows = 400;
      await db.run(
        `INSERT INTO things (id, n, flag, blob) VALUES ${Array.from({ length: rows }, (_, i) => `($${4 * i + 1}, $${4 * i + 2}, $${4 * i + 3}, $${4 * i + 4})`).join(', ')}`,
        Array.from({ length: rows }, (_, i) => [`t${i}`, i, true, blob]).flat(),
      );
      const written = rows * 2048;
      let size = statSync(path).size;
      for (let i = 0; i < 100 && size < written; i++) {
        await sleep(20);
        size = statSync(path).size;
      }
      expect(size).toBeGreaterThan(written);
      const row = await db.get<{ n: number }>('SELECT COUNT(*) AS n FROM things');
      expect(Number(row?.n)).toBe(rows);
    } finally {
      await db.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** Holds the event loop for `ms`, as a saturating load would. */
function busyLoop(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

/**
 * A migrated database in a fresh directory, with another connection to its file (another process,
 * say) holding the write lock while `body` runs; both closed and the directory removed after.
 */
async function withWriteLockHeld(
  options: ConstructorParameters<typeof SqliteDatabase>[1],
  body: (db: SqliteDatabase, other: DatabaseSync) => Promise<void>,
): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-db-'));
  const path = join(dir, 'x.sqlite');
  const db = new SqliteDatabase(path, options);
  const other = new DatabaseSync(path);
  try {
    await db.migrate(migrations);
    other.exec('PRAGMA busy_timeout = 5000; BEGIN IMMEDIATE');
    await body(db, other);
  } finally {
    other.close();
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('SQLite statements on their own thread', () => {
  it('run there while the event loop is saturated: a statement waiting for a lock holds up nothing else', async () => {
    await withWriteLockHeld({}, async (db, other) => {
      other.exec("INSERT INTO things (id, n, flag) VALUES ('theirs', 1, 0)");
      // Over a whole sample of the loop's utilization (100 ms), it is busy.
      busyLoop(1500);
      await sleep(0);
      let written = false;
      const first = db.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['ours', 2, true]).then((n) => ((written = true), n));
      // Sent after it, so to the same thread, in order: it reads the row above once that is written.
      const read = db.get<{ n: number }>('SELECT n FROM things WHERE id = $1', ['ours']);
      // On the event loop, the INSERT would have held it until busy_timeout; here timers still fire.
      const ticks = await new Promise<number>((resolve) => {
        let n = 0;
        const timer = setInterval(() => ++n === 5 && (clearInterval(timer), resolve(n)), 10);
      });
      expect(ticks).toBe(5);
      expect(written).toBe(false);
      // The loop is idle again, but the thread still holds statements: the next one queues behind
      // them there (inline, it would wait on the lock and hold the loop).
      await sleep(250);
      const later = db.run('UPDATE things SET n = n + 1 WHERE id = $1', ['ours']);
      other.exec('COMMIT');
      expect(await first).toBe(1);
      expect(await read).toEqual({ n: 2 });
      expect(await later).toBe(1);
      // With the thread's statements answered and the loop idle, statements run on the loop.
      expect(await db.get<{ total: number }>('SELECT SUM(n) AS total FROM things')).toEqual({ total: 4 });
    });
  });

  it('when the thread ends, fails what it held with a clear error, says so, and runs later statements on the loop', async () => {
    const lost: Array<Error | undefined> = [];
    await withWriteLockHeld({ statementsOnThread: 'always', onThreadLost: (err) => lost.push(err) }, async (db, other) => {
      const held = db.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['held', 1, true]);
      await sleep(20);
      await (db as unknown as { thread: { worker: { terminate(): Promise<number> } } }).thread.worker.terminate();
      await expect(held).rejects.toThrow(/SQLite thread stopped/);
      expect(lost).toHaveLength(1);
      other.exec('ROLLBACK');
      expect(await db.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['later', 1, true])).toBe(1);
      expect(await db.all<{ id: string }>('SELECT id FROM things')).toEqual([{ id: 'later' }]);
    });
  });

  it('on close(), finishes what the thread holds and refuses what comes after', async () => {
    await withWriteLockHeld({ statementsOnThread: 'always' }, async (db, other) => {
      const held = db.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['held', 1, true]);
      const closing = db.close();
      await expect(db.run('INSERT INTO things (id, n, flag) VALUES ($1, $2, $3)', ['late', 1, true])).rejects.toThrow(/closed/);
      await expect(db.migrate(migrations)).rejects.toThrow(/closed/);
      other.exec('COMMIT');
      expect(await held).toBe(1);
      await closing;
      expect(other.prepare('SELECT id FROM things').all()).toEqual([{ id: 'held' }]);
    });
  });

  it('is quiet when it is stopped by close(), and refuses statements after', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gw-db-'));
    const lost: Array<Error | undefined> = [];
    const db = new SqliteDatabase(join(dir, 'x.sqlite'), { statementsOnThread: 'always', onThreadLost: (err) => lost.push(err) });
    await db.migrate(migrations);
    expect(await db.get('SELECT COUNT(*) AS n FROM things')).toEqual({ n: 0 });
    await db.close();
    await sleep(50);
    expect(lost).toEqual([]);
    await expect(db.get('SELECT 1')).rejects.toThrow();
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('SQLite without its checkpoint thread', () => {
  it('says so, and lets SQLite checkpoint inside commits again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gw-db-'));
    const lost: Array<Error | undefined> = [];
    const db = new SqliteDatabase(join(dir, 'x.sqlite'), { onCheckpointerLost: (err) => lost.push(err) });
    try {
      expect(await db.get<{ wal_autocheckpoint: number }>('PRAGMA wal_autocheckpoint')).toEqual({ wal_autocheckpoint: 8192 });
      // The thread dies (as an uncaught error in it would end it).
      await (db as unknown as { checkpointer: { worker: { terminate(): Promise<number> } } }).checkpointer.worker.terminate();
      await vi.waitFor(() => expect(lost).toHaveLength(1), { timeout: 2000, interval: 10 });
      expect(await db.get<{ wal_autocheckpoint: number }>('PRAGMA wal_autocheckpoint')).toEqual({ wal_autocheckpoint: 1000 });
    } finally {
      await db.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is quiet when it is stopped by close()', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gw-db-'));
    const lost: Array<Error | undefined> = [];
    const db = new SqliteDatabase(join(dir, 'x.sqlite'), { onCheckpointerLost: (err) => lost.push(err) });
    await db.close();
    await sleep(50);
    expect(lost).toEqual([]);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('multi-row statements', () => {
  it('number their placeholders row by row', () => {
    expect(valuesPlaceholders(2, 3)).toBe('($1, $2, $3), ($4, $5, $6)');
  });

  it('are built once per row count, and handed back as the very same string', () => {
    const build = vi.fn((rows: number) => `INSERT INTO t (a, b) VALUES ${valuesPlaceholders(rows, 2)}`);
    const sqlFor = sqlByRowCount(build);
    const first = sqlFor(3);
    expect(first).toBe('INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4), ($5, $6)');
    expect(sqlFor(3)).toBe(first);
    expect(sqlFor(1)).toBe('INSERT INTO t (a, b) VALUES ($1, $2)');
    expect(sqlFor(3)).toBe(first);
    expect(build).toHaveBeenCalledTimes(2);
  });
});
