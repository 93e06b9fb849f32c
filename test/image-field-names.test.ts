/**
 * Errors about an input image name it as the client sent it: a lone `image` is `image`; the items
 * of a list (a JSON array, multipart `image[]`, several `image` files) are `image[i]`, a one-item
 * list's too, at every step (zod's check, decoding, the file's type, the model's per-image limit).
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { LightMyRequestResponse } from 'fastify';
import { makePng, multipartBody, startHarness, type Harness } from './harness.js';

let h: Harness;
let png: Buffer;
const notAnImage = Buffer.from('plain text pretending to be a picture');
/** A model of the test's own whose edits take images of at most 64 bytes each, so the per-image limit can be met. */
const catalogueFile = join(tmpdir(), `gw-image-fields-${process.pid}.yaml`);

beforeAll(async () => {
  writeFileSync(
    catalogueFile,
    `models:
  - id: tiny-images
    description: Test model whose edits take at most 64 bytes per image.
    image_to_image_mode: edit
    edit:
      edit:
        family: predictions
        path: /v1/models/bfl/flux-2-pro/predictions
        auth: bearer
        prompt: { to: prompt, max_length: 1000 }
        params: {}
        options: {}
        images: { to: input_image, encoding: base64, max: 4, max_bytes: 64, shape: numbered }
`,
  );
  h = await startHarness({ RATE_LIMIT_RPM: '1000', CATALOGUE_FILE: catalogueFile });
  png = await makePng(32, 32);
});
afterAll(async () => {
  await h?.close();
  rmSync(catalogueFile, { force: true });
});
beforeEach(() => h.simulator.reset());

const dataUrl = (bytes: Buffer) => `data:image/png;base64,${bytes.toString('base64')}`;
const editJson = (payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url: '/v1/edit', headers: h.auth, payload });
function editMultipart(url: string, files: Array<[string, Buffer]>, model = 'gpt-image-1') {
  const { payload, headers } = multipartBody({ model, prompt: 'make it blue' }, files.map(([field, bytes], i) => ({ field, filename: `f${i}.png`, bytes })));
  return h.app.inject({ method: 'POST', url, headers: { ...h.auth, ...headers }, payload });
}

/** The field the refusal names (the gateway's shape: details; OpenAI's: the message's prefix), nothing sent upstream. */
function namedField(res: LightMyRequestResponse, status: number): string {
  expect(res.statusCode, res.body).toBe(status);
  const { error } = res.json();
  expect(h.simulator.received).toHaveLength(0);
  const fromMessage = /^([^:]+): /.exec(error.message)![1]!;
  if (error.details) expect(error.details[0].field).toBe(fromMessage);
  return fromMessage;
}

describe('JSON edits', () => {
  it('a lone image string is image; the one item of an array is image[0], at every step', async () => {
    expect(namedField(await editJson({ model: 'gpt-image-1', prompt: 'x', image: 'data:image/png;base64,iVBORw0KGgo...' }), 400)).toBe('image');
    expect(namedField(await editJson({ model: 'gpt-image-1', prompt: 'x', image: ['data:image/png;base64,iVBORw0KGgo...'] }), 400)).toBe('image[0]');
    expect(namedField(await editJson({ model: 'gpt-image-1', prompt: 'x', image: ['ftp://example.com/a.png'] }), 400)).toBe('image[0]');
    expect(namedField(await editJson({ model: 'gpt-image-1', prompt: 'x', image: dataUrl(notAnImage) }), 415)).toBe('image');
    expect(namedField(await editJson({ model: 'gpt-image-1', prompt: 'x', image: [dataUrl(notAnImage)] }), 415)).toBe('image[0]');
  });

  it("the model's per-image limit names image or image[0] as sent", async () => {
    expect(png.length).toBeGreaterThan(64);
    expect(namedField(await editJson({ model: 'tiny-images', prompt: 'x', image: dataUrl(png) }), 413)).toBe('image');
    expect(namedField(await editJson({ model: 'tiny-images', prompt: 'x', image: [dataUrl(png)] }), 413)).toBe('image[0]');
  });
});

describe('the same request, its image sent alone or as a one-item list', () => {
  it('is the same request to an Idempotency-Key: replayed, not a 409', async () => {
    const headers = { ...h.auth, 'idempotency-key': 'one-image-either-way' };
    const first = await h.app.inject({ method: 'POST', url: '/v1/edit', headers, payload: { model: 'gpt-image-1', prompt: 'x', image: dataUrl(png) } });
    expect(first.statusCode, first.body).toBe(200);
    const again = await h.app.inject({ method: 'POST', url: '/v1/edit', headers, payload: { model: 'gpt-image-1', prompt: 'x', image: [dataUrl(png)] } });
    expect(again.statusCode, again.body).toBe(200);
    expect(again.json().id).toBe(first.json().id);
    expect(h.simulator.received).toHaveLength(1);
  });
});

describe('multipart edits', () => {
  it.each(['/v1/edit', '/v1/images/edits'])('%s: a lone image file is image, a lone image[] file image[0], a second image file image[1]', async (url) => {
    expect(namedField(await editMultipart(url, [['image', notAnImage]]), 415)).toBe('image');
    expect(namedField(await editMultipart(url, [['image[]', notAnImage]]), 415)).toBe('image[0]');
    expect(namedField(await editMultipart(url, [['image[]', png], ['image[]', notAnImage]]), 415)).toBe('image[1]');
    expect(namedField(await editMultipart(url, [['image', png], ['image', notAnImage]]), 415)).toBe('image[1]');
  });

  it("the model's per-image limit names the file as sent: image, image[0] for image[], image[0] for the first of two image files", async () => {
    expect(namedField(await editMultipart('/v1/edit', [['image', png]], 'tiny-images'), 413)).toBe('image');
    expect(namedField(await editMultipart('/v1/edit', [['image[]', png]], 'tiny-images'), 413)).toBe('image[0]');
    expect(namedField(await editMultipart('/v1/edit', [['image', png], ['image', png]], 'tiny-images'), 413)).toBe('image[0]');
  });

  it('OpenAI callers get param image whatever the index', async () => {
    const res = await editMultipart('/v1/images/edits', [['image[]', notAnImage]]);
    expect(res.json().error.param).toBe('image');
  });
});
