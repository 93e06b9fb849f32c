/** Numbers a model's rule refuses say what is allowed: the field, the kind of value and its range for that model. */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
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

describe('an out-of-range non-integer', () => {
  it('n = 1e308 and seed = -1e308 are one 400 detail each, naming the field', async () => {
    for (const [field, value] of [['n', 1e308], ['seed', -1e308]] as const) {
      const res = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'x', [field]: value });
      expect(res.statusCode).toBe(400);
      const details = res.json().error.details as Array<{ field: string }>;
      expect(details.map((d) => d.field)).toEqual([field]);
      expect(res.json().error.message.split('; ')).toHaveLength(1);
    }
  });
});

describe('n that is not a whole number', () => {
  it.each([
    ['gpt-image-1', '2', 'n: must be an integer from 1 to 10 for gpt-image-1'],
    ['gpt-image-1', 1.5, 'n: must be an integer from 1 to 10 for gpt-image-1'],
    ['imagen-4.0-generate-001', '2', 'n: must be an integer from 1 to 4 for imagen-4.0-generate-001'],
    ['dall-e-3', 1.5, 'n: must be the integer 1 for dall-e-3'],
    ['ideogram-v3', true, 'n: must be an integer from 1 to 8 for ideogram-v3'],
  ])('%s with n = %j: names the integer range of that model', async (model, n, message) => {
    for (const url of ['/v1/generate', '/v1/images/generations']) {
      const res = await post(url, { model, prompt: 'a deer', n });
      expect(res.statusCode, res.body).toBe(400);
      expect(res.json().error.message).toBe(message);
    }
    const detail = (await post('/v1/generate', { model, prompt: 'a deer', n })).json().error.details;
    expect(detail).toEqual([expect.objectContaining({ field: 'n', allowed: expect.stringMatching(/^(an integer from \d+ to \d+|the integer 1)$/) })]);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('a multipart edit with n = "1.5" names the range of the model', async () => {
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it blue', n: '1.5' }, [{ field: 'image', filename: 'a.png', bytes: await makePng() }]);
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().error.message).toBe('n: must be an integer from 1 to 10 for gpt-image-1');
    expect(h.simulator.received).toHaveLength(0);
  });

  it('an integer in range still goes upstream', async () => {
    const res = await post('/v1/generate', { model: 'imagen-4.0-generate-001', prompt: 'a deer', n: 2 });
    expect(res.statusCode, res.body).toBe(200);
    expect(h.simulator.received).toHaveLength(1);
  });
});

describe('a parameter the model does not take', () => {
  it('size on an Imagen model: says the model takes no size and which parameters it does take', async () => {
    const res = await post('/v1/generate', { model: 'imagen-4.0-generate-001', prompt: 'a deer', size: '1024x1024' });
    expect(res.statusCode, res.body).toBe(400);
    const { error } = res.json();
    expect(error.message).toBe('size: is not supported by imagen-4.0-generate-001, which takes no size: the only parameter it takes is n');
    // `allowed` lists field names, as for an unknown field; the message says so.
    expect(error.details).toEqual([{ field: 'size', message: expect.stringContaining('takes no size'), allowed: ['n'] }]);
    const openAi = await post('/v1/images/generations', { model: 'imagen-4.0-generate-001', prompt: 'a deer', size: '1024x1024' });
    expect(openAi.json().error).toMatchObject({ param: 'size', message: expect.stringContaining('takes no size: the only parameter it takes is n') });
    expect(h.simulator.received).toHaveLength(0);
  });

  it('negative_prompt on a model taking several parameters lists them', async () => {
    const res = await post('/v1/generate', { model: 'wan2.7-image', prompt: 'a deer', negative_prompt: 'blurry' });
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().error.message).toMatch(/^negative_prompt: is not supported by wan2\.7-image, which takes no negative_prompt: the parameters it takes are .*size/);
  });

  it('n = "1" on a model that has no n says the integer 1, or none', async () => {
    const models = (await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })).json().data as Array<{ id: string; parameters: Record<string, string>; operations: string[] }>;
    const noN = models.find((m) => m.operations.includes('generate') && !('n' in m.parameters));
    expect(noN, 'a generate model without n in the catalogue').toBeDefined();
    const res = await post('/v1/generate', { model: noN!.id, prompt: 'a deer', n: '1' });
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().error.message).toBe(`n: ${noN!.id} makes one image per request; n must be the integer 1, or left out`);
  });
});
