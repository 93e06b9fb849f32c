/**
 * The image work of large images on worker threads (WORKERS, src/workers/): the same answers as on
 * the main thread (WORKERS=0), the decoding done by the threads, a bad image or a worker crash
 * failing only its own request, and a stop that ends every thread. A fake upstream answers with a
 * large PNG (the simulator's images are too small to be staged).
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { ImageWorkers } from '../src/workers/image-workers.js';
import { startHarness } from './harness.js';

const UPSTREAM_KEY = 'sk-test-workers-0123456789abcdef';
const CLIENT_KEY = 'gk-test-workers-0123456789';
const auth = { authorization: `Bearer ${CLIENT_KEY}` };
/** "CRASH" in base64: the worker of test/fixtures/crashing-image-worker.ts ends its thread on a text that starts with it. */
const CRASH_TEXT = 'Q1JBU0g';
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

let png: Buffer;
let upstream: Server;
/** The base64 text the fake upstream answers with; the request's prompt picks it (see textFor). */
const textFor = (prompt: string): string => {
  switch (prompt) {
    case 'base64url':
      return png.toString('base64url'); // another alphabet, no padding: decodable, but not the standard text
    case 'not an image':
      return Buffer.alloc(png.length, 7).toString('base64');
    case 'crash':
      return CRASH_TEXT + png.toString('base64').slice(CRASH_TEXT.length);
    default:
      return png.toString('base64');
  }
};
const dataDirs: string[] = [];
const apps: FastifyInstance[] = [];

async function startGateway(env: Record<string, string>, imageWorkers?: ImageWorkers): Promise<FastifyInstance> {
  const dataDir = mkdtempSync(join(tmpdir(), 'gw-workers-'));
  dataDirs.push(dataDir);
  const config = loadConfig({
    AIHUBMIX_API_KEY: UPSTREAM_KEY,
    AIHUBMIX_BASE_URL: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
    GATEWAY_API_KEYS: `design:${CLIENT_KEY}`,
    DATA_DIR: dataDir,
    UPSTREAM_RETRIES: '0',
    LOG_LEVEL: 'silent',
    ...env,
  });
  const app = await buildApp(config, imageWorkers ? { imageWorkers } : {});
  apps.push(app);
  await app.ready();
  return app;
}

const generate = (app: FastifyInstance, prompt: string, responseFormat: 'url' | 'b64_json' = 'url') =>
  app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'gpt-image-1', prompt, response_format: responseFormat } });

beforeAll(async () => {
  // Noise, so the PNG stays large: ~270 KB, ~360 KB of base64 (a staged image: over 64 KiB of text).
  const raw = Buffer.alloc(300 * 300 * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 2654435761) >>> 24;
  png = await sharp(raw, { raw: { width: 300, height: 300, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
  upstream = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const prompt = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { input: { prompt: string } }).input.prompt;
      const body = JSON.stringify({ output: { b64_json: [{ bytesBase64: textFor(prompt), mimeType: 'png' }] }, usage: { output_tokens: 100 } });
      res.writeHead(200, { 'content-type': 'application/json' });
      // In pieces, as a real reply arrives.
      for (let at = 0; at < body.length; at += 50_000) res.write(body.slice(at, at + 50_000));
      res.end();
    });
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
});

afterAll(async () => {
  for (const app of apps) await app.close();
  await new Promise((resolve) => upstream?.close(resolve));
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
});

describe('WORKERS', () => {
  it('defaults to none (the main thread) and refuses what is not a count of threads', () => {
    const base = { AIHUBMIX_API_KEY: UPSTREAM_KEY, GATEWAY_API_KEYS: `design:${CLIENT_KEY}` };
    expect(loadConfig(base).WORKERS).toBe(0);
    expect(loadConfig({ ...base, WORKERS: '0' }).WORKERS).toBe(0);
    expect(loadConfig({ ...base, WORKERS: '3' }).WORKERS).toBe(3);
    for (const bad of ['-1', 'two', '1.5', '1000']) {
      expect(() => loadConfig({ ...base, WORKERS: bad })).toThrow(`WORKERS must be an integer from 0 to 256, got "${bad}"`);
    }
  });
});

describe('a large base64 image with worker threads and without', () => {
  let onMain: FastifyInstance;
  let pooled: FastifyInstance;
  beforeAll(async () => {
    onMain = await startGateway({ WORKERS: '0' });
    pooled = await startGateway({ WORKERS: '2' });
  });

  it('is stored and answered the same, decoded by a worker thread with WORKERS=2 and by none with WORKERS=0', async () => {
    const answers = [];
    for (const app of [onMain, pooled]) {
      const res = await generate(app, 'noise');
      expect(res.statusCode, res.body).toBe(200);
      const { url: _url, expires_at: _expires, ...image } = res.json().images[0];
      answers.push(image);
      const url = new URL(res.json().images[0].url);
      expect((await app.inject({ method: 'GET', url: url.pathname + url.search })).rawPayload.equals(png)).toBe(true);
    }
    expect(answers[0]).toEqual({ mime_type: 'image/png', bytes: png.length, width: 300, height: 300, sha256: sha256(png) });
    expect(answers[1]).toEqual(answers[0]);
    expect(onMain.imageWorkers.stats).toEqual({ inWorkers: 0, onMainThread: 0, workerFailures: 0 });
    expect(onMain.imageWorkers.threads).toEqual([]);
    // The decoding, hashing and dimensions: one task on a thread.
    expect(pooled.imageWorkers.stats).toEqual({ inWorkers: 1, onMainThread: 0, workerFailures: 0 });
    expect(pooled.imageWorkers.threads).toHaveLength(2);
  });

  it('answers b64_json with the upstream text itself, decoded on a thread (WORKERS=2) or on the main thread (WORKERS=0), the same', async () => {
    const encodedBefore = onMain.imageWorkers.stats.onMainThread;
    const before = { ...pooled.imageWorkers.stats };
    const bodies = [];
    for (const app of [onMain, pooled]) {
      const res = await generate(app, 'noise', 'b64_json');
      expect(res.statusCode, res.body).toBe(200);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      expect(res.json().images[0].b64_json).toBe(png.toString('base64'));
      bodies.push(res.json().images[0]);
    }
    expect(bodies[1].sha256).toBe(bodies[0].sha256);
    // Neither encodes the file again: WORKERS=0 decoded as it arrived, WORKERS=2 on a thread (one task).
    expect(onMain.imageWorkers.stats.onMainThread).toBe(encodedBefore);
    expect(pooled.imageWorkers.stats).toEqual({ ...before, inWorkers: before.inWorkers + 1 });
  });

  it('answers b64_json in the standard alphabet, padded, when the upstream sent base64url', async () => {
    const before = pooled.imageWorkers.stats.inWorkers;
    const encodedBefore = onMain.imageWorkers.stats.onMainThread;
    for (const app of [onMain, pooled]) {
      const res = await generate(app, 'base64url', 'b64_json');
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json().images[0]).toMatchObject({ b64_json: png.toString('base64'), sha256: sha256(png), bytes: png.length });
    }
    // Decoded, then encoded afresh: two tasks on the threads; on the main thread, one encoding.
    expect(pooled.imageWorkers.stats.inWorkers).toBe(before + 2);
    expect(onMain.imageWorkers.stats.onMainThread).toBe(encodedBefore + 1);
  });

  it('that is not an image fails its request with 502, and the next one is answered', async () => {
    for (const app of [onMain, pooled]) {
      const res = await generate(app, 'not an image');
      expect(res.statusCode, res.body).toBe(502);
      expect(res.json().error).toMatchObject({ code: 'upstream_error', message: 'upstream returned data that is not a PNG, JPEG or WebP image' });
      expect((await generate(app, 'noise')).statusCode).toBe(200);
    }
  });
});

describe('a downloaded result (a URL from the upstream)', () => {
  it('is hashed by a worker thread with WORKERS=2, and answered the same as with WORKERS=0', async () => {
    const answers = [];
    for (const workers of ['0', '2']) {
      const h = await startHarness({ WORKERS: workers });
      try {
        const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'FLUX-1.1-pro', prompt: 'a lighthouse', response_format: 'b64_json' } });
        expect(res.statusCode, res.body).toBe(200);
        const { url: _url, expires_at: _expires, ...image } = res.json().images[0];
        expect(image.sha256).toBe(sha256(Buffer.from(image.b64_json, 'base64')));
        answers.push(image);
        // WORKERS=2: the download hashed on a thread. The image is small (kept in its row): its base64 is made from the bytes read for the row.
        expect(h.app.imageWorkers.stats).toEqual({ inWorkers: workers === '2' ? 1 : 0, onMainThread: 0, workerFailures: 0 });
      } finally {
        await h.close();
      }
    }
    expect(answers[1]).toEqual(answers[0]);
  });
});

describe('a worker thread that crashes', () => {
  it('fails only the request it was working for, with a 500 that says so; a new thread takes the next', async () => {
    const workers = new ImageWorkers(1, new URL('./fixtures/crashing-image-worker.ts', import.meta.url).href);
    const app = await startGateway({}, workers);
    expect((await generate(app, 'noise')).statusCode).toBe(200);
    const crashed = await generate(app, 'crash');
    expect(crashed.statusCode, crashed.body).toBe(500);
    expect(crashed.json().error).toMatchObject({ code: 'internal_error', message: 'the image could not be processed: its worker thread failed' });
    expect(workers.stats.workerFailures).toBe(1);
    const after = await generate(app, 'noise', 'b64_json');
    expect(after.statusCode, after.body).toBe(200);
    expect(after.json().images[0].b64_json).toBe(png.toString('base64'));
    expect(workers.stats).toMatchObject({ inWorkers: 2, workerFailures: 1 });
  });
});

describe('a graceful stop', () => {
  it('ends every worker thread', async () => {
    const app = await startGateway({ WORKERS: '2' });
    expect((await generate(app, 'noise')).statusCode).toBe(200);
    const threads = [...app.imageWorkers.threads];
    expect(threads).toHaveLength(2);
    const exited = threads.map((thread) => new Promise<number>((resolve) => thread.once('exit', resolve)));
    await app.close();
    apps.splice(apps.indexOf(app), 1);
    expect(app.imageWorkers.threads).toEqual([]);
    // Every thread has ended by the time close() returns (their exit events are due, not awaited for long).
    const ended = await Promise.race([Promise.all(exited).then(() => true), new Promise<boolean>((resolve) => setImmediate(() => resolve(false)))]);
    expect(ended).toBe(true);
  });
});
