/**
 * Two replicas that share PostgreSQL (DATABASE_URL) but keep images on their own disks (no
 * S3_BUCKET): what each serves of the other's images, and what they say at start. The images are
 * ~180 bytes, kept in the store with IMAGE_INLINE_MAX_BYTES=0 (in their rows they would be shared).
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Harness } from './harness.js';
import { freshPostgres, freshRedis, postgresProblem, redisProblem } from './services.js';

type Json = any;

/** The warnings a gateway logged, parsed. */
const warnings = (h: Harness): Json[] => h.logs.map((line) => JSON.parse(line)).filter((entry) => entry.level === 40);

describe.skipIf(postgresProblem !== undefined)(
  'two replicas sharing PostgreSQL but not an image store (skipped when PostgreSQL is unreachable and REQUIRE_SERVICES is unset)',
  () => {
    let a: Harness;
    let b: Harness;
    let database: Awaited<ReturnType<typeof freshPostgres>>;

    beforeAll(async () => {
      database = await freshPostgres();
      const shared = { DATABASE_URL: database.url, IMAGE_URL_SECRET: randomBytes(32).toString('hex'), IMAGE_INLINE_MAX_BYTES: '0' };
      a = await startHarness(shared);
      b = await startHarness(shared);
    }, 60_000);

    afterAll(async () => {
      await a?.close();
      await b?.close();
      await database?.drop();
    });

    /** An image made on replica A: its URL's path and query. */
    async function imageOnA(prompt: string): Promise<{ url: string; name: string }> {
      const res = await a.app.inject({ method: 'POST', url: '/v1/generate', headers: a.auth, payload: { model: 'gpt-image-1', prompt } });
      expect(res.statusCode, res.body).toBe(200);
      const url = new URL(res.json().images[0].url);
      return { url: url.pathname + url.search, name: url.pathname.split('/').pop()! };
    }

    it('answer an image on the other replica’s disk with a 404 saying so, that no cache keeps and with no ETag', async () => {
      const image = await imageOnA('a kite over the dunes');
      expect((await a.app.inject({ method: 'GET', url: image.url })).statusCode).toBe(200);
      const res = await b.app.inject({ method: 'GET', url: `${image.url}&download=1` });
      expect(res.statusCode).toBe(404);
      expect(res.json().error.message).toMatch(/not in this replica's store.*S3_BUCKET/);
      expect(res.json().error.message).not.toMatch(/retention/);
      expect(res.headers['cache-control']).toBe('no-store');
      expect(res.headers.etag).toBeUndefined();
      expect(res.headers['content-disposition']).toBeUndefined();
      expect(res.headers['content-type']).toMatch(/^application\/json/);
    });

    it('answer a thumbnail of an image on the other replica’s disk the same way', async () => {
      const image = await imageOnA('a lighthouse in fog');
      const res = await b.app.inject({ method: 'GET', url: `${image.url}&w=64` });
      expect(res.statusCode).toBe(404);
      expect(res.json().error.message).toMatch(/not in this replica's store.*S3_BUCKET/);
      expect(res.headers['cache-control']).toBe('no-store');
      expect(res.headers.etag).toBeUndefined();
    });

    it('answer a range of an image on the other replica’s disk the same way', async () => {
      const image = await imageOnA('a harbour at noon');
      const res = await b.app.inject({ method: 'GET', url: image.url, headers: { range: 'bytes=0-9' } });
      expect(res.statusCode).toBe(404);
      expect(res.headers['cache-control']).toBe('no-store');
      expect(res.headers.etag).toBeUndefined();
      expect(res.headers['accept-ranges']).toBeUndefined();
    });

    it('still answer an image whose record is gone (deleted, expired or removed by retention) as no such image', async () => {
      const image = await imageOnA('a red barn');
      const deleted = await a.app.inject({ method: 'DELETE', url: `/v1/images/${image.name}`, headers: a.auth });
      expect(deleted.statusCode).toBe(204);
      const res = await b.app.inject({ method: 'GET', url: image.url });
      expect(res.statusCode).toBe(404);
      expect(res.json().error.message).toMatch(/no such image/);
      expect(res.headers['cache-control']).toBe('no-store');
    });

    it('each warn once at start that images on local disk are served only by the replica that stored them', () => {
      for (const replica of [a, b]) {
        const said = warnings(replica).filter((w) => /S3_BUCKET/.test(w.msg) && /DATA_DIR/.test(w.msg));
        expect(said).toHaveLength(1);
        expect(said[0].msg).toMatch(/only by the replica that stored them/);
        expect(JSON.stringify(said[0])).not.toContain(database.url);
      }
    });

    it('given one IMAGE_URL_SECRET, say nothing of it', () => {
      for (const replica of [a, b]) expect(warnings(replica).filter((w) => /IMAGE_URL_SECRET/.test(w.msg))).toEqual([]);
    });

    it('without IMAGE_URL_SECRET, warn once at start that image URLs work on no other replica', async () => {
      const c = await startHarness({ DATABASE_URL: database.url });
      try {
        const said = warnings(c).filter((w) => /IMAGE_URL_SECRET/.test(w.msg));
        expect(said).toHaveLength(1);
        expect(said[0].msg).toMatch(/every replica/);
      } finally {
        await c.close();
      }
    });
  },
);

describe.skipIf(redisProblem !== undefined)('a replica sharing Redis without IMAGE_URL_SECRET (skipped when Redis is unreachable and REQUIRE_SERVICES is unset)', () => {
  it('warns once at start that its image URLs work on no other replica, naming IMAGE_URL_SECRET', async () => {
    // Empty is unset: the signing key is generated into this replica's DATA_DIR.
    const h = await startHarness({ REDIS_URL: freshRedis().url, IMAGE_URL_SECRET: '' });
    try {
      const said = warnings(h).filter((w) => /IMAGE_URL_SECRET/.test(w.msg));
      expect(said).toHaveLength(1);
      expect(said[0].msg).toMatch(/every replica/);
      expect(said[0].msg).toMatch(/403/);
    } finally {
      await h.close();
    }
  });
});

describe('one gateway on SQLite and local disk', () => {
  it('does not warn about replicas', async () => {
    const h = await startHarness();
    try {
      expect(warnings(h).filter((w) => /S3_BUCKET|IMAGE_URL_SECRET/.test(w.msg))).toEqual([]);
    } finally {
      await h.close();
    }
  });
});

describe('one replica on SQLite whose image file went missing', () => {
  it('answers a 404 saying the file is missing from DATA_DIR, not that another replica holds it', async () => {
    const h = await startHarness({ IMAGE_INLINE_MAX_BYTES: '0' });
    try {
      const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a lost kite' } });
      expect(res.statusCode, res.body).toBe(200);
      const url = new URL(res.json().images[0].url);
      const name = url.pathname.split('/').pop()!;
      const { readdirSync, rmSync } = await import('node:fs');
      const { join } = await import('node:path');
      // Removed outside the gateway: the file under DATA_DIR/images, wherever it is sharded.
      // Kept as images/<first two of its sha256>/<sha256>.<ext>; the image's name is img_<sha256>.<ext>.
      const file = name.replace(/^img_/, '');
      const files = readdirSync(join(h.dataDir, 'images'), { recursive: true, withFileTypes: true }).filter((f) => f.isFile() && f.name === file);
      expect(files).toHaveLength(1);
      rmSync(join(files[0]!.parentPath, files[0]!.name));
      const missing = await h.app.inject({ method: 'GET', url: url.pathname + url.search });
      expect(missing.statusCode).toBe(404);
      expect(missing.json().error.message).toMatch(/missing from DATA_DIR/);
      expect(missing.json().error.message).not.toMatch(/replica/);
    } finally {
      await h.close();
    }
  });
});
