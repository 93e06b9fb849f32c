/**
 * The docker/ topology as processes on loopback: two gateway replicas sharing Redis, PostgreSQL,
 * an S3-compatible store (s3rver) and one URL-signing secret, behind a small round-robin proxy,
 * all calling one upstream simulator. Under concurrent mixed load: limits hold across both, usage
 * totals are exact, an image made on one replica is served by the other, and an Idempotency-Key
 * pays upstream once whichever replica each retry reaches, even when they arrive at once.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, startHarness, type Harness } from './harness.js';
import { freshPostgres, freshRedis, postgresProblem, redisProblem } from './services.js';

// s3rver ships no types; this is the part the test uses.
interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
}
const S3rver = createRequire(import.meta.url)('s3rver') as new (options: Record<string, unknown>) => S3rverInstance;

const BUCKET = 'scale-out-images';
const S3_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

type Json = any;

/** nginx's part in docker/compose.yaml: each request to the next replica in turn, noting which one took it. */
interface RoundRobin {
  url: string;
  replicas: string[];
  /** Which replica (its index) took each request, in arrival order. */
  served: number[];
  close(): Promise<void>;
}

async function startRoundRobin(): Promise<RoundRobin> {
  const rr: RoundRobin = { url: '', replicas: [], served: [], close: async () => {} };
  let next = 0;
  const server: Server = createServer((req, res) => {
    const index = next++ % rr.replicas.length;
    rr.served.push(index);
    const target = new URL(rr.replicas[index]!);
    const forward = httpRequest(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers, agent: false },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on('error', () => res.destroy());
    req.pipe(forward);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  rr.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  rr.close = () => new Promise((resolve) => server.close(() => resolve()));
  return rr;
}

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

describe.skipIf(redisProblem !== undefined || postgresProblem !== undefined)(
  'two replicas behind a round-robin, sharing Redis, PostgreSQL, S3 and the URL secret (skipped when Redis or PostgreSQL is unreachable and REQUIRE_SERVICES is unset)',
  () => {
    let a: Harness;
    let b: Harness;
    let replicaUrls: string[];
    let rr: RoundRobin;
    let s3: S3rverInstance;
    let s3Dir: string;
    let s3Client: S3Client;
    let database: Awaited<ReturnType<typeof freshPostgres>>;

    beforeAll(async () => {
      s3Dir = mkdtempSync(join(tmpdir(), 'gw-scale-s3-'));
      s3 = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: s3Dir, configureBuckets: [{ name: BUCKET }] });
      const s3Endpoint = `http://127.0.0.1:${(await s3.run()).port}`;
      s3Client = new S3Client({ endpoint: s3Endpoint, region: 'us-east-1', forcePathStyle: true, credentials: S3_CREDENTIALS });
      database = await freshPostgres();
      rr = await startRoundRobin();
      const shared = {
        REDIS_URL: freshRedis().url,
        DATABASE_URL: database.url,
        S3_BUCKET: BUCKET,
        // The simulator's images are ~180 bytes: in the bucket, not in their rows.
        IMAGE_INLINE_MAX_BYTES: '0',
        S3_ENDPOINT: s3Endpoint,
        S3_REGION: 'us-east-1',
        S3_FORCE_PATH_STYLE: '1',
        AWS_ACCESS_KEY_ID: S3_CREDENTIALS.accessKeyId,
        AWS_SECRET_ACCESS_KEY: S3_CREDENTIALS.secretAccessKey,
        IMAGE_URL_SECRET: randomBytes(32).toString('hex'),
        PUBLIC_BASE_URL: rr.url,
        RATE_LIMIT_RPM: '1000',
      };
      a = await startHarness(shared);
      // Both replicas call the same upstream, so its record counts every upstream call.
      b = await startHarness({ ...shared, AIHUBMIX_BASE_URL: a.simulator.url });
      replicaUrls = [await a.app.listen({ port: 0, host: '127.0.0.1' }), await b.app.listen({ port: 0, host: '127.0.0.1' })];
      rr.replicas = replicaUrls;
    }, 60_000);

    afterAll(async () => {
      await rr?.close();
      await a?.close();
      await b?.close();
      await database?.drop();
      s3Client?.destroy();
      await s3?.close();
      if (s3Dir) rmSync(s3Dir, { recursive: true, force: true });
    });

    beforeEach(() => {
      a.simulator.reset();
      rr.served.length = 0;
    });

    const submissions = () => a.simulator.received.filter((r) => r.method === 'POST');

    async function call(base: string, key: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
      const res = await fetch(`${base}${path}`, {
        method,
        headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      return { status: res.status, headers: res.headers, body: (res.headers.get('content-type') ?? '').includes('json') ? ((await res.json()) as Json) : undefined };
    }

    /** A key of its own for one test, minted through the round-robin; answers once both replicas know it. */
    async function mint(policy: Record<string, unknown>): Promise<{ key: string; team: string }> {
      const team = `so-${randomBytes(4).toString('hex')}`;
      const res = await call(rr.url, ADMIN_KEY, 'POST', '/v1/keys', { team, ...policy });
      expect(res.status).toBe(201);
      for (const base of replicaUrls) {
        for (let i = 0; i < 100; i++) {
          const keys = await call(base, ADMIN_KEY, 'GET', '/v1/keys');
          if (keys.body.data.some((k: Json) => k.id === res.body.id)) break;
          await sleep(20);
        }
      }
      return { key: res.body.key, team };
    }

    it('enforce one rpm limit across both: of 10 concurrent generations, exactly the limit pass, and reads count apart', async () => {
      const { key } = await mint({ rpm: 6 });
      rr.served.length = 0;
      const burst = Array.from({ length: 10 }, (_, i) => call(rr.url, key, 'POST', '/v1/generate', { model: 'dall-e-3', prompt: `burst ${i}` }));
      const statuses = (await Promise.all(burst)).map((r) => r.status);
      expect(statuses.filter((s) => s === 200)).toHaveLength(6);
      expect(statuses.filter((s) => s === 429)).toHaveLength(4);
      expect(new Set(rr.served)).toEqual(new Set([0, 1]));
      // Refused generations never reach upstream.
      expect(submissions()).toHaveLength(6);
      // Reads have a bucket of their own (10 x the rpm), shared by both replicas too.
      const reads = await Promise.all(Array.from({ length: 62 }, () => call(rr.url, key, 'GET', '/v1/models')));
      expect(reads.filter((r) => r.status === 200)).toHaveLength(60);
      expect(reads.filter((r) => r.status === 429)).toHaveLength(2);
    });

    it('enforce one images_per_day across both: 4 concurrent requests for 2 images each, a quota of 4', async () => {
      const { key } = await mint({ images_per_day: 4 });
      const burst = Array.from({ length: 4 }, (_, i) => call(rr.url, key, 'POST', '/v1/generate', { model: 'imagen-4.0-generate-001', prompt: `quota ${i}`, n: 2 }));
      const results = await Promise.all(burst);
      expect(results.map((r) => r.status).sort()).toEqual([200, 200, 429, 429]);
      expect(results.find((r) => r.status === 429)!.body.error.message).toMatch(/images_per_day/);
      expect(submissions()).toHaveLength(2);
    });

    it('count usage exactly, whichever replica answered', async () => {
      const { key, team } = await mint({});
      a.simulator.failNext('http500');
      // Ideogram 3.0 Turbo: $0.03 an image, so the cost is exact too.
      const generate = (i: number) => call(rr.url, key, 'POST', '/v1/generate', { model: 'ideogram-v3', prompt: `usage ${i}`, n: 2, options: { rendering_speed: 'TURBO' } });
      const load = [
        ...Array.from({ length: 6 }, (_, i) => generate(i)),
        call(rr.url, key, 'POST', '/v1/generate', { model: 'ideogram-v3', prompt: 'bad', size: '1024x1024' }),
        call(rr.url, key, 'POST', '/v1/generate', { model: 'no-such-model', prompt: 'bad' }),
        ...Array.from({ length: 3 }, () => call(rr.url, key, 'GET', '/v1/models')),
      ];
      const statuses = (await Promise.all(load)).map((r) => r.status);
      expect(statuses.sort()).toEqual([200, 200, 200, 200, 200, 200, 200, 200, 400, 400, 502]);
      expect(new Set(rr.served)).toEqual(new Set([0, 1]));

      // Each replica writes its usage in batches; read until both batches are in.
      let row: Json;
      for (let i = 0; i < 50; i++) {
        const report = await call(rr.url, ADMIN_KEY, 'GET', '/v1/usage?group_by=team');
        row = report.body.data.find((r: Json) => r.team === team);
        if (row?.requests >= 11) break;
        await sleep(100);
      }
      expect(row).toMatchObject({ team, requests: 11, images: 10, errors: 3 });
      expect(row.estimated_cost_usd).toBeCloseTo(0.3, 9);
    });

    it('serve an image made on one replica from the other, through the shared bucket and secret', async () => {
      for (const [maker, server] of [
        [0, 1],
        [1, 0],
      ] as const) {
        const made = await call(replicaUrls[maker]!, ADMIN_KEY, 'POST', '/v1/generate', { model: 'gpt-image-1', prompt: `made on replica ${maker}` });
        expect(made.status).toBe(200);
        const image = made.body.images[0];
        const url = new URL(image.url);
        expect(url.origin).toBe(rr.url);
        const served = await fetch(`${replicaUrls[server]}${url.pathname}${url.search}`);
        expect(served.status).toBe(200);
        expect(sha256(Buffer.from(await served.arrayBuffer()))).toBe(image.sha256);
        const object = await s3Client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: `images/${url.pathname.split('/').pop()}` }));
        expect(object.ContentLength).toBe(image.bytes);
      }
    });

    it('answer a job started on one replica when it is polled on the other', async () => {
      const accepted = await call(replicaUrls[0]!, ADMIN_KEY, 'POST', '/v1/generate', { model: 'flux-kontext-pro', prompt: 'polled elsewhere', async: true });
      expect(accepted.status).toBe(202);
      let job: Json;
      for (let i = 0; i < 100; i++) {
        job = (await call(replicaUrls[1]!, ADMIN_KEY, 'GET', `/v1/jobs/${accepted.body.id}`)).body;
        if (job.status === 'succeeded' || job.status === 'failed') break;
        await sleep(50);
      }
      expect(job.status).toBe('succeeded');
      expect((await fetch(job.result.images[0].url)).status).toBe(200);
    });

    it('pay upstream once when requests with one Idempotency-Key reach both replicas at the same moment', async () => {
      const { key } = await mint({ rpm: 1000 });
      const before = submissions().filter((r) => r.path.includes('gpt-image-1')).length;
      const rounds = await Promise.all(
        Array.from({ length: 10 }, async (_, round) => {
          const headers = { 'idempotency-key': `same-moment-${round}-${randomBytes(4).toString('hex')}` };
          const body = { model: 'gpt-image-1', prompt: `together ${round}` };
          return Promise.all([call(replicaUrls[0]!, key, 'POST', '/v1/generate', body, headers), call(replicaUrls[1]!, key, 'POST', '/v1/generate', body, headers)]);
        }),
      );
      for (const [x, y] of rounds) {
        expect([x.status, y.status], JSON.stringify([x.body, y.body]).slice(0, 600)).toEqual([200, 200]);
        expect(y.body.id).toBe(x.body.id);
      }
      expect(submissions().filter((r) => r.path.includes('gpt-image-1')).length - before).toBe(10);
    });

    it('pay upstream once when the same Idempotency-Key reaches the other replica while the first request runs', async () => {
      const { key } = await mint({});
      // An upstream task held open keeps the first request in flight while the retry arrives.
      a.simulator.holdTasks = true;
      const headers = { 'idempotency-key': `both-${randomBytes(4).toString('hex')}` };
      const body = { model: 'flux-kontext-pro', prompt: 'exactly once' };
      const first = call(replicaUrls[0]!, key, 'POST', '/v1/generate', body, headers);
      for (let i = 0; i < 100 && !a.simulator.received.some((r) => r.path.startsWith('/v1/tasks/')); i++) await sleep(20);
      const retry = call(replicaUrls[1]!, key, 'POST', '/v1/generate', body, headers);
      await sleep(300);
      a.simulator.holdTasks = false;
      const [original, replayed] = await Promise.all([first, retry]);
      expect([original.status, replayed.status], JSON.stringify([original.body, replayed.body]).slice(0, 600)).toEqual([200, 200]);
      expect(replayed.body.images[0].url).toBe(original.body.images[0].url);
      expect([original.headers.get('idempotent-replayed'), replayed.headers.get('idempotent-replayed')]).toEqual(['false', 'true']);
      expect(submissions().filter((r) => r.path.includes('flux-kontext-pro'))).toHaveLength(1);
    });
  },
);
