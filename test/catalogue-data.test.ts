import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { builtinCatalogueData } from '../src/catalogue/builtin-catalogue.js';
import { CatalogueError, loadCatalogue } from '../src/catalogue/catalogue-schema.js';
import { MODELS } from '../src/catalogue/models.js';
import { startHarness, UPSTREAM_KEY, type Harness } from './harness.js';

type Entry = Record<string, any>;
const builtin = () => structuredClone(builtinCatalogueData()) as { models: Entry[] };
const entry = (data: { models: Entry[] }, id: string) => data.models.find((m) => m.id === id)!;
const refusal = (data: unknown): string => {
  try {
    loadCatalogue(data);
  } catch (err) {
    expect(err).toBeInstanceOf(CatalogueError);
    return (err as Error).message;
  }
  throw new Error('the catalogue was accepted');
};

describe('the built-in catalogue file (src/catalogue/models.yaml)', () => {
  it('is what the built gateway reads: dist/ holds it, and openapi.yaml, as the same data in JSON', () => {
    // Written by the build (global setup runs it), so a stale or partial copy shows here.
    const yamlOf = (path: string) => parse(readFileSync(path, 'utf8'));
    expect(JSON.parse(readFileSync('dist/catalogue/models.json', 'utf8'))).toEqual(yamlOf('src/catalogue/models.yaml'));
    expect(JSON.parse(readFileSync('dist/openapi.json', 'utf8'))).toEqual(yamlOf('openapi.yaml'));
  });

  it('describes each model for its users: no upstream path, wire field or transport in a description', () => {
    // GET /v1/models and the console show these; how a model is reached is the catalogue's routes' business.
    const plumbing = /\/ideogram\/|\/v1\/|extra_body|input_image|refer_image|predictions API|native API|general interface|asynchronous task/;
    for (const model of MODELS) expect(model.description, model.id).not.toMatch(plumbing);
  });

  it('says a model is priced the way its routes are: "priced by tokens" only with token prices, "no published price" only with none', () => {
    for (const model of MODELS) {
      const prices = [model.generate, ...Object.values(model.edit ?? {}), model.upscale].map((route) => route?.price).filter((p) => p !== undefined);
      if (/priced by tokens/.test(model.description)) expect(prices.some((p) => 'perMillionTokensUsd' in p), model.id).toBe(true);
      if (/no (published )?price/i.test(model.description)) expect(prices, model.id).toEqual([]);
    }
  });

  it('validates, and declares every model the gateway serves', () => {
    const data = builtin();
    const models = loadCatalogue(data);
    expect(models.map((m) => m.id)).toEqual(data.models.map((m) => m.id));
    expect(MODELS.map((m) => m.id)).toEqual(data.models.map((m) => m.id));
    expect(models.length).toBeGreaterThan(30);
  });

  it('is shipped next to the compiled loader (the build copies it into dist/)', () => {
    // test/global-setup.ts builds dist/ as `npm run build` does.
    const shipped = readFileSync(new URL('../dist/catalogue/models.yaml', import.meta.url), 'utf8');
    expect(shipped).toBe(readFileSync(new URL('../src/catalogue/models.yaml', import.meta.url), 'utf8'));
  });

  it('carries each route’s key header and task shape as data', () => {
    const ideogram = MODELS.find((m) => m.id === 'ideogram-v3')!;
    expect(ideogram.generate?.auth).toBe('api-key');
    expect(MODELS.find((m) => m.id === 'gpt-image-1')!.generate?.auth).toBe('bearer');
    const kontext = MODELS.find((m) => m.id === 'flux-kontext-pro')!;
    expect(kontext.generate).toMatchObject({ async: true, taskPollPath: '/v1/tasks/{task_id}' });
    expect(MODELS.find((m) => m.id === 'FLUX.1-Kontext-pro')!.generate?.async).toBeUndefined();
  });
});

describe('a catalogue entry that does not validate is refused, naming the entry and the reason', () => {
  it('an unknown descriptor', () => {
    const data = builtin();
    entry(data, 'gpt-image-1').generate.params.size.rule = { between: ['1K', '4K'] };
    expect(refusal(data)).toMatch(/model "gpt-image-1": generate\.params\.size\.rule.*unknown descriptor "between"; known: oneOf, intRange/);
  });

  it('a descriptor with bad arguments', () => {
    const data = builtin();
    entry(data, 'imagen-4.0-generate-001').generate.params.n.rule = { intRange: { min: 4, max: 1 } };
    expect(refusal(data)).toMatch(/model "imagen-4.0-generate-001": generate\.params\.n\.rule\.intRange: min must not exceed max/);
  });

  it('a rule naming two descriptors', () => {
    const data = builtin();
    entry(data, 'dall-e-3').generate.params.quality.rule = { oneOf: ['hd'], bool: true };
    expect(refusal(data)).toMatch(/model "dall-e-3": generate\.params\.quality\.rule: a rule names exactly one descriptor/);
  });

  it('an unknown transform', () => {
    const data = builtin();
    entry(data, 'ideogram-v3').edit.remix.params.aspect_ratio.transform = 'colon-to-star';
    expect(refusal(data)).toMatch(/model "ideogram-v3": edit\.remix\.params\.aspect_ratio\.transform: unknown transform; known: colon-to-x, ideogram-aspect-enum, x-to-star/);
  });

  it('a list of upstream paths without a transform that splits the value into as many, and the other way round', () => {
    const listed = builtin();
    delete entry(listed, 'flux-2-pro').generate.params.size.transform;
    expect(refusal(listed)).toMatch(/model "flux-2-pro": generate\.params\.size\.to: a list of paths needs a transform that splits the value \(size-to-width-height\)/);
    const three = builtin();
    entry(three, 'flux-2-pro').generate.params.size.to = ['width', 'height', 'depth'];
    expect(refusal(three)).toMatch(/model "flux-2-pro": generate\.params\.size\.to: transform size-to-width-height splits the value into 2 parts: "to" must list 2 paths/);
    const single = builtin();
    entry(single, 'flux-2-pro').generate.params.size.to = 'width';
    expect(refusal(single)).toMatch(/model "flux-2-pro": generate\.params\.size\.to: transform size-to-width-height splits the value into 2 parts/);
  });

  it('a bad price', () => {
    const data = builtin();
    entry(data, 'ideogram-v2').generate.price = { per_image_usd: -0.08 };
    expect(refusal(data)).toMatch(/model "ideogram-v2": generate\.price/);
    entry(data, 'ideogram-v2').generate.price = { per_image_usd: '0.08' };
    expect(refusal(data)).toMatch(/model "ideogram-v2": generate\.price/);
  });

  // 1e308 per image loaded: then two images cost Infinity (estimated_cost_usd null, a budget "spent $NaN").
  it('a price past its bound: per image at most 1000 USD, per million tokens at most 100000 USD, naming the model and the field', () => {
    const data = builtin();
    entry(data, 'ideogram-v2').generate.price = { per_image_usd: 1e308 };
    expect(refusal(data)).toBe('catalogue: model "ideogram-v2": generate.price.per_image_usd: a price per image is at most 1000 USD, got 1e+308');
    entry(data, 'ideogram-v2').generate.price = { per_image_usd: 1000 };
    const byOption = builtin();
    entry(byOption, 'ideogram-v3').generate.price.per_image_usd.QUALITY = 1000.01;
    expect(refusal(byOption)).toMatch(/^catalogue: model "ideogram-v3": generate\.price\.per_image_usd\.QUALITY: a price per image is at most 1000 USD, got 1000\.01$/);
    const tokens = builtin();
    entry(tokens, 'gpt-image-1').edit.edit.price.per_million_tokens_usd.image_output = 1e6;
    expect(refusal(tokens)).toMatch(/^catalogue: model "gpt-image-1": edit\.edit\.price\.per_million_tokens_usd\.image_output: a price per million tokens is at most 100000 USD, got 1000000$/);
    // At the bounds: accepted.
    entry(tokens, 'gpt-image-1').edit.edit.price.per_million_tokens_usd.image_output = 100_000;
    entry(tokens, 'ideogram-v2').generate.price = { per_image_usd: 1000 };
    expect(() => loadCatalogue(tokens)).not.toThrow();
  });

  it('an unknown field, an unknown key header, a name given to two models', () => {
    const data = builtin();
    entry(data, 'glm-image').generate.retries = 3;
    expect(refusal(data)).toMatch(/model "glm-image": generate: .*retries/);
    const other = builtin();
    entry(other, 'glm-image').generate.auth = 'cookie';
    expect(refusal(other)).toMatch(/model "glm-image": generate\.auth/);
    const twice = builtin();
    entry(twice, 'glm-image').aliases.push('dall-e-3');
    expect(refusal(twice)).toMatch(/model "glm-image": the name dall-e-3 is already model "dall-e-3"'s/);
  });

  it('the name usage and metrics give a request naming no model of the catalogue', () => {
    const data = builtin();
    entry(data, 'glm-image').aliases.push('unknown');
    expect(refusal(data)).toMatch(/model "glm-image": the name unknown is reserved/);
  });

  it('an edit route without images, and an image-to-image mode the model lacks', () => {
    const data = builtin();
    delete entry(data, 'flux-kontext-pro').edit.edit.images;
    expect(refusal(data)).toMatch(/model "flux-kontext-pro": edit\.edit: an edit route needs images/);
    const other = builtin();
    entry(other, 'flux-kontext-pro').image_to_image_mode = 'remix';
    expect(refusal(other)).toMatch(/model "flux-kontext-pro": image_to_image_mode/);
  });

  it("an image limit (images.max_bytes) that is not a whole number of bytes above 0, on an edit, upscale or describe route", () => {
    for (const [id, images] of [
      ['ideogram-v3', (m: Entry) => m.edit.remix.images],
      ['ideogram-upscale', (m: Entry) => m.upscale.images],
      ['ideogram-describe', (m: Entry) => m.describe.images],
    ] as const) {
      for (const bad of [0, 2.5, '25MB']) {
        const data = builtin();
        images(entry(data, id)).max_bytes = bad;
        expect(refusal(data)).toMatch(new RegExp(`model "${id}": .*images\\.max_bytes`));
      }
      const fine = builtin();
      images(entry(fine, id)).max_bytes = 1000;
      expect(() => loadCatalogue(fine)).not.toThrow();
    }
  });
});

describe('GET /v1/models and routing read the catalogue file', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h.close();
  });

  it('lists every model of the file, with its aliases', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth });
    expect(res.statusCode).toBe(200);
    const listed = res.json().data as Array<{ id: string; aliases: string[] }>;
    expect(listed.map((m) => [m.id, m.aliases])).toEqual(builtin().models.map((m) => [m.id, m.aliases ?? []]));
  });
});

describe('a model declared in data only', () => {
  let h: Harness;
  beforeAll(async () => {
    const models = loadCatalogue(parse(readFileSync(new URL('./fixtures/catalogue-data-only.yaml', import.meta.url), 'utf8')));
    h = await startHarness({}, {}, { catalogue: models });
  });
  afterAll(async () => {
    await h.close();
  });

  it('is listed with its price and input schema', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth });
    const painter = (res.json().data as Array<Record<string, any>>).find((m) => m.id === 'acme-painter-1')!;
    expect(painter).toMatchObject({ aliases: ['google/acme-painter-1'], max_n: 3, aspect_ratios: ['1:1', '16:9'], price_per_image_usd: 0.0125 });
    expect(painter.input_schema.generate.options.guidance).toEqual({ type: 'number', allowed: 'a number from 0 to 10', minimum: 0, maximum: 10 });
  });

  it('is routed as its data says: path, field names, transform, key header', async () => {
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: h.auth,
      payload: { model: 'google/acme-painter-1', prompt: 'a lighthouse', n: 2, aspect_ratio: '16:9', options: { guidance: 4.5 } },
    });
    expect(res.statusCode).toBe(200);
    expect(res.json().images).toHaveLength(2);
    const sent = h.simulator.received.at(-1)!;
    expect(sent.path).toBe('/v1/models/google/acme-painter-1/predictions');
    expect(sent.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    expect(sent.json).toEqual({ input: { prompt: 'a lighthouse', numberOfImages: 2, extra: { ratio: '16x9' }, guidance: 4.5 } });

    const ideogram = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'acme-ideogram', prompt: 'a fox', aspect_ratio: '3:2' } });
    expect(ideogram.statusCode).toBe(200);
    const legacy = h.simulator.received.at(-1)!;
    expect(legacy.path).toBe('/ideogram/generate');
    expect(legacy.headers['api-key']).toBe(UPSTREAM_KEY);
    expect(legacy.headers.authorization).toBeUndefined();
    expect(legacy.json).toEqual({ image_request: { model: 'V_2', prompt: 'a fox', aspect_ratio: 'ASPECT_3_2' } });
  });

  it('refuses what its rules do not allow, naming the field', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'acme-painter-1', prompt: 'x', aspect_ratio: '3:2' } });
    expect(res.statusCode).toBe(400);
    expect(JSON.stringify(res.json())).toContain('aspect_ratio');
    const unknown = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x' } });
    expect(unknown.statusCode).toBe(400);
  });
});
