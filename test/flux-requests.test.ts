/**
 * Flux requests the vendor's spec does not allow are refused with a 400 naming the field and what
 * it may be, before anything reaches upstream: too many input images for Kontext (4) and FLUX.2 (8),
 * aspect_ratio on FLUX.2 (which takes a size), sizes outside FLUX.2's bounds, flex's guidance and
 * steps out of range. And what is allowed reaches upstream in the vendor's fields.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { makePng, multipartBody, startHarness, type Harness } from './harness.js';

const PNG = await makePng(32, 32, { r: 90, g: 160, b: 60 });
const DATA_URL = `data:image/png;base64,${PNG.toString('base64')}`;
const PROMPT = 'a red bicycle leaning on a wall';

interface ErrorReply {
  error: { code: string; message: string; details: Array<{ field: string; message: string; allowed?: unknown }> };
}

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ RATE_LIMIT_RPM: '100000' });
});
afterAll(async () => h.close());
beforeEach(() => h.simulator.reset());

const generate = (payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { prompt: PROMPT, ...payload } });
const editJson = (payload: Record<string, unknown>, images: number) =>
  h.app.inject({ method: 'POST', url: '/v1/edit', headers: h.auth, payload: { prompt: PROMPT, image: Array.from({ length: images }, () => DATA_URL), ...payload } });
function editMultipart(fields: Record<string, string>, images: number) {
  const files = Array.from({ length: images }, (_, i) => ({ field: 'image', filename: `ref-${i + 1}.png`, bytes: PNG }));
  const { payload, headers } = multipartBody({ prompt: PROMPT, ...fields }, files);
  return h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
}

/** A 400 with one detail on `field`, and no upstream call. */
function expectRefused(res: { statusCode: number; json: () => unknown }, field: string): ErrorReply['error']['details'][number] {
  expect(res.statusCode).toBe(400);
  const { error } = res.json() as ErrorReply;
  expect(error.code).toBe('invalid_request');
  expect(error.details.map((d) => d.field)).toEqual([field]);
  expect(h.simulator.received).toEqual([]);
  return error.details[0]!;
}

describe('input images', () => {
  it.each([
    { model: 'flux-kontext-pro', max: 4 },
    { model: 'flux-kontext-max', max: 4 },
    { model: 'flux-2-pro', max: 8 },
    { model: 'flux-2-flex', max: 8 },
  ])('$model: one more than $max images is refused, naming the field and the maximum (JSON and multipart)', async ({ model, max }) => {
    for (const res of [await editJson({ model }, max + 1), await editMultipart({ model }, max + 1)]) {
      const detail = expectRefused(res, 'image');
      expect(detail.message).toBe(`${model} takes at most ${max} images; got ${max + 1}`);
    }
  });

  it.each([
    { model: 'flux-kontext-pro', max: 4 },
    { model: 'flux-2-flex', max: 8 },
  ])('$model: $max images (multipart files) reach upstream as input_image .. input_image_$max, in order', async ({ model, max }) => {
    const pngs = await Promise.all(Array.from({ length: max }, (_, i) => makePng(32, 32, { r: 10 * i, g: 100, b: 200 })));
    const { payload, headers } = multipartBody(
      { model, prompt: PROMPT },
      pngs.map((bytes, i) => ({ field: 'image', filename: `ref-${i + 1}.png`, bytes })),
    );
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
    expect(res.statusCode, res.body).toBe(200);
    const input = (h.simulator.received[0]!.json as { input: Record<string, unknown> }).input;
    const names = ['input_image', ...Array.from({ length: max - 1 }, (_, i) => `input_image_${i + 2}`)];
    expect(Object.keys(input).filter((k) => k.startsWith('input_image'))).toEqual(names);
    names.forEach((name, i) => expect(input[name], name).toBe(pngs[i]!.toString('base64')));
  });
});

describe('FLUX.2 sizes', () => {
  it.each(['flux-2-pro', 'flux-2-flex'])('%s: aspect_ratio is refused with a pointer to size, on generate and edit', async (model) => {
    for (const res of [await generate({ model, aspect_ratio: '16:9' }), await editJson({ model, aspect_ratio: '16:9' }, 1)]) {
      const detail = expectRefused(res, 'aspect_ratio');
      expect(detail.message).toBe(`is not supported by ${model}, which takes an explicit size: give size, WIDTHxHEIGHT with each side 64..2048, multiples of 16`);
      expect(detail.allowed).toContain('size');
    }
  });

  it.each([
    { size: '1000x1000', why: 'not multiples of 16' },
    { size: '48x64', why: 'a side under 64' },
    { size: '2064x1024', why: 'a side over 2048' },
    { size: '1024*1024', why: 'not WIDTHxHEIGHT' },
    { size: 'auto', why: 'no preset' },
  ])('size $size is refused ($why), naming the rule', async ({ size }) => {
    const detail = expectRefused(await generate({ model: 'flux-2-pro', size }), 'size');
    expect(detail.message).toBe('must be WIDTHxHEIGHT with each side 64..2048, multiples of 16 for flux-2-pro');
  });

  it('a size at the bounds reaches upstream as width and height, integers, and no aspect_ratio', async () => {
    for (const [size, width, height] of [['64x2048', 64, 2048], ['2048x64', 2048, 64]] as const) {
      h.simulator.reset();
      const res = await generate({ model: 'flux-2-pro', size });
      expect(res.statusCode, res.body).toBe(200);
      expect(h.simulator.received[0]!.json).toEqual({ input: { prompt: PROMPT, width, height } });
    }
  });
});

describe('Kontext shapes', () => {
  it('size is refused with a pointer to aspect_ratio', async () => {
    const detail = expectRefused(await generate({ model: 'flux-kontext-pro', size: '1024x1024' }), 'size');
    expect(detail.message).toBe('is not supported by flux-kontext-pro, which takes its shape as aspect_ratio: give aspect_ratio, W:H with whole numbers, from 9:21 to 21:9');
  });

  it('an aspect ratio wider than 21:9 is refused', async () => {
    const detail = expectRefused(await generate({ model: 'flux-kontext-max', aspect_ratio: '3:1' }), 'aspect_ratio');
    expect(detail.message).toBe('must be W:H with whole numbers, from 9:21 to 21:9 for flux-kontext-max');
  });
});

describe('FLUX.2 options', () => {
  it.each([
    { option: 'guidance', value: 1.4, allowed: 'a number from 1.5 to 10' },
    { option: 'guidance', value: 10.5, allowed: 'a number from 1.5 to 10' },
    { option: 'steps', value: 0, allowed: 'an integer from 1 to 50' },
    { option: 'steps', value: 51, allowed: 'an integer from 1 to 50' },
    { option: 'steps', value: 2.5, allowed: 'an integer from 1 to 50' },
  ])('flux-2-flex: options.$option $value is refused: $allowed', async ({ option, value, allowed }) => {
    const detail = expectRefused(await generate({ model: 'flux-2-flex', options: { [option]: value } }), `options.${option}`);
    expect(detail.message).toBe(`must be ${allowed} for flux-2-flex`);
  });

  it.each(['guidance', 'steps', 'prompt_upsampling'])('flux-2-pro: options.%s is refused, as its schema lacks it', async (option) => {
    const detail = expectRefused(await generate({ model: 'flux-2-pro', options: { [option]: 1 } }), `options.${option}`);
    expect(detail.message).toBe('is not an option of flux-2-pro');
    expect(detail.allowed).toEqual(['safety_tolerance', 'disable_pup']);
  });

  it('safety_tolerance above FLUX.2\'s 5 is refused (Kontext goes to 6)', async () => {
    const detail = expectRefused(await generate({ model: 'flux-2-flex', options: { safety_tolerance: 6 } }), 'options.safety_tolerance');
    expect(detail.message).toBe('must be an integer from 0 to 5 for flux-2-flex');
  });
});

describe('GET /v1/models', () => {
  it('lists sizes and aspect ratios only where they can be listed: never an empty list, which would read as none allowed', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth });
    const models = res.json().data as { id: string; sizes?: string[]; size_rule?: string; aspect_ratios?: string[]; aspect_ratio_rule?: string }[];
    for (const model of models) {
      if (model.sizes) expect(model.sizes.length, model.id).toBeGreaterThan(0);
      if (model.aspect_ratios) expect(model.aspect_ratios.length, model.id).toBeGreaterThan(0);
    }
    const kontext = models.find((m) => m.id === 'flux-kontext-pro')!;
    expect(kontext.aspect_ratio_rule).toMatch(/\d+:\d+/);
    expect(kontext).not.toHaveProperty('aspect_ratios');
    // A model whose sizes are a list keeps it.
    expect(models.find((m) => m.id === 'gpt-image-1')!.sizes).toContain('1024x1024');
  });

  it('describes FLUX.2 by size (no aspect ratio), with 8 edit images and flex guidance and steps', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/models/flux-2-flex', headers: h.auth });
    expect(res.statusCode).toBe(200);
    const model = res.json();
    expect(model.size_rule).toBe('WIDTHxHEIGHT with each side 64..2048, multiples of 16');
    // Sizes within bounds cannot be listed: no `sizes` (an empty list would mean none allowed).
    expect(model).not.toHaveProperty('sizes');
    expect(model.aspect_ratio_rule).toBeUndefined();
    expect(model.input_schema.edit.edit.images).toEqual({ max: 8 });
    expect(model.input_schema.generate.options.guidance).toMatchObject({ type: 'number', minimum: 1.5, maximum: 10 });
    expect(model.input_schema.generate.options.steps).toMatchObject({ type: 'integer', minimum: 1, maximum: 50 });
  });

  it('describes Kontext with 4 edit images', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/models/flux-kontext-max', headers: h.auth });
    expect(res.json().input_schema.edit.edit.images).toEqual({ max: 4 });
  });
});
