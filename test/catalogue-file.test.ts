/**
 * CATALOGUE_FILE: an operator's overlay of the built-in catalogue, at start and on reload.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { loadConfig, ConfigError } from '../src/config.js';
import { ADMIN_KEY, makePng, multipartBody, startHarness, type Harness } from './harness.js';

const ADD = `models:
  - id: gpt-image-2.5
    from: gpt-image-2
    upstream_model: gpt-image-2.5
    price_per_image_usd: 0.05
`;

let dir: string;
let file: string;
let h: Harness | undefined;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'gw-catfile-'));
  file = join(dir, 'catalogue.yaml');
});
afterEach(async () => {
  await h?.close();
  h = undefined;
  rmSync(dir, { recursive: true, force: true });
});

async function start(yaml: string, env: Record<string, string> = {}): Promise<Harness> {
  writeFileSync(file, yaml);
  h = await startHarness({ CATALOGUE_FILE: file, ...env });
  return h;
}
const generate = (model: string, extra: Record<string, unknown> = {}) =>
  h!.app.inject({ method: 'POST', url: '/v1/generate', headers: h!.auth, payload: { model, prompt: 'a lighthouse', ...extra } });
const models = async () => (await h!.app.inject({ method: 'GET', url: '/v1/models', headers: h!.auth })).json().data as Array<Record<string, unknown>>;

describe('CATALOGUE_FILE at start', () => {
  it('adds a model from another: generate and edit reach upstream under the new upstream name, at the new price', async () => {
    await start(ADD);
    const res = await generate('gpt-image-2.5', { n: 2 });
    expect(res.statusCode).toBe(200);
    expect(res.json().model).toBe('gpt-image-2.5');
    expect(res.json().usage.estimated_cost_usd).toBe(0.1);
    expect(h!.simulator.received.map((r) => r.path)).toEqual(['/v1/models/openai/gpt-image-2.5/predictions']);

    const { payload, headers } = multipartBody({ model: 'gpt-image-2.5', prompt: 'make it blue' }, [{ field: 'image', filename: 'a.png', bytes: await makePng() }]);
    const edit = await h!.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h!.auth, ...headers }, payload });
    expect(edit.statusCode).toBe(200);
    const sent = h!.simulator.received.at(-1)!;
    expect(sent.path).toBe('/v1/images/edits');
    expect(sent.fields?.model).toBe('gpt-image-2.5');

    const listed = (await models()).find((m) => m.id === 'gpt-image-2.5');
    expect(listed?.price_per_image_usd).toBe(0.05);
    // The model it was copied from is unchanged.
    expect((await models()).find((m) => m.id === 'gpt-image-2')?.price_per_image_usd).toBeNull();
  });

  it('overrides the price and description of a built-in model', async () => {
    await start('models:\n  - id: imagen-4.0-generate-001\n    price_per_image_usd: 0.07\n    description: Imagen at our price\n');
    const listed = (await models()).find((m) => m.id === 'imagen-4.0-generate-001')!;
    expect(listed.price_per_image_usd).toBe(0.07);
    expect(listed.description).toBe('Imagen at our price');
    expect((await generate('imagen-4.0-generate-001')).json().usage.estimated_cost_usd).toBe(0.07);
  });

  it('retires a model: 410 model_retired naming the replacement, nothing sent upstream, and /v1/models marks it', async () => {
    await start('models:\n  - id: dall-e-3\n    retired: true\n    replacement: gpt-image-2\n');
    const res = await generate('dall-e-3');
    expect(res.statusCode).toBe(410);
    expect(res.json().error.code).toBe('model_retired');
    expect(res.json().error.message).toContain('gpt-image-2');
    const openai = await h!.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h!.auth, payload: { model: 'dall-e-3', prompt: 'x' } });
    expect(openai.statusCode).toBe(410);
    expect(openai.json().error.message).toContain('gpt-image-2');
    expect(h!.simulator.received).toHaveLength(0);
    const listed = (await models()).find((m) => m.id === 'dall-e-3');
    expect(listed).toMatchObject({ retired: true, replacement: 'gpt-image-2' });
    expect((await models()).find((m) => m.id === 'gpt-image-2')?.retired).toBeUndefined();
    // A key whose allow-list leaves the retired model out is refused it as such (403), not pointed to
    // a replacement it may not use either.
    const minted = await h!.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'narrow', models: ['gpt-image-1*'] } });
    expect(minted.statusCode, minted.body).toBe(201);
    const narrow = await h!.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${minted.json().key}` }, payload: { model: 'dall-e-3', prompt: 'x' } });
    expect(narrow.statusCode, narrow.body).toBe(403);
    expect(narrow.json().error.details[0]).toMatchObject({ field: 'model', message: 'is not in this key’s allow-list' });
    // A key that may use the retired model but not its replacement is told so, not sent to a 403 next.
    const mintedOld = await h!.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'old', id: 'old-web', models: ['dall-e-3', 'gpt-image-1'] } });
    expect(mintedOld.statusCode, mintedOld.body).toBe(201);
    const old = await h!.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${mintedOld.json().key}` }, payload: { model: 'dall-e-3', prompt: 'x' } });
    expect(old.statusCode, old.body).toBe(410);
    expect(old.json().error.message).toBe("dall-e-3 is retired; its replacement gpt-image-2 is not in key old-web's allow-list: an operator may allow it");
    // A browser token names its own list.
    const tokenMinted = await h!.app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${mintedOld.json().key}` }, payload: { models: ['dall-e-3'] } });
    expect(tokenMinted.statusCode, tokenMinted.body).toBe(201);
    const byToken = await h!.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${tokenMinted.json().token}` }, payload: { model: 'dall-e-3', prompt: 'x' } });
    expect(byToken.statusCode, byToken.body).toBe(410);
    expect(byToken.json().error.message).toMatch(/^dall-e-3 is retired; its replacement gpt-image-2 is not in browser token \S+'s models$/);
    // A model outside the allow-list named as a fallback model: its 403 too.
    const asFallback = await h!.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { authorization: `Bearer ${minted.json().key}` },
      payload: { model: 'gpt-image-1', prompt: 'x', fallback_models: ['dall-e-3'] },
    });
    expect(asFallback.statusCode, asFallback.body).toBe(403);
    expect(asFallback.json().error.details[0].field).toBe('fallback_models[0]');
  });

  it('a retired describe model outside a key allow-list is refused as such (403), not as retired', async () => {
    await start('models:\n  - id: ideogram-describe\n    retired: true\n    replacement: gpt-image-2\n');
    const minted = await h!.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'narrow', models: ['gpt-image-1*'] } });
    const body = { model: 'ideogram-describe', image: `data:image/png;base64,${(await makePng()).toString('base64')}` };
    const narrow = await h!.app.inject({ method: 'POST', url: '/v1/describe', headers: { authorization: `Bearer ${minted.json().key}` }, payload: body });
    expect(narrow.statusCode, narrow.body).toBe(403);
    // A key allowed every model is told it is retired.
    const wide = await h!.app.inject({ method: 'POST', url: '/v1/describe', headers: h!.auth, payload: body });
    expect(wide.statusCode, wide.body).toBe(410);
  });

  it('disables a model: not listed, and refused as unknown', async () => {
    await start('models:\n  - id: dall-e-3\n    disabled: true\n  - id: openai/gpt-image-1.5\n    disabled: true\n');
    expect((await models()).some((m) => m.id === 'dall-e-3')).toBe(false);
    // Named by an alias: the model itself is disabled.
    expect((await models()).some((m) => m.id === 'gpt-image-1.5')).toBe(false);
    const res = await generate('dall-e-3');
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('model');
    expect(h!.simulator.received).toHaveLength(0);
  });

  it('a file that does not validate stops the start, naming CATALOGUE_FILE, the entry and the reason', () => {
    const cases: Array<[string, RegExp]> = [
      ['models:\n  - id: x-1\n    from: no-such-model\n    upstream_model: x-1\n', /CATALOGUE_FILE .*model "x-1": from: "no-such-model" is not a model/],
      ['models:\n  - id: dall-e-3\n    retired: true\n', /CATALOGUE_FILE .*model "dall-e-3": retired needs a replacement/],
      ['models:\n  - id: dall-e-3\n    retired: true\n    replacement: nope\n', /CATALOGUE_FILE .*model "dall-e-3": replacement: "nope" is not a model/],
      ['models:\n  - id: gpt-image-2\n    price_per_image_usd: -1\n', /CATALOGUE_FILE .*model "gpt-image-2": price_per_image_usd/],
      ['models:\n  - id: new-one\n    from: gpt-image-2\n', /CATALOGUE_FILE .*model "new-one": from needs upstream_model/],
      // The parser's own message, without the colon that introduced the excerpt left out.
      ['models: [ {', /CATALOGUE_FILE .*cannot be read as YAML: .*at line \d+, column \d+$/],
      ['models:\n  - id: dall-e-3\n    retired: false\n', /CATALOGUE_FILE .*model "dall-e-3": retired: must be true, or left out \(got false\)$/],
      ['models:\n  - id: dall-e-3\n    disabled: yes please\n', /CATALOGUE_FILE .*model "dall-e-3": disabled: must be true, or left out \(got "yes please"\)$/],
      ['models:\n  - id: gpt-image-2\n    price_per_image: 0.05\n', /CATALOGUE_FILE .*model "gpt-image-2": unknown field price_per_image/],
      ['models:\n  - id: imagen-9\n    price_per_image_usd: 0.05\n', /CATALOGUE_FILE .*model "imagen-9": names no model of the catalogue/],
      // A route given beside from would be dropped: the copy serves from's routes.
      [
        'models:\n  - id: gpt-image-2.5\n    from: gpt-image-2\n    upstream_model: gpt-image-2.5\n    generate: { path: /v1/images/generations }\n',
        /CATALOGUE_FILE .*model "gpt-image-2.5": generate cannot go with from \(the copy takes every route and option of "gpt-image-2"\)/,
      ],
    ];
    for (const [yaml, message] of cases) {
      writeFileSync(file, yaml);
      expect(() => loadConfig({ CATALOGUE_FILE: file })).toThrow(ConfigError);
      expect(() => loadConfig({ CATALOGUE_FILE: file })).toThrow(message);
    }
  });

  it('a price past its bound stops the start naming CATALOGUE_FILE, the model, the field and the bound', () => {
    const cases: Array<[string, string]> = [
      ['models:\n  - id: gpt-image-2\n    price_per_image_usd: 1e308\n', 'model "gpt-image-2": price_per_image_usd: a price per image is at most 1000 USD'],
      ['models:\n  - id: gpt-image-2.5\n    from: gpt-image-2\n    upstream_model: gpt-image-2.5\n    price_per_image_usd: 5000\n', 'model "gpt-image-2.5": price_per_image_usd: a price per image is at most 1000 USD'],
      [
        'models:\n  - id: gpt-image-1\n    price_per_million_tokens_usd: { text_input: 5, image_input: 10, image_output: 1e9 }\n',
        'model "gpt-image-1": price_per_million_tokens_usd.image_output: a price per million tokens is at most 100000 USD',
      ],
    ];
    for (const [yaml, message] of cases) {
      writeFileSync(file, yaml);
      expect(() => loadConfig({ CATALOGUE_FILE: file })).toThrow(ConfigError);
      expect(() => loadConfig({ CATALOGUE_FILE: file })).toThrow(`invalid configuration: CATALOGUE_FILE ${file}: ${message}`);
    }
    writeFileSync(file, 'models:\n  - id: gpt-image-2\n    price_per_image_usd: 1000\n');
    expect(() => loadConfig({ CATALOGUE_FILE: file })).not.toThrow();
  });

  it('a reload with a price past its bound is refused, and the last good catalogue keeps serving its price', async () => {
    await start(ADD);
    writeFileSync(file, ADD.replace('0.05', '1e308'));
    const result = h!.app.reloadCatalogue();
    expect(result.ok ? '' : result.error).toMatch(/model "gpt-image-2.5": price_per_image_usd: a price per image is at most 1000 USD/);
    const res = await generate('gpt-image-2.5', { n: 2 });
    expect(res.statusCode).toBe(200);
    expect(res.json().usage.estimated_cost_usd).toBe(0.1);
  });

  it('a path with no file, or a directory, stops the start saying so rather than as a YAML fault', () => {
    const missing = join(dir, 'missing.yaml');
    expect(() => loadConfig({ CATALOGUE_FILE: missing })).toThrow(ConfigError);
    expect(() => loadConfig({ CATALOGUE_FILE: missing })).toThrow(`invalid configuration: CATALOGUE_FILE ${missing}: the file does not exist`);
    expect(() => loadConfig({ CATALOGUE_FILE: dir })).toThrow(`invalid configuration: CATALOGUE_FILE ${dir}: is a directory; give the path of the YAML file`);
    // A relative path is named as given and as read.
    expect(() => loadConfig({ CATALOGUE_FILE: 'no-such-catalogue.yaml' })).toThrow(
      `CATALOGUE_FILE no-such-catalogue.yaml: the file does not exist (${resolve('no-such-catalogue.yaml')}: relative paths are read from the working directory)`,
    );
  });

  it('PRICE_OVERRIDES may name a model the file adds, and not one it disables', () => {
    writeFileSync(file, ADD);
    expect(loadConfig({ CATALOGUE_FILE: file, PRICE_OVERRIDES: '{"gpt-image-2.5": 0.04}' }).PRICE_OVERRIDES).toEqual({ 'gpt-image-2.5': 0.04 });
    writeFileSync(file, 'models:\n  - id: dall-e-3\n    disabled: true\n');
    expect(() => loadConfig({ CATALOGUE_FILE: file, PRICE_OVERRIDES: '{"dall-e-3": 0.04}' })).toThrow(/PRICE_OVERRIDES names "dall-e-3"/);
  });
});

describe('CATALOGUE_FILE reload', () => {
  it('a good reload adds a model without a restart', async () => {
    await start('models: []\n');
    expect((await generate('gpt-image-2.5')).statusCode).toBe(400);
    writeFileSync(file, ADD);
    expect(h!.app.reloadCatalogue()).toEqual({ ok: true });
    const res = await generate('gpt-image-2.5');
    expect(res.statusCode).toBe(200);
    expect(h!.simulator.received.map((r) => r.path)).toEqual(['/v1/models/openai/gpt-image-2.5/predictions']);
    expect((await models()).some((m) => m.id === 'gpt-image-2.5')).toBe(true);
    expect((await h!.app.inject({ method: 'GET', url: '/docs' })).body).toContain('gpt-image-2.5');
  });

  it('a broken reload is logged and the last good catalogue keeps serving', async () => {
    await start(ADD);
    writeFileSync(file, 'models:\n  - id: gpt-image-3\n    from: gpt-image-2\n');
    const result = h!.app.reloadCatalogue();
    expect(result.ok).toBe(false);
    const warning = h!.logs.find((line) => line.includes('CATALOGUE_FILE reload refused'));
    expect(warning).toContain('gpt-image-3');
    expect(warning).toContain('upstream_model');
    expect((await generate('gpt-image-2.5')).statusCode).toBe(200);
    expect((await models()).some((m) => m.id === 'gpt-image-2.5')).toBe(true);
  });

  it('a reload that would strand PRICE_OVERRIDES is refused', async () => {
    await start(ADD, { PRICE_OVERRIDES: '{"gpt-image-2.5": 0.04}' });
    writeFileSync(file, 'models: []\n');
    const result = h!.app.reloadCatalogue();
    expect(result.ok).toBe(false);
    expect(result.ok ? '' : result.error).toContain('PRICE_OVERRIDES names "gpt-image-2.5"');
    expect((await generate('gpt-image-2.5')).statusCode).toBe(200);
  });

  it('a reload that would leave a key allow-list matching nothing is refused', async () => {
    const keys = join(dir, 'keys.yaml');
    writeFileSync(keys, 'keys:\n  - id: k1\n    team: t1\n    key: gk-test-catfile-0123456789abcdef\n    models: [gpt-image-2.5]\n');
    await start(ADD, { GATEWAY_KEYS_FILE: keys });
    writeFileSync(file, 'models: []\n');
    const result = h!.app.reloadCatalogue();
    expect(result.ok ? '' : result.error).toMatch(/key k1 allows models gpt-image-2.5/);
    expect(h!.app.catalogue.find('gpt-image-2.5')).toBeDefined();
  });

  it('SIGHUP reloads the file', async () => {
    await start('models: []\n');
    writeFileSync(file, ADD);
    process.emit('SIGHUP', 'SIGHUP');
    expect(h!.app.catalogue.find('gpt-image-2.5')?.id).toBe('gpt-image-2.5');
  });

  it('a change to the file is picked up by the watcher, without a call or a signal', async () => {
    await start('models: []\n');
    writeFileSync(file, ADD);
    await vi.waitFor(() => expect(h!.app.catalogue.find('gpt-image-2.5')?.id).toBe('gpt-image-2.5'), { timeout: 10_000, interval: 50 });
    expect(h!.logs.some((line) => line.includes('CATALOGUE_FILE reloaded'))).toBe(true);
  });
});

describe('from + upstream_model on every built-in model', () => {
  it('each route of the copy names the new upstream model where the original named its own', async () => {
    const { builtinCatalogueData } = await import('../src/catalogue/builtin-catalogue.js');
    const { mergeOverlay } = await import('../src/catalogue/catalogue-file.js');
    const { loadCatalogue } = await import('../src/catalogue/catalogue-schema.js');
    // Ideogram's upscale and describe paths name no model (one model serves each): nothing to rename, tested below.
    const builtin = { models: (builtinCatalogueData() as { models: Array<{ id: string; generate?: unknown; edit?: unknown }> }).models.filter((m) => m.generate || m.edit) };
    const overlay = { models: builtin.models.map((m) => ({ id: `${m.id}-copy`, from: m.id, upstream_model: 'brand-new-model' })) };
    const merged = loadCatalogue(mergeOverlay(builtin, overlay));
    for (const original of builtin.models) {
      const copy = merged.find((m) => m.id === `${original.id}-copy`)!;
      const routes = [copy.generate, ...Object.values(copy.edit ?? {})].filter((r) => r !== undefined);
      expect(routes.length).toBeGreaterThan(0);
      for (const route of routes) {
        const named = route.path.split('/').includes('brand-new-model') || JSON.stringify(route.fixed ?? {}).includes('"model":"brand-new-model"');
        expect(named, `${original.id} ${route.path}`).toBe(true);
      }
    }
  });
});

describe('upscale and describe models in the overlay', () => {
  it('a copy of ideogram-upscale or ideogram-describe is refused: their routes name no upstream model to replace', async () => {
    const { builtinCatalogueData } = await import('../src/catalogue/builtin-catalogue.js');
    const { mergeOverlay } = await import('../src/catalogue/catalogue-file.js');
    for (const from of ['ideogram-upscale', 'ideogram-describe']) {
      expect(() => mergeOverlay(builtinCatalogueData(), { models: [{ id: `${from}-2`, from, upstream_model: 'V_9' }] })).toThrow(/names no upstream model to replace/);
    }
  });

  it('price_per_image_usd reprices the upscale route; on describe it is refused, describe makes no image', async () => {
    const { builtinCatalogueData } = await import('../src/catalogue/builtin-catalogue.js');
    const { mergeOverlay } = await import('../src/catalogue/catalogue-file.js');
    const { loadCatalogue } = await import('../src/catalogue/catalogue-schema.js');
    const merged = loadCatalogue(mergeOverlay(builtinCatalogueData(), { models: [{ id: 'ideogram-upscale', price_per_image_usd: 0.05 }] }));
    expect(merged.find((m) => m.id === 'ideogram-upscale')!.upscale!.price).toEqual({ perImageUsd: 0.05 });
    expect(() => mergeOverlay(builtinCatalogueData(), { models: [{ id: 'ideogram-describe', price_per_image_usd: 0.01 }] })).toThrow(/only describes makes no image and takes no price/);
  });
});

describe('a full declaration', () => {
  it('adds a model of a known family declared in the shape of models.yaml', async () => {
    const builtin = (await import('../src/catalogue/builtin-catalogue.js')).builtinCatalogueData() as { models: Array<Record<string, any>> };
    const imagen = structuredClone(builtin.models.find((m) => m.id === 'imagen-4.0-generate-001')!);
    imagen.id = 'imagen-5.0-generate-001';
    imagen.aliases = [];
    imagen.generate.path = '/v1/models/google/imagen-5.0-generate-001/predictions';
    const { stringify } = await import('yaml');
    await start(stringify({ models: [{ ...imagen, price_per_image_usd: 0.03 }] }));
    const res = await generate('imagen-5.0-generate-001');
    expect(res.statusCode).toBe(200);
    expect(res.json().usage.estimated_cost_usd).toBe(0.03);
    expect(h!.simulator.received.map((r) => r.path)).toEqual(['/v1/models/google/imagen-5.0-generate-001/predictions']);
  });

  it('a model may declare qualities of its own: they reach upstream, and a refusal lists them', async () => {
    const builtin = (await import('../src/catalogue/builtin-catalogue.js')).builtinCatalogueData() as { models: Array<Record<string, any>> };
    const glm = structuredClone(builtin.models.find((m) => m.id === 'glm-image')!);
    glm.id = 'glm-image-ultra';
    glm.aliases = [];
    glm.generate.params.quality.rule = { oneOf: ['ultra', 'hd'] };
    const { stringify } = await import('yaml');
    await start(stringify({ models: [glm] }));
    const res = await generate('glm-image-ultra', { quality: 'ultra' });
    expect(res.statusCode).toBe(200);
    expect(h!.simulator.received.at(-1)!.json).toMatchObject({ input: { quality: 'ultra' } });
    const refused = await generate('glm-image-ultra', { quality: 'standard' });
    expect(refused.statusCode).toBe(400);
    expect(refused.json().error.details[0]).toMatchObject({ field: 'quality', allowed: ['ultra', 'hd'] });
  });
});
