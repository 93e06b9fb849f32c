/**
 * The OpenAI-compatible façade, driven by the official `openai` SDK over real HTTP: the client is
 * configured with nothing but `baseURL` and `apiKey`, as a team switching from OpenAI would do.
 */
import { readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import OpenAI, { APIError, toFile } from 'openai';
import { parse } from 'yaml';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { MODELS } from '../src/catalogue/models.js';
import { imageDimensions } from '../src/images/image-dimensions.js';
import { ADMIN_KEY, CLIENT_KEY, makeHalfTransparentMask, makePng, multipartBody, startHarness, type Harness } from './harness.js';

const PNG_MAGIC = '89504e470d0a1a0a';

const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats.default(ajv);
ajv.addSchema({ ...parse(readFileSync(new URL('../openapi.yaml', import.meta.url), 'utf8')), $id: 'openapi.yaml' });
function openApiProblems(schemaName: string, body: unknown): string[] {
  const check = ajv.getSchema(`openapi.yaml#/components/schemas/${schemaName}`)!;
  return check(body) ? [] : (check.errors ?? []).map((e) => `${e.instancePath} ${e.message}`);
}

let h: Harness;
let client: OpenAI;
let baseURL: string;

beforeAll(async () => {
  // Every model is called once or twice: well over the default 60 requests a minute of one key.
  h = await startHarness({ RATE_LIMIT_RPM: '1000' });
  const address = await h.app.listen({ port: 0, host: '127.0.0.1' });
  baseURL = `${address}/v1`;
  client = new OpenAI({ baseURL, apiKey: CLIENT_KEY });
});
afterAll(async () => h.close());
beforeEach(() => h.simulator.reset());

const submissions = () => h.simulator.received.filter((r) => r.method === 'POST');
const png = async () => toFile(await makePng(), 'a.png', { type: 'image/png' });

describe('images.generate through the SDK', () => {
  it('answers a gpt-image model with base64 by default, as OpenAI does, with the token usage', async () => {
    const res = await client.images.generate({ model: 'gpt-image-1', prompt: 'an otter', n: 2, size: '1024x1024', quality: 'high' });
    expect(res.created).toBeGreaterThan(0);
    expect(res.data).toHaveLength(2);
    for (const image of res.data!) {
      expect(image.url).toBeUndefined();
      expect(Buffer.from(image.b64_json!, 'base64').subarray(0, 8).toString('hex')).toBe(PNG_MAGIC);
    }
    expect(res.usage?.total_tokens).toBeGreaterThan(0);
    expect(submissions()).toHaveLength(1);
    expect(submissions()[0]!.json).toEqual({ input: { prompt: 'an otter', n: 2, size: '1024x1024', quality: 'high' } });
  });

  it('answers response_format url with the gateway’s signed URL, which needs no key', async () => {
    const res = await client.images.generate({ model: 'dall-e-3', prompt: 'a lighthouse', size: '1024x1792', quality: 'hd', style: 'vivid', response_format: 'url' });
    const url = res.data![0]!.url!;
    expect(url).toMatch(new RegExp(`^${baseURL}/images/img_[0-9a-f]{64}\\.png\\?exp=\\d+&sig=`));
    const image = await fetch(url);
    expect(image.status).toBe(200);
    expect(image.headers.get('content-type')).toBe('image/png');
    expect(submissions()[0]!.json).toEqual({ input: { prompt: 'a lighthouse', size: '1024x1792', quality: 'hd', style: 'vivid' } });
  });

  it('sends moderation as the model’s option and ignores user', async () => {
    await client.images.generate({ model: 'gpt-image-1', prompt: 'a kite', moderation: 'low', output_compression: 80, output_format: 'webp', user: 'end-user-42' });
    expect(submissions()[0]!.json).toEqual({ input: { prompt: 'a kite', moderation: 'low', output_compression: 80, output_format: 'webp' } });
  });

  it('takes the gateway’s own fields too, for models that OpenAI’s parameters cannot reach', async () => {
    const res = await client.images.generate({ model: 'ideogram-v3', prompt: 'a poster', aspect_ratio: '16:9', seed: 7, options: { rendering_speed: 'TURBO' } } as OpenAI.ImageGenerateParamsNonStreaming);
    expect(res.data).toHaveLength(1);
    expect(submissions()[0]!.fields).toMatchObject({ aspect_ratio: '16x9', seed: '7', rendering_speed: 'TURBO' });
  });

  it('is counted in usage like any generation', async () => {
    const before = (await h.app.inject({ method: 'GET', url: '/v1/usage', headers: h.auth })).json().data[0];
    const { response } = await client.images.generate({ model: 'dall-e-3', prompt: 'counted' }).withResponse();
    const after = (await h.app.inject({ method: 'GET', url: '/v1/usage', headers: h.auth })).json().data[0];
    expect(after.images - before.images).toBe(1);
    const records = (await h.app.inject({ method: 'GET', url: '/v1/usage/records?limit=1000', headers: h.auth })).json().data;
    const record = records.find((r: { request_id: string }) => r.request_id === response.headers.get('x-request-id'));
    expect(record).toMatchObject({ route: '/v1/images/generations', operation: 'generate', model: 'dall-e-3', images_returned: 1, status: 200 });
  });

  it('honours Idempotency-Key: a retry replays the first answer without a second upstream call', async () => {
    const headers = { 'Idempotency-Key': `sdk-${Date.now()}` };
    const first = await client.images.generate({ model: 'dall-e-3', prompt: 'once' }, { headers });
    const second = await client.images.generate({ model: 'dall-e-3', prompt: 'once' }, { headers });
    expect(second.data![0]!.url).toBe(first.data![0]!.url);
    expect(submissions()).toHaveLength(1);
  });
});

describe('size for a model that takes its shape as aspect_ratio', () => {
  /** The usage record of the request whose answer had this x-request-id. */
  async function recordOf(requestId: string | null) {
    const records = (await h.app.inject({ method: 'GET', url: '/v1/usage/records?limit=1000', headers: h.auth })).json().data;
    return records.find((r: { request_id: string }) => r.request_id === requestId);
  }

  it('ideogram-v3 with 1024x1024 sends Ideogram its 1:1 ratio, written 1x1', async () => {
    const res = await client.images.generate({ model: 'ideogram-v3', prompt: 'a poster', size: '1024x1024' });
    expect(res.data).toHaveLength(1);
    expect(submissions()).toHaveLength(1);
    const fields = submissions()[0]!.fields!;
    expect(fields.aspect_ratio).toBe('1x1');
    expect(fields).not.toHaveProperty('size');
    expect(fields).not.toHaveProperty('resolution');
  });

  it('a FLUX model with 1536x1024 sends 3:2, as Black Forest Labs writes it', async () => {
    const res = await client.images.generate({ model: 'flux-kontext-pro', prompt: 'a lake', size: '1536x1024' });
    expect(res.data).toHaveLength(1);
    expect(submissions()).toHaveLength(1);
    expect(submissions()[0]!.json).toEqual({ input: { prompt: 'a lake', aspect_ratio: '3:2' } });
  });

  it('an edit too: ideogram-v3 remix with 1024x1536 sends 2x3', async () => {
    await client.images.edit({ model: 'ideogram-v3', prompt: 'taller', image: await png(), size: '1024x1536' });
    expect(submissions()).toHaveLength(1);
    expect(submissions()[0]!.fields).toMatchObject({ aspect_ratio: '2x3' });
  });

  it('a streamed answer echoes the size of the image made', async () => {
    const events = [];
    for await (const event of await client.images.generate({ model: 'flux-kontext-pro', prompt: 'streamed lake', size: '1792x1024', stream: true })) events.push(event);
    expect(submissions()[0]!.json).toMatchObject({ input: { aspect_ratio: '7:4' } });
    expect(events).toHaveLength(1);
    const made = imageDimensions(Buffer.from(events[0]!.b64_json, 'base64'))!;
    expect(events[0]!.size).toBe(`${made.width}x${made.height}`);
  });

  it('a size whose ratio the model does not take is a 400 naming size, with nothing sent upstream and usage as for any refused size', async () => {
    const err = await client.images.generate({ model: 'ideogram-v3', prompt: 'a poster', size: '1792x1024', n: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    const bad = err as APIError;
    expect(bad.param).toBe('size');
    expect(bad.message).toMatch(/^400 size: 1792x1024 has the aspect ratio 7:4, which ideogram-v3 does not take/);
    expect(bad.message).toContain('"16:9"');
    expect(submissions()).toHaveLength(0);
    const record = await recordOf(bad.requestID ?? null);
    expect(record).toMatchObject({ route: '/v1/images/generations', operation: 'generate', model: 'ideogram-v3', images_requested: 2, images_returned: 0, status: 400 });
  });

  it('a size of another form, or size with aspect_ratio, is a 400 naming size', async () => {
    for (const body of [
      { model: 'flux-kontext-pro', prompt: 'x', size: '2K' },
      { model: 'ideogram-v3', prompt: 'x', size: '1024x1024', aspect_ratio: '1:1' },
    ]) {
      const err = await client.images.generate(body as OpenAI.ImageGenerateParamsNonStreaming).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect((err as APIError).param).toBe('size');
    }
    expect(submissions()).toHaveLength(0);
  });

  it('auto sends no ratio: the model’s default', async () => {
    await client.images.generate({ model: 'ideogram-v3', prompt: 'a poster', size: 'auto' });
    await client.images.generate({ model: 'flux-kontext-pro', prompt: 'a lake', size: 'auto' });
    expect(submissions()).toHaveLength(2);
    expect(submissions()[0]!.fields).not.toHaveProperty('aspect_ratio');
    expect(submissions()[1]!.json).toEqual({ input: { prompt: 'a lake' } });
  });

  it('small sides are a ratio too: 9x16 sends 9x16 to ideogram-v3, 21x9 sends its reduced 7:3 to FLUX', async () => {
    await client.images.generate({ model: 'ideogram-v3', prompt: 'a tall poster', size: '9x16' as '1024x1024' });
    await client.images.generate({ model: 'flux-kontext-pro', prompt: 'a wide lake', size: '21x9' as '1024x1024' });
    expect(submissions()[0]!.fields).toMatchObject({ aspect_ratio: '9x16' });
    expect(submissions()[1]!.json).toEqual({ input: { prompt: 'a wide lake', aspect_ratio: '7:3' } });
  });

  it('auto on a route that takes no shape at all (an ideogram-v3 masked edit) is the model’s default, not a refusal', async () => {
    const mask = await toFile(await makeHalfTransparentMask(), 'mask.png', { type: 'image/png' });
    const res = await client.images.edit({ model: 'ideogram-v3', prompt: 'a hat', image: await png(), mask, size: 'auto' });
    expect(res.data).toHaveLength(1);
    expect(submissions()).toHaveLength(1);
    expect(submissions()[0]!.fields).not.toHaveProperty('aspect_ratio');
    expect(submissions()[0]!.fields).not.toHaveProperty('size');
  });

  it('auto beside an aspect_ratio leaves the ratio to set the shape', async () => {
    await client.images.generate({ model: 'flux-kontext-pro', prompt: 'a lake', size: 'auto', aspect_ratio: '16:9' } as OpenAI.ImageGenerateParamsNonStreaming);
    expect(submissions()[0]!.json).toEqual({ input: { prompt: 'a lake', aspect_ratio: '16:9' } });
  });

  it('auto for a model whose sizes have no auto (dall-e-3, FLUX.2) sends no size: the model’s default; gpt-image-1 takes auto itself', async () => {
    await client.images.generate({ model: 'dall-e-3', prompt: 'a lighthouse', size: 'auto', response_format: 'url' });
    await client.images.generate({ model: 'flux-2-pro', prompt: 'a lake', size: 'auto', response_format: 'url' });
    await client.images.generate({ model: 'gpt-image-1', prompt: 'an otter', size: 'auto' });
    expect(submissions().map((r) => r.json)).toEqual([
      { input: { prompt: 'a lighthouse' } },
      { input: { prompt: 'a lake' } },
      { input: { prompt: 'an otter', size: 'auto' } },
    ]);
  });

  it('a model that takes size gets it unchanged', async () => {
    await client.images.generate({ model: 'gpt-image-1', prompt: 'an otter', size: '1536x1024' });
    expect(submissions()[0]!.json).toEqual({ input: { prompt: 'an otter', size: '1536x1024' } });
  });

  it('the gateway’s own /v1/generate still refuses size for such a model', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'ideogram-v3', prompt: 'x', size: '1024x1024' } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ code: 'invalid_request', details: [{ field: 'size' }] });
    expect(submissions()).toHaveLength(0);
  });
});

describe('images.edit through the SDK', () => {
  it('sends several images as image[] and the mask, with input_fidelity as the model’s option', async () => {
    const mask = await toFile(await makeHalfTransparentMask(), 'mask.png', { type: 'image/png' });
    const res = await client.images.edit({ model: 'gpt-image-1', prompt: 'add a hat', image: [await png(), await png()], mask, input_fidelity: 'high', n: 2 });
    expect(res.data).toHaveLength(2);
    expect(Buffer.from(res.data![0]!.b64_json!, 'base64').subarray(0, 8).toString('hex')).toBe(PNG_MAGIC);
    const upstream = submissions()[0]!;
    expect(upstream.path).toBe('/v1/images/edits');
    expect(upstream.files?.map((f) => f.field)).toEqual(['image[]', 'image[]', 'mask']);
    expect(upstream.fields).toMatchObject({ model: 'gpt-image-1', prompt: 'add a hat', input_fidelity: 'high', n: '2' });
  });
});

describe('openapi.yaml describes the façade', () => {
  it('a generation answer matches OpenAiImagesResponse', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', n: 2 } });
    expect(res.statusCode).toBe(200);
    expect(openApiProblems('OpenAiImagesResponse', res.json())).toEqual([]);
  });

  it('an error matches OpenAiError, and the spec check refuses the gateway’s own error shape', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload: { model: 'gpt-image-1' } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.param).toBe('prompt');
    expect(openApiProblems('OpenAiError', res.json())).toEqual([]);
    expect(openApiProblems('OpenAiError', { error: { code: 'invalid_request', message: 'x', request_id: 'req_1' } })).not.toEqual([]);
  });
});

describe('every catalogue model through the SDK', () => {
  const generators = MODELS.filter((m) => m.generate).map((m) => m.id);
  const editors = MODELS.filter((m) => m.edit && Object.keys(m.edit).length > 0).map((m) => m.id);

  it.each(generators)('images.generate with %s', async (model) => {
    const res = await client.images.generate({ model, prompt: `every model: ${model}`, response_format: 'url' });
    expect(res.data).toHaveLength(1);
    expect((await fetch(res.data![0]!.url!)).status).toBe(200);
    expect(submissions()).toHaveLength(1);
  });

  it.each(generators)('images.generate with %s, streamed', async (model) => {
    const events = [];
    for await (const event of await client.images.generate({ model, prompt: `every model streamed: ${model}`, stream: true })) events.push(event);
    expect(events.map((e) => e.type)).toEqual(['image_generation.completed']);
    expect(Buffer.from(events[0]!.b64_json, 'base64').length).toBeGreaterThan(0);
    expect(submissions()).toHaveLength(1);
  });

  it.each(editors)('images.edit with %s', async (model) => {
    const res = await client.images.edit({ model, prompt: `every model: ${model}`, image: await png(), response_format: 'b64_json' });
    expect(res.data).toHaveLength(1);
    expect(Buffer.from(res.data![0]!.b64_json!, 'base64').subarray(0, 8).toString('hex')).toBe(PNG_MAGIC);
    expect(submissions()).toHaveLength(1);
  });
});

describe('streaming through the SDK (stream: true)', () => {
  /** Every event a streamed call yields, as the SDK hands them out. */
  async function collect(stream: AsyncIterable<any>): Promise<any[]> {
    const events = [];
    for await (const event of stream) events.push(event);
    return events;
  }

  it.each(['gpt-image-1', 'flux-kontext-pro'])('images.generate with %s yields one image_generation.completed per image, in OpenAI’s shape', async (model) => {
    const n = model === 'gpt-image-1' ? 2 : 1;
    const stream = await client.images.generate({ model, prompt: 'a streamed otter', n, stream: true, partial_images: 2 });
    const events = await collect(stream);
    expect(events).toHaveLength(n);
    for (const event of events) {
      expect(event.type).toBe('image_generation.completed');
      expect(openApiProblems('OpenAiImageEvent', event)).toEqual([]);
      expect(Buffer.from(event.b64_json, 'base64').subarray(0, 8).toString('hex')).toBe(PNG_MAGIC);
      expect(event.size).toMatch(/^\d+x\d+$/);
      expect(event.output_format).toBe('png');
      expect(event.usage.images).toBe(1);
    }
    // Each event carries its image's share: together, the request's usage.
    const sum = (name: string) => events.reduce((total, e) => total + e.usage[name], 0);
    if (model === 'gpt-image-1') {
      // The simulator reports 10 input tokens and 100 output tokens per image.
      expect(sum('total_tokens')).toBe(210);
      expect(events.map((e) => e.usage.output_tokens)).toEqual([100, 100]);
      expect(events.map((e) => e.usage.input_tokens)).toEqual([5, 5]);
    } else {
      expect(events[0].usage).toMatchObject({ input_tokens: 0, output_tokens: 0, total_tokens: 0 });
    }
    expect(submissions()).toHaveLength(1);
  });

  it.each(['gpt-image-1', 'flux-kontext-pro'])('images.edit with %s yields image_edit.completed', async (model) => {
    const stream = await client.images.edit({ model, prompt: 'a streamed hat', image: await png(), stream: true });
    const events = await collect(stream);
    expect(events.map((e) => e.type)).toEqual(['image_edit.completed']);
    expect(openApiProblems('OpenAiImageEvent', events[0])).toEqual([]);
    expect(Buffer.from(events[0].b64_json, 'base64').subarray(0, 8).toString('hex')).toBe(PNG_MAGIC);
  });

  it('a failure after the headers is an `error` event, which the SDK throws as an APIError', async () => {
    h.simulator.failNext('http500');
    const stream = await client.images.generate({ model: 'gpt-image-1', prompt: 'fails upstream', stream: true });
    const err = await collect(stream).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(APIError);
    expect((err as APIError).type).toBe('server_error');
    h.simulator.failNext('http500');
    const raw = await fetch(`${baseURL}/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-image-1', prompt: 'fails upstream', stream: true }),
    });
    expect(raw.status).toBe(200);
    const text = await raw.text();
    const block = text.split('\n\n').find((b) => b.startsWith('event: error'))!;
    const data = JSON.parse(block.split('\n')[1]!.slice('data: '.length));
    expect(data).toEqual({ type: 'error', error: { message: expect.stringMatching(/upstream failed/), type: 'server_error', param: null, code: 'upstream_error' } });
    expect(openApiProblems('OpenAiStreamError', data)).toEqual([]);
  });

  it('refuses partial_images outside 0..3 before the stream opens', async () => {
    const err = await client.images.generate({ model: 'gpt-image-1', prompt: 'x', stream: true, partial_images: 4 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(APIError);
    expect((err as APIError).status).toBe(400);
    expect((err as APIError).param).toBe('partial_images');
    expect(submissions()).toHaveLength(0);
  });
});

describe('errors in OpenAI’s shape', () => {
  it('a bad size makes the SDK throw BadRequestError naming the field', async () => {
    const err = await client.images.generate({ model: 'gpt-image-1', prompt: 'x', size: '640x480' as '1024x1024' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    const bad = err as InstanceType<typeof OpenAI.BadRequestError>;
    expect(bad.status).toBe(400);
    expect(bad.message).toMatch(/size/);
    expect(bad.type).toBe('invalid_request_error');
    expect(bad.param).toBe('size');
    expect(bad.requestID).toMatch(/^req_/);
    expect(submissions()).toHaveLength(0);
  });

  it('an option the model does not take is named as the caller wrote it', async () => {
    const err = await client.images.generate({ model: 'dall-e-3', prompt: 'x', moderation: 'low' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as APIError).param).toBe('moderation');
    expect((err as APIError).message).toMatch(/^400 moderation: is not an option of dall-e-3/);
  });

  it('an unknown key is AuthenticationError', async () => {
    const stranger = new OpenAI({ baseURL, apiKey: 'gk-nobody-0123456789' });
    const err = await stranger.images.generate({ model: 'gpt-image-1', prompt: 'x' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((err as APIError).type).toBe('authentication_error');
    expect((err as APIError).code).toBe('invalid_api_key');
  });

  it('an edit without an image is BadRequestError with param image', async () => {
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'x' }, []);
    const res = await h.app.inject({ method: 'POST', url: '/v1/images/edits', headers: { ...h.auth, ...headers }, payload });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toEqual({ error: { message: expect.stringMatching(/^image: /), type: 'invalid_request_error', param: 'image', code: 'invalid_request' } });
  });

  it('the raw body is exactly {error:{message,type,param,code}}, for a stream refused before it opens too', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', stream: 'yes' } });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toEqual({ error: { message: expect.stringMatching(/^stream: /), type: 'invalid_request_error', param: 'stream', code: 'invalid_request' } });
    expect(res.headers['x-request-id']).toMatch(/^req_/);
  });

  it('an unknown parameter is refused with the accepted ones', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', async: true } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ param: 'async', type: 'invalid_request_error' });
  });

  it('a model asked for an operation it lacks is pointed to the façade’s route for it; an upscaler to the gateway’s own', async () => {
    const edit = await client.images.edit({ model: 'dall-e-3', prompt: 'x', image: await png() }).catch((e: unknown) => e);
    expect(edit).toBeInstanceOf(OpenAI.BadRequestError);
    expect((edit as APIError).message).toMatch(/dall-e-3 does not edit images; use POST \/v1\/images\/generations$/);
    const upscale = await client.images.generate({ model: 'ideogram-upscale', prompt: 'x' }).catch((e: unknown) => e);
    expect((upscale as APIError).message).toMatch(/does not generate from text; use POST \/v1\/upscale$/);
    expect(submissions()).toHaveLength(0);
  });

  it('the gateway’s own routes keep the gateway’s error shape', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', size: '640x480' } });
    expect(res.json().error).toMatchObject({ code: 'invalid_request', details: [{ field: 'size' }] });
  });

  it('an upstream failure keeps its status: 502 server_error (InternalServerError in the SDK)', async () => {
    h.simulator.failNext('http500');
    const res = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x' } });
    expect(res.statusCode).toBe(502);
    expect(res.json().error).toMatchObject({ type: 'server_error', code: 'upstream_error', param: null });
  });
});

describe('a key over its rpm on the façade', () => {
  it('is RateLimitError 429 with code rate_limit_exceeded and Retry-After', async () => {
    const limited = await startHarness({ RATE_LIMIT_RPM: '1' });
    try {
      const address = await limited.app.listen({ port: 0, host: '127.0.0.1' });
      // No SDK retries: the second call must surface the 429 itself.
      const sdk = new OpenAI({ baseURL: `${address}/v1`, apiKey: CLIENT_KEY, maxRetries: 0 });
      await sdk.images.generate({ model: 'dall-e-3', prompt: 'one' });
      const err = await sdk.images.generate({ model: 'dall-e-3', prompt: 'two' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.RateLimitError);
      const limitedErr = err as APIError;
      expect(limitedErr.code).toBe('rate_limit_exceeded');
      expect(limitedErr.type).toBe('rate_limit_error');
      expect(Number(limitedErr.headers?.get('retry-after'))).toBeGreaterThan(0);
      // The rpm resets within the minute: the SDK may wait and send it again.
      expect(limitedErr.headers?.get('x-should-retry')).toBeNull();
    } finally {
      await limited.close();
    }
  });
});

describe('a paid image lost, through the SDK', () => {
  it('is not retried by the SDK on its own (x-should-retry: false): upstream was paid, and each retry would pay again', async () => {
    // The database does not take the image's row: 503 paid_image_lost, with Retry-After.
    vi.spyOn((h.app.images as any).records, 'save').mockRejectedValue(new Error('Connection terminated unexpectedly'));
    try {
      const sdk = new OpenAI({ baseURL, apiKey: CLIENT_KEY, maxRetries: 2 });
      const err = (await sdk.images.generate({ model: 'gpt-image-1', prompt: 'a lost otter', quality: 'low' }).catch((e: unknown) => e)) as APIError;
      expect(err).toBeInstanceOf(APIError);
      expect(err.status).toBe(503);
      expect((err.error as { code?: string }).code).toBe('paid_image_lost');
      expect(err.headers?.get('x-should-retry')).toBe('false');
      expect(submissions()).toHaveLength(1);
    } finally {
      vi.restoreAllMocks();
    }
  });
});

describe('what the SDK sends again on its own', () => {
  const sdk = () => new OpenAI({ baseURL, apiKey: CLIENT_KEY, maxRetries: 2 });

  it('not an upstream failure that may have been billed (502 after an upstream 500): one paid call, not three', async () => {
    h.simulator.failNext('http500', 3);
    const err = (await sdk().images.generate({ model: 'gpt-image-1', prompt: 'billed maybe' }).catch((e: unknown) => e)) as APIError;
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    expect(err.status).toBe(502);
    expect(err.headers?.get('x-should-retry')).toBe('false');
    expect(submissions()).toHaveLength(1);
  });

  it('not a reply upstream broke (malformed): it may have been billed too', async () => {
    h.simulator.failNext('malformed', 3);
    const err = (await sdk().images.generate({ model: 'gpt-image-1', prompt: 'garbled' }).catch((e: unknown) => e)) as APIError;
    expect(err.status).toBe(502);
    expect(err.headers?.get('x-should-retry')).toBe('false');
    expect(submissions()).toHaveLength(1);
  });

  it("not upstream refusing the gateway's own key (401): refused again until an operator acts", async () => {
    h.simulator.failNext('http401', 3);
    const err = (await sdk().images.generate({ model: 'gpt-image-1', prompt: 'no key' }).catch((e: unknown) => e)) as APIError;
    expect(err.status).toBe(502);
    expect(err.headers?.get('x-should-retry')).toBe('false');
    expect(submissions()).toHaveLength(1);
  });

  it('but an unbilled upstream refusal (throttled, Retry-After 1) is retried, and the retry succeeds', async () => {
    h.simulator.failNext('http429');
    const res = await sdk().images.generate({ model: 'dall-e-3', prompt: 'patient' });
    expect(res.data).toHaveLength(1);
    expect(submissions()).toHaveLength(2);
  });

  it('not an Idempotency-Key reused with another body (409: the same conflict each time)', async () => {
    const key = `sdk-conflict-${Date.now()}`;
    await sdk().images.generate({ model: 'dall-e-3', prompt: 'first' }, { headers: { 'Idempotency-Key': key } });
    const err = (await sdk().images.generate({ model: 'dall-e-3', prompt: 'second' }, { headers: { 'Idempotency-Key': key } }).catch((e: unknown) => e)) as APIError;
    expect(err).toBeInstanceOf(OpenAI.ConflictError);
    expect(err.headers?.get('x-should-retry')).toBe('false');
    expect(submissions()).toHaveLength(1);
  });

  it('not a 429 that resets hours away (images_per_day): refused at once, not held until midnight', async () => {
    const minted = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: `sdk-day-${Date.now()}`, rpm: 1000, images_per_day: 1 } });
    expect(minted.statusCode).toBe(201);
    const limited = new OpenAI({ baseURL, apiKey: minted.json().key, maxRetries: 2 });
    await limited.images.generate({ model: 'dall-e-3', prompt: 'the one of today' });
    const err = (await limited.images.generate({ model: 'dall-e-3', prompt: 'one more' }).catch((e: unknown) => e)) as APIError;
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect(err.message).toMatch(/images_per_day limit reached/);
    // Unless it is the last minute of the UTC day, the reset is more than a minute away.
    if (Number(err.headers?.get('retry-after')) > 60) expect(err.headers?.get('x-should-retry')).toBe('false');
    else expect(err.headers?.get('x-should-retry')).toBeNull();
    expect(submissions()).toHaveLength(1);
  });
});
