import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startHarness, type Harness } from './harness.js';

// s3rver ships no types; this is the part the test uses.
interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
}
const S3rver = createRequire(import.meta.url)('s3rver') as new (options: Record<string, unknown>) => S3rverInstance;

const BUCKET = 'gateway-images';
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

let s3: S3rverInstance;
let s3Dir: string;
let endpoint: string;
let client: S3Client;
let h: Harness;

beforeAll(async () => {
  s3Dir = mkdtempSync(join(tmpdir(), 'gw-s3-'));
  s3 = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: s3Dir, configureBuckets: [{ name: BUCKET }] });
  const { port } = await s3.run();
  endpoint = `http://127.0.0.1:${port}`;
  const credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
  client = new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials });
  h = await startHarness({
    S3_BUCKET: BUCKET,
    // The simulator's images are ~180 bytes: in the bucket, not in their rows.
    IMAGE_INLINE_MAX_BYTES: '0',
    S3_ENDPOINT: endpoint,
    S3_REGION: 'us-east-1',
    S3_FORCE_PATH_STYLE: '1',
    AWS_ACCESS_KEY_ID: credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
  });
});

afterAll(async () => {
  await h?.close();
  client?.destroy();
  await s3?.close();
  rmSync(s3Dir, { recursive: true, force: true });
});

async function generate(model: string, prompt: string) {
  const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model, prompt } });
  expect(res.statusCode, res.body).toBe(200);
  const image = res.json().images[0];
  const url = new URL(image.url);
  return { url: url.pathname + url.search, name: url.pathname.split('/').pop()!, sha256: image.sha256 as string, bytes: image.bytes as number };
}

async function objectBytes(key: string): Promise<Buffer> {
  const res = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await res.Body!.transformToByteArray());
}

describe('the S3 image store (S3_BUCKET, against s3rver)', () => {
  it('uploads a downloaded upstream result to the bucket under images/<name>', async () => {
    const image = await generate('FLUX-1.1-pro', 's3: a downloaded result');
    expect(sha256(await objectBytes(`images/${image.name}`))).toBe(image.sha256);
  });

  it('uploads a base64 upstream result to the bucket', async () => {
    const image = await generate('gpt-image-1', 's3: a base64 result');
    const head = await client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: `images/${image.name}` }));
    expect(head.ContentLength).toBe(image.bytes);
    expect(head.ContentType).toBe('image/png');
  });

  it('serves the image from the bucket through its gateway URL', async () => {
    const image = await generate('gpt-image-1', 's3: served');
    const res = await h.app.inject({ method: 'GET', url: image.url });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('image/png');
    expect(sha256(res.rawPayload)).toBe(image.sha256);
  });

  it('passes a byte range through to the bucket and answers 206', async () => {
    const image = await generate('gpt-image-1', 's3: ranged');
    const whole = await objectBytes(`images/${image.name}`);
    const res = await h.app.inject({ method: 'GET', url: image.url, headers: { range: 'bytes=5-24' } });
    expect(res.statusCode).toBe(206);
    expect(res.headers['content-range']).toBe(`bytes 5-24/${image.bytes}`);
    expect(res.rawPayload.equals(whole.subarray(5, 25))).toBe(true);
  });

  it('removes the object when retention sweeps the image, and the URL then 404s', async () => {
    const image = await generate('gpt-image-1', 's3: swept');
    await h.app.db.run('UPDATE images SET expires_at = $1 WHERE name = $2', [Math.floor(Date.now() / 1000) - 1, image.name]);
    await h.app.retention.sweepNow();
    await expect(client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: `images/${image.name}` }))).rejects.toMatchObject({ name: 'NotFound' });
    expect((await h.app.inject({ method: 'GET', url: image.url })).statusCode).toBe(404);
  });

  it('caches thumbnails in the bucket under thumbs/, and removes the image and its thumbnails when its team deletes it', async () => {
    const image = await generate('gpt-image-1', 's3: a thumbnail, then deleted');
    const thumb = await h.app.inject({ method: 'GET', url: `${image.url}&w=32&format=webp` });
    expect(thumb.statusCode).toBe(200);
    expect((await objectBytes(`thumbs/${image.sha256}-w32.webp`)).equals(thumb.rawPayload)).toBe(true);
    const deleted = await h.app.inject({ method: 'DELETE', url: `/v1/images/${image.name}`, headers: h.auth });
    expect(deleted.statusCode).toBe(204);
    for (const Key of [`images/${image.name}`, `thumbs/${image.sha256}-w32.webp`]) {
      await expect(client.send(new HeadObjectCommand({ Bucket: BUCKET, Key }))).rejects.toMatchObject({ name: 'NotFound' });
    }
    expect((await h.app.inject({ method: 'GET', url: image.url })).statusCode).toBe(404);
  });

  it('reports the bucket as ready storage', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/readyz' });
    expect(res.json().checks.storage).toBe('ok');
  });

  it('writes no image files under DATA_DIR', () => {
    expect(readdirSync(h.dataDir)).not.toContain('images');
  });
});

describe('an S3 store that refuses writes', () => {
  const refuse = () => vi.spyOn(h.app.store, 'putBytes').mockRejectedValue(Object.assign(new Error('Access Denied'), { name: 'AccessDenied' }));
  const post = (prompt: string) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt } });

  it('answers each image inline while it refuses, and counts only failures in a row', async () => {
    const put = refuse();
    for (const prompt of ['s3 down 1', 's3 down 2']) {
      const res = await post(prompt);
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json().images[0].url).toBeUndefined();
      expect(res.json().images[0].b64_json).toEqual(expect.any(String));
    }
    put.mockRestore();
    expect((await post('s3 back for one')).statusCode).toBe(200);
    refuse();
    for (const prompt of ['s3 down 3', 's3 down 4']) expect((await post(prompt)).statusCode).toBe(200);
    // Two in a row since the last success: not yet unavailable.
    expect(h.app.storagePressure.state).toBe('ok');
    vi.restoreAllMocks();
    // A write that works starts the count again.
    expect((await post('s3 back again')).statusCode).toBe(200);
  });

  it('is unavailable after three failed writes in a row: generations refused before upstream, /readyz 503; a probe that succeeds ends it', async () => {
    refuse();
    try {
      for (const prompt of ['s3 refuses 1', 's3 refuses 2', 's3 refuses 3']) expect((await post(prompt)).statusCode).toBe(200);
      expect(h.app.storagePressure.state).toBe('unavailable');
      h.simulator.reset();
      const refused = await post('s3 refused');
      expect(refused.statusCode).toBe(507);
      expect(refused.headers['retry-after']).toBe('60');
      expect(refused.json().error.message).toMatch(/S3/);
      expect(h.simulator.received).toHaveLength(0);
      const ready = await h.app.inject({ method: 'GET', url: '/readyz' });
      expect(ready.statusCode).toBe(503);
      expect(ready.json().checks.storage).toBe('unavailable');
    } finally {
      vi.restoreAllMocks();
    }
    // The periodic check probes the bucket (HeadBucket); here it is run at once.
    expect(await h.app.storagePressure.check()).toBe('ok');
    const res = await post('s3 recovered');
    expect(res.statusCode).toBe(200);
    expect(res.json().images[0].url).toEqual(expect.any(String));
  });
});
