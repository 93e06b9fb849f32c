/**
 * The console playground's form, generated from GET /v1/models without a browser: every catalogue
 * model gets a form from its input_schema alone (a model the console has never seen too), the texts
 * become the request's typed values (errors name the field and what it allows), settings round-trip
 * for "Reuse settings", and the bodies the form builds are ones the gateway takes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeModel } from '../src/catalogue/catalogue.js';
import { MODELS } from '../src/catalogue/models.js';
import {
  carryOver,
  editFields,
  editModes,
  formFields,
  generateBody,
  hintFor,
  labelFor,
  placeholderFor,
  operationSchema,
  priceHint,
  rawFromParameters,
  readValues,
  settingsOf,
  type ModelInfo,
} from '../console/src/param-form.js';
import { EventStreamParser, progressText, readEventStream } from '../console/src/event-stream.js';
import { checkImageFile, sniffImageType } from '../console/src/image-file.js';
import { formatDuration } from '../console/src/duration.js';
import { failureHeadline, failureOf, problemLines } from '../console/src/failure.js';
import { makeHalfTransparentMask, makePng, multipartBody, startHarness, startListening, type Harness, type ListeningHarness } from './harness.js';

/** The catalogue as GET /v1/models answers it (through JSON, as the browser gets it). */
const catalogue: ModelInfo[] = JSON.parse(JSON.stringify(MODELS.map(describeModel)));
const model = (id: string) => catalogue.find((m) => m.id === id)!;
const field = (m: ModelInfo, key: string, op: 'generate' | 'edit' = 'generate', mode?: string) => formFields(m, op, mode).find((f) => f.key === key);

describe('form fields from GET /v1/models', () => {
  it('every model of the catalogue, every operation and edit mode, gets a form from its schema alone', () => {
    // The playground generates and edits: models that only upscale or describe are not offered there.
    for (const m of catalogue.filter((c) => c.operations.includes('generate') || c.operations.includes('edit'))) {
      const forms = [...(m.operations.includes('generate') ? [formFields(m, 'generate')] : []), ...editModes(m).map((mode) => formFields(m, 'edit', mode))];
      expect(forms.length, m.id).toBeGreaterThan(0);
      for (const fields of forms) {
        const keys = fields.map((f) => f.key);
        expect(new Set(keys).size, m.id).toBe(keys.length);
        for (const f of fields) {
          expect(f.help, `${m.id} ${f.key}`).toMatch(/\S/);
          // The playground's own controls keep their names.
          expect(['Model', 'Prompt', 'Image', 'Generate']).not.toContain(f.label);
        }
      }
      // Every parameter and option GET /v1/models names is in the form of the model's first operation.
      const first = m.operations.includes('generate') ? formFields(m, 'generate') : formFields(m, 'edit', editModes(m)[0]);
      const described = describeModel(MODELS.find((s) => s.id === m.id)!);
      expect(first.filter((f) => f.group === 'parameters').map((f) => f.name).sort(), m.id).toEqual(Object.keys(described.parameters).sort());
      expect(first.filter((f) => f.group === 'options').map((f) => f.name).sort(), m.id).toEqual(Object.keys(described.options).sort());
    }
  });

  it('gives each kind of rule its control: enums as selects with the default first, ranges as numbers, presets as suggestions', () => {
    const gpt = model('gpt-image-1');
    expect(formFields(gpt, 'generate').map((f) => f.key)).toEqual(['size', 'n', 'quality', 'output_format', 'background', 'options.moderation', 'options.output_compression']);
    expect(field(gpt, 'size')).toMatchObject({ control: 'select', valueType: 'string', choices: ['', 'auto', '1024x1024', '1536x1024', '1024x1536'] });
    expect(field(gpt, 'n')).toMatchObject({ label: 'Number of images', control: 'number', valueType: 'integer', min: 1, max: 10, step: 1 });
    expect(field(gpt, 'options.output_compression')).toMatchObject({ label: 'Output compression', group: 'options', min: 0, max: 100 });
    // gpt-image-2 takes any WIDTHxHEIGHT within limits, with presets offered.
    expect(field(model('gpt-image-2'), 'size')).toMatchObject({ control: 'combo', choices: ['auto', '1024x1024', '1536x1024', '1024x1536'] });
    expect(field(model('gpt-image-2'), 'size')!.help).toMatch(/multiples of 16/);
    // Short enough to show whole in a narrow box: the help under it says WIDTHxHEIGHT.
    expect(field(model('flux-2-pro'), 'size')).toMatchObject({ control: 'text', placeholder: 'e.g. 1024x1024' });

    const flux = model('flux-kontext-pro');
    expect(field(flux, 'aspect_ratio')).toMatchObject({ control: 'text', placeholder: 'W:H, e.g. 16:9' });
    expect(field(flux, 'seed')).toMatchObject({ control: 'number', min: 0, max: 2147483647 });
    expect(field(flux, 'options.prompt_upsampling')).toMatchObject({ control: 'select', valueType: 'boolean', choices: ['', 'true', 'false'] });
    expect(field(model('ideogram-v3'), 'negative_prompt')).toMatchObject({ control: 'textarea', maxLength: 10000 });
    expect(field(model('irag-1.0'), 'options.guidance')).toMatchObject({ valueType: 'number', step: 'any', min: 0, max: 30 });
    // A structured option is entered as JSON.
    expect(field(model('doubao-seedream-4-0'), 'options.sequential_image_generation_options')).toMatchObject({ control: 'json', valueType: 'json' });
  });

  it('follows the edit mode: its fields, how many images it takes, and whether it takes (or needs) a mask', () => {
    const ideogram = model('ideogram-v3');
    expect(editModes(ideogram)).toEqual(['edit', 'remix', 'replace_background', 'reframe']);
    // Reframe takes no prompt (max_length 0) and requires its size.
    expect(operationSchema(ideogram, 'edit', 'reframe')).toMatchObject({ prompt: { max_length: 0 }, images: { max: 1 }, mask: null });
    expect(operationSchema(ideogram, 'edit', 'edit')).toMatchObject({ images: { max: 1 }, mask: { required: true } });
    expect(operationSchema(ideogram, 'edit', 'remix')).toMatchObject({ images: { max: 1 }, mask: null });
    expect(field(ideogram, 'options.image_weight', 'edit', 'remix')).toMatchObject({ min: 1, max: 100 });
    expect(field(ideogram, 'options.image_weight', 'edit', 'edit')).toBeUndefined();
    expect(field(ideogram, 'aspect_ratio', 'edit', 'replace_background')).toBeUndefined();
    expect(operationSchema(model('gpt-image-1'), 'edit')).toMatchObject({ images: { max: 16 }, mask: { required: false } });
    expect(operationSchema(model('doubao-seedream-4-0'), 'edit')).toMatchObject({ images: { max: 10 }, mask: null });
    // An operation the model does not offer has no form.
    expect(formFields(model('qwen-image-edit'), 'generate')).toEqual([]);
    expect(operationSchema(model('dall-e-3'), 'edit')).toBeUndefined();
  });

  it('builds a form for a model the console has never seen, with option types of its own', () => {
    const newcomer: ModelInfo = {
      id: 'acme-painter-9',
      operations: ['generate'],
      input_schema: {
        generate: {
          prompt: { max_length: 500 },
          parameters: { size: { type: 'size', allowed: 'WIDTHxHEIGHT' }, steps_hint: { type: 'integer', allowed: 'an integer from 1 to 50', minimum: 1, maximum: 50 } },
          options: {
            brush_style: { type: 'enum', allowed: 'one of "oil", "ink"', values: ['oil', 'ink'] },
            strength: { type: 'enum', allowed: 'one of 1, 2', values: [1, 2] },
            palette: { type: 'hologram' as never, allowed: 'a palette object' },
          },
        },
      },
    };
    const fields = formFields(newcomer, 'generate');
    expect(fields.map((f) => [f.key, f.control, f.label])).toEqual([
      ['size', 'text', 'Size'],
      ['steps_hint', 'number', 'Steps hint'],
      ['options.brush_style', 'select', 'Brush style'],
      ['options.strength', 'select', 'Strength'],
      ['options.palette', 'json', 'Palette'],
    ]);
    const values = readValues(fields, { 'options.strength': '2', 'options.palette': '{"hues":[1,2]}', steps_hint: '7' });
    expect(values).toEqual({ parameters: { steps_hint: 7 }, options: { strength: 2, palette: { hues: [1, 2] } }, errors: [] });
  });
});

describe("the model hint's price", () => {
  it('one price per image, each value of the option that picks it (ideogram-v3 rendering_speed), or none for a model without one', () => {
    const byId = (id: string) => catalogue.find((m) => m.id === id)!;
    expect(priceHint(byId('ideogram-v3'))).toBe('Per image by rendering_speed: TURBO $0.03, DEFAULT $0.06 (default), QUALITY $0.09.');
    expect(priceHint(byId('ideogram-v2'))).toMatch(/^\$\d+\.\d+ per image\.$/);
    expect(priceHint(byId('gpt-image-2'))).toBe('');
  });
});

describe('form values', () => {
  const flux = model('flux-kontext-pro');
  const fields = formFields(flux, 'generate');

  it('turns the texts into typed values, leaving empty fields to the model default', () => {
    const values = readValues(fields, { aspect_ratio: '16:9', seed: ' 42 ', output_format: '', 'options.safety_tolerance': '3', 'options.prompt_upsampling': 'true' });
    expect(values).toEqual({ parameters: { aspect_ratio: '16:9', seed: 42 }, options: { safety_tolerance: 3, prompt_upsampling: true }, errors: [] });
  });

  it('names the field and what it allows when a text is not a value it takes', () => {
    const values = readValues(fields, { seed: '4.5', 'options.safety_tolerance': '9', output_format: 'gif' });
    expect(values.errors).toEqual([
      { key: 'seed', message: 'Seed must be a whole number (an integer from 0 to 2147483647)' },
      { key: 'output_format', message: 'Output format must be one of "jpeg", "png", "webp"' },
      { key: 'options.safety_tolerance', message: 'Safety tolerance must be an integer from 0 to 6' },
    ]);
    const doubao = formFields(model('doubao-seedream-4-0'), 'generate');
    expect(readValues(doubao, { 'options.sequential_image_generation_options': '{max_images: 2}' }).errors[0]!.message).toMatch(
      /^Sequential image generation options must be JSON: an object \{"max_images"/,
    );
  });

  it('round-trips settings for "Reuse settings": parameters, options and mode', () => {
    const ideogram = model('ideogram-v3');
    const remix = formFields(ideogram, 'edit', 'remix');
    const entered = { n: '2', seed: '7', style: 'DESIGN', aspect_ratio: '16:9', 'options.image_weight': '60', 'options.rendering_speed': 'TURBO' };
    const values = readValues(remix, entered);
    const settings = settingsOf('ideogram-v3', 'a red door', values, 'remix');
    expect(settings).toEqual({
      model: 'ideogram-v3',
      prompt: 'a red door',
      parameters: { n: 2, seed: 7, style: 'DESIGN', aspect_ratio: '16:9', options: { image_weight: 60, rendering_speed: 'TURBO' }, mode: 'remix' },
    });
    expect(rawFromParameters(remix, settings.parameters)).toEqual(entered);
    // A gallery image's parameters (JSON from the API) fill the same way; unknown ones are ignored.
    expect(rawFromParameters(formFields(model('doubao-seedream-4-0'), 'generate'), { size: '2K', options: { sequential_image_generation_options: { max_images: 3 } }, quality: 'hd' })).toEqual({
      size: '2K',
      'options.sequential_image_generation_options': '{"max_images":3}',
    });
    expect(rawFromParameters(remix, null)).toEqual({});
  });

  it('asks for a required field instead of leaving it to a default the model does not have', () => {
    const reframe = formFields(model('ideogram-v3'), 'edit', 'reframe');
    const size = reframe.find((f) => f.key === 'size')!;
    expect(size).toMatchObject({ control: 'select', required: true });
    expect(placeholderFor(size)).toBe('Choose a size…');
    const count = size.choices!.length - 1;
    expect(hintFor(size)).toBe(`Required: choose one of the ${count} options.`);
    expect(readValues(reframe, {}).errors).toEqual([{ key: 'size', message: `Size is required: choose one of the ${count} options.` }]);
    expect(readValues(reframe, { size: '1024x1024' })).toEqual({ parameters: { size: '1024x1024' }, options: {}, errors: [] });
    // Other fields keep their default, and say what they allow.
    const n = reframe.find((f) => f.key === 'n')!;
    expect(n.required).toBeUndefined();
    expect(hintFor(n)).toBe(n.help);
  });

  it('carries to another model only the values it takes: a choice it offers, a number in its range, an unjudged value under the same rule', () => {
    const gpt = formFields(model('gpt-image-1'), 'generate');
    const typed = { n: '5', quality: 'high', size: '1536x1024', 'options.output_compression': '80' };
    // Same fields, same rules: everything stays.
    expect(carryOver(gpt, formFields(model('gpt-image-1.5'), 'generate'), typed)).toEqual(typed);
    // dall-e-3: n is 1 at most, other qualities and sizes, no output compression.
    expect(carryOver(gpt, formFields(model('dall-e-3'), 'generate'), typed)).toEqual({});
    const ideogram = formFields(model('ideogram-v3'), 'generate');
    expect(carryOver(ideogram, formFields(model('imagen-4.0-generate-001'), 'generate'), { n: '3', seed: '42' })).toEqual({ n: '3' });
    // A free size the console cannot judge stays only where the rule is the same one.
    const flux2 = formFields(model('flux-2-pro'), 'generate');
    expect(carryOver(flux2, formFields(model('flux-2-flex'), 'generate'), { size: '1000x700' })).toEqual({ size: '1000x700' });
    expect(carryOver(flux2, formFields(model('doubao-seedream-4-0'), 'generate'), { size: '1000x700' })).toEqual({});
  });
});

describe('the requests the form builds, as the gateway takes them', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  it('generates with a JSON body of typed parameters and options', async () => {
    const gpt = model('gpt-image-1');
    const values = readValues(formFields(gpt, 'generate'), { n: '2', size: '1024x1536', quality: 'low', 'options.output_compression': '80' });
    const body = generateBody('gpt-image-1', 'a lighthouse', values, false);
    expect(body).toEqual({ model: 'gpt-image-1', prompt: 'a lighthouse', n: 2, size: '1024x1536', quality: 'low', options: { output_compression: 80 } });
    expect(generateBody('gpt-image-1', 'a lighthouse', values)).toMatchObject({ stream: true });
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: body });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().images).toHaveLength(2);
    const sent = h.simulator.received.at(-1)!.json as { input: Record<string, unknown> };
    expect(sent.input).toMatchObject({ n: 2, size: '1024x1536', quality: 'low', output_compression: 80 });
  });

  it('edits with multipart text fields (numbers as text, options as JSON), the image and the mask', async () => {
    const gpt = model('gpt-image-1');
    const values = readValues(formFields(gpt, 'edit', 'edit'), { n: '1', seed: '', 'options.input_fidelity': 'high', background: 'opaque' });
    const fields = editFields('gpt-image-1', 'a blue door', values, 'edit', false);
    expect(fields).toEqual([
      ['model', 'gpt-image-1'],
      ['prompt', 'a blue door'],
      ['mode', 'edit'],
      ['n', '1'],
      ['background', 'opaque'],
      ['options', '{"input_fidelity":"high"}'],
    ]);
    const png = await makePng(32, 32);
    const { payload, headers } = multipartBody(Object.fromEntries(fields), [
      { field: 'image', filename: 'source.png', bytes: png },
      { field: 'mask', filename: 'mask.png', bytes: await makeHalfTransparentMask(32, 32) },
    ]);
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
    expect(res.statusCode, res.body).toBe(200);
    const sent = h.simulator.received.at(-1)!;
    expect(sent.path).toBe('/v1/images/edits');
    expect(sent.fields).toMatchObject({ n: '1', background: 'opaque', input_fidelity: 'high' });
    expect(sent.files!.map((f) => f.field).sort()).toEqual(['image', 'mask']);
  });
});

describe('the event stream reader', () => {
  it('parses events split anywhere, with comments, CRLF and multi-line data', () => {
    const parser = new EventStreamParser();
    const text = ': stream opened\r\n\r\nevent: queued\r\ndata: {}\r\n\r\nevent: progress\ndata: {"upstream_status":"Pending",\ndata: "progress":40}\n\nevent: succeeded\ndata: {"id":"gen_1"}\n\n';
    const events = [];
    for (let i = 0; i < text.length; i += 5) events.push(...parser.push(text.slice(i, i + 5)));
    expect(events).toEqual([
      { event: 'queued', data: '{}' },
      { event: 'progress', data: '{"upstream_status":"Pending",\n"progress":40}' },
      { event: 'succeeded', data: '{"id":"gen_1"}' },
    ]);
    expect(labelFor('rendering_speed')).toBe('Rendering speed');
  });
});

describe('the playground checking a chosen file before showing or sending it', () => {
  // Plain bytes (Uint8Array over an ArrayBuffer), as a File or Blob takes them.
  const bytes = (b: Buffer) => new Uint8Array(b);
  let png: Uint8Array<ArrayBuffer>;
  beforeAll(async () => {
    png = bytes(await makePng(4, 3));
  });
  const jpeg = bytes(Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 0x4a, 0x46, 0x49, 0x46, 0, 1]));
  const webp = bytes(Buffer.concat([Buffer.from('RIFF'), Buffer.from([0x24, 0, 0, 0]), Buffer.from('WEBPVP8 ')]));
  const text = bytes(Buffer.from('this is just text, not a picture\n'));

  it('knows PNG, JPEG and WebP by their first bytes, and nothing else', () => {
    expect(sniffImageType(png)).toBe('image/png');
    expect(sniffImageType(jpeg)).toBe('image/jpeg');
    expect(sniffImageType(webp)).toBe('image/webp');
    expect(sniffImageType(text)).toBeUndefined();
    expect(sniffImageType(Buffer.from('GIF89a'))).toBeUndefined();
    expect(sniffImageType(Buffer.from('RIFF\0\0\0\0WAVE'))).toBeUndefined();
    expect(sniffImageType(new Uint8Array())).toBeUndefined();
  });

  it('refuses a text file named notimg.png, or a file of another type, saying why; takes an image whatever its name and type say', async () => {
    const lying = new File([text], 'notimg.png', { type: 'image/png' });
    expect(await checkImageFile(lying)).toEqual({ problem: 'notimg.png is not a PNG, JPEG or WebP image; choose another file.' });
    expect(await checkImageFile(new File([png], 'a.txt', { type: 'text/plain' }))).toHaveProperty('problem');
    expect(await checkImageFile(new File(['GIF89a'], 'a.gif', { type: 'image/gif' }))).toHaveProperty('problem');
    const good = new File([png], 'a.png', { type: 'image/png' });
    expect(await checkImageFile(good)).toEqual({ image: good });
    // No declared type, or the wrong image type: typed as its bytes say.
    for (const [data, type] of [[png, 'image/png'], [jpeg, 'image/jpeg'], [webp, 'image/webp']] as const) {
      const checked = await checkImageFile(new Blob([data]));
      expect('image' in checked && checked.image.type).toBe(type);
    }
    const mislabelled = await checkImageFile(new File([jpeg], 'photo.png', { type: 'image/png' }));
    expect('image' in mislabelled && mislabelled.image.type).toBe('image/jpeg');
    // Retyped, it keeps its name: the upload's filename.
    expect('image' in mislabelled && (mislabelled.image as File).name).toBe('photo.png');
  });
});

describe('the playground telling how long a result took', () => {
  it('says milliseconds under a second, never "0.0 s"', () => {
    expect(formatDuration(0.3)).toBe('<1 ms');
    expect(formatDuration(42.4)).toBe('42 ms');
    expect(formatDuration(999.4)).toBe('999 ms');
    expect(formatDuration(999.6)).toBe('1.0 s');
    expect(formatDuration(1440)).toBe('1.4 s');
    expect(formatDuration(9_960)).toBe('10 s');
    expect(formatDuration(61_000)).toBe('61 s');
    for (const ms of [0, 1, 20, 49, 50, 99, 100, 500]) expect(formatDuration(ms)).not.toMatch(/^0(\.0)? s$/);
  });
});

describe('the playground telling why a request failed', () => {
  it('headlines the error by its code and lists each field with what it allows, once', () => {
    const refused = failureOf(
      {
        error: {
          code: 'invalid_request',
          message: 'size: must be WIDTHxHEIGHT …; colour: is not a field of this request',
          details: [
            { field: 'size', message: 'must be WIDTHxHEIGHT with each side 64..2048', allowed: 'WIDTHxHEIGHT with each side 64..2048' },
            { field: 'colour', message: 'is not a field of this request', allowed: ['model', 'prompt', 'size'] },
          ],
        },
      },
      400,
    );
    expect(failureHeadline(refused)).toBe('The gateway refused these settings');
    expect(problemLines(refused)).toEqual(['size: must be WIDTHxHEIGHT with each side 64..2048', 'colour: is not a field of this request (allowed: model, prompt, size)']);
    // A failed event's error object; an answer that is not JSON; the gateway out of reach.
    const upstream = failureOf({ code: 'upstream_timeout', message: 'no answer in 120 s' });
    expect([failureHeadline(upstream), problemLines(upstream)]).toEqual(['The model took too long', ['no answer in 120 s']]);
    expect(failureOf(undefined, 502)).toEqual({ status: 502, message: 'The gateway answered 502.' });
    expect(failureHeadline({ code: 'network', message: 'Failed to fetch' })).toBe('The gateway could not be reached');
    // A 400 upstream gave, after the gateway's own checks passed: not told as the gateway's refusal.
    const byProvider = failureOf({ error: { code: 'invalid_request', message: 'upstream refused the request: size not supported', details: [{ message: 'size not supported' }] } }, 400);
    expect([failureHeadline(byProvider), problemLines(byProvider)]).toEqual(["The model's provider refused these settings", ['size not supported']]);
    expect(failureHeadline({ message: 'odd' })).toBe('The generation failed');
    // A paid image lost is charged: its card does not read as a plain failure.
    const lost = failureOf({ error: { code: 'paid_image_lost', message: 'upstream made the image and it was paid for (its cost counts), but …' } }, 504);
    expect(failureHeadline(lost)).toBe('The image was made and charged for, but lost');
  });
});

describe('the playground reading a real streamed generate', () => {
  let h: ListeningHarness;
  beforeAll(async () => {
    // The task stays pending for several polls (every 10 ms), so its progress is told.
    h = await startListening({}, { taskReadyAfterMs: 150 });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('reads the event stream of an asynchronous model as it comes: progress in words, then the result', async () => {
    const body = generateBody('flux-kontext-pro', 'a harbour at night', readValues(formFields(model('flux-kontext-pro'), 'generate'), { aspect_ratio: '16:9' }));
    const res = await h.fetch(`${h.base}/v1/generate`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const seen: string[] = [];
    let result: { images: Array<{ url: string }> } | undefined;
    for await (const { event, data } of readEventStream(res.body as ReadableStream<Uint8Array>)) {
      const text = progressText(event, JSON.parse(data));
      if (text) seen.push(text);
      if (event === 'succeeded') result = JSON.parse(data);
    }
    // Queued, sent, the task accepted, then its progress while pending, in that order.
    expect(seen.slice(0, 3)).toEqual(['Queued…', 'Running…', 'Running (upstream task accepted)…']);
    expect(seen.length).toBeGreaterThan(3);
    for (const text of seen.slice(3)) expect(text).toMatch(/^Running: \w+/);
    expect(result!.images).toHaveLength(1);
    expect(progressText('queued', {})).toBe('Queued…');
    // Upstream's progress is a fraction (0 to 1), as the simulator sends it: shown as 0 to 100 %,
    // without upstream's word for the state (BFL says "Pending" until the image is ready).
    const percents = seen.slice(3).map((text) => /(\d+)%…$/.exec(text)?.[1]).filter((p) => p !== undefined).map(Number);
    expect(percents.length).toBeGreaterThan(0);
    expect(Math.max(...percents)).toBeGreaterThan(1);
    expect(progressText('progress', { upstream_status: 'Pending', progress: 0.416 })).toBe('Running: 42%…');
    expect(progressText('progress', { upstream_status: 'Pending', progress: 0.12 })).toBe('Running: 12%…');
    expect(progressText('progress', { upstream_status: 'Pending', progress: 0 })).toBe('Running: 0%…');
    expect(progressText('progress', { upstream_status: 'Ready', progress: 1 })).toBe('Running: 100%…');
    // Out of range: clamped to 0..100.
    expect(progressText('progress', { upstream_status: 'Pending', progress: 1.7 })).toBe('Running: 100%…');
    expect(progressText('progress', { upstream_status: 'Pending', progress: -0.2 })).toBe('Running: 0%…');
    expect(progressText('progress', { upstream_status: 'Pending' })).toBe('Running: Pending…');
    expect(progressText('image', {})).toBeUndefined();
  });
});
