import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { ADMIN_KEY, CLIENT_KEY, OTHER_CLIENT_KEY, jobWhenFinished, makeHalfTransparentMask, makePng, multipartBody, startHarness, type Harness } from './harness.js';
import { freshPostgres, postgresProblem } from './services.js';

const design = { authorization: `Bearer ${CLIENT_KEY}` };
const ads = { authorization: `Bearer ${OTHER_CLIENT_KEY}` };
const admin = { authorization: `Bearer ${ADMIN_KEY}` };

interface Made {
  url: string;
  name: string;
  sha256: string;
  cost: number | null;
}

async function generate(h: Harness, auth: Record<string, string>, body: Record<string, unknown>): Promise<Made> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: body });
  expect(res.statusCode, res.body).toBe(200);
  const image = res.json().images[0];
  const url = new URL(image.url);
  return { url: url.pathname + url.search, name: url.pathname.split('/').pop()!, sha256: image.sha256, cost: res.json().usage.estimated_cost_usd };
}

async function list(h: Harness, auth: Record<string, string>, query = ''): Promise<{ data: any[]; next_cursor: string | null }> {
  const res = await h.app.inject({ method: 'GET', url: `/v1/images${query}`, headers: auth });
  expect(res.statusCode, res.body).toBe(200);
  return res.json();
}

const pathOf = (url: string) => {
  const u = new URL(url);
  return u.pathname + u.search;
};

const fileOf = (h: Harness, sha256: string) => join(h.dataDir, 'images', sha256.slice(0, 2), `${sha256}.png`);
const thumbnailFileOf = (h: Harness, sha256: string, width: number) => join(h.dataDir, 'images', 'thumbs', sha256.slice(0, 2), `${sha256}-w${width}.webp`);

function gallerySuite(label: string, database: () => Promise<{ env: Record<string, string>; drop(): Promise<void> }>) {
  describe(label, () => {
    let h: Harness;
    let drop: () => Promise<void>;
    let unique = 0;
    // Prompts of this file only: each test makes its own images.
    const prompt = (text: string) => `${text} #${unique++}`;

    beforeAll(async () => {
      const db = await database();
      drop = db.drop;
      // In the file store (the simulator's images would otherwise live in their rows), so files can be seen going.
      h = await startHarness({ ...db.env, IMAGE_INLINE_MAX_BYTES: '0' });
    });
    afterAll(async () => {
      await h?.close();
      await drop?.();
    });
    afterEach(() => {
      vi.useRealTimers();
      vi.restoreAllMocks();
    });

    it('lists a team its own images only, with what was asked; the admin sees every team and filters by team', async () => {
      const fox = prompt('a red fox');
      const whale = prompt('a blue whale');
      const mine = await generate(h, design, { model: 'FLUX-1.1-pro', prompt: fox, size: '1024x768', seed: 7, options: { safety_tolerance: 2 } });
      const theirs = await generate(h, ads, { model: 'gpt-image-1', prompt: whale });

      const designs = (await list(h, design)).data;
      expect(designs.map((i) => i.prompt)).toContain(fox);
      expect(designs.map((i) => i.prompt)).not.toContain(whale);
      expect(designs.every((i) => i.team === 'design')).toBe(true);
      const row = designs.find((i) => i.prompt === fox);
      expect(row).toMatchObject({
        id: mine.name,
        mime_type: 'image/png',
        width: 64,
        height: 64,
        sha256: mine.sha256,
        model: 'FLUX-1.1-pro',
        operation: 'generate',
        team: 'design',
        parameters: { size: '1024x768', seed: 7, options: { safety_tolerance: 2 } },
        seed: 7,
      });
      expect(row.parameters).not.toHaveProperty('prompt');
      // FLUX 1.1 has no price in the catalogue.
      expect(row.cost_usd).toBeNull();
      expect(typeof row.key_id).toBe('string');
      expect(Date.parse(row.created_at)).toBeGreaterThan(0);
      expect(Date.parse(row.expires_at)).toBeGreaterThan(Date.now());
      // Its URLs work as given.
      const served = await h.app.inject({ method: 'GET', url: pathOf(row.url) });
      expect(served.statusCode).toBe(200);
      expect(served.headers['content-type']).toBe('image/png');
      expect(row.thumbnail_url).toBe(`${row.url}&w=256&format=webp`);

      expect((await list(h, ads)).data.map((i) => i.prompt)).toEqual(expect.arrayContaining([whale]));
      expect((await list(h, ads)).data.map((i) => i.prompt)).not.toContain(fox);

      const everyone = (await list(h, admin, '?limit=100')).data.map((i) => i.prompt);
      expect(everyone).toEqual(expect.arrayContaining([fox, whale]));
      const adsOnly = (await list(h, admin, '?team=ads&limit=100')).data;
      expect(adsOnly.map((i) => i.prompt)).toContain(whale);
      expect(adsOnly.every((i) => i.team === 'ads')).toBe(true);
      const whaleRow = adsOnly.find((i) => i.prompt === whale);
      expect(whaleRow.id).toBe(theirs.name);
      expect(theirs.cost).toBeGreaterThan(0);
      expect(whaleRow.cost_usd).toBeCloseTo(theirs.cost!, 10);

      // A team key may name only its own team.
      const other = await h.app.inject({ method: 'GET', url: '/v1/images?team=ads', headers: design });
      expect(other.statusCode).toBe(403);
      expect(other.json().error.message).toMatch(/^team:/);
      expect((await list(h, design, '?team=design')).data.length).toBe(designs.length);
    });

    it('gives two teams that made the same bytes an entry each; deleting one leaves the other', async () => {
      const same = prompt('the same picture');
      const a = await generate(h, design, { model: 'gpt-image-1', prompt: same, quality: 'low' });
      const b = await generate(h, ads, { model: 'gpt-image-1', prompt: same, quality: 'high' });
      expect(b.sha256).toBe(a.sha256);
      expect(b.url).not.toBe(a.url);
      const ofDesign = (await list(h, design, `?q=${encodeURIComponent(same)}`)).data;
      const ofAds = (await list(h, ads, `?q=${encodeURIComponent(same)}`)).data;
      expect(ofDesign.map((i) => [i.team, i.parameters.quality])).toEqual([['design', 'low']]);
      expect(ofAds.map((i) => [i.team, i.parameters.quality])).toEqual([['ads', 'high']]);

      // Another team's delete of it: 404, nothing removed.
      const thumbnail = `${a.url}&w=32&format=webp`;
      expect((await h.app.inject({ method: 'GET', url: thumbnail })).statusCode).toBe(200);
      expect(existsSync(thumbnailFileOf(h, a.sha256, 32))).toBe(true);

      expect((await h.app.inject({ method: 'DELETE', url: `/v1/images/${a.name}`, headers: design })).statusCode).toBe(204);
      expect((await h.app.inject({ method: 'GET', url: a.url })).statusCode).toBe(404);
      expect((await h.app.inject({ method: 'GET', url: thumbnail })).statusCode).toBe(404);
      expect((await list(h, design, `?q=${encodeURIComponent(same)}`)).data).toEqual([]);
      // The other team's copy lives on: its URL, its entry, the bytes.
      expect((await h.app.inject({ method: 'GET', url: b.url })).statusCode).toBe(200);
      expect((await list(h, ads, `?q=${encodeURIComponent(same)}`)).data).toHaveLength(1);
      expect(existsSync(fileOf(h, a.sha256))).toBe(true);
      // Deleted twice: no longer the team's.
      expect((await h.app.inject({ method: 'DELETE', url: `/v1/images/${a.name}`, headers: design })).statusCode).toBe(404);

      // The last owner's delete removes the bytes and the cached thumbnails.
      expect((await h.app.inject({ method: 'DELETE', url: `/v1/images/${b.name}`, headers: ads })).statusCode).toBe(204);
      expect((await h.app.inject({ method: 'GET', url: b.url })).statusCode).toBe(404);
      expect(existsSync(fileOf(h, a.sha256))).toBe(false);
      expect(existsSync(thumbnailFileOf(h, a.sha256, 32))).toBe(false);
    });

    it('deletes for the owner team or the admin; another team gets 404', async () => {
      const mine = await generate(h, design, { model: 'gpt-image-1', prompt: prompt('to be deleted') });
      const refused = await h.app.inject({ method: 'DELETE', url: `/v1/images/${mine.name}`, headers: ads });
      expect(refused.statusCode).toBe(404);
      expect((await h.app.inject({ method: 'GET', url: mine.url })).statusCode).toBe(200);
      expect((await h.app.inject({ method: 'DELETE', url: '/v1/images/not-an-image', headers: design })).statusCode).toBe(404);
      // Without a key: 401, the route is not the signed download.
      expect((await h.app.inject({ method: 'DELETE', url: `/v1/images/${mine.name}` })).statusCode).toBe(401);

      const byAdmin = await generate(h, ads, { model: 'gpt-image-1', prompt: prompt('the admin removes it') });
      expect((await h.app.inject({ method: 'DELETE', url: `/v1/images/${byAdmin.name}`, headers: admin })).statusCode).toBe(204);
      expect((await h.app.inject({ method: 'GET', url: byAdmin.url })).statusCode).toBe(404);
      expect((await list(h, ads, '?limit=100')).data.map((i) => i.id)).not.toContain(byAdmin.name);
      expect(existsSync(fileOf(h, byAdmin.sha256))).toBe(false);
    });

    it('filters by model, prompt text, key and time', async () => {
      vi.useFakeTimers({ toFake: ['Date'] });
      vi.setSystemTime(new Date('2031-03-01T12:00:00Z'));
      const tag = prompt('filter');
      await generate(h, design, { model: 'gpt-image-1', prompt: `${tag} Lighthouse 100%_done` });
      vi.setSystemTime(new Date('2031-03-02T12:00:00Z'));
      await generate(h, design, { model: 'FLUX-1.1-pro', prompt: `${tag} harbour` });
      const minted = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'design' } });
      expect(minted.statusCode, minted.body).toBe(201);
      const second = { authorization: `Bearer ${minted.json().key}` };
      vi.setSystemTime(new Date('2031-03-03T12:00:00Z'));
      await generate(h, second, { model: 'gpt-image-1', prompt: `${tag} lighthouse at night` });

      const q = (text: string) => `q=${encodeURIComponent(text)}`;
      const prompts = async (query: string) => (await list(h, design, `?${q(tag)}&${query}`)).data.map((i) => i.prompt.slice(tag.length + 1));
      expect(await prompts('')).toEqual(['lighthouse at night', 'harbour', 'Lighthouse 100%_done']);
      expect(await prompts('model=gpt-image-1')).toEqual(['lighthouse at night', 'Lighthouse 100%_done']);
      // An alias finds its model's images.
      expect(await prompts('model=bfl/FLUX-1.1-pro')).toEqual(['harbour']);
      // Any other name is taken as a model id images were kept under (a model no longer served has its own): here none.
      expect(await prompts('model=no-such-model')).toEqual([]);
      // Case-insensitive; LIKE's own characters are taken as written.
      expect((await list(h, design, `?${q(`${tag} LIGHTHOUSE`)}`)).data).toHaveLength(2);
      expect((await list(h, design, `?${q('100%_done')}`)).data.map((i) => i.prompt)).toEqual([`${tag} Lighthouse 100%_done`]);
      expect((await list(h, design, `?${q('1000')}`)).data).toEqual([]);
      expect(await prompts(`key=${minted.json().id}`)).toEqual(['lighthouse at night']);
      expect(await prompts('from=2031-03-02')).toEqual(['lighthouse at night', 'harbour']);
      expect(await prompts('to=2031-03-02')).toEqual(['Lighthouse 100%_done']);
      expect(await prompts('from=2031-03-02T00:00:00Z&to=2031-03-03T00:00:00Z')).toEqual(['harbour']);
      // The other team sees none of them, whatever it asks.
      expect((await list(h, ads, `?${q(tag)}`)).data).toEqual([]);
    });

    it('pages newest first with next_cursor', async () => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const tag = prompt('paged');
      const base = Date.parse('2032-01-01T00:00:00Z');
      // Two at the same millisecond: the cursor still tells them apart.
      const times = [base, base + 1000, base + 1000, base + 2000, base + 3000];
      for (const [i, t] of times.entries()) {
        vi.setSystemTime(t);
        await generate(h, design, { model: 'gpt-image-1', prompt: `${tag} ${i}` });
      }
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const page = await list(h, design, `?q=${encodeURIComponent(tag)}&limit=2${cursor ? `&cursor=${cursor}` : ''}`);
        expect(page.data.length).toBeLessThanOrEqual(2);
        seen.push(...page.data.map((i) => i.prompt.slice(tag.length + 1)));
        cursor = page.next_cursor;
        pages++;
      } while (cursor);
      expect(pages).toBe(3);
      expect(seen).toHaveLength(5);
      expect(seen.slice(0, 1)).toEqual(['4']);
      expect(seen.slice(1, 2)).toEqual(['3']);
      expect(new Set(seen.slice(2, 4))).toEqual(new Set(['1', '2']));
      expect(seen.slice(4)).toEqual(['0']);
    });

    it('retention removes an expired image with its owners and cached thumbnails', async () => {
      const image = await generate(h, design, { model: 'gpt-image-1', prompt: prompt('swept') });
      expect((await h.app.inject({ method: 'GET', url: `${image.url}&w=48&format=webp` })).statusCode).toBe(200);
      const past = Math.floor(Date.now() / 1000) - 1;
      await h.app.db.run('UPDATE images SET expires_at = $1 WHERE name = $2', [past, image.name]);
      await h.app.db.run('UPDATE image_owners SET expires_at = $1 WHERE name = $2', [past, image.name]);
      await h.app.retention.sweepNow();
      expect(existsSync(fileOf(h, image.sha256))).toBe(false);
      expect(existsSync(thumbnailFileOf(h, image.sha256, 48))).toBe(false);
      expect(await h.app.db.all('SELECT team FROM image_owners WHERE name = $1', [image.name])).toEqual([]);
    });

    it('refuses bad parameters with 400 naming them', async () => {
      for (const [query, field] of [
        ['limit=0', 'limit'],
        ['limit=101', 'limit'],
        ['limit=ten', 'limit'],
        ['cursor=nonsense', 'cursor'],
        ['from=yesterday', 'from'],
        ['to=2031-02-30', 'to'],
        ['from=2031-03-02&to=2031-03-01', 'to'],
        ['colour=red', 'colour'],
        [`q=${'x'.repeat(201)}`, 'q'],
      ] as const) {
        const res = await h.app.inject({ method: 'GET', url: `/v1/images?${query}`, headers: design });
        expect(res.statusCode, query).toBe(400);
        expect(res.json().error.details?.[0]?.field, query).toBe(field);
      }
    });

    it('serves thumbnails under the same signature, resized into WebP and cached in the store', async () => {
      const image = await generate(h, design, { model: 'gpt-image-1', prompt: prompt('a thumbnail') });
      const put = vi.spyOn(h.app.store, 'putThumbnail');
      const first = await h.app.inject({ method: 'GET', url: `${image.url}&w=32&format=webp` });
      expect(first.statusCode).toBe(200);
      expect(first.headers['content-type']).toBe('image/webp');
      expect(first.headers['cache-control']).toMatch(/^private, max-age=\d+, immutable$/);
      expect(first.headers.etag).toBe(`"${image.sha256}-w32"`);
      const meta = await sharp(first.rawPayload).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(['webp', 32, 32]);
      expect(existsSync(thumbnailFileOf(h, image.sha256, 32))).toBe(true);
      // The second request is served from the cache: nothing resized or written again.
      const second = await h.app.inject({ method: 'GET', url: `${image.url}&w=32&format=webp` });
      expect(second.statusCode).toBe(200);
      expect(second.rawPayload.equals(first.rawPayload)).toBe(true);
      expect(put).toHaveBeenCalledTimes(1);
      // Never enlarged: the 64-pixel image at w=256 stays 64 pixels.
      const big = await h.app.inject({ method: 'GET', url: `${image.url}&w=256&format=webp` });
      expect(await sharp(big.rawPayload).metadata()).toMatchObject({ format: 'webp', width: 64, height: 64 });
      // 304 on its etag.
      const again = await h.app.inject({ method: 'GET', url: `${image.url}&w=32&format=webp`, headers: { 'if-none-match': `"${image.sha256}-w32"` } });
      expect(again.statusCode).toBe(304);

      for (const [query, field] of [
        ['w=15&format=webp', 'w'],
        ['w=1025&format=webp', 'w'],
        ['w=abc', 'w'],
        ['w=64&format=png', 'format'],
        ['format=webp', 'w'],
      ] as const) {
        const res = await h.app.inject({ method: 'GET', url: `${image.url}&${query}` });
        expect(res.statusCode, query).toBe(400);
        expect(res.json().error.details?.[0]?.field, query).toBe(field);
      }
      // The signature rules are the image's: a bad signature is refused.
      const forged = image.url.replace(/sig=[^&]+/, 'sig=AAAA');
      expect((await h.app.inject({ method: 'GET', url: `${forged}&w=32&format=webp` })).statusCode).toBe(403);
      // Another team's tag on this URL breaks its signature.
      const retagged = image.url.replace(/o=[^&]+/, `o=${h.app.signer.ownerTagOf('ads')}`);
      expect((await h.app.inject({ method: 'GET', url: retagged })).statusCode).toBe(403);
    });

    it('keeps an edit as operation edit, its parameters without the images', async () => {
      const text = prompt('add a hat');
      const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: text, quality: 'medium' }, [
        { field: 'image', filename: 'a.png', bytes: await makePng() },
        { field: 'mask', filename: 'm.png', bytes: await makeHalfTransparentMask() },
      ]);
      const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...design, ...headers }, payload });
      expect(res.statusCode, res.body).toBe(200);
      const [row] = (await list(h, design, `?q=${encodeURIComponent(text)}`)).data;
      expect(row).toMatchObject({ operation: 'edit', prompt: text, parameters: { quality: 'medium' } });
      expect(Object.keys(row.parameters).sort()).toEqual(['quality']);
    });

    it('keeps the request of an asynchronous job too', async () => {
      const text = prompt('made by a job');
      const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: design, payload: { model: 'gpt-image-1', prompt: text, async: true, quality: 'low' } });
      expect(res.statusCode, res.body).toBe(202);
      expect((await jobWhenFinished(h, res.json().id, design)).status).toBe('succeeded');
      const [row] = (await list(h, design, `?q=${encodeURIComponent(text)}`)).data;
      expect(row).toMatchObject({ operation: 'generate', prompt: text, parameters: { quality: 'low' }, team: 'design' });
    });

    it('keeps no prompt in the usage records (LOG_PROMPTS unset)', async () => {
      const secret = prompt('a prompt for the gallery only');
      await generate(h, design, { model: 'gpt-image-1', prompt: secret });
      await h.app.inject({ method: 'GET', url: '/v1/usage', headers: design }); // flushes the usage log
      const rows = await h.app.db.all<{ prompt: string | null }>('SELECT prompt FROM usage_records WHERE prompt IS NOT NULL');
      expect(rows).toEqual([]);
    });

    it('refuses browser tokens: they may not list or delete', async () => {
      const image = await generate(h, design, { model: 'gpt-image-1', prompt: prompt('token') });
      const minted = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: design, payload: {} });
      expect(minted.statusCode, minted.body).toBe(201);
      const token = { authorization: `Bearer ${minted.json().token}` };
      expect((await h.app.inject({ method: 'GET', url: '/v1/images', headers: token })).statusCode).toBe(403);
      expect((await h.app.inject({ method: 'DELETE', url: `/v1/images/${image.name}`, headers: token })).statusCode).toBe(403);
      expect((await h.app.inject({ method: 'GET', url: image.url })).statusCode).toBe(200);
    });
  });
}

gallerySuite('the image gallery API in SQLite', async () => ({ env: {}, drop: async () => {} }));

describe.skipIf(postgresProblem !== undefined)('in PostgreSQL (skipped when unreachable and REQUIRE_SERVICES is unset)', () => {
  gallerySuite('the image gallery API in PostgreSQL', async () => {
    const pg = await freshPostgres();
    return { env: { DATABASE_URL: pg.url }, drop: pg.drop };
  });
});

describe('IMAGE_KEEP_PROMPTS=0', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ IMAGE_KEEP_PROMPTS: '0' });
  });
  afterAll(async () => h.close());

  it('keeps neither prompt nor parameters, and the rest of the entry', async () => {
    await generate(h, design, { model: 'gpt-image-1', prompt: 'nobody keeps this', quality: 'high' });
    const [row] = (await list(h, design)).data;
    expect(row).toMatchObject({ prompt: null, parameters: null, model: 'gpt-image-1', operation: 'generate', team: 'design' });
    expect((await list(h, design, '?q=nobody')).data).toEqual([]);
    const stored = await h.app.db.all<{ prompt: string | null; parameters_json: string | null }>('SELECT prompt, parameters_json FROM image_owners');
    expect(stored).toEqual([{ prompt: null, parameters_json: null }]);
  });

  it('deletes an image kept in its row (IMAGE_INLINE_MAX_BYTES) with its row', async () => {
    const image = await generate(h, design, { model: 'gpt-image-1', prompt: 'small enough for its row' });
    const row = await h.app.db.get<{ inline_bytes: Uint8Array | null }>('SELECT inline_bytes FROM images WHERE name = $1', [image.name]);
    // The bytes live in the row itself: they are the image's.
    expect(createHash('sha256').update(row!.inline_bytes!).digest('hex')).toBe(image.sha256);
    expect((await h.app.inject({ method: 'GET', url: `${image.url}&w=16&format=webp` })).statusCode).toBe(200);
    expect((await h.app.inject({ method: 'DELETE', url: `/v1/images/${image.name}`, headers: design })).statusCode).toBe(204);
    expect(await h.app.db.get('SELECT name FROM images WHERE name = $1', [image.name])).toBeUndefined();
    expect((await h.app.inject({ method: 'GET', url: image.url })).statusCode).toBe(404);
    expect(existsSync(thumbnailFileOf(h, image.sha256, 16))).toBe(false);
  });

  it('is refused at start when it is not 0 or 1', async () => {
    await expect(startHarness({ IMAGE_KEEP_PROMPTS: 'sometimes' })).rejects.toThrow(/IMAGE_KEEP_PROMPTS/);
  });
});
