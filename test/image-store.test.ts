import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { jobWhenFinished, startHarness, type Harness } from './harness.js';

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

interface Generated {
  url: string;
  name: string;
  sha256: string;
  bytes: number;
  width: number;
  height: number;
  expires_at: string;
}

async function generate(h: Harness, body: Record<string, unknown>): Promise<Generated> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: body });
  expect(res.statusCode, res.body).toBe(200);
  const image = res.json().images[0];
  const url = new URL(image.url);
  return { ...image, url: url.pathname + url.search, name: url.pathname.split('/').pop()! };
}

function withQuery(path: string, change: (q: URLSearchParams) => void): string {
  const url = new URL(path, 'http://gw');
  change(url.searchParams);
  return url.pathname + url.search;
}

const fileOf = (h: Harness, image: Generated) => join(h.dataDir, 'images', image.sha256.slice(0, 2), image.name.replace(/^img_/, ''));

describe('an image kept from a short-lived upstream URL', () => {
  let h: Harness;
  let ahead = 0;
  beforeAll(async () => {
    // The simulator's clock runs ahead by hand: its URLs expire without the test waiting for them.
    h = await startHarness({}, { urlTtlMs: 10_000, now: () => Date.now() + ahead });
  });
  afterAll(async () => h.close());

  it('is still served from its gateway URL after the upstream URL has expired', async () => {
    const image = await generate(h, { model: 'FLUX-1.1-pro', prompt: 'a lighthouse at dusk' });
    // Past the upstream URL's 10 s: the simulator answers 404 for it now.
    ahead += 60_000;
    const res = await h.app.inject({ method: 'GET', url: image.url });
    expect(res.statusCode).toBe(200);
    expect(sha256(res.rawPayload)).toBe(image.sha256);
  });
});

// The simulator's images are ~180 bytes: kept in their rows by default, in the store with 0.
for (const [placement, env] of [
  ['kept in its row', {}],
  ['kept in the image store', { IMAGE_INLINE_MAX_BYTES: '0' }],
] as const) {
  describe(`serving GET /v1/images/{name}, an image ${placement}`, () => {
    let h: Harness;
    let image: Generated;
    beforeAll(async () => {
      h = await startHarness(env);
      image = await generate(h, { model: 'gpt-image-1', prompt: 'a red kite' });
    });
    afterAll(async () => h.close());

    it('serves the image with its type, length, ETag and a private cache lifetime up to its expiry', async () => {
      const res = await h.app.inject({ method: 'GET', url: image.url });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toBe('image/png');
      expect(Number(res.headers['content-length'])).toBe(image.bytes);
      expect(res.headers.etag).toBe(`"${image.sha256}"`);
      const maxAge = Number(/max-age=(\d+)/.exec(String(res.headers['cache-control']))?.[1]);
      expect(res.headers['cache-control']).toMatch(/^private, /);
      expect(maxAge).toBeGreaterThan(0);
      // The gateway counts whole seconds (the URL's exp against the current second): up to 1 s more
      // than the milliseconds left.
      expect(maxAge).toBeLessThanOrEqual(Math.ceil((Date.parse(image.expires_at) - Date.now()) / 1000) + 1);
      expect(sha256(res.rawPayload)).toBe(image.sha256);
    });

    it('refuses a tampered signature with 403', async () => {
      const url = withQuery(image.url, (q) => q.set('sig', `${q.get('sig')!.slice(0, -2)}AA`));
      const res = await h.app.inject({ method: 'GET', url });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe('forbidden');
    });

    it('refuses a tampered expiry with 403', async () => {
      const url = withQuery(image.url, (q) => q.set('exp', String(Number(q.get('exp')) + 86_400)));
      const res = await h.app.inject({ method: 'GET', url });
      expect(res.statusCode).toBe(403);
    });

    it('refuses a URL without a signature with 403', async () => {
      const res = await h.app.inject({ method: 'GET', url: `/v1/images/${image.name}` });
      expect(res.statusCode).toBe(403);
    });

    it('answers an expired but correctly signed URL with 404', async () => {
      const exp = Math.floor(Date.now() / 1000) - 60;
      const res = await h.app.inject({ method: 'GET', url: `/v1/images/${image.name}?exp=${exp}&sig=${h.app.signer.sign(image.name, exp)}` });
      expect(res.statusCode).toBe(404);
      expect(res.json().error.message).toMatch(/expired/);
    });

    it('answers a signed URL of an image it never stored with 404', async () => {
      const name = `img_${'ab'.repeat(32)}.png`;
      const exp = Math.floor(Date.now() / 1000) + 600;
      const res = await h.app.inject({ method: 'GET', url: `/v1/images/${name}?exp=${exp}&sig=${h.app.signer.sign(name, exp)}` });
      expect(res.statusCode).toBe(404);
    });

    it('answers a byte range with 206, Content-Range and exactly those bytes', async () => {
      const whole = (await h.app.inject({ method: 'GET', url: image.url })).rawPayload;
      const res = await h.app.inject({ method: 'GET', url: image.url, headers: { range: 'bytes=10-29' } });
      expect(res.statusCode).toBe(206);
      expect(res.headers['content-range']).toBe(`bytes 10-29/${image.bytes}`);
      expect(Number(res.headers['content-length'])).toBe(20);
      expect(res.rawPayload.equals(whole.subarray(10, 30))).toBe(true);
    });

    it('answers a suffix range with the last bytes', async () => {
      const whole = (await h.app.inject({ method: 'GET', url: image.url })).rawPayload;
      const res = await h.app.inject({ method: 'GET', url: image.url, headers: { range: 'bytes=-12' } });
      expect(res.statusCode).toBe(206);
      expect(res.headers['content-range']).toBe(`bytes ${image.bytes - 12}-${image.bytes - 1}/${image.bytes}`);
      expect(res.rawPayload.equals(whole.subarray(-12))).toBe(true);
    });

    it('answers a range past the end with 416 and the size in Content-Range', async () => {
      const res = await h.app.inject({ method: 'GET', url: image.url, headers: { range: `bytes=${image.bytes}-` } });
      expect(res.statusCode).toBe(416);
      expect(res.headers['content-range']).toBe(`bytes */${image.bytes}`);
      // No body, nothing a cache should keep as the image.
      expect(res.headers['cache-control']).toBe('no-store');
      expect(res.headers.etag).toBeUndefined();
    });

    it('answers a matching If-None-Match with 304 and no body', async () => {
      const res = await h.app.inject({ method: 'GET', url: image.url, headers: { 'if-none-match': `"${image.sha256}"` } });
      expect(res.statusCode).toBe(304);
      expect(res.rawPayload.length).toBe(0);
    });

    it('answers a different If-None-Match with the image', async () => {
      const res = await h.app.inject({ method: 'GET', url: image.url, headers: { 'if-none-match': `"${'0'.repeat(64)}"` } });
      expect(res.statusCode).toBe(200);
    });

    it('adds Content-Disposition: attachment for ?download=1', async () => {
      const res = await h.app.inject({ method: 'GET', url: `${image.url}&download=1` });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-disposition']).toBe(`attachment; filename="${image.name}"`);
    });

    it('sends no Content-Disposition without ?download=1', async () => {
      const res = await h.app.inject({ method: 'GET', url: image.url });
      expect(res.headers['content-disposition']).toBeUndefined();
    });

    it('refuses a download other than 1 with 400 naming it and what is allowed, after the signature and before the image is read', async () => {
      const findFor = vi.spyOn(h.app.images, 'findFor');
      try {
        for (const value of ['2', '0', 'true', 'yes', '', '1&download=1']) {
          const res = await h.app.inject({ method: 'GET', url: `${image.url}&download=${value}` });
          expect(res.statusCode, value).toBe(400);
          expect(res.headers['content-disposition'], value).toBeUndefined();
          expect(res.json().error, value).toMatchObject({
            code: 'invalid_request',
            message: 'download: must be 1 (save the image as a file), or left out',
            details: [{ field: 'download', allowed: ['1'] }],
          });
          // The same value on a thumbnail.
          expect((await h.app.inject({ method: 'GET', url: `${image.url}&w=32&format=webp&download=${value}` })).statusCode, value).toBe(400);
        }
        expect(findFor).not.toHaveBeenCalled();
        // A URL whose signature fails is told only that.
        const forged = image.url.replace(/sig=[^&]+/, 'sig=AAAA');
        expect((await h.app.inject({ method: 'GET', url: `${forged}&download=2` })).statusCode).toBe(403);
      } finally {
        findFor.mockRestore();
      }
      const thumbnail = await h.app.inject({ method: 'GET', url: `${image.url}&w=32&format=webp&download=1` });
      expect(thumbnail.statusCode).toBe(200);
      expect(thumbnail.headers['content-disposition']).toBe(`attachment; filename="${image.name.replace(/\.\w+$/, '')}-w32.webp"`);
    });

    it('records the image in the database with its size, dimensions and owner', async () => {
      const row = await h.app.db.get<Record<string, unknown>>('SELECT * FROM images WHERE name = $1', [image.name]);
      expect(row).toMatchObject({ sha256: image.sha256, mime_type: 'image/png', team: 'design', key_id: 'design' });
      expect(Number(row!.bytes)).toBe(image.bytes);
      expect([Number(row!.width), Number(row!.height)]).toEqual([image.width, image.height]);
      expect(Number(row!.expires_at)).toBe(Date.parse(image.expires_at) / 1000);
    });

    it('stores a downloaded (URL) upstream result the same way as a base64 one', async () => {
      const fromUrl = await generate(h, { model: 'FLUX-1.1-pro', prompt: 'a blue boat' });
      expect(existsSync(fileOf(h, fromUrl))).toBe(placement === 'kept in the image store');
      const res = await h.app.inject({ method: 'GET', url: fromUrl.url });
      expect(sha256(res.rawPayload)).toBe(fromUrl.sha256);
      expect(res.rawPayload.length).toBe(fromUrl.bytes);
    });

    it('returns b64_json for a downloaded result when asked', async () => {
      const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'FLUX-1.1-pro', prompt: 'a green field', response_format: 'b64_json' } });
      const image = res.json().images[0];
      expect(sha256(Buffer.from(image.b64_json, 'base64'))).toBe(image.sha256);
    });

    it('leaves no staged temp files behind', () => {
      // Warm staging files kept ready for the next image are not left behind: they are held.
      expect(readdirSync(join(h.dataDir, 'images', '.staging')).filter((name) => !h.app.images.stagingFiles.holds(name))).toEqual([]);
    });
  });
}

describe('the same image made twice', () => {
  let h: Harness;
  beforeAll(async () => {
    // In the store (the simulator's images are ~180 bytes), to see the one file.
    h = await startHarness({ IMAGE_INLINE_MAX_BYTES: '0' });
  });
  afterAll(async () => h.close());
  afterEach(() => {
    vi.useRealTimers();
  });

  it('is stored once, with the later expiry', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const first = await generate(h, { model: 'gpt-image-1', prompt: 'twin peaks' });
    vi.setSystemTime(Date.now() + 90_000);
    const second = await generate(h, { model: 'gpt-image-1', prompt: 'twin peaks' });
    expect(second.sha256).toBe(first.sha256);
    expect(Date.parse(second.expires_at)).toBeGreaterThan(Date.parse(first.expires_at));
    const rows = await h.app.db.all<{ expires_at: number }>('SELECT expires_at FROM images WHERE sha256 = $1', [first.sha256]);
    expect(rows.map((r) => Number(r.expires_at))).toEqual([Date.parse(second.expires_at) / 1000]);
    expect(readdirSync(join(h.dataDir, 'images', first.sha256.slice(0, 2)))).toEqual([first.name.replace(/^img_/, '')]);
  });
});

describe('a small image kept in its row (IMAGE_INLINE_MAX_BYTES)', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ IMAGE_INLINE_MAX_BYTES: '1000' });
  });
  afterAll(async () => h.close());

  it('is written to no file, and served from the row', async () => {
    const image = await generate(h, { model: 'gpt-image-1', prompt: 'a tiny icon' });
    expect(image.bytes).toBeLessThanOrEqual(1000);
    expect(existsSync(fileOf(h, image))).toBe(false);
    const row = await h.app.db.get<{ inline_bytes: Uint8Array | null }>('SELECT inline_bytes FROM images WHERE name = $1', [image.name]);
    expect(sha256(Buffer.from(row!.inline_bytes!))).toBe(image.sha256);
    const res = await h.app.inject({ method: 'GET', url: image.url });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-length']).toBe(String(image.bytes));
    expect(sha256(res.rawPayload)).toBe(image.sha256);
  });

  it('goes to the store when it is larger than the limit', async () => {
    const large = await startHarness({ IMAGE_INLINE_MAX_BYTES: '50' });
    try {
      const image = await generate(large, { model: 'gpt-image-1', prompt: 'a tiny icon' });
      expect(image.bytes).toBeGreaterThan(50);
      expect(existsSync(fileOf(large, image))).toBe(true);
      const row = await large.app.db.get<{ inline_bytes: Uint8Array | null }>('SELECT inline_bytes FROM images WHERE name = $1', [image.name]);
      expect(row!.inline_bytes).toBeNull();
    } finally {
      await large.close();
    }
  });

  it("is read back from the row into an async job's b64_json", async () => {
    const accepted = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: h.auth,
      payload: { model: 'gpt-image-1', prompt: 'an async icon', async: true, response_format: 'b64_json' },
    });
    expect(accepted.statusCode).toBe(202);
    const job = await jobWhenFinished(h, accepted.json().id);
    expect(job.status).toBe('succeeded');
    const image = job.result.images[0];
    expect(existsSync(fileOf(h, { ...image, name: new URL(image.url).pathname.split('/').pop()! }))).toBe(false);
    expect(sha256(Buffer.from(image.b64_json, 'base64'))).toBe(image.sha256);
  });

  it('is gone with its row when retention removes it', async () => {
    const image = await generate(h, { model: 'gpt-image-1', prompt: 'a short-lived icon' });
    await h.app.db.run('UPDATE images SET expires_at = $1 WHERE name = $2', [Math.floor(Date.now() / 1000) - 1, image.name]);
    const removed = await h.app.retention.sweepNow();
    expect(removed.images).toBeGreaterThanOrEqual(1);
    expect(await h.app.db.get('SELECT name FROM images WHERE name = $1', [image.name])).toBeUndefined();
    // A signed URL that has not expired yet, for an image that is gone.
    expect((await h.app.inject({ method: 'GET', url: image.url })).statusCode).toBe(404);
  });
});
