import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { IMAGE_MIGRATIONS, ImageRecords, type ImageOwnership, type ImageRecord } from '../src/images/image-records.js';
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
      const batch = vi.spyOn(db, 'batch');
      const saved = await Promise.all(many.map((r) => records.save(r)));
      // 150 rows: one commit of three INSERTs of at most 64 rows, not 150.
      expect(batch).toHaveBeenCalledTimes(1);
      const inserts = batch.mock.calls[0]![0].filter(({ sql }) => sql.startsWith('INSERT INTO images'));
      batch.mockRestore();
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

    it('writes an image and its owners in one transaction; one owner row per team, with the latest request', async () => {
      const image = record({ expiresAt: 2_000_000_100 });
      const owner = (team: string, prompt: string, expiresAt: number, createdAt = image.createdAt): ImageOwnership => ({
        name: image.name, team, keyId: `${team}-key`, model: 'gpt-image-1', operation: 'generate', prompt,
        parameters: { quality: 'low' }, seed: null, costUsd: 0.01, createdAt, expiresAt,
      });
      const batch = vi.spyOn(db, 'batch');
      await Promise.all([records.save(image, owner('team-a', 'first', 2_000_000_100)), records.save(image, owner('team-b', 'theirs', 2_000_000_100))]);
      // One commit: the image's row, then both owners' rows in one INSERT.
      expect(batch).toHaveBeenCalledTimes(1);
      expect(batch.mock.calls[0]![0].map(({ sql }) => sql.split('(')[0]!.trim())).toEqual(['INSERT INTO images', 'INSERT INTO image_owners']);
      batch.mockRestore();
      await records.save({ ...image, expiresAt: 2_000_000_050 }, owner('team-a', 'again', 2_000_000_050, image.createdAt + 10));
      expect(await records.ownership(image.name, 'team-a')).toMatchObject({ prompt: 'again', expiresAt: 2_000_000_100, createdAt: image.createdAt + 10 });
      expect(await records.ownership(image.name, 'team-b')).toMatchObject({ prompt: 'theirs', parameters: { quality: 'low' }, costUsd: 0.01 });
      const listed = await records.list({ now: 1_000, limit: 10, q: 'THEIRS' });
      expect(listed.map((r) => [r.team, r.sha256, r.width])).toEqual([['team-b', image.sha256, 16]]);

      // One team's removal leaves the image; the last one's removes its row too.
      expect(await records.removeOwners(image.name, 'team-a')).toEqual({ removed: true });
      expect(await records.removeOwners(image.name, 'team-a')).toEqual({ removed: false });
      const last = await records.removeOwners(image.name, 'team-b');
      expect(last.orphaned?.name).toBe(image.name);
      expect(await records.find(image.name)).toBeUndefined();
    });

    it("removes an image's owners with the image (retention), and owners past their own expiry", async () => {
      const image = record({ expiresAt: 1_500 });
      const owner = (team: string, expiresAt: number): ImageOwnership => ({
        name: image.name, team, keyId: null, model: null, operation: null, prompt: null, parameters: null, seed: null, costUsd: null,
        createdAt: image.createdAt, expiresAt,
      });
      await Promise.all([records.save(image, owner('early', 1_200)), records.save(image, owner('late', 1_500))]);
      expect(await records.removeExpiredOwners(1_300)).toBe(1);
      expect((await records.findWithOwners(image.name))?.owners.map((o) => o.team)).toEqual(['late']);
      expect(await records.removeIfUnchanged((await records.find(image.name))!)).toBe(true);
      expect(await records.ownership(image.name, 'late')).toBeUndefined();
    });

    it('fails every save of a batch whose INSERT fails, and the next batch still works', async () => {
      const batch = vi.spyOn(db, 'batch').mockRejectedValueOnce(new Error('disk full'));
      const failed = [record(), record()];
      const results = await Promise.allSettled(failed.map((r) => records.save(r)));
      batch.mockRestore();
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

describe('the image-owners migration', () => {
  it('gives each image stored before it an entry of its first owner, so its team lists it', async () => {
    const db = new SqliteDatabase(':memory:');
    try {
      await db.migrate(IMAGE_MIGRATIONS.filter((m) => m.id !== 'image-owners'));
      const old = record({ expiresAt: 2_000_000_000 });
      await db.run(
        'INSERT INTO images (name, sha256, mime_type, bytes, width, height, key_id, team, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)',
        [old.name, old.sha256, old.mimeType, old.bytes, old.width, old.height, old.keyId, old.team, old.createdAt, old.expiresAt],
      );
      const records = new ImageRecords(db);
      await records.migrate();
      expect(await records.ownership(old.name, 'team-a')).toMatchObject({ keyId: 'key-a', prompt: null, createdAt: old.createdAt, expiresAt: old.expiresAt });
      expect((await records.list({ now: 1_000, limit: 10, team: 'team-a' })).map((r) => r.name)).toEqual([old.name]);
    } finally {
      await db.close();
    }
  });
});
