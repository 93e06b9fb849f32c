/**
 * Names a client chooses (models, option names, sizes, values, field names) are looked up as own
 * properties only: every name of Object.prototype, and __proto__, is answered with a clear 4xx on
 * every route that spends money, never a 500, and a body carrying "__proto__" pollutes nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makePng, multipartBody, startHarness, type Harness } from './harness.js';

const NAMES = [...Object.getOwnPropertyNames(Object.prototype), '__proto__'];

let h: Harness;
let png: Buffer;
let dataUrl: string;

beforeAll(async () => {
  h = await startHarness({ RATE_LIMIT_RPM: '1000000' });
  png = await makePng();
  dataUrl = `data:image/png;base64,${png.toString('base64')}`;
});
afterAll(async () => h.close());

/** An object with `name` as an own key, "__proto__" included (a literal would set the prototype instead). */
const own = (name: string, value: unknown): Record<string, unknown> => JSON.parse(`{${JSON.stringify(name)}:${JSON.stringify(value)}}`);

/** The places of a request a client names things, each as the body of a generate (JSON) for `name`. */
function placements(name: string): Array<[place: string, body: Record<string, unknown>]> {
  return [
    ['an option name', { model: 'gpt-image-1', prompt: 'x', options: own(name, 1) }],
    ['an option name of a model with options', { model: 'ideogram-v3', prompt: 'x', options: own(name, 'TURBO') }],
    ['an option value', { model: 'ideogram-v3', prompt: 'x', options: { rendering_speed: name } }],
    ['a model name', { model: name, prompt: 'x' }],
    ['a size', { model: 'gpt-image-1', prompt: 'x', size: name }],
    ['a preset size', { model: 'qwen-image-max', prompt: 'x', size: name }],
    ['a quality', { model: 'gpt-image-1', prompt: 'x', quality: name }],
    ['a style', { model: 'dall-e-3', prompt: 'x', style: name }],
    ['a background', { model: 'gpt-image-1', prompt: 'x', background: name }],
    ['an aspect ratio', { model: 'ideogram-v3', prompt: 'x', aspect_ratio: name }],
    ['a response format', { model: 'gpt-image-1', prompt: 'x', response_format: name }],
    ['a field name', { model: 'gpt-image-1', prompt: 'x', ...own(name, 1) }],
  ];
}

/** Edits name a mode too. */
const editPlacements = (name: string): Array<[string, Record<string, unknown>]> => [
  ...placements(name),
  ['a mode', { model: 'gpt-image-1', prompt: 'x', mode: name }],
];

interface Answer {
  statusCode: number;
  body: string;
}

/** A clear refusal: a 4xx whose message says something, never "internal error". */
function expectClearRefusal(res: Answer, what: string): void {
  expect(res.statusCode, `${what}: ${res.body}`).toBeGreaterThanOrEqual(400);
  expect(res.statusCode, `${what}: ${res.body}`).toBeLessThan(500);
  const message = String(JSON.parse(res.body).error?.message ?? '');
  expect(message.length, what).toBeGreaterThan(10);
  expect(message, what).not.toMatch(/internal error/);
}

const json = (url: string, payload: Record<string, unknown>) =>
  h.app.inject({ method: 'POST', url, headers: { ...h.auth, 'content-type': 'application/json' }, payload: JSON.stringify(payload) });

/** A multipart form of the same body: objects (options) as JSON text, an image file. */
function multipart(url: string, body: Record<string, unknown>, files = [{ field: 'image', filename: 'a.png', bytes: png }]) {
  // No prototype: a field named "__proto__" is a field like the others.
  const fields = Object.create(null) as Record<string, string>;
  for (const [k, v] of Object.entries(body)) fields[k] = typeof v === 'string' ? v : JSON.stringify(v);
  const { payload, headers } = multipartBody(fields, files);
  return h.app.inject({ method: 'POST', url, headers: { ...h.auth, ...headers }, payload });
}

describe.each(NAMES)('the name %s', (name) => {
  it('is refused clearly wherever a client names something on /v1/generate and /v1/images/generations', async () => {
    for (const [place, body] of placements(name)) {
      expectClearRefusal(await json('/v1/generate', body), `/v1/generate, ${place}`);
      expectClearRefusal(await json('/v1/images/generations', body), `/v1/images/generations, ${place}`);
    }
  });

  it('is refused clearly wherever a client names something on /v1/edit, JSON and multipart', async () => {
    for (const [place, body] of editPlacements(name)) {
      expectClearRefusal(await json('/v1/edit', { ...body, image: dataUrl }), `/v1/edit JSON, ${place}`);
      expectClearRefusal(await multipart('/v1/edit', body), `/v1/edit multipart, ${place}`);
    }
  });

  it('is refused clearly wherever a client names something on /v1/images/edits', async () => {
    for (const [place, body] of editPlacements(name)) {
      expectClearRefusal(await multipart('/v1/images/edits', body), `/v1/images/edits, ${place}`);
    }
  });

  it('is refused clearly as the name of a file field', async () => {
    for (const url of ['/v1/edit', '/v1/images/edits']) {
      const files = [
        { field: name, filename: 'a.png', bytes: png },
        { field: 'image', filename: 'b.png', bytes: png },
      ];
      expectClearRefusal(await multipart(url, { model: 'gpt-image-1', prompt: 'x' }, files), `${url}, a file field`);
    }
  });

  it('is refused as an option name naming it, not as an unknown error', async () => {
    const res = await json('/v1/generate', { model: 'gpt-image-1', prompt: 'x', options: own(name, 1) });
    expect(res.statusCode).toBe(400);
    // __proto__ is refused by the JSON parser itself, before any field is read.
    if (name !== '__proto__') expect(res.json().error.details[0].field).toBe(`options.${name}`);
  });

  it('is refused as a model name naming the model', async () => {
    const res = await json('/v1/generate', { model: name, prompt: 'x' });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('model');
  });
});

describe('"__proto__" in a body', () => {
  const polluted = () => ({}) as Record<string, unknown>;

  it('is refused in a JSON body on each route, and pollutes nothing', async () => {
    h.simulator.reset();
    const payload = '{"model":"gpt-image-1","prompt":"x","options":{"__proto__":{"polluted":true}},"__proto__":{"polluted":true}}';
    for (const url of ['/v1/generate', '/v1/images/generations', '/v1/edit']) {
      const res = await h.app.inject({ method: 'POST', url, headers: { ...h.auth, 'content-type': 'application/json' }, payload });
      expectClearRefusal(res, url);
      expect(res.statusCode).toBe(400);
      expect(res.body).toMatch(/__proto__/);
    }
    expect(polluted().polluted).toBeUndefined();
    expect(h.simulator.received).toHaveLength(0);
  });

  it('is refused inside the options of a multipart edit, naming options', async () => {
    for (const url of ['/v1/edit', '/v1/images/edits']) {
      const res = await multipart(url, { model: 'ideogram-v3', prompt: 'x', options: '{"__proto__":{"rendering_speed":"TURBO"}}' });
      expect(res.statusCode, res.body).toBe(400);
      expect(res.body).toMatch(/options/);
    }
    expect(polluted().rendering_speed).toBeUndefined();
  });
});
