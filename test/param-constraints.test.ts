/**
 * A value one field's value rules out, declared in the catalogue (`constraints`): gpt-image's
 * transparent background with JPEG output is a 400 naming output_format before anything is sent
 * (upstream refuses it, after the wait); png and webp, or JPEG with another background, go through.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { CatalogueError, loadCatalogue } from '../src/catalogue/catalogue-schema.js';
import { makePng, multipartBody, startHarness, type Harness } from './harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ RATE_LIMIT_RPM: '1000' });
});
afterAll(async () => {
  await h?.close();
});
beforeEach(() => h.simulator.reset());

const post = (url: string, payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url, headers: h.auth, payload });
const REFUSAL = 'output_format: must be one of png, webp with background transparent on gpt-image-1';

describe('a transparent background with JPEG output', () => {
  it('is refused on /v1/generate and the OpenAI façade, naming output_format and what it may be, nothing sent', async () => {
    const res = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'a sticker', background: 'transparent', output_format: 'jpeg' });
    expect(res.statusCode, res.body).toBe(400);
    const { error } = res.json();
    expect(error.message).toMatch(new RegExp(`^${REFUSAL}: a transparent background needs a format with an alpha channel`));
    expect(error.details).toEqual([expect.objectContaining({ field: 'output_format', allowed: ['png', 'webp'] })]);
    const openAi = await post('/v1/images/generations', { model: 'gpt-image-1', prompt: 'a sticker', background: 'transparent', output_format: 'jpeg' });
    expect(openAi.statusCode, openAi.body).toBe(400);
    expect(openAi.json().error.param).toBe('output_format');
    expect(h.simulator.received).toHaveLength(0);
  });

  it('is refused on a multipart edit too', async () => {
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'cut it out', background: 'transparent', output_format: 'jpeg' }, [
      { field: 'image', filename: 'a.png', bytes: await makePng() },
    ]);
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().error.message).toMatch(/^output_format: must be one of png, webp with background transparent on gpt-image-1 in mode edit/);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('is told in GET /v1/models, as the catalogue declares it', async () => {
    const model = (await h.app.inject({ method: 'GET', url: '/v1/models/gpt-image-1', headers: h.auth })).json();
    for (const schema of [model.input_schema.generate, model.input_schema.edit.edit]) {
      expect(schema.constraints).toEqual([{ when: { background: 'transparent' }, field: 'output_format', one_of: ['png', 'webp'], reason: expect.stringContaining('alpha channel') }]);
    }
  });

  it('png, webp or no format with it, and JPEG with another background, are sent', async () => {
    for (const params of [{ output_format: 'png' }, { output_format: 'webp' }, {}]) {
      const res = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'a sticker', background: 'transparent', ...params });
      expect(res.statusCode, res.body).toBe(200);
    }
    const opaque = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'a photo', background: 'opaque', output_format: 'jpeg' });
    expect(opaque.statusCode, opaque.body).toBe(200);
  });
});

describe('a constraint in catalogue data', () => {
  const model = (constraints: unknown) => ({
    models: [
      {
        id: 'my-model',
        description: 'a test model',
        generate: {
          family: 'openai-json',
          path: '/v1/images/generations',
          prompt: { to: 'prompt', max_length: 1000 },
          params: { output_format: { rule: { oneOf: ['png', 'jpeg'] } }, background: { rule: { oneOf: ['transparent', 'opaque'] } } },
          constraints,
        },
      },
    ],
  });

  it('is built into the route as declared', () => {
    const [built] = loadCatalogue(model([{ when: { background: 'transparent' }, field: 'output_format', one_of: ['png'], reason: 'no alpha in JPEG' }]));
    expect(built!.generate!.constraints).toEqual([{ when: { background: 'transparent' }, field: 'output_format', oneOf: ['png'], reason: 'no alpha in JPEG' }]);
  });

  it('on a field the route does not take is refused, naming it; so is one without a reason', () => {
    expect(() => loadCatalogue(model([{ when: { quality: 'high' }, field: 'output_format', one_of: ['png'], reason: 'r' }]))).toThrow(/"quality" is not a parameter of this route/);
    expect(() => loadCatalogue(model([{ when: { background: 'transparent' }, field: 'output_format', one_of: ['png'] }]))).toThrow(CatalogueError);
  });

  it('with a value its field does not take is refused: a typo would never apply, or refuse every value', () => {
    expect(() => loadCatalogue(model([{ when: { background: 'transparant' }, field: 'output_format', one_of: ['png'], reason: 'r' }]))).toThrow(/background "transparant" is not a value the route takes/);
    expect(() => loadCatalogue(model([{ when: { background: 'transparent' }, field: 'output_format', one_of: ['PNG'], reason: 'r' }]))).toThrow(/output_format "PNG" is not a value the route takes/);
  });
});
