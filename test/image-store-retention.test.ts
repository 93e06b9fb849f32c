import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { pngForPrompt } from '../src/simulator/png.js';
import { startHarness, type Harness } from './harness.js';

const DAY_MS = 86_400_000;

interface Generated {
  url: string;
  name: string;
  sha256: string;
}

async function generate(h: Harness, prompt: string): Promise<Generated> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt } });
  expect(res.statusCode, res.body).toBe(200);
  const url = new URL(res.json().images[0].url);
  return { url: url.pathname + url.search, name: url.pathname.split('/').pop()!, sha256: res.json().images[0].sha256 };
}

const fileOf = (h: Harness, image: Generated) => join(h.dataDir, 'images', image.sha256.slice(0, 2), image.name.replace(/^img_/, ''));
const rowOf = (h: Harness, image: Generated) => h.app.db.get('SELECT name FROM images WHERE name = $1', [image.name]);

afterEach(() => {
  vi.useRealTimers();
});

// The simulator's images are ~180 bytes: kept in the store, not in their rows, to test the files.
const IN_THE_STORE = { IMAGE_INLINE_MAX_BYTES: '0' };

describe('retention by IMAGE_RETENTION_DAYS', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ IMAGE_RETENTION_DAYS: '7', ...IN_THE_STORE });
  });
  afterAll(async () => h.close());

  it('removes expired images (row and file) and keeps the others', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const old = await generate(h, 'retention: an old image');
    vi.setSystemTime(Date.now() + 4 * DAY_MS);
    const young = await generate(h, 'retention: a young image');
    vi.setSystemTime(Date.now() + 4 * DAY_MS);

    const removed = await h.app.retention.sweepNow();

    expect(removed.images).toBe(1);
    expect(await rowOf(h, old)).toBeUndefined();
    expect(existsSync(fileOf(h, old))).toBe(false);
    expect(await rowOf(h, young)).toBeDefined();
    expect(existsSync(fileOf(h, young))).toBe(true);
  });

  it('answers a swept image URL that has not yet expired itself with 404', async () => {
    const image = await generate(h, 'retention: swept early');
    // As if it had been made long ago: only the row says it has expired, not the URL.
    await h.app.db.run('UPDATE images SET expires_at = $1 WHERE name = $2', [Math.floor(Date.now() / 1000) - 1, image.name]);
    await h.app.retention.sweepNow();
    const res = await h.app.inject({ method: 'GET', url: image.url });
    expect(res.statusCode).toBe(404);
  });

  it('answers an image whose row has expired with 404 even before a sweep', async () => {
    const image = await generate(h, 'retention: expired row, not yet swept');
    await h.app.db.run('UPDATE images SET expires_at = $1 WHERE name = $2', [Math.floor(Date.now() / 1000) - 1, image.name]);
    const res = await h.app.inject({ method: 'GET', url: image.url });
    expect(res.statusCode).toBe(404);
    expect(existsSync(fileOf(h, image))).toBe(true);
  });

  it('logs how many images and bytes a sweep removed', async () => {
    await h.app.retention.sweepNow(); // whatever earlier tests left expired
    const image = await generate(h, 'retention: logged');
    await h.app.db.run('UPDATE images SET expires_at = $1 WHERE name = $2', [Math.floor(Date.now() / 1000) - 1, image.name]);
    const removed = await h.app.retention.sweepNow();
    const line = h.logs.map((l) => JSON.parse(l)).findLast((l) => l.msg === 'image retention sweep removed images');
    expect(line).toMatchObject({ images_removed: removed.images, bytes_removed: removed.bytes });
    expect(removed.bytes).toBe(pngForPrompt('retention: logged').length);
  });

  it('lets a download already under way finish when its image is swept', async () => {
    const image = await generate(h, 'retention: streaming while swept');
    const stream = await h.app.images.open((await h.app.images.find(image.name))!);
    await h.app.db.run('UPDATE images SET expires_at = $1 WHERE name = $2', [Math.floor(Date.now() / 1000) - 1, image.name]);
    await h.app.retention.sweepNow();
    expect(existsSync(fileOf(h, image))).toBe(false);
    const chunks: Buffer[] = [];
    for await (const chunk of stream!) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).equals(pngForPrompt('retention: streaming while swept'))).toBe(true);
  });
});

describe('the retention timer', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ RETENTION_SWEEP_INTERVAL_MS: '50', ...IN_THE_STORE });
  });
  afterAll(async () => h.close());

  it('sweeps on its own every RETENTION_SWEEP_INTERVAL_MS', async () => {
    const image = await generate(h, 'retention: swept by the timer');
    await h.app.db.run('UPDATE images SET expires_at = $1 WHERE name = $2', [Math.floor(Date.now() / 1000) - 1, image.name]);
    for (let i = 0; i < 100 && existsSync(fileOf(h, image)); i++) await sleep(20);
    expect(existsSync(fileOf(h, image))).toBe(false);
    expect(await rowOf(h, image)).toBeUndefined();
  });
});

describe('IMAGE_STORE_MAX_BYTES', () => {
  const prompts = ['cap: first', 'cap: second', 'cap: third'];
  const sizes = prompts.map((p) => pngForPrompt(p).length);
  let h: Harness;
  beforeAll(async () => {
    // Room for the two newest images, not for all three.
    h = await startHarness({ IMAGE_STORE_MAX_BYTES: String(sizes[1]! + sizes[2]!), ...IN_THE_STORE });
  });
  afterAll(async () => h.close());

  it('removes the oldest images first until the rest fit', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const images: Generated[] = [];
    for (const prompt of prompts) {
      images.push(await generate(h, prompt));
      vi.setSystemTime(Date.now() + 1000);
    }
    const removed = await h.app.retention.sweepNow();
    expect(removed).toEqual({ images: 1, bytes: sizes[0] });
    expect(existsSync(fileOf(h, images[0]!))).toBe(false);
    expect(await rowOf(h, images[0]!)).toBeUndefined();
    expect(images.slice(1).map((i) => existsSync(fileOf(h, i)))).toEqual([true, true]);
  });

  it('counts what it removed in the images_swept metrics', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/metrics' });
    expect(res.body).toMatch(/^gateway_images_swept_total 1$/m);
    expect(res.body).toContain(`gateway_image_bytes_swept_total ${sizes[0]}`);
  });
});
