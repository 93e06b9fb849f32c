/**
 * A prompt of whitespace alone is no prompt: refused locally as an empty one is (400 naming
 * `prompt`), on every route that takes one, before anything is sent upstream or a job is made.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { LightMyRequestResponse } from 'fastify';
import { makePng, multipartBody, startHarness, type Harness } from './harness.js';

let h: Harness;
let png: Buffer;
beforeAll(async () => {
  h = await startHarness({ RATE_LIMIT_RPM: '1000' });
  png = await makePng(32, 32);
});
afterAll(async () => h?.close());
beforeEach(() => h.simulator.reset());

const BLANK = ['   ', '\n\t', '\u3000\u00a0', '\u200b'];
const dataUrl = () => `data:image/png;base64,${png.toString('base64')}`;

const json = (url: string, payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url, headers: h.auth, payload });
function multipart(url: string, fields: Record<string, string>) {
  const { payload, headers } = multipartBody(fields, [{ field: 'image', filename: 'source.png', bytes: png }]);
  return h.app.inject({ method: 'POST', url, headers: { ...h.auth, ...headers }, payload });
}

/** The refusal of a prompt, in the gateway's shape or OpenAI's, with nothing sent upstream. */
function promptRefusal(res: LightMyRequestResponse, openAi = false): string {
  expect(res.statusCode, res.body).toBe(400);
  const { error } = res.json();
  expect(error.code).toBe('invalid_request');
  if (openAi) expect(error.param).toBe('prompt');
  else expect(error.details.map((d: { field: string }) => d.field)).toEqual(['prompt']);
  expect(error.message).toMatch(/^prompt: /);
  expect(error.message).toContain('whitespace alone is not a prompt');
  // One pair of parentheses: "is required (a non-empty string (whitespace ...))" read badly.
  expect(error.message).not.toMatch(/\(.*\(/);
  expect(h.simulator.received).toHaveLength(0);
  return error.message;
}

const routes: Array<[string, (prompt: string) => Promise<LightMyRequestResponse>, boolean]> = [
  ['POST /v1/generate', (prompt) => json('/v1/generate', { model: 'gpt-image-1', prompt }), false],
  ['POST /v1/generate (async job)', (prompt) => json('/v1/generate', { model: 'gpt-image-1', prompt, async: true }), false],
  ['POST /v1/generate (stream)', (prompt) => json('/v1/generate', { model: 'gpt-image-1', prompt, stream: true }), false],
  ['POST /v1/edit (JSON)', (prompt) => json('/v1/edit', { model: 'gpt-image-1', prompt, image: dataUrl() }), false],
  ['POST /v1/edit (JSON, async job)', (prompt) => json('/v1/edit', { model: 'gpt-image-1', prompt, image: dataUrl(), async: true }), false],
  ['POST /v1/edit (multipart)', (prompt) => multipart('/v1/edit', { model: 'gpt-image-1', prompt }), false],
  ['POST /v1/edit (multipart, stream)', (prompt) => multipart('/v1/edit', { model: 'gpt-image-1', prompt, stream: 'true' }), false],
  ['POST /v1/images/generations', (prompt) => json('/v1/images/generations', { model: 'gpt-image-1', prompt }), true],
  ['POST /v1/images/generations (stream)', (prompt) => json('/v1/images/generations', { model: 'gpt-image-1', prompt, stream: true }), true],
  ['POST /v1/images/edits', (prompt) => multipart('/v1/images/edits', { model: 'gpt-image-1', prompt }), true],
  ['POST /v1/images/edits (stream)', (prompt) => multipart('/v1/images/edits', { model: 'gpt-image-1', prompt, stream: 'true' }), true],
];

describe('a whitespace-only prompt', () => {
  it.each(routes)('%s: refused as the empty prompt is, naming prompt, before upstream', async (_name, send, openAi) => {
    const empty = promptRefusal(await send(''), openAi);
    // A 400, never a 202 job or a stream that fails later: the refusal is the same as the empty prompt's.
    for (const prompt of BLANK) expect(promptRefusal(await send(prompt), openAi)).toBe(empty);
  });

  it('POST /v1/upscale: an optional prompt may be left out, but not be whitespace alone', async () => {
    for (const prompt of BLANK) {
      promptRefusal(await json('/v1/upscale', { model: 'ideogram-upscale', prompt, image: dataUrl() }));
      promptRefusal(await multipart('/v1/upscale', { model: 'ideogram-upscale', prompt }));
    }
    const without = await json('/v1/upscale', { model: 'ideogram-upscale', image: dataUrl() });
    expect(without.statusCode, without.body).toBe(200);
  });

  it('a prompt with text around whitespace still goes upstream as written', async () => {
    const res = await json('/v1/generate', { model: 'gpt-image-1', prompt: '  a deer\n' });
    expect(res.statusCode, res.body).toBe(200);
    expect(h.simulator.received).toHaveLength(1);
  });
});

describe('openapi.yaml says the same of a blank prompt', () => {
  it('each prompt schema whose blank prompt is refused has a pattern that matches exactly the prompts that are not blank', async () => {
    const { readFileSync } = await import('node:fs');
    const { parse } = await import('yaml');
    const { isBlankPrompt } = await import('../src/request/image-request.js');
    const schemas = (parse(readFileSync(new URL('../openapi.yaml', import.meta.url), 'utf8')) as { components: { schemas: Record<string, any> } }).components.schemas;
    for (const name of ['GenerateRequest', 'UpscaleRequestJson', 'OpenAiGenerateRequest']) {
      const pattern = schemas[name]?.properties?.prompt?.pattern as string | undefined;
      expect(pattern, name).toBeDefined();
      for (const prompt of [...BLANK, '\u2060\u200d', 'a deer', ' \u200bx ']) {
        expect(new RegExp(pattern!, 'u').test(prompt), `${name}: ${JSON.stringify(prompt)}`).toBe(!isBlankPrompt(prompt));
      }
    }
  });
});
