/**
 * Large base64 images in an upstream reply are decoded as the reply streams in (image-reply-parser)
 * and staged like downloads; the simulator's images are too small for that path, so a fake upstream
 * here answers with a large PNG.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';

const UPSTREAM_KEY = 'sk-test-large-0123456789abcdef';
const CLIENT_KEY = 'gk-test-large-0123456789';
const auth = { authorization: `Bearer ${CLIENT_KEY}` };
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

let png: Buffer;
let upstream: Server;
let app: FastifyInstance;
let dataDir: string;
/** How the next reply is sent: with a Content-Length, chunked, or cut off half way. */
let replyMode: 'length' | 'chunked' | 'truncated' = 'length';

beforeAll(async () => {
  // Noise, so the PNG stays large: ~270 KB, ~360 KB of base64.
  const raw = Buffer.alloc(300 * 300 * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 2654435761) >>> 24;
  png = await sharp(raw, { raw: { width: 300, height: 300, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
  upstream = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const body = Buffer.from(JSON.stringify({ output: { b64_json: [{ bytesBase64: png.toString('base64'), mimeType: 'png' }] }, usage: { output_tokens: 100 } }));
      if (replyMode === 'length') {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length }).end(body);
      } else if (replyMode === 'chunked') {
        res.writeHead(200, { 'content-type': 'application/json' });
        for (let at = 0; at < body.length; at += 10_000) res.write(body.subarray(at, at + 10_000));
        res.end();
      } else {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write(body.subarray(0, body.length >> 1), () => res.destroy());
      }
    });
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  dataDir = mkdtempSync(join(tmpdir(), 'gw-large-'));
  const config = loadConfig({
    AIHUBMIX_API_KEY: UPSTREAM_KEY,
    AIHUBMIX_BASE_URL: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
    GATEWAY_API_KEYS: `design:${CLIENT_KEY}`,
    DATA_DIR: dataDir,
    UPSTREAM_RETRIES: '0',
    LOG_LEVEL: 'silent',
  });
  app = await buildApp(config);
  await app.ready();
});

let closed = false;
afterAll(async () => {
  if (!closed) await app?.close();
  await new Promise((resolve) => upstream?.close(resolve));
  rmSync(dataDir, { recursive: true, force: true });
});

/** Files in the staging directory other than the warm ones kept ready for the next image. */
const stagingLeftovers = () => readdirSync(join(dataDir, 'images', '.staging')).filter((name) => !app.images.stagingFiles.holds(name));

describe('a large base64 image in the upstream reply', () => {
  for (const mode of ['length', 'chunked'] as const) {
    it(`is stored whole, with its size, dimensions and hash (reply sent ${mode === 'length' ? 'with a Content-Length' : 'chunked'})`, async () => {
      replyMode = mode;
      const res = await app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'gpt-image-1', prompt: 'noise' } });
      expect(res.statusCode, res.body).toBe(200);
      const image = res.json().images[0];
      expect(image).toMatchObject({ mime_type: 'image/png', bytes: png.length, width: 300, height: 300, sha256: sha256(png) });
      const file = join(dataDir, 'images', image.sha256.slice(0, 2), `${image.sha256}.png`);
      expect(readFileSync(file).equals(png)).toBe(true);
      const url = new URL(image.url);
      const served = await app.inject({ method: 'GET', url: url.pathname + url.search });
      expect(served.rawPayload.equals(png)).toBe(true);
      expect(stagingLeftovers()).toEqual([]);
    });
  }

  it('comes back as b64_json when asked', async () => {
    replyMode = 'length';
    const res = await app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'gpt-image-1', prompt: 'noise', response_format: 'b64_json' } });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().images[0].b64_json).toBe(png.toString('base64'));
  });

  it('comes back as b64_json over HTTP with its exact Content-Length, not chunked', async () => {
    replyMode = 'length';
    const address = await app.listen({ port: 0, host: '127.0.0.1' });
    const res = await fetch(`${address}/v1/generate`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-image-1', prompt: 'noise', response_format: 'b64_json' }),
    });
    const body = Buffer.from(await res.arrayBuffer());
    expect(res.status, body.toString()).toBe(200);
    expect(res.headers.get('transfer-encoding')).toBeNull();
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(Number(res.headers.get('content-length'))).toBe(body.length);
    expect(JSON.parse(body.toString('utf8')).images[0].b64_json).toBe(png.toString('base64'));
  });

  it('that breaks off fails the request with 502 and leaves nothing staged', async () => {
    replyMode = 'truncated';
    const res = await app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'gpt-image-1', prompt: 'noise' } });
    expect(res.statusCode, res.body).toBe(502);
    expect(res.json().error.code).toBe('upstream_error');
    expect(stagingLeftovers()).toEqual([]);
  });
});

describe('a graceful stop', () => {
  it('removes the warm staging files kept ready', async () => {
    const stagingDir = join(dataDir, 'images', '.staging');
    await app.images.stagingFiles.prepared();
    expect(readdirSync(stagingDir).some((name) => app.images.stagingFiles.holds(name))).toBe(true);
    closed = true;
    await app.close();
    expect(readdirSync(stagingDir)).toEqual([]);
  });
});
