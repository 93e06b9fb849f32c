/**
 * A monthly budget for models priced by tokens (gpt-image): the most a request may cost is reserved
 * before the upstream call, from the catalogue's output tokens per image, and settled to the cost
 * the reply's token usage gives.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { INPUT_IMAGE_TILE_TOKENS_MAX, inputImagesOf, maxCostUsd } from '../src/catalogue/catalogue.js';
import { loadCatalogue } from '../src/catalogue/catalogue-schema.js';
import { builtinCatalogueData } from '../src/catalogue/builtin-catalogue.js';
import { mergeOverlay } from '../src/catalogue/catalogue-file.js';
import type { Price } from '../src/catalogue/model-spec.js';
import { ADMIN_KEY, makePng, multipartBody, startHarness, usageRecordOf, type Harness } from './harness.js';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

const admin = { authorization: `Bearer ${ADMIN_KEY}` };

async function mint(h: Harness, policy: Record<string, unknown>): Promise<Record<string, string>> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: `t${randomBytes(3).toString('hex')}`, rpm: 100, ...policy } });
  expect(res.statusCode, res.body).toBe(201);
  return { authorization: `Bearer ${res.json().key}` };
}

const GPT_IMAGE_1: Price = {
  perMillionTokensUsd: { textInput: 5, imageInput: 10, imageOutput: 40 },
  outputTokensPerImage: { low: 408, medium: 1584, high: 6240 },
};

// What the simulator's gpt-image reply costs for one image: 10 text tokens in, 100 image tokens out.
const REAL_COST_ONE_IMAGE = (10 * 5 + 100 * 40) / 1e6;

describe('maxCostUsd', () => {
  it('reserves the output tokens of the request’s quality for each image, and the prompt’s UTF-8 bytes as text tokens', () => {
    expect(maxCostUsd(GPT_IMAGE_1, { images: 2, prompt: 'x', params: { quality: 'low' } })).toBe((2 * 408 * 40 + 1 * 5) / 1e6);
    // "é" is two bytes in UTF-8.
    expect(maxCostUsd(GPT_IMAGE_1, { images: 1, prompt: 'é', params: { quality: 'medium' } })).toBe((1584 * 40 + 2 * 5) / 1e6);
  });

  it('reserves the largest figure for quality auto, none, or one the table does not name', () => {
    const high = maxCostUsd(GPT_IMAGE_1, { images: 1, prompt: 'x', params: { quality: 'high' } });
    expect(maxCostUsd(GPT_IMAGE_1, { images: 1, prompt: 'x', params: { quality: 'auto' } })).toBe(high);
    expect(maxCostUsd(GPT_IMAGE_1, { images: 1, prompt: 'x', params: {} })).toBe(high);
    expect(maxCostUsd(GPT_IMAGE_1, { images: 1, prompt: 'x', params: { quality: 'ultra' } })).toBe(high);
  });

  it('is unknown (null) for a token price without output tokens per image, and for no price', () => {
    expect(maxCostUsd({ perMillionTokensUsd: GPT_IMAGE_1.perMillionTokensUsd } as Price, { images: 1, prompt: 'x', params: {} })).toBeNull();
    expect(maxCostUsd(undefined, { images: 1, prompt: 'x', params: {} })).toBeNull();
  });

  it('is the images times the price for a per-image price', () => {
    expect(maxCostUsd({ perImageUsd: 0.04 }, { images: 3, prompt: 'x', params: {} })).toBe(0.12);
    expect(maxCostUsd({ perImageUsd: 0.04 }, { images: 3, prompt: 'x', params: {}, inputImages: 2 })).toBe(0.12);
  });

  it('reserves each input image of an edit at the most its tokens may be, at the image input price', () => {
    // 4 tiles at 129 tokens and 65 more, plus up to 6240 for high input fidelity, at $10 per million.
    expect(INPUT_IMAGE_TILE_TOKENS_MAX).toBe(581);
    const output = 408 * 40 + 1 * 5;
    expect(maxCostUsd(GPT_IMAGE_1, { images: 1, prompt: 'x', params: { quality: 'low' }, inputImages: 2 })).toBe((output + 2 * (581 + 6240) * 10) / 1e6);
    expect(maxCostUsd(GPT_IMAGE_1, { images: 1, prompt: 'x', params: { quality: 'low' }, options: { input_fidelity: 'high' }, inputImages: 2 })).toBe(
      (output + 2 * (581 + 6240) * 10) / 1e6,
    );
    // An explicit low fidelity adds nothing for it.
    expect(maxCostUsd(GPT_IMAGE_1, { images: 1, prompt: 'x', params: { quality: 'low' }, options: { input_fidelity: 'low' }, inputImages: 2 })).toBe(
      (output + 2 * 581 * 10) / 1e6,
    );
  });

  it('counts an edit’s images and its mask as its input images', () => {
    expect(inputImagesOf({ images: [] })).toBe(0);
    expect(inputImagesOf({ images: [1, 2, 3] })).toBe(3);
    expect(inputImagesOf({ images: [1], mask: 2 })).toBe(2);
  });
});

describe('output_tokens_per_image in the catalogue data', () => {
  const withTable = (table: unknown) => {
    const data = structuredClone(builtinCatalogueData()) as { models: Array<{ id: string; generate: { price: Record<string, unknown> } }> };
    data.models.find((m) => m.id === 'gpt-image-1')!.generate.price.output_tokens_per_image = table;
    return data;
  };

  it('the built-in gpt-image models carry it on every route', () => {
    const models = loadCatalogue(builtinCatalogueData());
    for (const id of ['gpt-image-1', 'gpt-image-1.5']) {
      const model = models.find((m) => m.id === id)!;
      for (const route of [model.generate!, model.edit!.edit!]) {
        expect(route.price).toMatchObject({ outputTokensPerImage: { low: 408, medium: 1584, high: 6240 } });
      }
    }
  });

  it.each([
    [{ high: 0 }, /model "gpt-image-1": generate\.price\.output_tokens_per_image\.high: output tokens per image are a whole number above 0, not 0/],
    [{ high: 62.5 }, /output_tokens_per_image\.high: output tokens per image are a whole number above 0, not 62\.5/],
    [{ high: '6240' }, /output_tokens_per_image\.high: output tokens per image are a whole number above 0, not "6240"/],
    [{}, /output_tokens_per_image: output_tokens_per_image names at least one quality/],
    [[6240], /output_tokens_per_image: output_tokens_per_image is \{<quality>: tokens\}/],
    [{ hihg: 6240 }, /output_tokens_per_image\.hihg: "hihg" is not a quality this route takes \(low, medium, high, auto\)/],
  ])('refuses %j with the entry and the reason', (table, message) => {
    expect(() => loadCatalogue(withTable(table))).toThrow(message);
  });

  it('CATALOGUE_FILE may set it for a model’s token-priced routes, and new token prices keep it', () => {
    const merged = mergeOverlay(builtinCatalogueData(), {
      models: [
        { id: 'gpt-image-1', output_tokens_per_image: { low: 300, high: 5000 } },
        { id: 'gpt-image-1.5', price_per_million_tokens_usd: { text_input: 4, image_input: 8, image_output: 30 } },
      ],
    });
    const models = loadCatalogue(merged);
    expect(models.find((m) => m.id === 'gpt-image-1')!.edit!.edit!.price).toMatchObject({ outputTokensPerImage: { low: 300, high: 5000 } });
    expect(models.find((m) => m.id === 'gpt-image-1.5')!.generate!.price).toEqual({
      perMillionTokensUsd: { textInput: 4, imageInput: 8, imageOutput: 30 },
      outputTokensPerImage: { low: 408, medium: 1584, high: 6240 },
    });
    expect(() => mergeOverlay(builtinCatalogueData(), { models: [{ id: 'ideogram-v3', output_tokens_per_image: { high: 1 } }] })).toThrow(
      /model "ideogram-v3": output_tokens_per_image: the model has no route priced by tokens/,
    );
  });
});

describe('a budgeted key and a token-priced model', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());
  beforeEach(() => h.simulator.reset());

  const generate = (auth: Record<string, string>, payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload });

  it('is refused 429 before any upstream call when the most the request may cost is more than is left', async () => {
    const key = await mint(h, { monthly_budget_usd: 0.005, models: ['gpt-image-1'] });
    const first = await generate(key, { model: 'gpt-image-1', prompt: 'b1' });
    expect(first.statusCode).toBe(429);
    expect(first.json().error.code).toBe('rate_limited');
    // Quality unset reserves the highest: 6240 output tokens at $40 per million, and 2 prompt bytes at $5.
    expect(first.json().error.message).toMatch(/monthly_budget_usd limit reached: .* has spent \$0\.0000; this request would cost about \$0\.2496/);
    expect(first.headers['x-ratelimit-budget-remaining-usd']).toBe('0.005');
    const two = await generate(key, { model: 'gpt-image-1', prompt: 'b1', n: 2 });
    expect(two.statusCode).toBe(429);
    expect(two.json().error.message).toMatch(/would cost about \$0\.4992/);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('reserves the most a request may cost, then settles to the cost of the tokens upstream reports', async () => {
    const key = await mint(h, { monthly_budget_usd: 0.05 });
    const reserve = (408 * 40 + 1 * 5) / 1e6;
    const first = await generate(key, { model: 'gpt-image-1', prompt: 'x', quality: 'low' });
    expect(first.statusCode, first.body).toBe(200);
    expect(REAL_COST_ONE_IMAGE).toBeLessThan(reserve);
    // The answer's headers count what the request really cost, as settled, not its reservation.
    expect(Number(first.headers['x-ratelimit-budget-remaining-usd'])).toBeCloseTo(0.05 - REAL_COST_ONE_IMAGE, 6);
    expect(first.json().usage.estimated_cost_usd).toBe(REAL_COST_ONE_IMAGE);
    // The next one finds the first settled to its real cost, not to what it reserved.
    const second = await generate(key, { model: 'gpt-image-1', prompt: 'x', quality: 'low' });
    expect(second.statusCode, second.body).toBe(200);
    expect(Number(second.headers['x-ratelimit-budget-remaining-usd'])).toBeCloseTo(0.05 - 2 * REAL_COST_ONE_IMAGE, 6);
  });

  it('quality low reserves less than high: a budget that fits low is refused high and auto', async () => {
    const key = await mint(h, { monthly_budget_usd: 0.05 });
    const high = await generate(key, { model: 'gpt-image-1', prompt: 'x', quality: 'high' });
    expect(high.statusCode).toBe(429);
    expect(high.json().error.message).toMatch(/would cost about \$0\.2496/);
    expect((await generate(key, { model: 'gpt-image-1', prompt: 'x', quality: 'auto' })).statusCode).toBe(429);
    expect(h.simulator.received).toHaveLength(0);
    const low = await generate(key, { model: 'gpt-image-1', prompt: 'x', quality: 'low' });
    expect(low.statusCode, low.body).toBe(200);
    expect(h.simulator.received).toHaveLength(1);
  });

  it('an edit reserves the same way, its input images included, before any upstream call', async () => {
    const LOW_FIDELITY = JSON.stringify({ input_fidelity: 'low' });
    const key = await mint(h, { monthly_budget_usd: 0.05 });
    const edit = async (fields: Record<string, string>, images = 1) => {
      const files = [];
      for (let i = 0; i < images; i++) files.push({ field: 'image', filename: `a${i}.png`, bytes: await makePng() });
      const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it blue', ...fields }, files);
      return h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...key, ...headers }, payload });
    };
    const high = await edit({ quality: 'high', options: LOW_FIDELITY });
    expect(high.statusCode).toBe(429);
    expect(high.json().error.message).toMatch(/monthly_budget_usd/);
    // Low quality, but its input image may be high fidelity: 408 output tokens at $40, 12 prompt
    // bytes at $5, and the image at up to 581 + 6240 tokens at $10.
    const fidelityUnsaid = await edit({ quality: 'low' });
    expect(fidelityUnsaid.statusCode).toBe(429);
    expect(fidelityUnsaid.json().error.message).toMatch(/would cost about \$0\.0846/);
    // Six images at low fidelity: 6 × 581 tokens at $10 and the low output, over $0.05 too.
    const many = await edit({ quality: 'low', options: LOW_FIDELITY }, 6);
    expect(many.statusCode).toBe(429);
    expect(many.json().error.message).toMatch(/would cost about \$0\.0512/);
    expect(h.simulator.received).toHaveLength(0);
    const low = await edit({ quality: 'low', options: LOW_FIDELITY });
    expect(low.statusCode, low.body).toBe(200);
    expect(low.json().usage.estimated_cost_usd).toBe(REAL_COST_ONE_IMAGE);
  });

  it('the OpenAI form reserves the same way, before any upstream call', async () => {
    const key = await mint(h, { monthly_budget_usd: 0.05 });
    const res = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: key, payload: { model: 'gpt-image-1', prompt: 'x', quality: 'high' } });
    expect(res.statusCode).toBe(429);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('an async job reserves the same way, and settles to its real cost when it ends', async () => {
    const key = await mint(h, { monthly_budget_usd: 0.05 });
    const refused = await generate(key, { model: 'gpt-image-1', prompt: 'x', async: true });
    expect(refused.statusCode).toBe(429);
    expect(h.simulator.received).toHaveLength(0);
    const accepted = await generate(key, { model: 'gpt-image-1', prompt: 'x', quality: 'low', async: true });
    expect(accepted.statusCode, accepted.body).toBe(202);
    const job = await h.app.inject({ method: 'GET', url: `/v1/jobs/${accepted.json().id}?wait=30`, headers: key });
    expect(job.json().status).toBe('succeeded');
    const next = await generate(key, { model: 'gpt-image-1', prompt: 'x', quality: 'low' });
    expect(Number(next.headers['x-ratelimit-budget-remaining-usd'])).toBeCloseTo(0.05 - 2 * REAL_COST_ONE_IMAGE, 6);
  });

  it('a fallback chain reserves the most its dearest model may cost', async () => {
    // Quality low: gpt-image-1.5 reserves 408 tokens at $32 per million, gpt-image-1 at $40.
    const key = await mint(h, { monthly_budget_usd: 0.015 });
    const chain = await generate(key, { model: 'gpt-image-1.5', prompt: 'x', quality: 'low', fallback_models: ['gpt-image-1'] });
    expect(chain.statusCode).toBe(429);
    expect(chain.json().error.message).toMatch(/would cost about \$0\.0163/);
    expect(h.simulator.received).toHaveLength(0);
    const alone = await generate(key, { model: 'gpt-image-1.5', prompt: 'x', quality: 'low', fallback_models: [] });
    expect(alone.statusCode, alone.body).toBe(200);
  });

  it('GET /v1/models shows the output tokens per image', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/models/gpt-image-1', headers: h.auth });
    expect(res.json()).toMatchObject({ output_tokens_per_image: { low: 408, medium: 1584, high: 6240 } });
  });
});

describe('a token-priced catalogue route without output_tokens_per_image', () => {
  let h: Harness;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gw-token-budget-'));
    const file = join(dir, 'catalogue.yaml');
    // gpt-image-2 priced by tokens, with no output tokens per image: nothing can be reserved up front.
    writeFileSync(file, 'models:\n  - id: gpt-image-2\n    price_per_million_tokens_usd: { text_input: 5, image_input: 10, image_output: 40 }\n');
    h = await startHarness({ CATALOGUE_FILE: file });
  });
  afterAll(async () => {
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('counts 0 up front, settles to the real cost, and is refused once the budget is spent', async () => {
    const key = await mint(h, { monthly_budget_usd: 0.005 });
    const generate = () => h.app.inject({ method: 'POST', url: '/v1/generate', headers: key, payload: { model: 'gpt-image-2', prompt: 'x' } });
    const first = await generate();
    expect(first.statusCode, first.body).toBe(200);
    // Reserved nothing, settled to what it cost.
    expect(Number(first.headers['x-ratelimit-budget-remaining-usd'])).toBeCloseTo(0.005 - REAL_COST_ONE_IMAGE, 6);
    expect(first.json().usage.estimated_cost_usd).toBe(REAL_COST_ONE_IMAGE);
    // What is left (about $0.001) is not spent yet: the next one runs, and takes the key over its budget.
    expect((await generate()).statusCode).toBe(200);
    h.simulator.reset();
    const over = await generate();
    expect(over.statusCode).toBe(429);
    expect(over.json().error.message).toMatch(/monthly_budget_usd limit reached: .* has spent \$0\.0081; this request would cost about \$0\.0000/);
    expect(h.simulator.received).toHaveLength(0);
    const model = await h.app.inject({ method: 'GET', url: '/v1/models/gpt-image-2', headers: h.auth });
    expect(model.json().price_per_million_tokens_usd).toEqual({ text_input: 5, image_input: 10, image_output: 40 });
    expect(model.json()).not.toHaveProperty('output_tokens_per_image');
  });
});

describe('a token-priced reply without its token counts', () => {
  let upstream: Server;
  let h: Harness;
  beforeAll(async () => {
    const png = await makePng();
    // A gpt-image answer with its image and no `usage`.
    upstream = createServer((req, res) => {
      req.resume();
      req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ output: { b64_json: [{ bytesBase64: png.toString('base64'), mimeType: 'png' }] } })));
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    h = await startHarness({ AIHUBMIX_BASE_URL: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` });
  });
  afterAll(async () => {
    await h?.close();
    await new Promise((resolve) => upstream?.close(resolve));
  });

  it('costs the most it could (what was reserved), alike in the answer, the usage record and the budget', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'no-usage', monthly_budget_usd: 1, rpm: 100 } });
    const { id, key } = res.json();
    const generated = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${key}` }, payload: { model: 'gpt-image-1', prompt: 'x', quality: 'low' } });
    expect(generated.statusCode, generated.body).toBe(200);
    const most = (408 * 40 + 1 * 5) / 1e6;
    expect(generated.json().usage.estimated_cost_usd).toBe(most);
    expect(Number(generated.headers['x-ratelimit-budget-remaining-usd'])).toBeCloseTo(1 - most, 6);
    expect((await h.app.counters.peek(`usd:${id}:${new Date().toISOString().slice(0, 7)}`)).total / 1e6).toBeCloseTo(most, 6);
    const record = await usageRecordOf(h, generated.headers['x-request-id'] as string);
    expect(record.estimated_cost_usd).toBeCloseTo(most, 6);
  });
});
