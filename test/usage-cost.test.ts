import { afterEach, describe, expect, it } from 'vitest';
import { ModelCatalogue, estimateCostUsd } from '../src/catalogue/catalogue.js';
import type { Price } from '../src/catalogue/model-spec.js';
import { MODELS } from '../src/catalogue/models.js';
import { ConfigError, loadConfig } from '../src/config.js';
import { startHarness, type Harness } from './harness.js';

const GPT_IMAGE_1: Price = { perMillionTokensUsd: { textInput: 5, imageInput: 10, imageOutput: 40 }, outputTokensPerImage: { low: 408, medium: 1584, high: 6240 } };
const IDEOGRAM_SPEED: Price = { byOption: 'rendering_speed', defaultValue: 'DEFAULT', perImageUsd: { TURBO: 0.03, DEFAULT: 0.06 } };

describe('estimateCostUsd', () => {
  it('prices text input, image input and image output tokens each at their own rate', () => {
    const usage = { input_tokens: 1050, output_tokens: 4160, input_tokens_details: { text_tokens: 50, image_tokens: 1000 } };
    // 50 * 5 + 1000 * 10 + 4160 * 40 = 176,650 micro-dollars per million tokens
    expect(estimateCostUsd(GPT_IMAGE_1, { images: 1, upstreamTokens: usage })).toBe(0.17665);
  });

  it('prices all input tokens as text when the reply does not split them', () => {
    expect(estimateCostUsd(GPT_IMAGE_1, { images: 1, upstreamTokens: { input_tokens: 10, output_tokens: 100 } })).toBe(0.00405);
  });

  it('is unknown (null, not 0) for a token price when the reply carries no token usage', () => {
    expect(estimateCostUsd(GPT_IMAGE_1, { images: 1 })).toBeNull();
  });

  it('multiplies a per-image price, picked by option where the price depends on one', () => {
    expect(estimateCostUsd({ perImageUsd: 0.04 }, { images: 3 })).toBe(0.12);
    expect(estimateCostUsd(IDEOGRAM_SPEED, { images: 2, options: { rendering_speed: 'TURBO' } })).toBe(0.06);
    expect(estimateCostUsd(IDEOGRAM_SPEED, { images: 2 })).toBe(0.12);
  });

  it('is unknown (null, not 0) for a model without a price', () => {
    expect(estimateCostUsd(undefined, { images: 2 })).toBeNull();
  });
});

describe('PRICE_OVERRIDES', () => {
  it('replaces the price of a model named by id or alias, for generate and edit', () => {
    const catalogue = new ModelCatalogue(MODELS, { 'openai/gpt-image-2': 0.05 });
    const model = catalogue.resolve('gpt-image-2');
    expect(model.generate?.price).toEqual({ perImageUsd: 0.05 });
    expect(model.edit?.edit?.price).toEqual({ perImageUsd: 0.05 });
    expect(catalogue.resolve('gpt-image-1').generate?.price).toEqual(GPT_IMAGE_1);
  });

  it.each([
    ['not json', /PRICE_OVERRIDES must be a JSON object/],
    ['[0.05]', /PRICE_OVERRIDES must be a JSON object/],
    ['{"no-such-model": 0.05}', /PRICE_OVERRIDES names "no-such-model"/],
    ['{"gpt-image-2": -1}', /PRICE_OVERRIDES: the price of "gpt-image-2"/],
    ['{"gpt-image-2": "0.05"}', /PRICE_OVERRIDES: the price of "gpt-image-2"/],
  ])('refuses %s with a message naming the variable', (value, message) => {
    expect(() => loadConfig({ PRICE_OVERRIDES: value })).toThrow(ConfigError);
    expect(() => loadConfig({ PRICE_OVERRIDES: value })).toThrow(message);
  });
});

describe('estimated cost in answers', () => {
  let h: Harness;
  afterEach(async () => h.close());

  it('a gpt-image answer is priced from the token usage upstream reports', async () => {
    h = await startHarness();
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', n: 2 } });
    expect(res.json().usage).toMatchObject({ images: 2, estimated_cost_usd: 0.00805, upstream_tokens: { input_tokens: 10, output_tokens: 200 } });
  });

  it('GET /v1/models shows token prices for gpt-image models', async () => {
    h = await startHarness();
    const res = await h.app.inject({ method: 'GET', url: '/v1/models/gpt-image-1', headers: h.auth });
    expect(res.json()).toMatchObject({ price_per_image_usd: null, price_per_million_tokens_usd: { text_input: 5, image_input: 10, image_output: 40 } });
  });

  it('a model without a known price answers estimated_cost_usd null', async () => {
    h = await startHarness();
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'imagen-4.0-generate-001', prompt: 'x' } });
    expect(res.json().usage.estimated_cost_usd).toBeNull();
  });

  it('an overridden price applies to answers and to GET /v1/models', async () => {
    h = await startHarness({ PRICE_OVERRIDES: '{"gpt-image-2": 0.05}' });
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-2', prompt: 'x', n: 2 } });
    expect(res.json().usage.estimated_cost_usd).toBe(0.1);
    const model = await h.app.inject({ method: 'GET', url: '/v1/models/gpt-image-2', headers: h.auth });
    expect(model.json().price_per_image_usd).toBe(0.05);
  });
});
