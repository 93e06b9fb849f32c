import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KEY_MIGRATIONS, KeyRecords } from '../src/auth/key-records.js';
import type { KeyPolicy } from '../src/auth/key-policy.js';
import { JobRecords, type JobCursor, type JobRow, type NewJob } from '../src/jobs/job-records.js';
import { PostgresDatabase, SqliteDatabase, type Database } from '../src/storage/database.js';
import { freshPostgres, postgresProblem } from './services.js';

const NOW = 1_900_000_000_000;

function job(id: string, overrides: Partial<NewJob> = {}): NewJob {
  return {
    id,
    keyId: 'key-a',
    team: 'team-a',
    operation: 'generate',
    model: 'gpt-image-1',
    requestJson: '{}',
    callbackUrl: null,
    publicBaseUrl: '',
    leaseOwner: 'replica-1',
    leaseUntil: NOW + 60_000,
    createdAt: NOW,
    expiresAt: NOW + 86_400_000,
    isAsync: true,
    tokenId: null,
    ...overrides,
  };
}

const policy = (id: string, team: string): KeyPolicy => ({ id, team, admin: false });

function repositoriesContract(name: string, open: () => Promise<{ db: Database; cleanup(): Promise<void> }>) {
  describe(name, () => {
    let db: Database;
    let cleanup: () => Promise<void>;
    let jobs: JobRecords;
    let keys: KeyRecords;
    beforeAll(async () => {
      ({ db, cleanup } = await open());
      jobs = new JobRecords(db);
      keys = new KeyRecords(db);
      await jobs.migrate();
      await keys.migrate();
    });
    afterAll(async () => {
      await db.close();
      await cleanup();
    });

    it("keeps a job's model declaration (model_json), and none for a job without one", async () => {
      await jobs.insert(job('job_decl', { modelJson: '{"id":"gpt-image-1"}', expiresAt: NOW - 2 }));
      await jobs.insert(job('job_nodecl', { expiresAt: NOW - 2 }));
      expect((await jobs.find('job_decl'))?.model_json).toBe('{"id":"gpt-image-1"}');
      expect((await jobs.find('job_nodecl'))?.model_json).toBeNull();
    });

    it('lists jobs newest first, filtered by team, key, status, model and time, in pages', async () => {
      await jobs.insert(job('job_1', { createdAt: NOW + 1 }));
      await jobs.insert(job('job_2', { createdAt: NOW + 2, model: 'FLUX-1.1-pro' }));
      await jobs.insert(job('job_3', { createdAt: NOW + 2, keyId: 'key-b' }));
      await jobs.insert(job('job_4', { createdAt: NOW + 3, team: 'team-b', keyId: 'key-c' }));
      await jobs.insert(job('job_5', { createdAt: NOW + 4, expiresAt: NOW - 1 }));
      const ids = (rows: JobRow[]) => rows.map((r) => r.id);
      const query = { now: NOW, limit: 10 };
      expect(ids(await jobs.list(query))).toEqual(['job_4', 'job_3', 'job_2', 'job_1']);
      expect(ids(await jobs.list({ ...query, team: 'team-a' }))).toEqual(['job_3', 'job_2', 'job_1']);
      expect(ids(await jobs.list({ ...query, keyId: 'key-b' }))).toEqual(['job_3']);
      expect(ids(await jobs.list({ ...query, model: 'FLUX-1.1-pro' }))).toEqual(['job_2']);
      expect(ids(await jobs.list({ ...query, from: NOW + 2, to: NOW + 3 }))).toEqual(['job_3', 'job_2']);
      expect(await jobs.markRunning('job_1', 'replica-1', NOW, NOW + 60_000)).toBe(1);
      expect(ids(await jobs.list({ ...query, status: 'running' }))).toEqual(['job_1']);

      // Pages of two, the two jobs of one millisecond told apart by id.
      const seen: string[] = [];
      let after: JobCursor | undefined;
      for (;;) {
        const page = await jobs.list({ ...query, limit: 2, after });
        seen.push(...ids(page));
        const last = page.at(-1);
        if (page.length < 2 || !last) break;
        after = { createdAt: Number(last.created_at), id: last.id };
      }
      expect(seen).toEqual(['job_4', 'job_3', 'job_2', 'job_1']);
    });

    it('lists minted keys by team, active or with the revoked ones, in id order and pages', async () => {
      for (const [id, team] of [
        ['a-1', 'alpha'],
        ['a-2', 'alpha'],
        ['a-3', 'alpha'],
        ['b-1', 'beta'],
      ] as const) {
        await keys.insert({ id, keySha256: `sha-${id}`, policy: policy(id, team), createdAt: NOW });
      }
      expect(await keys.revoke('a-2', NOW + 1)).toBe(true);
      expect(await keys.revoke('a-2', NOW + 2)).toBe(false);
      const ids = (list: Array<{ id: string }>) => list.map((k) => k.id);
      expect(ids(await keys.list({ limit: 10 }))).toEqual(['a-1', 'a-3', 'b-1']);
      expect(ids(await keys.list({ limit: 10, team: 'alpha' }))).toEqual(['a-1', 'a-3']);
      expect(ids(await keys.list({ limit: 10, team: 'alpha', revoked: true }))).toEqual(['a-1', 'a-2', 'a-3']);
      expect(ids(await keys.list({ limit: 2, team: 'alpha', revoked: true, after: 'a-1' }))).toEqual(['a-2', 'a-3']);
      expect((await keys.list({ limit: 10, revoked: true })).find((k) => k.id === 'a-2')).toMatchObject({ revokedAt: NOW + 1, policy: { team: 'alpha' } });
      expect(ids(await keys.active())).toEqual(expect.arrayContaining(['a-1', 'a-3', 'b-1']));
      expect(await keys.exists('a-2')).toBe(true);
    });
  });
}

const sqliteDir = mkdtempSync(join(tmpdir(), 'gw-repositories-'));
afterAll(() => rmSync(sqliteDir, { recursive: true, force: true }));
repositoriesContract('repositories in SQLite', async () => ({ db: new SqliteDatabase(join(sqliteDir, 'gateway.db')), cleanup: async () => {} }));

describe.skipIf(postgresProblem !== undefined)('in PostgreSQL (skipped when unreachable and REQUIRE_SERVICES is unset)', () => {
  repositoriesContract('repositories in PostgreSQL', async () => {
    const schema = await freshPostgres();
    return { db: new PostgresDatabase(schema.url), cleanup: () => schema.drop() };
  });

  it('the key-team migration fills the team of keys minted before it, in PostgreSQL', async () => {
    const schema = await freshPostgres();
    const db = new PostgresDatabase(schema.url);
    try {
      await keysMintedBeforeTheTeamColumn(db);
    } finally {
      await db.close();
      await schema.drop();
    }
  });
});

async function keysMintedBeforeTheTeamColumn(db: Database): Promise<void> {
  await db.migrate(KEY_MIGRATIONS.filter((m) => m.id === 'client-keys-001'));
  await db.run('INSERT INTO client_keys (id, key_sha256, policy_json, created_at) VALUES ($1, $2, $3, $4)', ['old-1', 'sha-old', JSON.stringify(policy('old-1', 'gamma')), NOW]);
  const keys = new KeyRecords(db);
  await keys.migrate();
  expect((await keys.list({ limit: 10, team: 'gamma' })).map((k) => k.id)).toEqual(['old-1']);
}

it('the key-team migration fills the team of keys minted before it, in SQLite', async () => {
  const db = new SqliteDatabase(':memory:');
  try {
    await keysMintedBeforeTheTeamColumn(db);
  } finally {
    await db.close();
  }
});
