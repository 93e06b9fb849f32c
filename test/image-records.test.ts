import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ImageRecords, type ImageRecord } from '../src/images/image-records.js';
import { PostgresDatabase, SqliteDatabase, type Database } from '../src/storage/database.js';
import { freshPostgres, postgresProblem } from './services.js';

let counter = 0;
function record(overrides: Partial<ImageRecord> = {}): ImageRecord {
  const sha256 = createHash('sha256').update(`image ${counter++}`).digest('hex');
  return {
    name: `img_${sha256}.png`,
    sha256,
    mimeType: 'image/png',
    bytes: 1234,
    width: 16,
    height: 8,
    keyId: 'key-a',
    team: 'team-a',
    createdAt: 1_700_000_000_000,
    expiresAt: 2_000_000_000,
    ...overrides,
  };
}

function imageRecordsContract(name: string, open: () => Promise<{ db: Database; cleanup(): Promise<void> }>) {
  describe(name, () => {
    let db: Database;
    let cleanup: () => Promise<void>;
    let records: ImageRecords;
    beforeAll(async () => {
      ({ db, cleanup } = await open());
      records = new ImageRecords(db);
      await records.migrate();
    });
    afterAll(async () => {
      await db.close();
      await cleanup();
    });

    it('writes the saves of one moment with one INSERT, each answered with its committed row', async () => {
      const many = Array.from({ length: 150 }, () => record());
      const all = vi.spyOn(db, 'all');
      const saved = await Promise.all(many.map((r) => records.save(r)));
      // 150 rows: three INSERTs of at most 64 rows, not 150.
      const inserts = all.mock.calls.filter(([sql]) => sql.startsWith('INSERT INTO images'));
      all.mockRestore();
      expect(inserts.length).toBe(3);
      expect(saved).toEqual(many);
      for (const r of many) expect(await records.find(r.name)).toEqual(r);
    });

    it('keeps the first owner and the later expiry when one image is saved twice at once', async () => {
      const first = record({ expiresAt: 2_000_000_100 });
      const again = { ...first, keyId: 'key-b', team: 'team-b', createdAt: first.createdAt + 5, expiresAt: 2_000_000_500 };
      const [a, b] = await Promise.all([records.save(first), records.save(again)]);
      const expected = { ...first, expiresAt: 2_000_000_500 };
      expect(a).toEqual(expected);
      expect(b).toEqual(expected);
      expect(await records.find(first.name)).toEqual(expected);
    });

    it('keeps the first owner and the later expiry when an image is saved again later', async () => {
      const first = record({ expiresAt: 2_000_000_900 });
      await records.save(first);
      const sooner = await records.save({ ...first, keyId: 'key-b', expiresAt: 2_000_000_000 });
      expect(sooner).toEqual(first);
      const later = await records.save({ ...first, keyId: 'key-b', expiresAt: 2_000_001_000 });
      expect(later).toEqual({ ...first, expiresAt: 2_000_001_000 });
    });

    it("keeps a small image's bytes in its row, read back by name and left out of retention's lists", async () => {
      const bytes = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 2, 3, 255]);
      const small = record({ inlineBytes: bytes, bytes: bytes.length, expiresAt: 1_000 });
      expect(await records.save(small)).toEqual(small);
      const found = await records.find(small.name);
      expect(found?.inlineBytes?.equals(bytes)).toBe(true);
      const listed = await records.expired(1_000, 10);
      expect(listed.map((r) => r.name)).toEqual([small.name]);
      expect(listed[0]!.inlineBytes).toBeUndefined();
      expect(await records.removeIfUnchanged(listed[0]!)).toBe(true);
      expect(await records.find(small.name)).toBeUndefined();
    });

    it('fails every save of a batch whose INSERT fails, and the next batch still works', async () => {
      const all = vi.spyOn(db, 'all').mockRejectedValueOnce(new Error('disk full'));
      const failed = [record(), record()];
      const results = await Promise.allSettled(failed.map((r) => records.save(r)));
      all.mockRestore();
      expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
      expect(await records.find(failed[0]!.name)).toBeUndefined();
      const ok = record();
      expect(await records.save(ok)).toEqual(ok);
    });
  });
}

const sqliteDir = mkdtempSync(join(tmpdir(), 'gw-records-'));
afterAll(() => rmSync(sqliteDir, { recursive: true, force: true }));
imageRecordsContract('image records in SQLite', async () => ({ db: new SqliteDatabase(join(sqliteDir, 'gateway.db')), cleanup: async () => {} }));
imageRecordsContract('image records in SQLite, written on its thread', async () => ({
  db: new SqliteDatabase(join(sqliteDir, 'on-thread.db'), { statementsOnThread: 'always' }),
  cleanup: async () => {},
}));

describe.skipIf(postgresProblem !== undefined)('in PostgreSQL (skipped when unreachable and REQUIRE_SERVICES is unset)', () => {
  imageRecordsContract('image records in PostgreSQL', async () => {
    const schema = await freshPostgres();
    return { db: new PostgresDatabase(schema.url), cleanup: () => schema.drop() };
  });
});
