/**
 * Ideogram 3.0 as its own spec defines it (../shared/upstream-specs/ideogram-openapi.yml): reframe
 * as an edit mode (no prompt, a required resolution, priced by rendering speed, counted by the
 * key's limits), style reference images on generate, remix and replace-background (files in a
 * multipart edit, data URLs or URLs in JSON under the egress policy), and the edit that keeps the
 * source image's shape. Every request goes through the gateway to the simulator on loopback.
 */
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import sharp from 'sharp';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, jobWhenFinished, makeHalfTransparentMask, makePng, multipartBody, startHarness, type Harness } from './harness.js';

const SOURCE = await makePng(64, 64, { r: 200, g: 40, b: 40 });
const STYLE_A = await makePng(16, 16, { r: 10, g: 200, b: 10 });
const STYLE_B = await makePng(16, 16, { r: 10, g: 10, b: 200 });
const FETCHED_STYLE = await makePng(24, 24, { r: 250, g: 200, b: 0 });
const MASK = await makeHalfTransparentMask(64, 64);

const dataUrl = (png: Buffer) => `data:image/png;base64,${png.toString('base64')}`;
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

let h: Harness;
let imageHost: Server;
let styleUrl: string;
/** Every request the image host got. */
const hostHits: string[] = [];

beforeAll(async () => {
  imageHost = createServer((req, res) => {
    hostHits.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'image/png' }).end(FETCHED_STYLE);
  });
  await new Promise<void>((resolve) => imageHost.listen(0, '127.0.0.1', resolve));
  styleUrl = `http://127.0.0.1:${(imageHost.address() as AddressInfo).port}/style.png`;
  // The image host is on loopback: allowed by name, as an operator's private image host would be.
  h = await startHarness({ ALLOWED_IMAGE_HOSTS: '127.0.0.1', RATE_LIMIT_RPM: '100000' });
});
afterAll(async () => {
  await h.close();
  await new Promise((resolve) => imageHost.close(resolve));
});
beforeEach(() => {
  h.simulator.reset();
  hostHits.length = 0;
});

function multipartEdit(fields: Record<string, string>, files: Array<{ field: string; bytes: Buffer }>, auth = h.auth) {
  const { payload, headers } = multipartBody(
    { model: 'ideogram-v3', ...fields },
    files.map((f, i) => ({ field: f.field, filename: `${f.field}-${i}.png`, bytes: f.bytes })),
  );
  return h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...auth, ...headers }, payload });
}

function jsonEdit(body: Record<string, unknown>) {
  return h.app.inject({ method: 'POST', url: '/v1/edit', headers: h.auth, payload: { model: 'ideogram-v3', image: dataUrl(SOURCE), ...body } });
}

function generate(body: Record<string, unknown>) {
  return h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'ideogram-v3', prompt: 'a lighthouse at dusk', ...body } });
}

async function mintKey(policy: Record<string, unknown>): Promise<Record<string, string>> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'reframe', ...policy } });
  expect(res.statusCode, res.body).toBe(201);
  return { authorization: `Bearer ${res.json().key}` };
}

describe('reframe', () => {
  it('sends the image and the size as resolution to /ideogram/v1/ideogram-v3/reframe, with no prompt, and prices it by rendering speed', async () => {
    const res = await multipartEdit({ mode: 'reframe', size: '1536x640', n: '2', options: JSON.stringify({ rendering_speed: 'QUALITY' }) }, [{ field: 'image', bytes: SOURCE }]);
    expect(res.statusCode, res.body).toBe(200);
    const body = res.json();
    expect(body.images).toHaveLength(2);
    expect(body.usage).toMatchObject({ images: 2, estimated_cost_usd: 0.18 });
    const [sent] = h.simulator.received;
    expect(sent!.path).toBe('/ideogram/v1/ideogram-v3/reframe');
    expect(sent!.fields).toEqual({ resolution: '1536x640', num_images: '2', rendering_speed: 'QUALITY' });
    expect(sent!.files!.map((f) => [f.field, f.sha256])).toEqual([['image', sha256(SOURCE)]]);
  });

  it('costs $0.06 an image at the default and turbo speeds (the V3 price table)', async () => {
    const standard = await jsonEdit({ mode: 'reframe', size: '1024x1024' });
    expect(standard.statusCode, standard.body).toBe(200);
    expect(standard.json().usage.estimated_cost_usd).toBe(0.06);
    const turbo = await jsonEdit({ mode: 'reframe', size: '1024x1024', options: { rendering_speed: 'TURBO' } });
    expect(turbo.json().usage.estimated_cost_usd).toBe(0.06);
  });

  it('refuses a missing size, naming the resolutions Ideogram allows, before anything is sent', async () => {
    const res = await jsonEdit({ mode: 'reframe' });
    expect(res.statusCode).toBe(400);
    const detail = res.json().error.details[0];
    expect(detail.field).toBe('size');
    expect(detail.message).toMatch(/required by ideogram-v3 in mode reframe/);
    expect(detail.allowed).toContain('1024x1024');
    expect(detail.allowed).toContain('1536x512');
    expect(detail.allowed).toHaveLength(69);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('refuses a size that is not one of the resolutions, and an aspect ratio instead of a size', async () => {
    const odd = await jsonEdit({ mode: 'reframe', size: '1000x1000' });
    expect(odd.statusCode).toBe(400);
    expect(odd.json().error.details[0]).toMatchObject({ field: 'size' });
    expect(odd.json().error.details[0].allowed).toContain('1024x1024');
    const ratio = await jsonEdit({ mode: 'reframe', size: '1024x1024', aspect_ratio: '16:9' });
    expect(ratio.statusCode).toBe(400);
    expect(ratio.json().error.details[0].field).toBe('aspect_ratio');
    expect(h.simulator.received).toHaveLength(0);
  });

  it('refuses a mask and a prompt: a reframe takes neither', async () => {
    const masked = await multipartEdit({ mode: 'reframe', size: '1024x1024' }, [
      { field: 'image', bytes: SOURCE },
      { field: 'mask', bytes: MASK },
    ]);
    expect(masked.statusCode).toBe(400);
    expect(masked.json().error.details[0]).toMatchObject({ field: 'mask' });
    const prompted = await jsonEdit({ mode: 'reframe', size: '1024x1024', prompt: 'wider' });
    expect(prompted.statusCode).toBe(400);
    expect(prompted.json().error.details[0]).toMatchObject({ field: 'prompt' });
    expect(prompted.json().error.details[0].message).toMatch(/takes no prompt/);
    expect(h.simulator.received).toHaveLength(0);
  });

  it("counts reframed images against the key's images_per_day", async () => {
    const key = await mintKey({ images_per_day: 3, rpm: 100 });
    const first = await multipartEdit({ mode: 'reframe', size: '1024x1024', n: '2' }, [{ field: 'image', bytes: SOURCE }], key);
    expect(first.statusCode, first.body).toBe(200);
    expect(first.headers['x-ratelimit-images-remaining']).toBe('1');
    h.simulator.reset();
    const over = await multipartEdit({ mode: 'reframe', size: '1024x1024', n: '2' }, [{ field: 'image', bytes: SOURCE }], key);
    expect(over.statusCode).toBe(429);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('is listed in GET /v1/models: the mode, its required size and that it takes no prompt', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/models/ideogram-v3', headers: h.auth });
    const model = res.json();
    expect(model.edit_modes).toContain('reframe');
    const reframe = model.input_schema.edit.reframe;
    expect(reframe.prompt).toEqual({ max_length: 0 });
    expect(reframe.parameters.size).toMatchObject({ type: 'enum', required: true });
    expect(reframe.parameters.size.values).toContain('1280x800');
    expect(reframe.mask).toBeNull();
    expect(Object.keys(reframe.options)).toEqual(['rendering_speed']);
  });
});

describe('an Ideogram 3.0 edit keeps the source image shape', () => {
  it.each([
    ['aspect_ratio', '16:9'],
    ['negative_prompt', 'blurry'],
  ])('refuses %s with a reason, sending nothing', async (field, value) => {
    const res = await multipartEdit({ prompt: 'a red hat', [field]: value }, [
      { field: 'image', bytes: SOURCE },
      { field: 'mask', bytes: MASK },
    ]);
    expect(res.statusCode).toBe(400);
    const detail = res.json().error.details[0];
    expect(detail.field).toBe(field);
    expect(detail.message).toMatch(/is not taken by ideogram-v3 in mode edit/);
    if (field === 'aspect_ratio') expect(detail.message).toMatch(/keeps the source image's shape/);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('refuses style on replace-background (Ideogram declares no style_type there)', async () => {
    const res = await jsonEdit({ mode: 'replace_background', prompt: 'a beach', style: 'REALISTIC' });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('style');
    expect(h.simulator.received).toHaveLength(0);
  });
});

describe("Ideogram's limit of 25 MB an input image (its spec's \"max size 25MB\"), under MAX_UPLOAD_BYTES (25 MiB)", () => {
  const SIZE = 25_100_000;
  const big = Buffer.concat([SOURCE, Buffer.alloc(SIZE - SOURCE.length)]);

  it.each([
    ['ideogram-v3', 'edit', { prompt: 'a red hat' }, true],
    ['ideogram-v3', 'remix', { prompt: 'in winter' }, false],
    ['ideogram-v3', 'replace_background', { prompt: 'a beach' }, false],
    ['ideogram-v3', 'reframe', { size: '1536x640' }, false],
    ['ideogram-v2', 'edit', { prompt: 'a red hat' }, true],
    ['ideogram-v2', 'remix', { prompt: 'in winter' }, false],
    ['ideogram-v2', 'reframe', { size: '1024x768' }, false],
  ] as const)('%s %s: a 25,100,000-byte image is a 413 naming image and 25000000, in multipart and JSON, sending nothing', async (model, mode, fields, masked) => {
    const multipart = await multipartEdit({ model, mode, ...fields }, [{ field: 'image', bytes: big }, ...(masked ? [{ field: 'mask', bytes: MASK }] : [])]);
    const json = await jsonEdit({ model, mode, ...fields, image: dataUrl(big), ...(masked ? { mask: dataUrl(MASK) } : {}) });
    for (const res of [multipart, json]) {
      expect(res.statusCode, res.body.slice(0, 500)).toBe(413);
      expect(res.json().error.message).toMatch(new RegExp(`^image: the image is ${SIZE} bytes; ${model} takes at most 25000000`));
      expect(res.json().error.details).toEqual([{ field: 'image', message: 'must be at most 25000000 bytes' }]);
    }
    expect(h.simulator.received).toHaveLength(0);
  });

  it('is listed in GET /v1/models as images.max_bytes on every Ideogram edit mode; other vendors declare none', async () => {
    for (const id of ['ideogram-v3', 'ideogram-v2', 'ideogram-v1-turbo']) {
      const model = (await h.app.inject({ method: 'GET', url: `/v1/models/${id}`, headers: h.auth })).json();
      for (const schema of Object.values<any>(model.input_schema.edit)) expect(schema.images).toEqual({ max: 1, max_bytes: 25_000_000 });
    }
    const flux = (await h.app.inject({ method: 'GET', url: '/v1/models/flux-kontext-pro', headers: h.auth })).json();
    expect(flux.input_schema.edit.edit.images).toEqual({ max: 4 });
  });
});

describe('style reference images', () => {
  it('as files in a multipart remix: sent upstream as repeated style_reference_images files, in order', async () => {
    const res = await multipartEdit({ prompt: 'the same scene in winter' }, [
      { field: 'image', bytes: SOURCE },
      { field: 'style_reference_images', bytes: STYLE_A },
      { field: 'style_reference_images', bytes: STYLE_B },
    ]);
    expect(res.statusCode, res.body).toBe(200);
    const [sent] = h.simulator.received;
    expect(sent!.path).toBe('/ideogram/v1/ideogram-v3/remix');
    expect(sent!.files!.map((f) => [f.field, f.sha256])).toEqual([
      ['image', sha256(SOURCE)],
      ['style_reference_images', sha256(STYLE_A)],
      ['style_reference_images', sha256(STYLE_B)],
    ]);
  });

  it('as data URLs and a URL in options on /v1/generate: the URL fetched, all sent as files, none left in the fields', async () => {
    const res = await generate({ options: { style_reference_images: [dataUrl(STYLE_A), styleUrl], rendering_speed: 'TURBO' } });
    expect(res.statusCode, res.body).toBe(200);
    expect(hostHits).toEqual(['/style.png']);
    const [sent] = h.simulator.received;
    expect(sent!.path).toBe('/ideogram/v1/ideogram-v3/generate');
    expect(sent!.headers['content-type']).toMatch(/^multipart\/form-data/);
    expect(sent!.fields).toEqual({ prompt: 'a lighthouse at dusk', rendering_speed: 'TURBO' });
    expect(sent!.files!.map((f) => [f.field, f.sha256])).toEqual([
      ['style_reference_images', sha256(STYLE_A)],
      ['style_reference_images', sha256(FETCHED_STYLE)],
    ]);
  });

  it('fit in a generate body as data URLs larger than the 1 MiB of a body without images', async () => {
    const raw = Buffer.alloc(800 * 700 * 3, 0);
    for (let i = 0; i < raw.length; i++) raw[i] = (i * 7919 + ((i * i) % 251)) & 255;
    const large = await sharp(raw, { raw: { width: 800, height: 700, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
    expect(large.length).toBeGreaterThan(1024 * 1024);
    const res = await generate({ options: { style_reference_images: [dataUrl(large)] } });
    expect(res.statusCode, res.body).toBe(200);
    expect(h.simulator.received[0]!.files!.map((f) => f.sha256)).toEqual([sha256(large)]);
  });

  it('as options in a JSON replace-background edit', async () => {
    const res = await jsonEdit({ mode: 'replace_background', prompt: 'a beach', options: { style_reference_images: [styleUrl] } });
    expect(res.statusCode, res.body).toBe(200);
    const [sent] = h.simulator.received;
    expect(sent!.path).toBe('/ideogram/v1/ideogram-v3/replace-background');
    expect(sent!.files!.map((f) => [f.field, f.sha256])).toEqual([
      ['image', sha256(SOURCE)],
      ['style_reference_images', sha256(FETCHED_STYLE)],
    ]);
  });

  it('fetches a URL under the egress policy: a private address is refused, naming the item, and nothing is sent', async () => {
    const res = await generate({ options: { style_reference_images: [dataUrl(STYLE_A), 'http://10.1.2.3/style.png'] } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('options.style_reference_images[1]');
    expect(h.simulator.received).toHaveLength(0);
  });

  it('fetches nothing for a request refused before its images are read (a model without style references)', async () => {
    const res = await generate({ model: 'gpt-image-1', options: { style_reference_images: [styleUrl] } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('options.style_reference_images');
    expect(hostHits).toEqual([]);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('refuses them where the route takes none (edit, reframe), more than 10, and a value that is not a list of images', async () => {
    const onEdit = await multipartEdit({ prompt: 'a hat' }, [
      { field: 'image', bytes: SOURCE },
      { field: 'mask', bytes: MASK },
      { field: 'style_reference_images', bytes: STYLE_A },
    ]);
    expect(onEdit.statusCode).toBe(400);
    expect(onEdit.json().error.details[0].message).toMatch(/is not an option of ideogram-v3 in mode edit/);
    const onReframe = await jsonEdit({ mode: 'reframe', size: '1024x1024', options: { style_reference_images: [dataUrl(STYLE_A)] } });
    expect(onReframe.statusCode).toBe(400);
    const eleven = await generate({ options: { style_reference_images: Array.from({ length: 11 }, () => dataUrl(STYLE_A)) } });
    expect(eleven.statusCode).toBe(400);
    expect(eleven.json().error.details[0].message).toMatch(/at most 10 style reference images; got 11/);
    const notImages = await generate({ options: { style_reference_images: 'style.png' } });
    expect(notImages.statusCode).toBe(400);
    expect(notImages.json().error.details[0].field).toBe('options.style_reference_images');
    // Not a count the model does not take (the 16 any request may name before its model is known).
    expect(notImages.json().error.message).not.toMatch(/16/);
    expect(notImages.json().error.message).toMatch(/style_references\.max/);
    const notAnImage = await generate({ options: { style_reference_images: [`data:image/png;base64,${Buffer.from('not an image').toString('base64')}`] } });
    expect(notAnImage.statusCode).toBe(415);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('in multipart, also in options (a URL fetched once admitted), but not both ways at once', async () => {
    const inOptions = await multipartEdit({ prompt: 'winter', options: JSON.stringify({ style_reference_images: [styleUrl] }) }, [{ field: 'image', bytes: SOURCE }]);
    expect(inOptions.statusCode, inOptions.body).toBe(200);
    expect(hostHits).toEqual(['/style.png']);
    expect(h.simulator.received[0]!.files!.map((f) => [f.field, f.sha256])).toEqual([
      ['image', sha256(SOURCE)],
      ['style_reference_images', sha256(FETCHED_STYLE)],
    ]);
    h.simulator.reset();
    hostHits.length = 0;
    const both = await multipartEdit({ prompt: 'winter', options: JSON.stringify({ style_reference_images: [styleUrl] }) }, [
      { field: 'image', bytes: SOURCE },
      { field: 'style_reference_images', bytes: STYLE_A },
    ]);
    expect(both.statusCode).toBe(400);
    expect(both.json().error.details[0].message).toMatch(/either as files named style_reference_images or in options, not both/);
    expect(hostHits).toEqual([]);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('are not taken by the OpenAI-compatible endpoints, which say where they are', async () => {
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/images/generations',
      headers: h.auth,
      payload: { model: 'ideogram-v3', prompt: 'a lighthouse', options: { style_reference_images: [dataUrl(STYLE_A)] } },
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toMatch(/taken by POST \/v1\/generate and POST \/v1\/edit/);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('name the same field in every refusal, multipart file or JSON: options.style_reference_images[i] (415 and 413)', async () => {
    const notImage = await multipartEdit({ prompt: 'in winter' }, [
      { field: 'image', bytes: SOURCE },
      { field: 'style_reference_images', bytes: STYLE_A },
      { field: 'style_reference_images', bytes: Buffer.from('not an image at all') },
    ]);
    expect(notImage.statusCode).toBe(415);
    expect(notImage.json().error.details[0].field).toBe('options.style_reference_images[1]');
    const large = Buffer.concat([STYLE_A, Buffer.alloc(25_000_001 - STYLE_A.length)]);
    const tooLarge = await multipartEdit({ prompt: 'in winter' }, [
      { field: 'image', bytes: SOURCE },
      { field: 'style_reference_images', bytes: large },
    ]);
    expect(tooLarge.statusCode).toBe(413);
    expect(tooLarge.json().error.details[0].field).toBe('options.style_reference_images[0]');
    expect(h.simulator.received).toHaveLength(0);
  });

  it('are listed in GET /v1/models for generate, remix and replace-background', async () => {
    const model = (await h.app.inject({ method: 'GET', url: '/v1/models/ideogram-v3', headers: h.auth })).json();
    expect(model.options.style_reference_images).toMatch(/1 to 10 images/);
    for (const schema of [model.input_schema.generate, model.input_schema.edit.remix, model.input_schema.edit.replace_background]) {
      expect(schema.style_references).toEqual({ max: 10, max_bytes: 25_000_000 });
      expect(schema.options.style_reference_images).toMatchObject({ type: 'json' });
    }
    expect(model.input_schema.edit.edit.style_references).toBeUndefined();
  });

  it('go with an asynchronous job that is kept and sent later', async () => {
    const res = await generate({ async: true, options: { style_reference_images: [dataUrl(STYLE_B)] } });
    expect(res.statusCode, res.body).toBe(202);
    const job = await jobWhenFinished(h, res.json().id as string);
    expect(job.status).toBe('succeeded');
    const sent = h.simulator.received.find((r) => r.path === '/ideogram/v1/ideogram-v3/generate');
    expect(sent!.files!.map((f) => [f.field, f.sha256])).toEqual([['style_reference_images', sha256(STYLE_B)]]);
  });
});

describe('seed', () => {
  it("each image's seed in the answer is the one Ideogram made it with: the seed asked for, or one of its own", async () => {
    const seeded = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'ideogram-v3', prompt: 'a seeded poster', seed: 4242, n: 2 } });
    expect(seeded.statusCode, seeded.body).toBe(200);
    expect(h.simulator.received[0]!.fields).toMatchObject({ seed: '4242' });
    expect(seeded.json().images.map((image: { seed?: number }) => image.seed)).toEqual([4242, 4242]);
    const unseeded = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'ideogram-v3', prompt: 'an unseeded poster' } });
    expect(unseeded.statusCode, unseeded.body).toBe(200);
    expect(unseeded.json().images[0].seed).toEqual(expect.any(Number));
  });
});
