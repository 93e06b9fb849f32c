/**
 * JPEG and WebP results, stored and served end to end: the simulator only makes PNGs, so a fake
 * upstream here answers in the format the prompt names, as base64 (gpt-image-1) or as a result URL
 * to download (FLUX-1.1-pro). The bytes served back from the gateway URL are upstream's, with
 * their content type, whether the image is kept in its row or in the image store.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Harness } from './harness.js';

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

type Format = 'jpeg' | 'webp';
const MIME: Record<Format, string> = { jpeg: 'image/jpeg', webp: 'image/webp' };
const EXTENSION: Record<Format, string> = { jpeg: 'jpg', webp: 'webp' };

/** Noise, so each image is distinct and not trivially small; 48x40 so width and height differ. */
async function makeImage(format: Format, seed: number): Promise<Buffer> {
  const raw = Buffer.alloc(48 * 40 * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = ((i + seed) * 2654435761) >>> 24;
  const image = sharp(raw, { raw: { width: 48, height: 40, channels: 3 } });
  return format === 'jpeg' ? image.jpeg({ quality: 90 }).toBuffer() : image.webp({ quality: 90 }).toBuffer();
}

let upstream: Server;
let base = '';
/** The images upstream made, by the prompt that asked for them. */
const made = new Map<string, Buffer>();
const files = new Map<string, Buffer>();

beforeAll(async () => {
  upstream = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      if (req.method === 'GET' && req.url?.startsWith('/files/')) {
        const file = files.get(req.url.slice('/files/'.length));
        if (!file) return res.writeHead(404).end();
        // Served as application/octet-stream: the gateway must tell the type from the bytes.
        return res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': file.length }).end(file);
      }
      const body = JSON.parse(Buffer.concat(chunks).toString() || '{}');
      const prompt: string = body.input?.prompt ?? body.prompt ?? '';
      const format: Format = prompt.includes('webp') ? 'webp' : 'jpeg';
      const image = await makeImage(format, made.size + 1);
      made.set(prompt, image);
      let reply: unknown;
      if (req.url?.includes('/opanai/') || req.url?.includes('/openai/')) {
        reply = { output: { b64_json: [{ bytesBase64: image.toString('base64'), mimeType: format }] }, usage: { input_tokens: 10, output_tokens: 100, total_tokens: 110 } };
      } else {
        const name = `${made.size}.${EXTENSION[format]}`;
        files.set(name, image);
        reply = { output: [{ url: `${base}/files/${name}` }] };
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(reply));
    });
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
});
afterAll(async () => new Promise((resolve) => upstream.close(resolve)));

for (const [placement, env] of [
  ['kept in its row', {}],
  ['kept in the image store', { IMAGE_INLINE_MAX_BYTES: '0' }],
] as const) {
  describe(`JPEG and WebP results ${placement}`, () => {
    let h: Harness;
    beforeAll(async () => {
      h = await startHarness({ ...env, AIHUBMIX_BASE_URL: base });
    });
    afterAll(async () => h.close());

    for (const format of ['jpeg', 'webp'] as const) {
      for (const [model, via] of [
        ['gpt-image-1', 'a base64 reply'],
        ['FLUX-1.1-pro', 'a downloaded result'],
      ] as const) {
        it(`stores and serves a ${format.toUpperCase()} from ${via} with its bytes and content type`, async () => {
          const prompt = `${format} ${model} ${placement}`;
          const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model, prompt, response_format: 'b64_json' } });
          expect(res.statusCode, res.body).toBe(200);
          const upstreamBytes = made.get(prompt)!;
          const [image] = res.json().images;
          expect(image).toMatchObject({ mime_type: MIME[format], bytes: upstreamBytes.length, width: 48, height: 40, sha256: sha256(upstreamBytes) });
          expect(Buffer.from(image.b64_json, 'base64').equals(upstreamBytes)).toBe(true);

          const url = new URL(image.url);
          expect(url.pathname).toBe(`/v1/images/img_${image.sha256}.${EXTENSION[format]}`);
          const served = await h.app.inject({ method: 'GET', url: url.pathname + url.search });
          expect(served.statusCode).toBe(200);
          expect(served.headers['content-type']).toBe(MIME[format]);
          expect(served.rawPayload.equals(upstreamBytes)).toBe(true);

          const file = join(h.dataDir, 'images', image.sha256.slice(0, 2), `${image.sha256}.${EXTENSION[format]}`);
          expect(existsSync(file)).toBe(placement === 'kept in the image store');
        });
      }
    }
  });
}
