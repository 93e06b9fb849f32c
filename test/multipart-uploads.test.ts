/**
 * Multipart edits: the whole request within MAX_REQUEST_BYTES (declared or counted as it arrives),
 * each file streamed to DATA_DIR/uploads as it arrives rather than held in memory, and removed once
 * the request is answered. Files untouched for over an hour (a killed replica's) are removed at start
 * and every 10 minutes; newer ones may be another replica's upload in flight.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { makePng, multipartBody, startHarness, startListening, type Harness, type ListeningHarness } from './harness.js';

const KIB = 1024;

/** A PNG of about `bytes` that does not compress (noise). */
function noisyPng(side: number): Promise<Buffer> {
  const raw = Buffer.alloc(side * side * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 7919 + ((i * i) % 251)) & 255;
  return sharp(raw, { raw: { width: side, height: side, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
}

const files = (...images: Buffer[]) => images.map((bytes, i) => ({ field: 'image[]', filename: `${i}.png`, bytes }));
const uploadsOf = (h: Harness) => readdirSync(join(h.dataDir, 'uploads'));

describe('MAX_REQUEST_BYTES over a multipart edit', () => {
  let h: Harness;
  let image: Buffer;
  beforeAll(async () => {
    h = await startHarness({ MAX_UPLOAD_BYTES: String(48 * KIB), MAX_REQUEST_BYTES: String(100 * KIB), RATE_LIMIT_RPM: '1000' });
    image = await noisyPng(110); // ~36 KiB: under MAX_UPLOAD_BYTES, three of them over MAX_REQUEST_BYTES
  });
  afterAll(async () => h.close());

  it('the test image is under MAX_UPLOAD_BYTES and three are over MAX_REQUEST_BYTES', () => {
    expect(image.length).toBeLessThan(48 * KIB);
    expect(3 * image.length).toBeGreaterThan(100 * KIB);
  });

  it.each(['/v1/edit', '/v1/images/edits'])('%s refuses files each under the file limit but over the total with 413 naming MAX_REQUEST_BYTES', async (url) => {
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it blue' }, files(image, image, image));
    const res = await h.app.inject({ method: 'POST', url, headers: { ...h.auth, ...headers }, payload });
    expect(res.statusCode, res.body).toBe(413);
    expect(res.body).toMatch(/102400 bytes.*MAX_REQUEST_BYTES/);
    expect(h.simulator.received.filter((r) => r.path === '/v1/images/edits')).toHaveLength(0);
  });

  it('counts a body that declares no length as it arrives, and leaves no file behind', async () => {
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it blue' }, files(image, image, image));
    // A stream of 16 KiB chunks, sent chunked: no Content-Length to refuse it by.
    const chunks = Array.from({ length: Math.ceil(payload.length / (16 * KIB)) }, (_, i) => payload.subarray(i * 16 * KIB, (i + 1) * 16 * KIB));
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload: Readable.from(chunks) });
    expect(res.statusCode, res.body).toBe(413);
    expect(res.body).toMatch(/MAX_REQUEST_BYTES/);
    expect(uploadsOf(h)).toEqual([]);
  });

  it('takes two such files (under the total) and leaves no file behind', async () => {
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it blue' }, files(image, image));
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
    expect(res.statusCode, res.body).toBe(200);
    expect(h.simulator.received.filter((r) => r.path === '/v1/images/edits').at(-1)?.files).toHaveLength(2);
    expect(uploadsOf(h)).toEqual([]);
  });

  it('refuses one file over MAX_UPLOAD_BYTES with 413 naming the file and the limit', async () => {
    const big = await noisyPng(140);
    expect(big.length).toBeGreaterThan(48 * KIB);
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it blue' }, [{ field: 'image', filename: 'big.png', bytes: big }]);
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
    expect(res.statusCode).toBe(413);
    expect(res.json().error.details[0]).toMatchObject({ field: 'image', message: `must be at most ${48 * KIB} bytes` });
    expect(uploadsOf(h)).toEqual([]);
  });
});

describe('multipart files on disk', () => {
  let h: ListeningHarness;
  beforeAll(async () => {
    h = await startListening();
  });
  afterAll(async () => h.close());

  it('are written to DATA_DIR/uploads while the request arrives and removed once it is answered', async () => {
    const png = await makePng(64, 64);
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it blue' }, [{ field: 'image', filename: 'a.png', bytes: png }]);
    // Everything but the closing boundary: the gateway has the whole file, and is still waiting for the rest.
    const closing = payload.lastIndexOf(Buffer.from('\r\n--'));
    const req = httpRequest(`${h.base}/v1/edit`, { method: 'POST', headers: { ...h.auth, ...headers, 'content-length': String(payload.length) } });
    const answered = new Promise<{ status: number; body: string }>((resolve, reject) => {
      req.on('response', (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
    });
    req.write(payload.subarray(0, closing));

    // Waits (by polling the directory, not by a clock) until the file is there whole.
    let held: string[] = [];
    for (let i = 0; i < 500 && !(held.length === 1 && statSync(join(h.dataDir, 'uploads', held[0]!)).size === png.length); i++) {
      await new Promise((r) => setTimeout(r, 10));
      held = uploadsOf(h);
    }
    expect(held).toHaveLength(1);
    expect(statSync(join(h.dataDir, 'uploads', held[0]!)).size).toBe(png.length);
    expect(statSync(join(h.dataDir, 'uploads', held[0]!)).mode & 0o777).toBe(0o600);

    req.end(payload.subarray(closing));
    const { status, body } = await answered;
    expect(status, body).toBe(200);
    expect(uploadsOf(h)).toEqual([]);
  });

  it('are removed when the client leaves in the middle of its upload', async () => {
    const png = await makePng(64, 64);
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it blue' }, [{ field: 'image', filename: 'a.png', bytes: png }]);
    const req = httpRequest(`${h.base}/v1/edit`, { method: 'POST', headers: { ...h.auth, ...headers, 'content-length': String(payload.length) } });
    req.on('error', () => {}); // the abort below
    req.write(payload.subarray(0, payload.lastIndexOf(Buffer.from('\r\n--'))));
    let held: string[] = [];
    for (let i = 0; i < 500 && held.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
      held = uploadsOf(h);
    }
    expect(held).toHaveLength(1);
    req.destroy();
    for (let i = 0; i < 500 && held.length > 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
      held = uploadsOf(h);
    }
    expect(held).toEqual([]);
  });
});

describe('DATA_DIR/uploads at start and every 10 minutes', () => {
  const HOUR = 3600_000;
  const age = (path: string, ms: number) => utimesSync(path, new Date(Date.now() - ms), new Date(Date.now() - ms));

  it('keeps what another replica sharing DATA_DIR may still be writing; removes files untouched for over an hour', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'gw-uploads-'));
    try {
      mkdirSync(join(dataDir, 'uploads'));
      writeFileSync(join(dataDir, 'uploads', 'up_left-behind'), 'half an upload');
      age(join(dataDir, 'uploads', 'up_left-behind'), HOUR + 60_000);
      writeFileSync(join(dataDir, 'uploads', 'up_in-flight'), 'another replica is writing this');
      age(join(dataDir, 'uploads', 'up_in-flight'), HOUR - 60_000);
      const h = await startHarness({ DATA_DIR: dataDir });
      try {
        expect(readdirSync(join(dataDir, 'uploads'))).toEqual(['up_in-flight']);
      } finally {
        await h.close();
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('sweeps again every 10 minutes while running, and no more once closed', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'gw-uploads-'));
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    try {
      const h = await startHarness({ DATA_DIR: dataDir });
      const stale = join(dataDir, 'uploads', 'up_crashed-replica');
      const fresh = join(dataDir, 'uploads', 'up_writing');
      try {
        writeFileSync(stale, 'left by a replica killed since this one started');
        age(stale, HOUR + 60_000);
        writeFileSync(fresh, 'being written');
        vi.advanceTimersByTime(10 * 60_000 - 1);
        await new Promise((r) => setTimeout(r, 100));
        expect(readdirSync(join(dataDir, 'uploads')).sort()).toEqual(['up_crashed-replica', 'up_writing']);
        vi.advanceTimersByTime(1);
        for (let i = 0; i < 200 && readdirSync(join(dataDir, 'uploads')).length > 1; i++) await new Promise((r) => setTimeout(r, 10));
        expect(readdirSync(join(dataDir, 'uploads'))).toEqual(['up_writing']);
      } finally {
        await h.close();
      }
      writeFileSync(stale, 'left after the close');
      age(stale, HOUR + 60_000);
      vi.advanceTimersByTime(20 * 60_000);
      await new Promise((r) => setTimeout(r, 100));
      expect(readdirSync(join(dataDir, 'uploads')).sort()).toEqual(['up_crashed-replica', 'up_writing']);
    } finally {
      vi.useRealTimers();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('a multipart body that is not well formed', () => {
  let h: Harness;
  let png: Buffer;
  beforeAll(async () => {
    h = await startHarness({ RATE_LIMIT_RPM: '1000' });
    png = await makePng();
  });
  afterAll(async () => h.close());

  const send = (url: string, contentType: string, payload: Buffer | string) =>
    h.app.inject({ method: 'POST', url, headers: { ...h.auth, 'content-type': contentType }, payload });

  it.each(['/v1/edit', '/v1/images/edits', '/v1/upscale', '/v1/describe'])('%s answers 400 naming the fault, never a 500, and leaves no file behind', async (url) => {
    const model = url === '/v1/upscale' ? 'ideogram-upscale' : url === '/v1/describe' ? 'ideogram-describe' : 'gpt-image-1';
    const { payload, headers } = multipartBody({ model, prompt: 'make it blue' }, [{ field: 'image', filename: 'a.png', bytes: png }]);
    const cases: Array<[string, Buffer | string]> = [
      // No part at all: bytes that never reach a boundary.
      ['multipart/form-data; boundary=zzz', 'garbage'],
      // No boundary to split the body by.
      ['multipart/form-data', payload],
      // A well-formed start cut off inside the file's part.
      [headers['content-type']!, payload.subarray(0, payload.length - 40)],
      // A boundary longer than any parser takes (RFC 2046: at most 70 characters).
      [`multipart/form-data; boundary=${'b'.repeat(300)}`, payload],
    ];
    for (const [contentType, body] of cases) {
      const res = await send(url, contentType, body);
      expect(res.statusCode, `${contentType}: ${res.body}`).toBe(400);
      expect(res.json().error.code).toBe('invalid_request');
      expect(res.json().error.message).toMatch(/multipart/i);
    }
    expect(h.simulator.received).toHaveLength(0);
    expect(uploadsOf(h)).toEqual([]);
  });
});
