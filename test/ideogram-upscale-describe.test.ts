/**
 * Ideogram's upscale and describe as catalogue operations: POST /v1/upscale (through the generation
 * pipeline: limits, usage, jobs, streams) and POST /v1/describe (text out, nothing stored), each
 * sent upstream as the documents show (multipart, `image_file`, `image_request`, `Api-Key`).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { parse } from 'yaml';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, UPSTREAM_KEY, jobWhenFinished, makePng, multipartBody, startHarness, type Harness, usageRecordOf } from './harness.js';
import { eventsOf, parseSse } from './sse.js';
import { ModelCatalogue, pricePerImage } from '../src/catalogue/catalogue.js';
import { MODELS } from '../src/catalogue/models.js';

const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` };
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats.default(ajv);
ajv.addSchema({ ...parse(readFileSync(new URL('../openapi.yaml', import.meta.url), 'utf8')), $id: 'openapi.yaml' });
function openApiProblems(schemaName: string, body: unknown): string[] {
  const check = ajv.getSchema(`openapi.yaml#/components/schemas/${schemaName}`)!;
  return check(body) ? [] : (check.errors ?? []).map((e) => `${e.instancePath} ${e.message}`);
}

let h: Harness;
let png: Buffer;
let server: Server;
let imageUrl: string;
/** Every request the image host got. */
const hits: string[] = [];

beforeAll(async () => {
  png = await makePng(48, 32, { r: 30, g: 160, b: 90 });
  server = createServer((req, res) => {
    hits.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'image/png' }).end(png);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  imageUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/source.png`;
  h = await startHarness({ ALLOWED_IMAGE_HOSTS: '127.0.0.1', RATE_LIMIT_RPM: '1000' });
});
afterAll(async () => {
  await h.close();
  await new Promise((resolve) => server.close(resolve));
});
beforeEach(() => {
  hits.length = 0;
  h.simulator.reset();
});

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
const dataUrl = (bytes: Buffer) => `data:image/png;base64,${bytes.toString('base64')}`;
const upstreamCalls = (path: string) => h.simulator.received.filter((r) => r.path === path);

function postJson(url: string, payload: Record<string, unknown>, headers: Record<string, string> = h.auth) {
  return h.app.inject({ method: 'POST', url, headers, payload });
}

function postMultipart(url: string, fields: Record<string, string>, files: Array<{ field: string; bytes: Buffer }> = [{ field: 'image', bytes: png }], headers: Record<string, string> = h.auth) {
  const body = multipartBody(fields, files.map((f, i) => ({ ...f, filename: `in-${i}.png` })));
  return h.app.inject({ method: 'POST', url, headers: { ...headers, ...body.headers }, payload: body.payload });
}


async function mintKey(policy: Record<string, unknown>): Promise<Record<string, string>> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: ADMIN, payload: { team: `up${randomBytes(3).toString('hex')}`, ...policy } });
  expect(res.statusCode, res.body).toBe(201);
  return { authorization: `Bearer ${res.json().key}` };
}

describe('GET /v1/models', () => {
  it('lists ideogram-upscale and ideogram-describe with their operations, fields and prices', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth });
    expect(openApiProblems('ModelList', res.json())).toEqual([]);
    const byId = new Map<string, any>(res.json().data.map((m: any) => [m.id, m]));
    const upscale = byId.get('ideogram-upscale');
    expect(upscale).toMatchObject({ operations: ['upscale'], max_n: 8, price_per_image_usd: 0.06, async: false });
    expect(upscale.input_schema.upscale.parameters).toMatchObject({
      resemblance: { type: 'integer', minimum: 1, maximum: 100 },
      detail: { type: 'integer', minimum: 1, maximum: 100 },
      n: { type: 'integer', minimum: 1, maximum: 8 },
    });
    expect(upscale.input_schema.upscale.options.magic_prompt_option.values).toEqual(['AUTO', 'ON', 'OFF']);
    expect(upscale.input_schema.upscale.images).toEqual({ max: 1, max_bytes: 25_000_000 });
    const describeModel = byId.get('ideogram-describe');
    expect(describeModel).toMatchObject({ operations: ['describe'], max_n: 0, price_per_image_usd: null });
    expect(describeModel.input_schema.describe.options.describe_model_version.values).toEqual(['V_2', 'V_3', 'V_4']);
    expect(describeModel.input_schema.describe.images).toEqual({ max: 1, max_bytes: 25_000_000 });
    // The generators are unchanged.
    expect(byId.get('ideogram-v2').operations).toEqual(['generate', 'edit']);
  });
});

describe('POST /v1/upscale', () => {
  it('multipart: sends image_file and an image_request with every field, under Api-Key, and answers the usual success body', async () => {
    const res = await postMultipart('/v1/upscale', {
      model: 'ideogram-upscale',
      prompt: 'crisp edges',
      resemblance: '80',
      detail: '20',
      n: '2',
      seed: '7',
      options: JSON.stringify({ magic_prompt_option: 'OFF' }),
    });
    expect(res.statusCode, res.body).toBe(200);
    const result = res.json();
    expect(openApiProblems('GenerationResult', result)).toEqual([]);
    expect(result.model).toBe('ideogram-upscale');
    expect(result.images).toHaveLength(2);
    expect(result.usage).toMatchObject({ images: 2, estimated_cost_usd: 0.12 });
    const stored = await h.app.inject({ method: 'GET', url: new URL(result.images[0].url).pathname + new URL(result.images[0].url).search });
    expect(stored.statusCode).toBe(200);

    const [sent] = upstreamCalls('/ideogram/upscale');
    expect(sent!.headers['api-key']).toBe(UPSTREAM_KEY);
    expect(sent!.headers.authorization).toBeUndefined();
    expect(JSON.parse(sent!.fields!.image_request as string)).toEqual({
      prompt: 'crisp edges',
      resemblance: 80,
      detail: 20,
      num_images: 2,
      seed: 7,
      magic_prompt_option: 'OFF',
    });
    expect(Object.keys(sent!.fields!)).toEqual(['image_request']);
    expect(sent!.files!.map((f) => [f.field, f.sha256])).toEqual([['image_file', sha256(png)]]);

    const record = await usageRecordOf(h, res.headers['x-request-id'] as string);
    expect(record).toMatchObject({ route: '/v1/upscale', operation: 'upscale', model: 'ideogram-upscale', images_requested: 2, images_returned: 2, estimated_cost_usd: 0.12 });
  });

  it('JSON with a data URL and no prompt sends image_request {} (required upstream even when empty)', async () => {
    const res = await postJson('/v1/upscale', { model: 'ideogram-upscale', image: dataUrl(png) });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().images).toHaveLength(1);
    const [sent] = upstreamCalls('/ideogram/upscale');
    expect(sent!.fields!.image_request).toBe('{}');
    expect(sent!.files!.map((f) => [f.field, f.sha256])).toEqual([['image_file', sha256(png)]]);
  });

  it('JSON with an image URL fetches it (once admitted) and sends its bytes', async () => {
    const res = await postJson('/v1/upscale', { model: 'ideogram/upscale', image: imageUrl, resemblance: 55 });
    expect(res.statusCode, res.body).toBe(200);
    expect(hits).toEqual(['/source.png']);
    const [sent] = upstreamCalls('/ideogram/upscale');
    expect(JSON.parse(sent!.fields!.image_request as string)).toEqual({ resemblance: 55 });
    expect(sent!.files![0]!.sha256).toBe(sha256(png));
  });

  it.each([
    ['resemblance', { resemblance: 0 }, /from 1 to 100/],
    ['resemblance', { resemblance: 101 }, /from 1 to 100/],
    ['detail', { detail: 101 }, /from 1 to 100/],
    ['detail', { detail: 2.5 }, /integer/],
    ['n', { n: 9 }, /from 1 to 8/],
    ['seed', { seed: -1 }, /0|>=/],
    ['options.magic_prompt_option', { options: { magic_prompt_option: 'MAYBE' } }, /one of/],
    ['options.style_type', { options: { style_type: 'AUTO' } }, /not an option of ideogram-upscale/],
    ['size', { size: '2048x2048' }, /not a field/],
    ['mask', { mask: 'data:image/png;base64,iVBORw0KGgo=' }, /not a field/],
    ['image', { image: undefined }, /required/],
    ['prompt', { prompt: '' }, /empty/],
  ])('refuses a bad %s with a 400 naming it, fetching and sending nothing', async (field, change, message) => {
    const body: Record<string, unknown> = { model: 'ideogram-upscale', image: imageUrl, ...change };
    if (body.image === undefined) delete body.image;
    const res = await postJson('/v1/upscale', body);
    expect(res.statusCode, res.body).toBe(400);
    const detail = res.json().error.details.find((d: any) => d.field === field);
    expect(detail, res.body).toBeDefined();
    expect(`${detail.message} ${res.json().error.message}`).toMatch(message);
    expect(hits).toEqual([]);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('multipart: no image, two images, a mask, or an out-of-range field are 400s that never reach upstream', async () => {
    const none = await postMultipart('/v1/upscale', { model: 'ideogram-upscale' }, []);
    expect(none.statusCode).toBe(400);
    expect(none.json().error.details[0]).toMatchObject({ field: 'image', message: expect.stringMatching(/one image file is required/) });
    const two = await postMultipart('/v1/upscale', { model: 'ideogram-upscale' }, [{ field: 'image', bytes: png }, { field: 'image', bytes: png }]);
    expect(two.statusCode).toBe(400);
    expect(two.json().error.details[0].field).toBe('image');
    const masked = await postMultipart('/v1/upscale', { model: 'ideogram-upscale' }, [{ field: 'image', bytes: png }, { field: 'mask', bytes: png }]);
    expect(masked.statusCode).toBe(400);
    expect(masked.json().error.details[0].field).toBe('mask');
    const detail = await postMultipart('/v1/upscale', { model: 'ideogram-upscale', detail: '0' });
    expect(detail.statusCode).toBe(400);
    expect(detail.json().error.details[0]).toMatchObject({ field: 'detail', message: 'must be an integer from 1 to 100 for ideogram-upscale' });
    expect(h.simulator.received).toHaveLength(0);
  });

  it('JSON: a list of images is a 400 saying it takes one image, on upscale and describe, fetching nothing', async () => {
    for (const [url, model] of [['/v1/upscale', 'ideogram-upscale'], ['/v1/describe', 'ideogram-describe']] as const) {
      const res = await postJson(url, { model, image: [imageUrl, imageUrl] });
      expect(res.statusCode, res.body).toBe(400);
      expect(res.json().error.details[0]).toMatchObject({ field: 'image', message: expect.stringMatching(/takes one image .*not a list; got 2/) });
    }
    expect(hits).toEqual([]);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('a model that does not upscale, an unknown model, and upscale on another route get the usual errors', async () => {
    const edits = await postJson('/v1/upscale', { model: 'gpt-image-1', image: dataUrl(png) });
    expect(edits.statusCode).toBe(400);
    expect(edits.json().error.details[0]).toMatchObject({ field: 'model', allowed: ['generate', 'edit'] });
    expect(edits.json().error.message).toMatch(/does not upscale images; use POST \/v1\/generate or POST \/v1\/edit/);
    const unknown = await postJson('/v1/upscale', { model: 'no-such-model', image: dataUrl(png) });
    expect(unknown.statusCode).toBe(400);
    expect(unknown.json().error.details[0].field).toBe('model');
    const generate = await postJson('/v1/generate', { model: 'ideogram-upscale', prompt: 'x' });
    expect(generate.statusCode).toBe(400);
    expect(generate.json().error.message).toMatch(/does not generate from text; use POST \/v1\/upscale/);
    const edit = await postJson('/v1/edit', { model: 'ideogram-upscale', prompt: 'x', image: dataUrl(png) });
    expect(edit.statusCode).toBe(400);
    expect(edit.json().error.message).toMatch(/does not edit images; use POST \/v1\/upscale/);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('runs as a job with "async": true, and an Idempotency-Key replays it instead of paying twice', async () => {
    const accepted = await postJson('/v1/upscale', { model: 'ideogram-upscale', image: dataUrl(png), async: true });
    expect(accepted.statusCode, accepted.body).toBe(202);
    const job = await jobWhenFinished(h, accepted.json().id);
    expect(job.status).toBe('succeeded');
    expect(job.result.model).toBe('ideogram-upscale');
    expect(job.result.images).toHaveLength(1);

    h.simulator.reset();
    const headers = { ...h.auth, 'idempotency-key': `upscale-${randomBytes(4).toString('hex')}` };
    const first = await postJson('/v1/upscale', { model: 'ideogram-upscale', image: dataUrl(png), seed: 3 }, headers);
    const again = await postJson('/v1/upscale', { model: 'ideogram-upscale', image: dataUrl(png), seed: 3 }, headers);
    expect(first.statusCode, first.body).toBe(200);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.json().images[0].sha256).toBe(first.json().images[0].sha256);
    expect(upstreamCalls('/ideogram/upscale')).toHaveLength(1);
  });

  it('streams with "stream": true, ending in the usual success body', async () => {
    const res = await postJson('/v1/upscale', { model: 'ideogram-upscale', image: dataUrl(png), n: 2, stream: true });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    const events = eventsOf(parseSse(res.body));
    expect(events.map((e) => e.event)).toEqual(['queued', 'running', 'image', 'image', 'succeeded']);
    expect(openApiProblems('GenerationResult', events.at(-1)!.data)).toEqual([]);
  });

  it('images_per_day counts upscaled images: the request that would cross it is refused before upstream', async () => {
    const key = await mintKey({ images_per_day: 3, rpm: 100 });
    const first = await postJson('/v1/upscale', { model: 'ideogram-upscale', image: dataUrl(png), n: 2 }, key);
    expect(first.statusCode, first.body).toBe(200);
    expect(first.headers['x-ratelimit-images-remaining']).toBe('1');
    h.simulator.reset();
    const over = await postJson('/v1/upscale', { model: 'ideogram-upscale', image: dataUrl(png), n: 2 }, key);
    expect(over.statusCode).toBe(429);
    expect(over.json().error.message).toMatch(/images_per_day limit reached: .* has made 2, and asked for 2/);
    expect(h.simulator.received).toHaveLength(0);
    // A describe makes no image: the spent allowance does not refuse it.
    const described = await postJson('/v1/describe', { model: 'ideogram-describe', image: dataUrl(png) }, key);
    expect(described.statusCode, described.body).toBe(200);
  });

  it('a key whose allow-list leaves it out is refused before the image is fetched', async () => {
    const key = await mintKey({ models: ['gpt-image-*'] });
    const res = await postJson('/v1/upscale', { model: 'ideogram-upscale', image: imageUrl }, key);
    expect(res.statusCode).toBe(403);
    expect(hits).toEqual([]);
    expect(h.simulator.received).toHaveLength(0);
  });
});

describe('POST /v1/describe', () => {
  it('multipart: sends image_file and describe_model_version under Api-Key; answers descriptions, stores nothing, records 0 images', async () => {
    const before = (await h.app.inject({ method: 'GET', url: '/v1/images?limit=100', headers: ADMIN })).json().data.length;
    const res = await postMultipart('/v1/describe', { model: 'ideogram-describe', options: JSON.stringify({ describe_model_version: 'V_2' }) });
    expect(res.statusCode, res.body).toBe(200);
    const body = res.json();
    expect(openApiProblems('DescriptionResult', body)).toEqual([]);
    expect(body).toEqual({
      model: 'ideogram-describe',
      descriptions: [{ text: expect.stringContaining('(V_2)') }],
      usage: { images: 0, estimated_cost_usd: null, upstream_ms: expect.any(Number) },
    });
    const [sent] = upstreamCalls('/ideogram/describe');
    expect(sent!.headers['api-key']).toBe(UPSTREAM_KEY);
    expect(sent!.fields).toEqual({ describe_model_version: 'V_2' });
    expect(sent!.files!.map((f) => [f.field, f.sha256])).toEqual([['image_file', sha256(png)]]);
    const after = (await h.app.inject({ method: 'GET', url: '/v1/images?limit=100', headers: ADMIN })).json().data.length;
    expect(after).toBe(before);
    const record = await usageRecordOf(h, res.headers['x-request-id'] as string);
    expect(record).toMatchObject({
      route: '/v1/describe',
      operation: 'describe',
      model: 'ideogram-describe',
      status: 200,
      images_requested: 0,
      images_returned: 0,
      bytes_stored: 0,
      estimated_cost_usd: null,
      upstream_status: 200,
    });
  });

  it('JSON with a data URL sends only the image when no option is given; an image URL is fetched', async () => {
    const res = await postJson('/v1/describe', { model: 'ideogram-describe', image: dataUrl(png) });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().descriptions[0].text).toContain('(V_3)');
    const [sent] = upstreamCalls('/ideogram/describe');
    expect(sent!.fields).toEqual({});
    expect(sent!.files).toHaveLength(1);
    const byUrl = await postJson('/v1/describe', { model: 'ideogram-describe', image: imageUrl });
    expect(byUrl.statusCode, byUrl.body).toBe(200);
    expect(hits).toEqual(['/source.png']);
  });

  it.each([
    ['options.describe_model_version', { options: { describe_model_version: 'V_9' } }],
    ['options.magic_prompt_option', { options: { magic_prompt_option: 'ON' } }],
    ['prompt', { prompt: 'what is it' }],
    ['image', { image: undefined }],
    ['image', { image: 'not-an-image' }],
  ])('refuses a bad %s with a 400 naming it, sending nothing', async (field, change) => {
    const body: Record<string, unknown> = { model: 'ideogram-describe', image: imageUrl, ...change };
    if (body.image === undefined) delete body.image;
    const res = await postJson('/v1/describe', body);
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().error.details.map((d: any) => d.field)).toContain(field);
    expect(hits).toEqual([]);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('a model that does not describe, an unknown model, a missing file and an Idempotency-Key get 400s', async () => {
    const upscale = await postJson('/v1/describe', { model: 'ideogram-upscale', image: dataUrl(png) });
    expect(upscale.statusCode).toBe(400);
    expect(upscale.json().error.message).toMatch(/does not describe images; use POST \/v1\/upscale/);
    const unknown = await postJson('/v1/describe', { model: 'nope', image: dataUrl(png) });
    expect(unknown.json().error.details[0].field).toBe('model');
    const noFile = await postMultipart('/v1/describe', { model: 'ideogram-describe' }, []);
    expect(noFile.statusCode).toBe(400);
    expect(noFile.json().error.details[0].field).toBe('image');
    const keyed = await postJson('/v1/describe', { model: 'ideogram-describe', image: dataUrl(png) }, { ...h.auth, 'idempotency-key': 'k1' });
    expect(keyed.statusCode).toBe(400);
    expect(keyed.json().error.details[0].field).toBe('Idempotency-Key');
    expect(h.simulator.received).toHaveLength(0);
  });

  it('an upstream failure is the usual 502, recorded as a describe that made nothing', async () => {
    h.simulator.failNext('http500');
    const res = await postJson('/v1/describe', { model: 'ideogram-describe', image: dataUrl(png) });
    expect(res.statusCode).toBe(502);
    expect(openApiProblems('Error', res.json())).toEqual([]);
    const record = await usageRecordOf(h, res.headers['x-request-id'] as string);
    expect(record).toMatchObject({ operation: 'describe', status: 502, images_returned: 0 });
  });

  it('a key with a monthly budget may not use it: describe has no published price', async () => {
    const key = await mintKey({ monthly_budget_usd: 5 });
    const res = await postJson('/v1/describe', { model: 'ideogram-describe', image: dataUrl(png) }, key);
    expect(res.statusCode).toBe(403);
    expect(res.json().error.message).toMatch(/no known price/);
    expect(h.simulator.received).toHaveLength(0);
  });
});

describe('usage records of requests refused while they are read', () => {
  it('name the operation of their route, as UsageRecord says, on generate, edit, upscale and describe', async () => {
    const refused = [
      [await postMultipart('/v1/upscale', { model: 'ideogram-upscale', resemblance: 'abc' }), 'upscale'],
      [await postJson('/v1/upscale', { model: 'ideogram-upscale' }), 'upscale'],
      [await h.app.inject({ method: 'POST', url: '/v1/upscale', headers: { ...h.auth, 'content-type': 'text/plain' }, payload: 'an image' }), 'upscale'],
      [await postMultipart('/v1/describe', { model: 'ideogram-describe', unknown_field: '1' }), 'describe'],
      [await postJson('/v1/generate', { model: 'gpt-image-1', prompt: 'a deer', output_format: 'gif' }), 'generate'],
      [await postJson('/v1/edit', { model: 'gpt-image-1', prompt: 'a deer' }), 'edit'],
      [await postJson('/v1/images/generations', { model: 'dall-e-3', prompt: 'a deer', unknown_field: 1 }), 'generate'],
    ] as const;
    for (const [res, operation] of refused) {
      expect(res.statusCode).toBeGreaterThanOrEqual(400);
      const record = await usageRecordOf(h, res.headers['x-request-id'] as string);
      expect(record, res.body).toMatchObject({ operation, status: res.statusCode, images_returned: 0 });
      expect(openApiProblems('UsageRecord', record)).toEqual([]);
    }
    const other = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth });
    expect((await usageRecordOf(h, other.headers['x-request-id'] as string)).operation).toBeNull();
    expect(h.simulator.received).toHaveLength(0);
  });
});

describe("Ideogram's limit of 25 MB an image (its spec's \"max size 25MB\"), under MAX_UPLOAD_BYTES (25 MiB)", () => {
  const LIMIT = 25_000_000;
  /** A PNG padded to `size` bytes: over Ideogram's 25 MB, still under MAX_UPLOAD_BYTES (26,214,400) at 25,100,000. */
  const pngOf = (size: number) => Buffer.concat([png, Buffer.alloc(size - png.length)]);

  function expectTooLarge(res: Awaited<ReturnType<typeof postJson>>, size: number): void {
    expect(res.statusCode, res.body.slice(0, 500)).toBe(413);
    const error = res.json().error;
    expect(error.code).toBe('payload_too_large');
    expect(error.message).toContain(`the image is ${size} bytes`);
    expect(error.details).toEqual([{ field: 'image', message: `must be at most ${LIMIT} bytes` }]);
    expect(openApiProblems('Error', res.json())).toEqual([]);
  }

  it('refuses a 25,100,000-byte image with a 413 naming image and the limit, on upscale and describe, multipart and JSON, sending nothing', async () => {
    const size = 25_100_000;
    const big = pngOf(size);
    for (const [url, model] of [['/v1/upscale', 'ideogram-upscale'], ['/v1/describe', 'ideogram-describe']] as const) {
      expectTooLarge(await postMultipart(url, { model }, [{ field: 'image', bytes: big }]), size);
      expectTooLarge(await postJson(url, { model, image: dataUrl(big) }), size);
    }
    expect(h.simulator.received).toHaveLength(0);
  });

  it('refuses an image URL that fetches to more, once fetched; an image of exactly 25,000,000 bytes is sent', async () => {
    const size = 25_000_001;
    const big = pngOf(size);
    const large = createServer((_req, res) => res.writeHead(200, { 'content-type': 'image/png' }).end(big));
    await new Promise<void>((resolve) => large.listen(0, '127.0.0.1', resolve));
    try {
      const url = `http://127.0.0.1:${(large.address() as AddressInfo).port}/big.png`;
      expectTooLarge(await postJson('/v1/upscale', { model: 'ideogram-upscale', image: url }), size);
      expectTooLarge(await postJson('/v1/describe', { model: 'ideogram-describe', image: url }), size);
    } finally {
      await new Promise((resolve) => large.close(resolve));
    }
    expect(h.simulator.received).toHaveLength(0);

    const atLimit = pngOf(LIMIT);
    const res = await postMultipart('/v1/upscale', { model: 'ideogram-upscale' }, [{ field: 'image', bytes: atLimit }]);
    expect(res.statusCode, res.body.slice(0, 500)).toBe(200);
    expect(upstreamCalls('/ideogram/upscale')[0]!.files!.map((f) => f.sha256)).toEqual([sha256(atLimit)]);
  });
});

describe('PRICE_OVERRIDES', () => {
  it('reprices the upscale route, and refuses to price a model that only describes', () => {
    const catalogue = new ModelCatalogue(MODELS, { 'ideogram/upscale': 0.05 });
    expect(pricePerImage(catalogue.find('ideogram-upscale')!.upscale!.price)).toBe(0.05);
    expect(() => new ModelCatalogue(MODELS, { 'ideogram-describe': 0.01 })).toThrow(/only describes: it makes no image to price/);
  });
});
