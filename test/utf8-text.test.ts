/**
 * Text that is not UTF-8, sent as raw bytes over HTTP: a JSON body or a multipart text field with
 * such bytes is a 400 naming the field (or the body), never decoded to U+FFFD and sent upstream.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { makePng, startListening, type ListeningHarness } from './harness.js';

let h: ListeningHarness;
let png: Buffer;
beforeAll(async () => {
  h = await startListening({ RATE_LIMIT_RPM: '1000' });
  png = await makePng(32, 32);
});
afterAll(async () => h?.close());
beforeEach(() => h.simulator.reset());

const NOT_UTF8 = 'must be valid UTF-8 text';
/** Byte sequences no UTF-8 decoder may accept: a stray byte, a cut sequence, an overlong "/", a lone surrogate. */
const BAD_BYTES: Array<[string, Buffer]> = [
  ['a stray 0xFF', Buffer.from([0xff])],
  ['a sequence cut short', Buffer.from([0xe6, 0x9d])],
  ['an overlong encoding', Buffer.from([0xc0, 0xaf])],
  ['an encoded surrogate', Buffer.from([0xed, 0xa0, 0x80])],
];
const bytes = (...parts: Array<string | Buffer>) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p)));

async function postJson(path: string, body: Buffer) {
  const res = await h.fetch(`${h.base}${path}`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body });
  return { status: res.status, body: (await res.json()) as any };
}

/** A multipart body with the fields as given (bytes as they are; a third element is the part's Content-Type) and one image. */
async function postMultipart(path: string, fields: Array<[string, Buffer | string, string?]>) {
  const boundary = 'gwtestutf8boundary';
  const parts: Buffer[] = [];
  for (const [name, value, type] of fields) {
    const header = `Content-Disposition: form-data; name="${name}"${type ? `\r\nContent-Type: ${type}` : ''}`;
    parts.push(bytes(`--${boundary}\r\n${header}\r\n\r\n`, value, '\r\n'));
  }
  parts.push(bytes(`--${boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n`, png, '\r\n'));
  parts.push(bytes(`--${boundary}--\r\n`));
  const res = await h.fetch(`${h.base}${path}`, {
    method: 'POST',
    headers: { ...h.auth, 'content-type': `multipart/form-data; boundary=${boundary}` },
    body: Buffer.concat(parts),
  });
  return { status: res.status, body: (await res.json()) as any };
}

function refusedNaming(res: { status: number; body: any }, field: string): void {
  expect(res.status, JSON.stringify(res.body)).toBe(400);
  const { error } = res.body;
  expect(error.code).toBe('invalid_request');
  expect(error.message).toBe(`${field}: ${error.details?.[0]?.message ?? error.message.slice(field.length + 2)}`);
  expect(error.message).toContain(NOT_UTF8);
  if (error.details) expect(error.details).toEqual([expect.objectContaining({ field })]);
  else expect(error.param).toBe(field === '(body)' ? null : field);
  expect(h.simulator.received).toHaveLength(0);
}

describe('a JSON body that is not UTF-8', () => {
  it.each(BAD_BYTES)('%s in the prompt: 400 naming prompt, on /v1/generate, /v1/edit and /v1/images/generations', async (_name, bad) => {
    refusedNaming(await postJson('/v1/generate', bytes('{"model":"gpt-image-1","prompt":"a deer ', bad, ' by a lake"}')), 'prompt');
    const image = `data:image/png;base64,${png.toString('base64')}`;
    refusedNaming(await postJson('/v1/edit', bytes(`{"model":"gpt-image-1","image":"${image}","prompt":"make it `, bad, '"}')), 'prompt');
    refusedNaming(await postJson('/v1/images/generations', bytes('{"model":"gpt-image-1","prompt":"', bad, '"}')), 'prompt');
  });

  it('names a nested field by its path', async () => {
    const res = await postJson('/v1/generate', bytes('{"model":"ideogram-v3","prompt":"a deer","options":{"rendering_speed":"TURBO', Buffer.from([0xff]), '"}}'));
    refusedNaming(res, 'options.rendering_speed');
  });

  it('names the body when the bytes are in a key, or the body writes U+FFFD itself', async () => {
    refusedNaming(await postJson('/v1/generate', bytes('{"model":"gpt-image-1","prompt":"a deer","', Buffer.from([0xff]), '":1}')), '(body)');
    refusedNaming(await postJson('/v1/generate', bytes('{"model":"gpt-image-1","negative_prompt":"\uFFFD","prompt":"a ', Buffer.from([0xff]), '"}')), '(body)');
  });

  it('takes UTF-8 text of every plane, U+FFFD written as such included, and sends it upstream unchanged', async () => {
    const prompt = 'café 東京 🦌 \uFFFD';
    const res = await postJson('/v1/generate', bytes(JSON.stringify({ model: 'gpt-image-1', prompt })));
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(h.simulator.received[0]?.json).toMatchObject({ input: { prompt } });
  });
});

describe('a multipart text field that is not UTF-8', () => {
  it.each(BAD_BYTES)('%s in the prompt: 400 naming prompt, on /v1/edit and /v1/images/edits', async (_name, bad) => {
    refusedNaming(await postMultipart('/v1/edit', [['model', 'gpt-image-1'], ['prompt', bytes('make it ', bad, ' blue')]]), 'prompt');
    refusedNaming(await postMultipart('/v1/images/edits', [['model', 'gpt-image-1'], ['prompt', bytes('make it ', bad)]]), 'prompt');
  });

  it('names whichever field holds the bytes (model, options, the upscale prompt)', async () => {
    refusedNaming(await postMultipart('/v1/edit', [['model', bytes('gpt-image-', Buffer.from([0xff]))], ['prompt', 'make it blue']]), 'model');
    refusedNaming(await postMultipart('/v1/edit', [['model', 'gpt-image-1'], ['prompt', 'make it blue'], ['options', bytes('{"moderation":"', Buffer.from([0xc0, 0xaf]), '"}')]]), 'options');
    refusedNaming(await postMultipart('/v1/upscale', [['model', 'ideogram-upscale'], ['prompt', bytes('sharper ', Buffer.from([0xff]))]]), 'prompt');
  });

  it('refuses the bytes in a part that declares charset=utf-8 as well', async () => {
    const res = await postMultipart('/v1/edit', [['model', 'gpt-image-1'], ['prompt', bytes('make it ', Buffer.from([0xff])), 'text/plain; charset=utf-8']]);
    refusedNaming(res, 'prompt');
  });

  it('refuses U+FFFD itself, which it cannot tell from a bad byte, saying so', async () => {
    const res = await postMultipart('/v1/edit', [['model', 'gpt-image-1'], ['prompt', 'make it \uFFFD blue']]);
    refusedNaming(res, 'prompt');
    expect(res.body.error.message).toContain('U+FFFD');
  });

  it('takes UTF-8 text of every plane, with or without a declared charset, and sends it upstream unchanged', async () => {
    const prompt = 'café 東京 🦌';
    for (const path of ['/v1/edit', '/v1/images/edits']) {
      for (const type of [undefined, 'text/plain; charset=utf-8']) {
        h.simulator.reset();
        const res = await postMultipart(path, [['model', 'gpt-image-1'], ['prompt', prompt, type]]);
        expect(res.status, JSON.stringify(res.body)).toBe(200);
        expect(h.simulator.received[0]?.fields?.prompt).toBe(prompt);
      }
    }
  });

  it('reads a part sent as application/json as its JSON text (options applied, a prompt never "[object Object]"), and refuses one that is not JSON', async () => {
    const res = await postMultipart('/v1/edit', [
      ['model', 'gpt-image-1'],
      ['prompt', '{"subject":"a deer"}', 'application/json'],
      ['options', '{"input_fidelity":"high"}', 'application/json'],
    ]);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    const sent = h.simulator.received[0]?.fields;
    expect(sent?.prompt).toBe('{"subject":"a deer"}');
    expect(sent?.input_fidelity).toBe('high');
    h.simulator.reset();
    const bad = await postMultipart('/v1/edit', [['model', 'gpt-image-1'], ['prompt', 'make it blue', 'application/json']]);
    expect(bad.status, JSON.stringify(bad.body)).toBe(400);
    // @fastify/multipart's error does not carry the part's name: it says which kind of part.
    expect(bad.body.error.message).toMatch(/not a valid JSON as declared by its Content-Type/);
    expect(h.simulator.received).toHaveLength(0);
  });
});
