import { createHash } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { LightMyRequestResponse } from 'fastify';
import sharp from 'sharp';
import { makeHalfTransparentMask, makePng, multipartBody, startHarness, type Harness } from './harness.js';

let h: Harness;
let png: Buffer;
let mask: Buffer;

beforeAll(async () => {
  h = await startHarness();
  png = await makePng(32, 32);
  mask = await makeHalfTransparentMask(32, 32);
});
afterAll(async () => h.close());
beforeEach(() => h.simulator.reset());

function generate(body: unknown, headers: Record<string, string> = h.auth): Promise<LightMyRequestResponse> {
  return h.app.inject({ method: 'POST', url: '/v1/generate', headers, payload: body as Record<string, unknown> });
}

function editMultipart(
  harness: Harness,
  fields: Record<string, string>,
  files: Array<{ field: string; filename: string; bytes: Buffer; type?: string }>,
): Promise<LightMyRequestResponse> {
  const { payload, headers } = multipartBody(fields, files);
  return harness.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...harness.auth, ...headers }, payload });
}

function editJson(harness: Harness, body: Record<string, unknown>): Promise<LightMyRequestResponse> {
  return harness.app.inject({ method: 'POST', url: '/v1/edit', headers: harness.auth, payload: body });
}

const dataUrl = (bytes: Buffer, mime = 'image/png') => `data:${mime};base64,${bytes.toString('base64')}`;
const image = (bytes: Buffer, filename = 'source.png') => ({ field: 'image', filename, bytes });

interface ErrorBody {
  error: { code: string; message: string; details?: Array<{ field?: string; message: string; allowed?: unknown }>; request_id: string };
}

/**
 * The refusal shape every test relies on: the status and code, the contract's error body, the
 * request id matching the header, the words the client needs (field, what is allowed), and no
 * upstream call.
 */
function expectRefused(
  res: LightMyRequestResponse,
  status: number,
  code: string,
  mentions: Array<string | RegExp>,
  harness: Harness = h,
): ErrorBody['error'] {
  expect(res.statusCode, res.body).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  const body = res.json() as ErrorBody;
  expect(Object.keys(body)).toEqual(['error']);
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe('string');
  expect(body.error.request_id).toBe(res.headers['x-request-id']);
  if (body.error.details !== undefined) expect(Array.isArray(body.error.details)).toBe(true);
  const said = `${body.error.message} ${JSON.stringify(body.error.details ?? [])}`;
  for (const m of mentions) {
    if (typeof m === 'string') expect(said).toContain(m);
    else expect(said).toMatch(m);
  }
  expect(harness.simulator.received.length).toBe(0);
  return body.error;
}

/** A PNG whose noise does not compress, so its size is predictable. */
async function noisyPng(width: number, height: number): Promise<Buffer> {
  const raw = Buffer.alloc(width * height * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = Math.floor(Math.random() * 256);
  return sharp(raw, { raw: { width, height, channels: 3 } }).png().toBuffer();
}

describe('the checks themselves can fail', () => {
  it('a valid generate request does reach the upstream', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a deer' });
    expect(res.statusCode).toBe(200);
    expect(h.simulator.received.length).toBe(1);
  });
});

describe('generate: the request itself', () => {
  it('refuses an unknown model, naming the model and where the list is', async () => {
    const res = await generate({ model: 'no-such-model', prompt: 'a deer' });
    const err = expectRefused(res, 400, 'invalid_request', ['model', 'no-such-model', '/v1/models']);
    expect(err.details?.[0]?.field).toBe('model');
  });

  it('refuses a model name over 100 characters without echoing it whole', async () => {
    const long = 'm'.repeat(5000);
    const res = await generate({ model: long, prompt: 'a deer' });
    const err = expectRefused(res, 400, 'invalid_request', ['model', '100']);
    expect(res.body).not.toContain(long);
    expect(err.details?.[0]?.field).toBe('model');
  });

  it('refuses a request without a prompt, naming prompt as required', async () => {
    const res = await generate({ model: 'gpt-image-1' });
    const err = expectRefused(res, 400, 'invalid_request', ['prompt', 'required']);
    expect(err.details?.map((d) => d.field)).toContain('prompt');
  });

  it('refuses a request without a model, naming model as required', async () => {
    const res = await generate({ prompt: 'a deer' });
    const err = expectRefused(res, 400, 'invalid_request', ['model', 'required']);
    expect(err.details?.map((d) => d.field)).toContain('model');
  });

  it('refuses an unknown top-level field, naming it and listing the fields allowed', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a deer', callback: 'https://example.com/hook' });
    const err = expectRefused(res, 400, 'invalid_request', ['callback']);
    const detail = err.details?.find((d) => d.field === 'callback');
    expect(detail?.allowed).toEqual(expect.arrayContaining(['model', 'prompt', 'size', 'options']));
  });

  it('refuses a body that is not valid JSON with 400', async () => {
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { ...h.auth, 'content-type': 'application/json' },
      payload: '{"model": "gpt-image-1", "prompt": ',
    });
    expectRefused(res, 400, 'invalid_request', ['the body is not valid JSON: Unexpected end of JSON input']);
  });

  it('says where a JSON body breaks, and tells a refused "__proto__" key apart from a syntax error', async () => {
    const send = (payload: string) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, 'content-type': 'application/json' }, payload });
    // Single quotes and a trailing comma, the usual hand-written mistakes: the position is named.
    const quotes = expectRefused(await send("{'model': 'gpt-image-1'}"), 400, 'invalid_request', ['not valid JSON', 'position 1']);
    expect(quotes.details).toEqual([{ field: '(body)', message: expect.stringContaining('line 1 column 2') }]);
    expectRefused(await send('{"model": "gpt-image-1", "prompt": "a deer",}'), 400, 'invalid_request', ['not valid JSON: Expected double-quoted property name', 'position 44']);
    const proto = expectRefused(await send('{"model": "gpt-image-1", "prompt": "a deer", "__proto__": {"x": 1}}'), 400, 'invalid_request', ['__proto__']);
    expect(proto.message).not.toContain('not valid JSON');
    expectRefused(await send(''), 400, 'invalid_request', ['the body is empty']);
    // Nothing of the body around the fault is echoed (a key or a prompt would reach the answer and the log).
    const long = await send(`{"model": "gpt-image-1", "prompt": "${'A'.repeat(5000)}" "n": 1}`);
    expect(expectRefused(long, 400, 'invalid_request', ['not valid JSON']).message).not.toContain('AAAA');
    const keyed = expectRefused(await send('{"key":gk-0123456789abcdef0123}'), 400, 'invalid_request', ["not valid JSON: Unexpected token 'g'"]);
    expect(keyed.message).not.toContain('gk-0123');
    expect(h.simulator.received).toHaveLength(0);
  });

  it('refuses a JSON body that is not an object', async () => {
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { ...h.auth, 'content-type': 'application/json' },
      payload: '["gpt-image-1", "a deer"]',
    });
    expectRefused(res, 400, 'invalid_request', ['(body)', 'JSON object']);
  });

  it('refuses a body that is not JSON with 415', async () => {
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { ...h.auth, 'content-type': 'text/plain' },
      payload: 'model=gpt-image-1&prompt=a deer',
    });
    expectRefused(res, 415, 'unsupported_media_type', ['application/json']);
  });

  it('refuses a form body (curl -d without a Content-Type) with 415, naming the type sent and the types the route reads', async () => {
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { ...h.auth, 'content-type': 'application/x-www-form-urlencoded' },
      payload: '{"model":"gpt-image-1","prompt":"a deer"}',
    });
    const err = expectRefused(res, 415, 'unsupported_media_type', ['(application/x-www-form-urlencoded)', 'POST /v1/generate', 'application/json']);
    expect(err.details).toEqual([{ field: 'Content-Type', message: 'is application/x-www-form-urlencoded; send application/json', allowed: ['application/json'] }]);
  });

  it('refuses a prompt longer than the model takes, naming the limit', async () => {
    const res = await generate({ model: 'wan2.7-image-pro', prompt: 'x'.repeat(801) });
    expectRefused(res, 400, 'invalid_request', ['prompt', '801', '800']);
  });
});

describe('generate: parameters the model does not take', () => {
  it('refuses quality on Stable-Diffusion-3-5-Large, listing what it does take', async () => {
    const res = await generate({ model: 'Stable-Diffusion-3-5-Large', prompt: 'a deer', quality: 'high' });
    const err = expectRefused(res, 400, 'invalid_request', ['quality', 'Stable-Diffusion-3-5-Large']);
    expect(err.details?.[0]).toMatchObject({ field: 'quality', allowed: ['n'] });
  });

  it('refuses aspect_ratio on gpt-image-1, listing what it does take', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a deer', aspect_ratio: '16:9' });
    const err = expectRefused(res, 400, 'invalid_request', ['aspect_ratio', 'gpt-image-1']);
    expect(err.details?.[0]?.allowed).toEqual(expect.arrayContaining(['size', 'quality']));
  });

  it('refuses negative_prompt on wan2.7-image', async () => {
    const res = await generate({ model: 'wan2.7-image', prompt: 'a deer', negative_prompt: 'blurry' });
    const err = expectRefused(res, 400, 'invalid_request', ['negative_prompt', 'wan2.7-image']);
    expect(err.details?.[0]?.allowed).toEqual(expect.arrayContaining(['size', 'seed']));
  });

  it('refuses an option the model does not have, listing its options', async () => {
    const res = await generate({ model: 'ideogram-v3', prompt: 'a deer', options: { foo: 1 } });
    const err = expectRefused(res, 400, 'invalid_request', ['options.foo']);
    expect(err.details?.[0]?.allowed).toEqual(expect.arrayContaining(['rendering_speed', 'magic_prompt']));
  });

  it('refuses an option value outside what the model allows, naming the values', async () => {
    const res = await generate({ model: 'ideogram-v3', prompt: 'a deer', options: { rendering_speed: 'FAST' } });
    const err = expectRefused(res, 400, 'invalid_request', ['options.rendering_speed', '"TURBO"', '"DEFAULT"', '"QUALITY"']);
    expect(err.details?.[0]?.allowed).toEqual(['TURBO', 'DEFAULT', 'QUALITY']);
  });

  it('refuses an options value that is not an object', async () => {
    const res = await generate({ model: 'ideogram-v3', prompt: 'a deer', options: 'rendering_speed=TURBO' });
    expectRefused(res, 400, 'invalid_request', ['options']);
  });
});

describe('generate: n outside the model\'s range', () => {
  // Its own harness: these requests would take the shared one over its requests-per-minute limit.
  let own: Harness;
  beforeAll(async () => {
    own = await startHarness();
  });
  afterAll(async () => {
    await own.close();
  });

  it.each([
    ['ideogram-v3', 0, 'n: must be an integer from 1 to 8 for ideogram-v3'],
    ['ideogram-v3', -3, 'n: must be an integer from 1 to 8 for ideogram-v3'],
    ['ideogram-v3', 9, 'n: must be an integer from 1 to 8 for ideogram-v3'],
    ['dall-e-3', 0, 'n: must be the integer 1 for dall-e-3'],
  ])('answers %s with n=%d with the model\'s own range: %s', async (model, n, message) => {
    const res = await own.app.inject({ method: 'POST', url: '/v1/generate', headers: own.auth, payload: { model, prompt: 'a deer', n } });
    const err = expectRefused(res, 400, 'invalid_request', ['n'], own);
    expect(err.message).toBe(message);
    expect(err.details?.[0]?.field).toBe('n');
  });
});

describe('generate: values outside what the model allows', () => {
  it('refuses n=2 on dall-e-3, which makes one image', async () => {
    const res = await generate({ model: 'dall-e-3', prompt: 'a deer', n: 2 });
    expectRefused(res, 400, 'invalid_request', ['n', 'the integer 1']);
  });

  it('refuses n=9 on ideogram-v3, whose max is 8', async () => {
    const res = await generate({ model: 'ideogram-v3', prompt: 'a deer', n: 9 });
    expectRefused(res, 400, 'invalid_request', ['n', 'from 1 to 8']);
  });

  it('refuses n=0 whatever the model', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a deer', n: 0 });
    const err = expectRefused(res, 400, 'invalid_request', ['n', '1']);
    expect(err.details?.[0]?.field).toBe('n');
  });

  it('refuses a size gpt-image-1 does not offer, listing its sizes', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a deer', size: '999x999' });
    const err = expectRefused(res, 400, 'invalid_request', ['size', '"1024x1024"', '"1536x1024"']);
    expect(err.details?.[0]?.allowed).toEqual(['auto', '1024x1024', '1536x1024', '1024x1536']);
  });

  it('refuses a glm-image size that is not a multiple of 32', async () => {
    const res = await generate({ model: 'glm-image', prompt: 'a deer', size: '1040x1040' });
    expectRefused(res, 400, 'invalid_request', ['size', 'multiples of 32']);
  });

  it('refuses a zimage size outside its range', async () => {
    const res = await generate({ model: 'wan2.7-image-pro', prompt: 'a deer', size: '512x512' });
    expectRefused(res, 400, 'invalid_request', ['size', '768..4096']);
  });

  it('refuses an aspect ratio ideogram-v3 does not offer, listing its ratios', async () => {
    const res = await generate({ model: 'ideogram-v3', prompt: 'a deer', aspect_ratio: '7:3' });
    const err = expectRefused(res, 400, 'invalid_request', ['aspect_ratio', '"16:9"']);
    expect(err.details?.[0]?.allowed).toEqual(expect.arrayContaining(['1:1', '16:9', '9:16']));
  });

  it('refuses an aspect ratio written in Ideogram form (16x9), asking for W:H', async () => {
    const res = await generate({ model: 'ideogram-v3', prompt: 'a deer', aspect_ratio: '16x9' });
    expectRefused(res, 400, 'invalid_request', ['aspect_ratio', 'W:H']);
  });

  it('refuses a seed above 2147483647', async () => {
    const res = await generate({ model: 'ideogram-v3', prompt: 'a deer', seed: 2147483648 });
    expectRefused(res, 400, 'invalid_request', ['seed', '2147483647']);
  });

  it('refuses a negative seed', async () => {
    const res = await generate({ model: 'ideogram-v3', prompt: 'a deer', seed: -1 });
    expectRefused(res, 400, 'invalid_request', ['seed', '0']);
  });

  it('refuses quality "hd" on gpt-image-1, listing its qualities', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a deer', quality: 'hd' });
    const err = expectRefused(res, 400, 'invalid_request', ['quality', '"low"', '"high"']);
    expect(err.details?.[0]?.allowed).toEqual(['low', 'medium', 'high', 'auto']);
  });

  it('refuses a JSON n given as a string, saying a number is expected rather than that n is missing', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a deer', n: '2' });
    const err = expectRefused(res, 400, 'invalid_request', ['n', 'must be an integer']);
    expect(err.message).not.toContain('required');
  });

  it('refuses a quality no model knows with the qualities of the model asked for, not of every model', async () => {
    const ultra = expectRefused(await generate({ model: 'gpt-image-1', prompt: 'a deer', quality: 'ultra' }), 400, 'invalid_request', ['quality']);
    expect(ultra.details?.[0]).toMatchObject({ field: 'quality', allowed: ['low', 'medium', 'high', 'auto'] });
    expect(ultra.message).not.toContain('hd');
    const glm = expectRefused(await generate({ model: 'glm-image', prompt: 'a deer', quality: 'ultra' }), 400, 'invalid_request', ['quality']);
    expect(glm.details?.[0]?.allowed).toEqual(['hd', 'standard']);
    const none = await generate({ model: 'flux-kontext-pro', prompt: 'a deer', quality: 'ultra' });
    expectRefused(none, 400, 'invalid_request', ['quality: is not supported by flux-kontext-pro']);
  });
});

describe('generate: a value the model\'s rule refuses names the model, as n does', () => {
  // Its own harness: these requests would take the shared one over its requests-per-minute limit.
  let own: Harness;
  beforeAll(async () => {
    own = await startHarness();
  });
  afterAll(async () => {
    await own.close();
  });

  it.each([
    ['size', { model: 'gpt-image-1', size: '999x999' }, 'size: must be one of "auto", "1024x1024", "1536x1024", "1024x1536" for gpt-image-1'],
    ['size (a pixel rule)', { model: 'glm-image', size: '1040x1040' }, /^size: must be WIDTHxHEIGHT with each side .*multiples of 32.* for glm-image$/],
    ['aspect_ratio', { model: 'ideogram-v3', aspect_ratio: '7:3' }, /^aspect_ratio: must be one of "1:3", .* for ideogram-v3$/],
    ['quality', { model: 'gpt-image-1', quality: 'hd' }, 'quality: must be one of "low", "medium", "high", "auto" for gpt-image-1'],
    ['quality (another model)', { model: 'glm-image', quality: 'ultra' }, 'quality: must be one of "hd", "standard" for glm-image'],
    ['style', { model: 'ideogram-v3', style: 'ANIME' }, 'style: must be one of "AUTO", "GENERAL", "REALISTIC", "DESIGN" for ideogram-v3'],
    ['an option', { model: 'flux-2-flex', options: { steps: 51 } }, 'options.steps: must be an integer from 1 to 50 for flux-2-flex'],
  ] as const)('%s', async (_what, fields, message) => {
    const res = await own.app.inject({ method: 'POST', url: '/v1/generate', headers: own.auth, payload: { prompt: 'a deer', ...fields } });
    const err = expectRefused(res, 400, 'invalid_request', [], own);
    if (typeof message === 'string') expect(err.message).toBe(message);
    else expect(err.message).toMatch(message);
    // The detail says the same after its field: "field: message" is the summary of the one detail.
    expect(err.details).toHaveLength(1);
    expect(`${err.details![0]!.field}: ${err.details![0]!.message}`).toBe(err.message);
    expect(own.simulator.received).toHaveLength(0);
  });
});

describe('operations a model does not offer', () => {
  it('refuses an edit on a model that only generates (imagen)', async () => {
    const res = await editMultipart(h, { model: 'imagen-4.0-generate-001', prompt: 'make it blue' }, [image(png)]);
    const err = expectRefused(res, 400, 'invalid_request', ['model', 'does not edit', '/v1/generate']);
    expect(err.details?.[0]?.allowed).toEqual(['generate']);
  });

  it('refuses a generate on an edit-only model (qwen-image-edit)', async () => {
    const res = await generate({ model: 'qwen-image-edit', prompt: 'a deer' });
    const err = expectRefused(res, 400, 'invalid_request', ['model', 'does not generate', '/v1/edit']);
    expect(err.details?.[0]?.allowed).toEqual(['edit']);
  });

  it('refuses an edit mode the model does not have, listing its modes', async () => {
    const res = await editMultipart(h, { model: 'flux-kontext-pro', prompt: 'make it blue', mode: 'remix' }, [image(png)]);
    const err = expectRefused(res, 400, 'invalid_request', ['mode', 'remix']);
    expect(err.details?.[0]?.allowed).toEqual(['edit']);
  });
});

describe('edit: images and masks', () => {
  it('refuses a multipart edit without an image file', async () => {
    const res = await editMultipart(h, { model: 'gpt-image-1', prompt: 'make it blue' }, []);
    expectRefused(res, 400, 'invalid_request', ['image', 'required']);
  });

  it('refuses a JSON edit without an image', async () => {
    const res = await editJson(h, { model: 'gpt-image-1', prompt: 'make it blue' });
    const err = expectRefused(res, 400, 'invalid_request', ['image', 'required']);
    expect(err.details?.map((d) => d.field)).toContain('image');
  });

  it('refuses a file that is not an image with 415, whatever its name says', async () => {
    const res = await editMultipart(h, { model: 'gpt-image-1', prompt: 'make it blue' }, [
      { field: 'image', filename: 'x.png', bytes: Buffer.from('just some text, not a picture\n'.repeat(4)) },
    ]);
    const err = expectRefused(res, 415, 'unsupported_media_type', ['image', 'PNG, JPEG or WebP']);
    expect(err.details?.[0]?.allowed).toEqual(['image/png', 'image/jpeg', 'image/webp']);
  });

  it('refuses more images than the model takes', async () => {
    const res = await editMultipart(h, { model: 'FLUX.1-Kontext-pro', prompt: 'make it blue' }, [image(png, 'a.png'), image(png, 'b.png')]);
    expectRefused(res, 400, 'invalid_request', ['image', 'at most 1', 'got 2']);
  });

  it('refuses a mask for a model that takes none (flux)', async () => {
    const res = await editMultipart(h, { model: 'flux-kontext-pro', prompt: 'make it blue' }, [
      image(png),
      { field: 'mask', filename: 'mask.png', bytes: mask },
    ]);
    const err = expectRefused(res, 400, 'invalid_request', ['mask', 'takes no mask']);
    expect(err.details?.[0]?.field).toBe('mask');
  });

  it('refuses Ideogram V3 mode "edit" without a mask', async () => {
    const res = await editMultipart(h, { model: 'ideogram-v3', prompt: 'make it blue', mode: 'edit' }, [image(png)]);
    expectRefused(res, 400, 'invalid_request', ['mask', 'needs a mask', 'transparent']);
  });

  it('refuses an Ideogram mask with no transparent pixels', async () => {
    const opaque = await makePng(32, 32, { r: 0, g: 0, b: 0 }, 255);
    const res = await editMultipart(h, { model: 'ideogram-v3', prompt: 'make it blue' }, [
      image(png),
      { field: 'mask', filename: 'mask.png', bytes: opaque },
    ]);
    expectRefused(res, 400, 'invalid_request', ['mask', /transparen/]);
  });

  it('refuses an Ideogram mask with no alpha channel at all', async () => {
    const rgb = await sharp({ create: { width: 32, height: 32, channels: 3, background: { r: 0, g: 0, b: 0 } } }).png().toBuffer();
    const res = await editMultipart(h, { model: 'ideogram-v3', prompt: 'make it blue' }, [
      image(png),
      { field: 'mask', filename: 'mask.png', bytes: rgb },
    ]);
    expectRefused(res, 400, 'invalid_request', ['mask', 'no transparency']);
  });

  it('refuses an Ideogram mask whose size differs from the image, naming both sizes', async () => {
    const small = await makeHalfTransparentMask(16, 16);
    const res = await editMultipart(h, { model: 'ideogram-v3', prompt: 'make it blue' }, [
      image(png),
      { field: 'mask', filename: 'mask.png', bytes: small },
    ]);
    expectRefused(res, 400, 'invalid_request', ['mask', '16x16', '32x32']);
  });

  it('refuses a gpt-image-1 mask whose size differs from the image', async () => {
    const small = await makeHalfTransparentMask(16, 16);
    const res = await editMultipart(h, { model: 'gpt-image-1', prompt: 'make it blue' }, [
      image(png),
      { field: 'mask', filename: 'mask.png', bytes: small },
    ]);
    expectRefused(res, 400, 'invalid_request', ['mask', '16x16', '32x32']);
  });

  it('refuses a gpt-image-1 mask with no transparency', async () => {
    const rgb = await sharp({ create: { width: 32, height: 32, channels: 3, background: { r: 0, g: 0, b: 0 } } }).png().toBuffer();
    const res = await editMultipart(h, { model: 'gpt-image-1', prompt: 'make it blue' }, [
      image(png),
      { field: 'mask', filename: 'mask.png', bytes: rgb },
    ]);
    expectRefused(res, 400, 'invalid_request', ['mask', 'transparen']);
  });

  it('sends a valid gpt-image-1 mask upstream unchanged', async () => {
    const res = await editMultipart(h, { model: 'gpt-image-1', prompt: 'make it blue' }, [
      image(png),
      { field: 'mask', filename: 'mask.png', bytes: mask },
    ]);
    expect(res.statusCode, res.body).toBe(200);
    const sent = h.simulator.received[0]?.files?.find((f) => f.field === 'mask');
    expect(sent?.sha256).toBe(createHash('sha256').update(mask).digest('hex'));
  });

  it('refuses a multipart n that is not a number', async () => {
    const res = await editMultipart(h, { model: 'gpt-image-1', prompt: 'make it blue', n: 'two' }, [image(png)]);
    const err = expectRefused(res, 400, 'invalid_request', ['n', 'must be an integer']);
    expect(err.details?.[0]?.field).toBe('n');
  });

  it('refuses an unknown multipart field, listing the fields allowed', async () => {
    const res = await editMultipart(h, { model: 'gpt-image-1', prompt: 'make it blue', callback: 'https://example.com' }, [image(png)]);
    const err = expectRefused(res, 400, 'invalid_request', ['callback']);
    expect(err.details?.[0]?.allowed).toEqual(expect.arrayContaining(['model', 'prompt', 'mode']));
  });

  it('refuses a JSON edit whose image is neither a data URL nor an http(s) URL', async () => {
    const res = await editJson(h, { model: 'gpt-image-1', prompt: 'make it blue', image: 'ftp://example.com/cat.png' });
    expectRefused(res, 400, 'invalid_request', ['image', 'data URL', 'http(s) URL']);
  });

  it('refuses a JSON edit whose data URL holds no image with 415', async () => {
    const res = await editJson(h, {
      model: 'gpt-image-1',
      prompt: 'make it blue',
      image: dataUrl(Buffer.from('plain text pretending to be a picture'), 'image/png'),
    });
    expectRefused(res, 415, 'unsupported_media_type', ['image']);
  });

  it('refuses a data URL whose base64 is cut short or a placeholder, which would otherwise decode to a PNG signature', async () => {
    // `iVBORw0KGgo` is the PNG signature in base64: a lenient decoder skips the dots and sends 8 bytes upstream as an image.
    const res = await editJson(h, { model: 'gpt-image-1', prompt: 'make it blue', image: 'data:image/png;base64,iVBORw0KGgo...' });
    const err = expectRefused(res, 400, 'invalid_request', ['image', 'not valid base64']);
    expect(err.details?.[0]?.field).toBe('image');
    const listed = await editJson(h, { model: 'flux-kontext-pro', prompt: 'make it blue', image: [dataUrl(png), 'data:image/png;base64,iVBORw0K GgoAAAA!'] });
    expect(expectRefused(listed, 400, 'invalid_request', ['not valid base64']).details?.[0]?.field).toBe('image[1]');
    const style = await generate({ model: 'ideogram-v3', prompt: 'a lighthouse', options: { style_reference_images: ['data:image/png;base64,iVBORw0KGgo...'] } });
    expect(expectRefused(style, 400, 'invalid_request', ['not valid base64']).details?.[0]?.field).toBe('options.style_reference_images[0]');
  });

  it('takes base64 with line breaks, URL-safe letters and padding', async () => {
    const wrapped = png.toString('base64').replace(/(.{76})/g, '$1\r\n');
    const res = await editJson(h, { model: 'gpt-image-1', prompt: 'make it blue', image: `data:image/png;base64,${wrapped}\n` });
    expect(res.statusCode, res.body).toBe(200);
    const urlSafe = await editJson(h, { model: 'gpt-image-1', prompt: 'make it blue', image: `data:image/png;base64,${png.toString('base64url')}` });
    expect(urlSafe.statusCode, urlSafe.body).toBe(200);
  });

  it('refuses a JSON image list that is too long or not images with a message that says what image takes', async () => {
    const many = await editJson(h, { model: 'flux-2-pro', prompt: 'a collage', image: Array.from({ length: 17 }, (_, i) => `https://images.example.com/${i}.png`) });
    const err = expectRefused(many, 400, 'invalid_request', ['image', 'data URL', 'http(s) URL', '1 to 16']);
    expect(err.message).not.toMatch(/Invalid input/);
    const notAString = await editJson(h, { model: 'gpt-image-1', prompt: 'make it blue', image: 42 });
    expect(expectRefused(notAString, 400, 'invalid_request', ['image', 'data URL']).message).not.toMatch(/Invalid input/);
    const empty = await editJson(h, { model: 'gpt-image-1', prompt: 'make it blue', image: [] });
    expectRefused(empty, 400, 'invalid_request', ['image', 'at least one image']);
  });
});

describe('errors name each field the same way, and say what it takes', () => {
  // Its own harness: these requests would spend the shared key's requests per minute.
  let e: Harness;
  beforeAll(async () => {
    e = await startHarness({ RATE_LIMIT_RPM: '1000' });
  });
  afterAll(async () => e.close());

  function post(url: string, fields: Record<string, string>, files: Array<{ field: string; bytes: Buffer }> = [{ field: 'image', bytes: png }]) {
    const { payload, headers } = multipartBody(fields, files.map((f) => ({ ...f, filename: `${f.field}.png` })));
    return e.app.inject({ method: 'POST', url, headers: { ...e.auth, ...headers }, payload });
  }
  const postJson = (url: string, payload: Record<string, unknown>) => e.app.inject({ method: 'POST', url, headers: e.auth, payload });
  const refused = (res: LightMyRequestResponse, mentions: string[]) => expectRefused(res, 400, 'invalid_request', mentions, e);
  const allowedFor = (res: LightMyRequestResponse) => refused(res, ['unknown_field', 'is not a field of this request']).details?.[0]?.allowed as string[];

  it('names an item of a JSON list field[i] (image[1], fallback_models[0]), never field.1', async () => {
    const images = await postJson('/v1/edit', { model: 'flux-2-pro', prompt: 'a collage', image: [dataUrl(png), 'not-a-url'] });
    expect(refused(images, ['image[1]: must be a data URL']).details?.[0]?.field).toBe('image[1]');
    const fallbacks = await postJson('/v1/generate', { model: 'gpt-image-1', prompt: 'a deer', fallback_models: ['', 'gpt-image-1.5'] });
    expect(refused(fallbacks, ['fallback_models[0]: must be a model id']).details?.[0]?.field).toBe('fallback_models[0]');
  });

  it('lists, for an unknown field, exactly what the route takes: stream where it streams, style reference files on edit, no mask on upscale and describe', async () => {
    const generateAllowed = allowedFor(await postJson('/v1/generate', { model: 'gpt-image-1', prompt: 'a deer', unknown_field: 1 }));
    expect(generateAllowed).toContain('stream');
    const editJsonAllowed = allowedFor(await postJson('/v1/edit', { model: 'gpt-image-1', prompt: 'a deer', image: dataUrl(png), unknown_field: 1 }));
    expect(editJsonAllowed).toEqual(expect.arrayContaining(['stream', 'mode', 'image', 'mask']));
    const editAllowed = allowedFor(await post('/v1/edit', { model: 'gpt-image-1', prompt: 'a deer', unknown_field: '1' }));
    expect(editAllowed).toEqual(expect.arrayContaining(['stream', 'mode', 'image (file)', 'mask (file)', 'style_reference_images (file)']));
    for (const res of [
      await post('/v1/upscale', { model: 'ideogram-upscale', unknown_field: '1' }),
      await postJson('/v1/upscale', { model: 'ideogram-upscale', image: dataUrl(png), unknown_field: 1 }),
    ]) {
      const allowed = allowedFor(res);
      expect(allowed).toContain('stream');
      expect(allowed.filter((f) => /mask|style_reference/.test(f))).toEqual([]);
    }
    const describeAllowed = allowedFor(await post('/v1/describe', { model: 'ideogram-describe', unknown_field: '1' }));
    expect(describeAllowed).toEqual(['model', 'options', 'image (file)']);
    // A file field they do not take lists the one they do.
    for (const url of ['/v1/upscale', '/v1/describe']) {
      const masked = await post(url, { model: url === '/v1/upscale' ? 'ideogram-upscale' : 'ideogram-describe' }, [{ field: 'image', bytes: png }, { field: 'mask', bytes: png }]);
      expect(refused(masked, ['mask', 'not a file field']).details?.[0]?.allowed).toEqual(['image']);
    }
  });

  it('says what a field takes instead of zod\'s words, as "field: message" like every other error', async () => {
    const resemblance = await post('/v1/upscale', { model: 'ideogram-upscale', resemblance: 'abc' });
    const err = refused(resemblance, []);
    expect(err.message).toBe('resemblance: must be an integer from 1 to 100 for ideogram-upscale');
    expect(err.details?.[0]).toMatchObject({ field: 'resemblance', allowed: 'an integer from 1 to 100' });
    const format = await postJson('/v1/generate', { model: 'gpt-image-1', prompt: 'a deer', output_format: 'gif' });
    expect(refused(format, []).message).toBe('output_format: must be one of "png", "jpeg", "webp"');
    const several = await postJson('/v1/generate', { model: 'gpt-image-1', prompt: 'a deer', seed: 'x', async: 'yes', response_format: 'png', quality: 7, mode: 'edit' });
    const many = refused(several, ['seed: must be an integer from 0 to 2147483647', 'async: must be true or false', 'response_format: must be one of "url", "b64_json"', 'quality: must be a non-empty string']);
    expect(many.message).not.toMatch(/Invalid|expected|received/);
    for (const detail of many.details ?? []) expect(many.message).toContain(`${detail.field}: ${detail.message}`);
  });
});

describe('size limits (MAX_UPLOAD_BYTES=1024)', () => {
  let small: Harness;
  /** Over MAX_UPLOAD_BYTES, yet small enough that a JSON body carrying it stays under the body limit. */
  let overLimit: Buffer;
  /** Big enough that a JSON body carrying it is over the body limit as well. */
  let big: Buffer;
  beforeAll(async () => {
    small = await startHarness({ MAX_UPLOAD_BYTES: '1024' });
    overLimit = await noisyPng(24, 24);
    big = await noisyPng(48, 48);
  });
  afterAll(async () => small.close());

  it('the oversized test images are over the limit while the normal one is under it', () => {
    expect(overLimit.length).toBeGreaterThan(1024);
    expect(big.length).toBeGreaterThan(overLimit.length);
    expect(png.length).toBeLessThan(1024);
  });

  it('refuses a multipart image file over the limit with 413', async () => {
    const res = await editMultipart(small, { model: 'gpt-image-1', prompt: 'make it blue' }, [image(big)]);
    expectRefused(res, 413, 'payload_too_large', [/size limit|too large|larger/i], small);
  });

  it('refuses a JSON edit whose image is over the limit with 413, naming the limit', async () => {
    const res = await editJson(small, { model: 'gpt-image-1', prompt: 'make it blue', image: dataUrl(overLimit) });
    expectRefused(res, 413, 'payload_too_large', ['image', '1024'], small);
  });

  it('refuses a JSON body over the body limit with 413', async () => {
    // The JSON edit limit: the most images a model takes, each of MAX_UPLOAD_BYTES in base64, plus 256 KiB for the rest.
    const res = await editJson(small, { model: 'gpt-image-1', prompt: 'make it blue '.repeat(40_000), image: dataUrl(big) });
    expectRefused(res, 413, 'payload_too_large', [/size limit of \d+ bytes/], small);
  });

  it('still takes an image under the limit', async () => {
    const res = await editMultipart(small, { model: 'gpt-image-1', prompt: 'make it blue' }, [image(png)]);
    expect(res.statusCode, res.body).toBe(200);
  });
});

describe('client authentication', () => {
  it('refuses a request without a client key with 401 and no upstream call', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a deer' }, {});
    expectRefused(res, 401, 'unauthorized', ['Authorization: Bearer']);
  });

  it('refuses a wrong client key with 401 and no upstream call', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a deer' }, { authorization: 'Bearer gk-not-a-real-key-000000' });
    expectRefused(res, 401, 'unauthorized', ['not valid']);
  });

  it('refuses a wrong x-api-key with 401 and no upstream call', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a deer' }, { 'x-api-key': 'gk-not-a-real-key-000000' });
    expectRefused(res, 401, 'unauthorized', ['not valid']);
  });

  it('accepts the client key as x-api-key', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a deer' }, { 'x-api-key': h.auth.authorization!.slice('Bearer '.length) });
    expect(res.statusCode).toBe(200);
  });
});

describe('routes and request ids', () => {
  it('answers an unknown route with a 404 JSON error', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/nothing-here', headers: h.auth });
    expectRefused(res, 404, 'not_found', ['/v1/nothing-here']);
  });

  it('answers an unknown route outside /v1 with a 404 JSON error', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/nothing-here' });
    expectRefused(res, 404, 'not_found', ['GET /nothing-here']);
  });

  const kinds: Array<[string, () => Promise<LightMyRequestResponse>]> = [
    ['a health check', () => h.app.inject({ method: 'GET', url: '/healthz' })],
    ['a success', () => generate({ model: 'gpt-image-1', prompt: 'a deer' })],
    ['a validation refusal', () => generate({ model: 'gpt-image-1', prompt: 'a deer', n: 0 })],
    ['malformed JSON', () => h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, 'content-type': 'application/json' }, payload: '{' })],
    ['a wrong content type', () => h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, 'content-type': 'text/plain' }, payload: 'x' })],
    ['a missing client key', () => generate({ model: 'gpt-image-1', prompt: 'a deer' }, {})],
    ['an unknown route', () => h.app.inject({ method: 'GET', url: '/nope' })],
    ['an image URL without a signature', () => h.app.inject({ method: 'GET', url: '/v1/images/img_x.png' })],
  ];
  it.each(kinds)('gives %s an x-request-id header', async (_name, send) => {
    const res = await send();
    expect(res.headers['x-request-id']).toMatch(/^req_[\w-]{8,}$/);
  });

  it('gives two requests two different request ids', async () => {
    const a = await h.app.inject({ method: 'GET', url: '/healthz' });
    const b = await h.app.inject({ method: 'GET', url: '/healthz' });
    expect(a.headers['x-request-id']).not.toBe(b.headers['x-request-id']);
  });
});

describe('model options with a shape', () => {
  it('refuses Doubao group-mode options other than max_images 1..15, before any upstream call', async () => {
    const h = await startHarness();
    try {
      for (const bad of [{ max_images: 16 }, { max_images: 2, other: 1 }, 'x']) {
        const res = await h.app.inject({
          method: 'POST',
          url: '/v1/generate',
          headers: h.auth,
          payload: { model: 'doubao-seedream-4-0', prompt: 'x', options: { sequential_image_generation: 'auto', sequential_image_generation_options: bad } },
        });
        expect(res.statusCode).toBe(400);
        expect(res.json().error.details[0].field).toBe('options.sequential_image_generation_options');
      }
      expect(h.simulator.received).toHaveLength(0);
    } finally {
      await h.close();
    }
  });
});
