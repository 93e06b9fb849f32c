/**
 * Body limits per route: 1 MiB for the JSON routes that take a prompt and a few fields (refused by
 * their Content-Length before the body is read), and for a JSON edit (and a generate, whose style
 * reference images may come as data URLs) room for the most images a model takes at
 * MAX_UPLOAD_BYTES each in base64, never more than MAX_REQUEST_BYTES.
 */
import { connect } from 'node:net';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateBodyLimit, jsonEditBodyLimit } from '../src/routes/image-routes.js';
import { CLIENT_KEY, startHarness, startListening, type Harness, type ListeningHarness } from './harness.js';

const MIB = 1024 * 1024;

/** A PNG of random pixels: it does not compress, so its size is about width × height × 3. */
function noisyPng(width: number, height: number): Promise<Buffer> {
  const raw = Buffer.alloc(width * height * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 7919 + ((i * i) % 251)) & 255;
  return sharp(raw, { raw: { width, height, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
}

const dataUrl = (png: Buffer) => `data:image/png;base64,${png.toString('base64')}`;

/**
 * Sends the headers of a POST declaring `declaredLength` bytes and only `sent` of them, and reads
 * what the gateway answers before the rest would have come: a status line and a body.
 */
function postPartly(base: string, path: string, declaredLength: number, sent: string): Promise<{ status: number; body: string }> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let answer = '';
    socket.on('data', (chunk) => (answer += chunk.toString('latin1')));
    socket.on('error', reject);
    // The gateway closes the connection after its answer: the rest of the body is never read.
    socket.on('close', () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1]);
      resolve({ status, body: answer.slice(answer.indexOf('\r\n\r\n') + 4) });
    });
    socket.write(
      `POST ${path} HTTP/1.1\r\nHost: ${hostname}\r\nAuthorization: Bearer ${CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: ${declaredLength}\r\n\r\n${sent}`,
    );
  });
}

describe('the JSON routes that take a prompt and a few fields', () => {
  let h: ListeningHarness;
  beforeAll(async () => {
    h = await startListening();
  });
  afterAll(async () => h.close());

  it('/v1/images/generations refuses a body declared over 1 MiB with 413 before reading it', async () => {
    const { status, body } = await postPartly(h.base, '/v1/images/generations', 2 * MIB, '{"model":"gpt-image-1","prompt":"');
    expect(status).toBe(413);
    expect(body).toMatch(/size limit of 1048576 bytes \(1 MiB\)/);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('/v1/generate refuses a body declared over its limit (room for the style reference images a model takes) with 413 before reading it', async () => {
    const limit = generateBodyLimit(h.app)!;
    // ideogram-v3 takes 10 style reference images: room for them as data URLs, within MAX_REQUEST_BYTES.
    expect(limit).toBe(h.config.MAX_REQUEST_BYTES);
    const { status, body } = await postPartly(h.base, '/v1/generate', limit + 1, '{"model":"gpt-image-1","prompt":"');
    expect(status).toBe(413);
    expect(body).toContain(`size limit of ${limit} bytes`);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('/v1/images/generations refuses a body over 1 MiB with 413 in OpenAI’s shape, naming the limit', async () => {
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/images/generations',
      headers: { ...h.auth, 'content-type': 'application/json' },
      payload: JSON.stringify({ model: 'gpt-image-1', prompt: 'x'.repeat(MIB + 10) }),
    });
    expect(res.statusCode).toBe(413);
    expect(res.headers.connection).toBe('close');
    expect(res.json().error).toMatchObject({ code: 'payload_too_large', type: 'invalid_request_error' });
    expect(res.json().error.message).toMatch(/1048576 bytes/);
  });

  it('/v1/images/generations still takes a body under 1 MiB', async () => {
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/images/generations',
      headers: { ...h.auth, 'content-type': 'application/json' },
      payload: JSON.stringify({ model: 'gpt-image-1', prompt: 'a deer' }),
    });
    expect(res.statusCode, res.body).toBe(200);
  });
});

describe('JSON edits, sized from MAX_UPLOAD_BYTES and the most images a model takes', () => {
  let h: Harness;
  let image: Buffer;
  beforeAll(async () => {
    h = await startHarness({ MAX_UPLOAD_BYTES: String(16 * 1024), RATE_LIMIT_RPM: '1000' });
    image = await noisyPng(60, 60);
  });
  afterAll(async () => h.close());

  const edit = (payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url: '/v1/edit', headers: h.auth, payload });

  it('the test image is under MAX_UPLOAD_BYTES, and ten of them over 4 × its base64', () => {
    expect(image.length).toBeLessThan(16 * 1024);
    expect(10 * dataUrl(image).length).toBeGreaterThan(4 * Math.ceil(16 * 1024 * 1.4));
  });

  it('takes ten images each under MAX_UPLOAD_BYTES in one JSON edit (a model taking 16)', async () => {
    const res = await edit({ model: 'gpt-image-1', prompt: 'make it blue', image: Array(10).fill(dataUrl(image)) });
    expect(res.statusCode, res.body).toBe(200);
    const sent = h.simulator.received.filter((r) => r.path === '/v1/images/edits');
    expect(sent.at(-1)?.files?.filter((f) => f.field !== 'mask')).toHaveLength(10);
  });

  it('refuses a JSON edit over its limit with 413 naming the limit', async () => {
    const limit = jsonEditBodyLimit(h.app);
    expect(limit).toBeLessThan(64 * MIB);
    const res = await edit({ model: 'gpt-image-1', prompt: 'x'.repeat(limit), image: dataUrl(image) });
    expect(res.statusCode).toBe(413);
    expect(res.json().error.code).toBe('payload_too_large');
    expect(res.json().error.message).toContain(`size limit of ${limit} bytes`);
  });
});

describe('JSON edits within MAX_REQUEST_BYTES', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ MAX_UPLOAD_BYTES: String(64 * 1024), MAX_REQUEST_BYTES: String(128 * 1024) });
  });
  afterAll(async () => h.close());

  it('caps the JSON edit limit at MAX_REQUEST_BYTES', async () => {
    expect(jsonEditBodyLimit(h.app)).toBe(128 * 1024);
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/edit',
      headers: h.auth,
      payload: { model: 'gpt-image-1', prompt: 'x'.repeat(130 * 1024), image: 'data:image/png;base64,AAAA' },
    });
    expect(res.statusCode).toBe(413);
    expect(res.json().error.message).toContain('size limit of 131072 bytes');
  });

  it('refuses to start with MAX_REQUEST_BYTES under MAX_UPLOAD_BYTES, naming both', async () => {
    await expect(startHarness({ MAX_UPLOAD_BYTES: String(64 * 1024), MAX_REQUEST_BYTES: String(1024) })).rejects.toThrow(/MAX_REQUEST_BYTES.*MAX_UPLOAD_BYTES/);
  });
});
