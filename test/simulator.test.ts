import { createHash } from 'node:crypto';
import { describe, it, expect, beforeAll, afterAll, beforeEach } from 'vitest';
import sharp from 'sharp';
import { startUpstreamSimulator, type UpstreamSimulator } from '../src/simulator/upstream-simulator.js';
import { colourForPrompt, pngForPrompt } from '../src/simulator/png.js';

const API_KEY = 'sim-test-key';
const BEARER = { authorization: `Bearer ${API_KEY}` };
const IDEOGRAM_KEY = { 'api-key': API_KEY };
const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

let sim: UpstreamSimulator;
const TASK_READY_AFTER_MS = 800;
/** The simulator's clock, moved by hand: a task's readiness depends on it, never on how fast the machine is. */
let clockMs = Date.now();
const advanceClock = (ms: number) => void (clockMs += ms);

beforeAll(async () => {
  sim = await startUpstreamSimulator({ apiKey: API_KEY, taskReadyAfterMs: TASK_READY_AFTER_MS, now: () => clockMs });
});

afterAll(async () => {
  await sim.close();
});

beforeEach(() => {
  sim.reset();
});

function postJson(path: string, body: unknown, headers: Record<string, string> = BEARER): Promise<Response> {
  return fetch(`${sim.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

function postForm(path: string, form: FormData, headers: Record<string, string>): Promise<Response> {
  return fetch(`${sim.url}${path}`, { method: 'POST', headers, body: form });
}

function predict(vendorAndModel: string, input: Record<string, unknown>): Promise<Response> {
  return postJson(`/v1/models/${vendorAndModel}/predictions`, { input });
}

function pollTask(taskId: string): Promise<Response> {
  return fetch(`${sim.url}/v1/tasks/${taskId}`, { headers: BEARER });
}

function pngBlob(prompt = 'source image'): Blob {
  return new Blob([new Uint8Array(pngForPrompt(prompt))], { type: 'image/png' });
}

function formWith(fields: Record<string, string>, files: Record<string, Blob> = {}): FormData {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  for (const [name, blob] of Object.entries(files)) form.append(name, blob, `${name}.png`);
  return form;
}

// Replies are checked field by field, so a loosely typed view of the JSON is what the tests want.
async function readJson(response: Response): Promise<any> {
  return response.json();
}

async function firstPixel(png: Buffer): Promise<[number, number, number]> {
  const { data } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  return [data[0] ?? -1, data[1] ?? -1, data[2] ?? -1];
}

async function download(url: string): Promise<Buffer> {
  const response = await fetch(url);
  expect(response.status).toBe(200);
  return Buffer.from(await response.arrayBuffer());
}

describe('unified predictions', () => {
  it.each(['opanai/gpt-image-1', 'openai/gpt-image-2'])(
    '%s answers b64_json items with bytesBase64 and token usage',
    async (vendorAndModel) => {
      const response = await predict(vendorAndModel, { prompt: 'a red fox', n: 2 });
      expect(response.status).toBe(200);
      const body = await readJson(response);
      expect(body.output.urls).toEqual([]);
      expect(body.output.b64_json).toHaveLength(2);
      expect(body.output.b64_json[0].mimeType).toBe('png');
      expect(Buffer.from(body.output.b64_json[0].bytesBase64, 'base64')).toEqual(pngForPrompt('a red fox'));
      expect(body.usage).toEqual({ input_tokens: 10, output_tokens: 200, total_tokens: 210 });
    },
  );

  it('google answers an output array of bytesBase64 sized by sampleCount', async () => {
    const response = await predict('google/imagen-4.0-generate-001', { prompt: 'a lighthouse', sampleCount: 3 });
    const body = await readJson(response);
    expect(body.output).toHaveLength(3);
    expect(Object.keys(body.output[0])).toEqual(['bytesBase64']);
  });

  it('google takes the image count from numberOfImages as the older documents write it', async () => {
    const response = await predict('google/imagen-3.0-generate-002', { prompt: 'a lighthouse', numberOfImages: 2 });
    expect((await readJson(response)).output).toHaveLength(2);
  });

  it.each(['doubao/doubao-seedream-4-0', 'qianfan/irag-1.0', 'bailian/qwen-image-plus'])(
    '%s answers an output array of downloadable urls',
    async (vendorAndModel) => {
      const response = await predict(vendorAndModel, { prompt: 'a teapot', n: 2 });
      const body = await readJson(response);
      expect(body.output).toHaveLength(2);
      expect(body.output[0].url).toMatch(new RegExp(`^${sim.url}/sim/files/`));
      expect(await download(body.output[0].url)).toEqual(pngForPrompt('a teapot'));
    },
  );

  it('stability answers output.urls', async () => {
    const response = await predict('stability/Stable-Diffusion-3-5-Large', { prompt: 'a castle', n: 2 });
    const body = await readJson(response);
    expect(body.output.urls).toHaveLength(2);
    expect(await download(body.output.urls[1])).toEqual(pngForPrompt('a castle', 1));
  });

  it('ideogram V3 takes num_images and answers an output array of urls', async () => {
    const response = await predict('ideogram/V3', { prompt: 'a poster', num_images: 2, rendering_speed: 'TURBO' });
    const body = await readJson(response);
    expect(body.output).toHaveLength(2);
    expect(typeof body.output[1].url).toBe('string');
  });

  it.each(['bfl/FLUX-1.1-pro', 'bfl/FLUX.1-Kontext-pro'])(
    '%s is synchronous and answers an output array with one url',
    async (vendorAndModel) => {
      const response = await predict(vendorAndModel, { prompt: 'a meadow' });
      const body = await readJson(response);
      expect(body.output).toHaveLength(1);
      expect(typeof body.output[0].url).toBe('string');
    },
  );

  // The last: a copy of a task model under a new upstream name, as an operator's CATALOGUE_FILE declares one.
  it.each(['flux-kontext-max', 'flux-kontext-pro', 'flux-2-pro', 'flux-2-flex', 'flux-kontext-ultra'])(
    'bfl/%s is asynchronous and answers a task id with its polling url',
    async (model) => {
      const response = await predict(`bfl/${model}`, { prompt: 'a deer', aspect_ratio: '2:3' });
      const body = await readJson(response);
      expect(body.output).toHaveLength(1);
      expect(body.output[0].polling_url).toBe(`${sim.url}/v1/tasks/${body.output[0].taskId}`);
    },
  );

  it('refuses an input without a prompt with 400 invalid_request_error', async () => {
    const response = await predict('opanai/gpt-image-1', { size: '1024x1024' });
    expect(response.status).toBe(400);
    expect(await readJson(response)).toEqual({
      error: { message: 'prompt is required', type: 'invalid_request_error' },
    });
  });

  it('answers 503 for a vendor it has no channel for', async () => {
    const response = await predict('nobody/some-model', { prompt: 'x' });
    expect(response.status).toBe(503);
    expect((await readJson(response)).error.type).toBe('server_error');
  });

  it('answers a Seedream group (sequential_image_generation auto) with max_images images, 15 by default, fewer by its reference images', async () => {
    const group = async (input: Record<string, unknown>) =>
      (await readJson(await predict('doubao/doubao-seedream-4-0', { prompt: 'a comic', sequential_image_generation: 'auto', ...input }))).output;
    expect(await group({ sequential_image_generation_options: { max_images: 3 } })).toHaveLength(3);
    expect(await group({})).toHaveLength(15);
    expect(await group({ image: Array.from({ length: 12 }, () => 'https://example.com/a.png') })).toHaveLength(3);
    const one = await readJson(await predict('doubao/doubao-seedream-4-0', { prompt: 'one', sequential_image_generation: 'disabled', sequential_image_generation_options: { max_images: 3 } }));
    expect(one.output).toHaveLength(1);
  });

  it('records the path, auth header and JSON body of a submission', async () => {
    await predict('doubao/doubao-seedream-4-0', { prompt: 'a kite', size: '2K' });
    expect(sim.received).toHaveLength(1);
    const [recorded] = sim.received;
    expect(recorded?.method).toBe('POST');
    expect(recorded?.path).toBe('/v1/models/doubao/doubao-seedream-4-0/predictions');
    expect(recorded?.headers.authorization).toBe(`Bearer ${API_KEY}`);
    expect(recorded?.json).toEqual({ input: { prompt: 'a kite', size: '2K' } });
  });
});

describe('task polling', () => {
  async function submitAsync(prompt: string): Promise<{ taskId: string; submittedAt: number }> {
    const submittedAt = clockMs;
    const response = await predict('bfl/flux-kontext-pro', { prompt });
    expect(response.status).toBe(200);
    return { taskId: (await readJson(response)).output[0].taskId, submittedAt };
  }

  /** Every answer to polls 100 ms apart on the simulator's clock, up to the first that is not Pending, and when each came. */
  async function pollUntilFinal(taskId: string): Promise<{ answers: any[]; finalAt: number; lastPendingAt: number }> {
    const answers: any[] = [];
    let lastPendingAt = Number.NaN;
    for (let i = 0; i < 200; i++) {
      const answer = await readJson(await pollTask(taskId));
      answers.push(answer);
      if (answer.status !== 'Pending') return { answers, finalAt: clockMs, lastPendingAt };
      lastPendingAt = clockMs;
      advanceClock(100);
    }
    throw new Error(`task ${taskId} stayed Pending`);
  }

  it('answers Pending with the share of taskReadyAfterMs gone by as progress, then Ready with a sample url', async () => {
    const { taskId, submittedAt } = await submitAsync('a deer drinking');
    const { answers, finalAt, lastPendingAt } = await pollUntilFinal(taskId);
    const pending = answers.slice(0, -1);
    // Polls at 0, 100, ... 700 ms are Pending; the one at 800 ms is the first final answer.
    expect(pending).toHaveLength(TASK_READY_AFTER_MS / 100);
    for (const answer of pending) {
      expect(answer).toEqual({ id: taskId, status: 'Pending', progress: expect.any(Number) });
      expect(answer.progress).toBeGreaterThanOrEqual(0);
      expect(answer.progress).toBeLessThan(1);
    }
    const progress = pending.map((a) => a.progress as number);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
    expect(progress.at(-1)!).toBeGreaterThan(progress[0]!);
    // Never Ready before its time, and Ready as soon as it has come.
    expect(lastPendingAt - submittedAt).toBe(TASK_READY_AFTER_MS - 100);
    expect(finalAt - submittedAt).toBe(TASK_READY_AFTER_MS);
    const ready = answers.at(-1);
    expect(ready.status).toBe('Ready');
    expect(await download(ready.result.sample)).toEqual(pngForPrompt('a deer drinking'));
  });

  it('keeps a task Pending past taskReadyAfterMs while holdTasks is set, short of full progress', async () => {
    sim.holdTasks = true;
    try {
      const { taskId } = await submitAsync('held');
      advanceClock(TASK_READY_AFTER_MS + 100);
      const held = await readJson(await pollTask(taskId));
      expect(held.status).toBe('Pending');
      expect(held.progress).toBeLessThan(1);
      sim.holdTasks = false;
      expect((await readJson(await pollTask(taskId))).status).toBe('Ready');
    } finally {
      sim.holdTasks = false;
    }
  });

  it('answers 404 with status "Task not found" for an unknown task id', async () => {
    const response = await pollTask('no-such-task');
    expect(response.status).toBe(404);
    expect((await readJson(response)).status).toBe('Task not found');
  });

  it('ends a task submitted after failNext("task_error") with status Error', async () => {
    sim.failNext('task_error');
    const { taskId } = await submitAsync('doomed');
    const { answers } = await pollUntilFinal(taskId);
    expect(answers[0].status).toBe('Pending');
    expect(answers.at(-1)).toEqual({ id: taskId, status: 'Error', details: 'simulated failure' });
  });

  it('leaves task_error pending across synchronous calls until an async task is submitted', async () => {
    sim.failNext('task_error');
    expect((await predict('bfl/FLUX-1.1-pro', { prompt: 'sync' })).status).toBe(200);
    const { taskId } = await submitAsync('async');
    expect((await pollUntilFinal(taskId)).answers.at(-1).status).toBe('Error');
  });

  it('accepts an async submission under "moderated" and ends its task Content Moderated', async () => {
    sim.failNext('moderated');
    const { taskId } = await submitAsync('forbidden');
    const { answers } = await pollUntilFinal(taskId);
    expect(answers[0].status).toBe('Pending');
    expect(answers.at(-1)).toEqual({ id: taskId, status: 'Content Moderated' });
  });

  it('does not spend a pending fault on a poll', async () => {
    const { taskId } = await submitAsync('patient');
    sim.failNext('http500');
    expect((await pollTask(taskId)).status).toBe(200);
    expect((await predict('bfl/FLUX-1.1-pro', { prompt: 'next' })).status).toBe(500);
  });

  it('records when each request arrived, and the status each task poll was answered with', async () => {
    const { taskId, submittedAt } = await submitAsync('stamped');
    expect(sim.received[0]!.at).toBe(submittedAt);
    expect(sim.received[0]!.taskStatus).toBeUndefined();
    await pollUntilFinal(taskId);
    await pollTask('no-such-task');
    const statuses = sim.received.slice(1).map((r) => r.taskStatus);
    expect(statuses).toEqual([...statuses.slice(2).map(() => 'Pending'), 'Ready', 'Task not found']);
  });
});

describe('OpenAI-compatible images', () => {
  it('generations answers n b64_json items by default', async () => {
    const response = await postJson('/v1/images/generations', { model: 'gpt-image-1', prompt: 'a boat', n: 2 });
    const body = await readJson(response);
    expect(typeof body.created).toBe('number');
    expect(body.data).toHaveLength(2);
    expect(Buffer.from(body.data[0].b64_json, 'base64')).toEqual(pngForPrompt('a boat'));
    expect(body.usage.total_tokens).toBe(210);
  });

  it('generations answers urls when response_format is url', async () => {
    const response = await postJson('/v1/images/generations', {
      model: 'dall-e-3',
      prompt: 'a boat',
      response_format: 'url',
    });
    const body = await readJson(response);
    expect(body.data).toHaveLength(1);
    expect(await download(body.data[0].url)).toEqual(pngForPrompt('a boat'));
  });

  it('edits records repeated image[] files with size and sha256, and the text fields', async () => {
    const form = formWith({ model: 'gpt-image-1', prompt: 'add a hat', input_fidelity: 'high' });
    form.append('image[]', pngBlob('one'), 'one.png');
    form.append('image[]', pngBlob('two'), 'two.png');
    form.append('mask', pngBlob('mask'), 'mask.png');
    const response = await postForm('/v1/images/edits', form, BEARER);
    expect(response.status).toBe(200);
    expect((await readJson(response)).data).toHaveLength(1);

    const recorded = sim.received[0];
    expect(recorded?.fields).toEqual({ model: 'gpt-image-1', prompt: 'add a hat', input_fidelity: 'high' });
    expect(recorded?.files?.map((file) => file.field)).toEqual(['image[]', 'image[]', 'mask']);
    const onePng = pngForPrompt('one');
    expect(recorded?.files?.[0]).toEqual({
      field: 'image[]',
      filename: 'one.png',
      mimetype: 'image/png',
      bytes: onePng.length,
      sha256: createHash('sha256').update(onePng).digest('hex'),
      data: onePng,
    });
  });

  it('edits records a repeated text field as an array', async () => {
    const form = formWith({ model: 'gpt-image-1', prompt: 'p' }, { image: pngBlob() });
    form.append('tag', 'a');
    form.append('tag', 'b');
    await postForm('/v1/images/edits', form, BEARER);
    expect(sim.received[0]?.fields?.tag).toEqual(['a', 'b']);
  });

  it('edits refuses a request without an image file with 400', async () => {
    const response = await postForm('/v1/images/edits', formWith({ model: 'gpt-image-1', prompt: 'p' }), BEARER);
    expect(response.status).toBe(400);
    expect((await readJson(response)).error.type).toBe('invalid_request_error');
  });
});

describe('Ideogram native v3', () => {
  it('generate answers num_images items in Ideogram shape', async () => {
    const response = await postForm(
      '/ideogram/v1/ideogram-v3/generate',
      formWith({ prompt: 'a neon sign', num_images: '3', rendering_speed: 'TURBO' }),
      IDEOGRAM_KEY,
    );
    const body = await readJson(response);
    expect(Number.isNaN(Date.parse(body.created))).toBe(false);
    expect(body.data).toHaveLength(3);
    expect(body.data[0]).toEqual({
      url: expect.stringContaining('/sim/files/'),
      prompt: 'a neon sign',
      resolution: '1024x1024',
      is_image_safe: true,
      seed: expect.any(Number),
      style_type: 'AUTO',
    });
    // No seed asked: each image a random one of its own in Ideogram's range, as upstream answers.
    for (const item of body.data) expect(Number.isInteger(item.seed) && item.seed >= 0 && item.seed <= 2147483647).toBe(true);
    expect(new Set(body.data.map((item: { seed: number }) => item.seed)).size).toBeGreaterThan(1);
  });

  it('generate echoes the seed asked for on every image; one out of range is a 400', async () => {
    const body = await readJson(await postForm('/ideogram/v1/ideogram-v3/generate', formWith({ prompt: 'seeded', num_images: '2', seed: '7' }), IDEOGRAM_KEY));
    expect(body.data.map((item: { seed: number }) => item.seed)).toEqual([7, 7]);
    const zero = await readJson(await postForm('/ideogram/v1/ideogram-v3/generate', formWith({ prompt: 'seeded', seed: '0' }), IDEOGRAM_KEY));
    expect(zero.data[0].seed).toBe(0);
    const out = await postForm('/ideogram/v1/ideogram-v3/generate', formWith({ prompt: 'seeded', seed: '2147483648' }), IDEOGRAM_KEY);
    expect(out.status).toBe(400);
    expect((await readJson(out)).error).toMatch(/seed/);
  });

  it.each(['remix', 'edit', 'replace-background'])('%s refuses a request without an image with 400', async (action) => {
    const response = await postForm(
      `/ideogram/v1/ideogram-v3/${action}`,
      formWith({ prompt: 'p' }, { mask: pngBlob() }),
      IDEOGRAM_KEY,
    );
    expect(response.status).toBe(400);
    expect(typeof (await readJson(response)).error).toBe('string');
  });

  it('edit refuses a request without a mask with 400', async () => {
    const response = await postForm(
      '/ideogram/v1/ideogram-v3/edit',
      formWith({ prompt: 'p' }, { image: pngBlob() }),
      IDEOGRAM_KEY,
    );
    expect(response.status).toBe(400);
    expect(await readJson(response)).toEqual({ error: 'mask is required' });
  });

  it.each([
    ['remix', { image: 'image' }],
    ['edit', { image: 'image', mask: 'mask' }],
    ['replace-background', { image: 'image' }],
  ])('%s answers when given its files', async (action, fileFields) => {
    const files = Object.fromEntries(Object.keys(fileFields).map((field) => [field, pngBlob()]));
    const response = await postForm(
      `/ideogram/v1/ideogram-v3/${action}`,
      formWith({ prompt: 'p' }, files),
      IDEOGRAM_KEY,
    );
    expect(response.status).toBe(200);
    expect((await readJson(response)).data).toHaveLength(1);
  });

  it('reframe answers at the resolution asked, with no prompt; without a resolution, or with a prompt, 400', async () => {
    const ok = await postForm('/ideogram/v1/ideogram-v3/reframe', formWith({ resolution: '1536x640', num_images: '2' }, { image: pngBlob() }), IDEOGRAM_KEY);
    expect(ok.status).toBe(200);
    const body = await readJson(ok);
    expect(body.data).toHaveLength(2);
    expect(body.data[0].resolution).toBe('1536x640');
    const noResolution = await postForm('/ideogram/v1/ideogram-v3/reframe', formWith({}, { image: pngBlob() }), IDEOGRAM_KEY);
    expect(noResolution.status).toBe(400);
    expect((await readJson(noResolution)).error).toMatch(/resolution is required/);
    const prompted = await postForm('/ideogram/v1/ideogram-v3/reframe', formWith({ resolution: '1024x1024', prompt: 'p' }, { image: pngBlob() }), IDEOGRAM_KEY);
    expect(prompted.status).toBe(400);
  });

  it('takes repeated style_reference_images files and records each; an undefined file field is a 400', async () => {
    const form = formWith({ prompt: 'p' }, { image: pngBlob() });
    form.append('style_reference_images', pngBlob(), 'a.png');
    form.append('style_reference_images', pngBlob(), 'b.png');
    const response = await postForm('/ideogram/v1/ideogram-v3/remix', form, IDEOGRAM_KEY);
    expect(response.status).toBe(200);
    expect(sim.received.at(-1)?.files?.map((f) => f.field)).toEqual(['image', 'style_reference_images', 'style_reference_images']);
    const odd = formWith({ prompt: 'p' }, { image: pngBlob(), character_sheet: pngBlob() });
    expect((await postForm('/ideogram/v1/ideogram-v3/remix', odd, IDEOGRAM_KEY)).status).toBe(400);
  });
});

describe('Ideogram legacy', () => {
  it('generate takes a JSON image_request and answers num_images items', async () => {
    const response = await postJson(
      '/ideogram/generate',
      { image_request: { prompt: 'an owl', model: 'V_2', num_images: 2 } },
      IDEOGRAM_KEY,
    );
    const body = await readJson(response);
    expect(body.data).toHaveLength(2);
    expect(body.data[0].prompt).toBe('an owl');
  });

  it("generate echoes image_request.seed, and remix its image_request's", async () => {
    const generated = await readJson(await postJson('/ideogram/generate', { image_request: { prompt: 'an owl', model: 'V_2', seed: 42 } }, IDEOGRAM_KEY));
    expect(generated.data[0].seed).toBe(42);
    const remixed = await readJson(
      await postForm('/ideogram/remix', formWith({ image_request: JSON.stringify({ prompt: 'an owl again', seed: 9 }) }, { image_file: pngBlob() }), IDEOGRAM_KEY),
    );
    expect(remixed.data[0].seed).toBe(9);
  });

  it('edit takes image_file, mask, prompt and model as multipart', async () => {
    const response = await postForm(
      '/ideogram/edit',
      formWith({ prompt: 'fix it', model: 'V_2' }, { image_file: pngBlob(), mask: pngBlob('m') }),
      IDEOGRAM_KEY,
    );
    expect(response.status).toBe(200);
    expect((await readJson(response)).data[0].prompt).toBe('fix it');
  });

  it('remix reads its image_request from a JSON string field', async () => {
    const response = await postForm(
      '/ideogram/remix',
      formWith({ image_request: JSON.stringify({ prompt: 'watercolor', num_images: 2 }) }, { image_file: pngBlob() }),
      IDEOGRAM_KEY,
    );
    const body = await readJson(response);
    expect(body.data).toHaveLength(2);
    expect(body.data[0].prompt).toBe('watercolor');
  });

  it('remix refuses an image_request that is not JSON with 400', async () => {
    const response = await postForm(
      '/ideogram/remix',
      formWith({ image_request: '{not json' }, { image_file: pngBlob() }),
      IDEOGRAM_KEY,
    );
    expect(response.status).toBe(400);
    expect(typeof (await readJson(response)).error).toBe('string');
  });

  it('upscale takes image_file and an image_request without a prompt, and answers num_images items', async () => {
    const response = await postForm('/ideogram/upscale', formWith({ image_request: JSON.stringify({ num_images: 2, resemblance: 90 }) }, { image_file: pngBlob() }), IDEOGRAM_KEY);
    expect(response.status).toBe(200);
    const body = await readJson(response);
    expect(body.data).toHaveLength(2);
    expect(body.data[0].url).toContain('/sim/files/');
  });

  it.each([
    ['no image_file', formWith({ image_request: '{}' })],
    ['no image_request', formWith({}, { image_file: pngBlob() })],
    ['detail out of range', formWith({ image_request: JSON.stringify({ detail: 0 }) }, { image_file: pngBlob() })],
  ])('upscale refuses %s with 400', async (_case, form) => {
    const response = await postForm('/ideogram/upscale', form, IDEOGRAM_KEY);
    expect(response.status).toBe(400);
    expect(typeof (await readJson(response)).error).toBe('string');
  });

  it('legacy reframe takes image_file, model and a Resolution value, and answers num_images items at that resolution', async () => {
    const response = await postForm(
      '/ideogram/reframe',
      formWith({ model: 'V_2', resolution: 'RESOLUTION_1024_768', num_images: '3', style_type: 'ANIME' }, { image_file: pngBlob() }),
      IDEOGRAM_KEY,
    );
    expect(response.status).toBe(200);
    const body = await readJson(response);
    expect(body.data).toHaveLength(3);
    expect(body.data[0].resolution).toBe('1024x768');
  });

  it.each([
    ['no image_file', formWith({ model: 'V_2', resolution: 'RESOLUTION_1024_1024' })],
    ['no model', formWith({ resolution: 'RESOLUTION_1024_1024' }, { image_file: pngBlob() })],
    ['no resolution', formWith({ model: 'V_2' }, { image_file: pngBlob() })],
    ['a V3-style resolution', formWith({ model: 'V_2', resolution: '1024x1024' }, { image_file: pngBlob() })],
    ['a prompt', formWith({ model: 'V_2', resolution: 'RESOLUTION_1024_1024', prompt: 'p' }, { image_file: pngBlob() })],
    ['style_type for V_1', formWith({ model: 'V_1', resolution: 'RESOLUTION_1024_1024', style_type: 'AUTO' }, { image_file: pngBlob() })],
    ['the V3 file field image', formWith({ model: 'V_2', resolution: 'RESOLUTION_1024_1024' }, { image: pngBlob() })],
  ])('legacy reframe refuses %s with 400', async (_case, form) => {
    const response = await postForm('/ideogram/reframe', form, IDEOGRAM_KEY);
    expect(response.status).toBe(400);
    expect(typeof (await readJson(response)).error).toBe('string');
  });

  it('describe answers descriptions for an image_file, and refuses an unknown describe_model_version', async () => {
    const response = await postForm('/ideogram/describe', formWith({ describe_model_version: 'V_4' }, { image_file: pngBlob() }), IDEOGRAM_KEY);
    expect(response.status).toBe(200);
    expect(await readJson(response)).toEqual({ descriptions: [{ text: expect.stringContaining('(V_4)') }] });
    const refused = await postForm('/ideogram/describe', formWith({ describe_model_version: 'V_1' }, { image_file: pngBlob() }), IDEOGRAM_KEY);
    expect(refused.status).toBe(400);
  });
});

describe('served images', () => {
  it('are PNG files beginning with the PNG signature', async () => {
    const body = await readJson(await predict('doubao/doubao-seedream-4-0', { prompt: 'signature' }));
    const png = await download(body.output[0].url);
    expect([...png.subarray(0, 8)]).toEqual(PNG_SIGNATURE);
  });

  it('are served with content-type image/png', async () => {
    const body = await readJson(await predict('doubao/doubao-seedream-4-0', { prompt: 'type' }));
    const response = await fetch(body.output[0].url);
    expect(response.headers.get('content-type')).toBe('image/png');
  });

  it('take their colour from the prompt, so different prompts give different colours', async () => {
    const red = await readJson(await predict('google/imagen-4.0-generate-001', { prompt: 'crimson' }));
    const blue = await readJson(await predict('google/imagen-4.0-generate-001', { prompt: 'cobalt' }));
    const redPixel = await firstPixel(Buffer.from(red.output[0].bytesBase64, 'base64'));
    const bluePixel = await firstPixel(Buffer.from(blue.output[0].bytesBase64, 'base64'));
    const { r, g, b } = colourForPrompt('crimson');
    expect(redPixel).toEqual([r, g, b]);
    expect(bluePixel).not.toEqual(redPixel);
  });

  it('are not recorded as API requests when downloaded', async () => {
    const body = await readJson(await predict('doubao/doubao-seedream-4-0', { prompt: 'quiet' }));
    await download(body.output[0].url);
    expect(sim.received.map((request) => request.path)).toEqual([
      '/v1/models/doubao/doubao-seedream-4-0/predictions',
    ]);
  });

  it('answer 404 once urlTtlMs has passed', async () => {
    let now = Date.now();
    const shortLived = await startUpstreamSimulator({ urlTtlMs: 300, now: () => now });
    try {
      const response = await fetch(`${shortLived.url}/v1/models/doubao/doubao-seedream-4-0/predictions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ input: { prompt: 'ephemeral' } }),
      });
      const url: string = (await readJson(response)).output[0].url;
      now += 299;
      expect((await fetch(url)).status).toBe(200);
      now += 1;
      expect((await fetch(url)).status).toBe(404);
    } finally {
      await shortLived.close();
    }
  });
});

describe('faults', () => {
  it('http429 answers 429 with Retry-After: 1 and a rate_limit_error', async () => {
    sim.failNext('http429');
    const response = await predict('opanai/gpt-image-1', { prompt: 'x' });
    expect(response.status).toBe(429);
    expect(response.headers.get('retry-after')).toBe('1');
    expect(await readJson(response)).toEqual({ error: { message: 'rate limited', type: 'rate_limit_error' } });
  });

  it.each([
    ['http500', 500],
    ['http503', 503],
  ] as const)('%s answers that status with an OpenAI-style server_error', async (fault, status) => {
    sim.failNext(fault);
    const response = await postJson('/v1/images/generations', { prompt: 'x' });
    expect(response.status).toBe(status);
    expect((await readJson(response)).error.type).toBe('server_error');
  });

  it('http400 answers 400 "size not supported"', async () => {
    sim.failNext('http400');
    const response = await predict('opanai/gpt-image-1', { prompt: 'x' });
    expect(response.status).toBe(400);
    expect(await readJson(response)).toEqual({
      error: { message: 'size not supported', type: 'invalid_request_error' },
    });
  });

  it('http401 answers 401 even with the right key', async () => {
    sim.failNext('http401');
    const response = await predict('opanai/gpt-image-1', { prompt: 'x' });
    expect(response.status).toBe(401);
  });

  it('http403 answers 403 "insufficient balance"', async () => {
    sim.failNext('http403');
    const response = await predict('opanai/gpt-image-1', { prompt: 'x' });
    expect(response.status).toBe(403);
    expect((await readJson(response)).error.message).toBe('insufficient balance');
  });

  it('moderated answers a synchronous call 422 moderation_blocked', async () => {
    sim.failNext('moderated');
    const response = await predict('opanai/gpt-image-1', { prompt: 'x' });
    expect(response.status).toBe(422);
    expect(await readJson(response)).toEqual({
      error: {
        message: 'Your request was rejected by the safety system',
        type: 'content_policy_violation',
        code: 'moderation_blocked',
      },
    });
  });

  it('malformed answers 200 application/json with a body that is not JSON', async () => {
    sim.failNext('malformed');
    const response = await predict('opanai/gpt-image-1', { prompt: 'x' });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toContain('application/json');
    const text = await response.text();
    expect(text).toBe('<html>oops');
    expect(() => JSON.parse(text)).toThrow();
  });

  it('hang never answers, yet records the request', async () => {
    sim.failNext('hang');
    const call = fetch(`${sim.url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...BEARER },
      body: JSON.stringify({ prompt: 'x' }),
      signal: AbortSignal.timeout(300),
    });
    await expect(call).rejects.toThrow(/aborted|timeout/i);
    expect(sim.received).toHaveLength(1);
  });

  it('uses Ideogram error shape on the Ideogram routes', async () => {
    sim.failNext('http429');
    const response = await postJson('/ideogram/generate', { image_request: { prompt: 'x' } }, IDEOGRAM_KEY);
    expect(response.status).toBe(429);
    expect(await readJson(response)).toEqual({ error: 'rate limited' });
  });

  it('applies a fault to exactly the next count calls', async () => {
    sim.failNext('http500', 2);
    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push((await predict('opanai/gpt-image-1', { prompt: 'x' })).status);
    expect(statuses).toEqual([500, 500, 200]);
  });

  it('records faulted requests before answering them', async () => {
    sim.failNext('http503');
    await predict('opanai/gpt-image-1', { prompt: 'recorded anyway' });
    expect(sim.received[0]?.json).toEqual({ input: { prompt: 'recorded anyway' } });
  });

  it('reset clears pending faults and recorded requests', async () => {
    sim.failNext('http500');
    await predict('opanai/gpt-image-1', { prompt: 'x' });
    sim.failNext('http500');
    sim.reset();
    expect(sim.received).toHaveLength(0);
    expect((await predict('opanai/gpt-image-1', { prompt: 'x' })).status).toBe(200);
  });
});

describe('authentication', () => {
  it('refuses a wrong Bearer key with 401 authentication_error', async () => {
    const response = await postJson('/v1/images/generations', { prompt: 'x' }, { authorization: 'Bearer wrong' });
    expect(response.status).toBe(401);
    expect(await readJson(response)).toEqual({
      error: { message: 'invalid api key', type: 'authentication_error' },
    });
  });

  it('refuses a missing key on task polls', async () => {
    const response = await fetch(`${sim.url}/v1/tasks/anything`);
    expect(response.status).toBe(401);
  });

  it('refuses a Bearer key on the Ideogram routes, which take Api-Key', async () => {
    const response = await postJson('/ideogram/generate', { image_request: { prompt: 'x' } }, BEARER);
    expect(response.status).toBe(401);
    expect(await readJson(response)).toEqual({ error: 'invalid api key' });
  });

  it('does not spend a pending fault on a refused key', async () => {
    sim.failNext('http500');
    const refused = await postJson('/v1/images/generations', { prompt: 'x' }, { authorization: 'Bearer wrong' });
    expect(refused.status).toBe(401);
    expect((await predict('opanai/gpt-image-1', { prompt: 'x' })).status).toBe(500);
  });
});

describe('lifecycle', () => {
  it('close finishes while a request hangs, dropping its connection', async () => {
    const own = await startUpstreamSimulator();
    own.failNext('hang');
    const call = fetch(`${own.url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x' }),
    });
    while (own.received.length === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    await own.close();
    await expect(call).rejects.toThrow();
  });

  it('latencyMs holds each answer until that long a wait is over', async () => {
    // The wait is released by hand: the answer must come after it and not before.
    const waits: Array<{ ms: number; release: () => void }> = [];
    const slow = await startUpstreamSimulator({ latencyMs: 200, wait: (ms) => new Promise<void>((release) => waits.push({ ms, release })) });
    try {
      const events: string[] = [];
      const answer = fetch(`${slow.url}/v1/tasks/unknown`).then((r) => {
        events.push('answered');
        return r;
      });
      while (slow.received.length === 0 || waits.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
      expect(waits.map((w) => w.ms)).toEqual([200]);
      // A round trip the simulator could answer if it were not waiting: the held answer is still held.
      await fetch(`${slow.url}/sim/files/none`);
      expect(events).toEqual([]);
      events.push('released');
      waits[0]!.release();
      expect((await answer).status).toBe(404);
      expect(events).toEqual(['released', 'answered']);
    } finally {
      await slow.close();
    }
  });
});

describe('faults asked for in the prompt', () => {
  it('answers the fault a prompt names with #sim:<fault>, once per such request', async () => {
    const sim = await startUpstreamSimulator({});
    try {
      const post = (prompt: string) =>
        fetch(`${sim.url}/v1/models/openai/gpt-image-1/predictions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ input: { prompt } }),
        });
      expect((await post('a deer #sim:http429')).status).toBe(429);
      expect((await post('a deer #sim:moderated')).status).toBe(422);
      expect((await post('a deer #sim:nonsense')).status).toBe(200);
      expect((await post('a deer')).status).toBe(200);
    } finally {
      await sim.close();
    }
  });
});

describe('distinct images (the demo)', () => {
  it('makes every render its own bytes, coloured by its prompt as before, inline and at a URL', async () => {
    const demo = await startUpstreamSimulator({ apiKey: API_KEY, distinctImages: true });
    try {
      const inline = async () => {
        const res = await fetch(`${demo.url}/v1/models/opanai/gpt-image-1/predictions`, { method: 'POST', headers: { 'content-type': 'application/json', ...BEARER }, body: JSON.stringify({ input: { prompt: 'a red fox' } }) });
        return Buffer.from((await readJson(res)).output.b64_json[0].bytesBase64, 'base64');
      };
      const [first, second] = [await inline(), await inline()];
      expect(first.equals(second)).toBe(false);
      const colour = colourForPrompt('a red fox');
      for (const png of [first, second]) {
        expect(await firstPixel(png)).toEqual([colour.r, colour.g, colour.b]);
        expect((await sharp(png).metadata()).width).toBe(64);
      }
      const atUrl = async () => {
        const res = await fetch(`${demo.url}/v1/models/ideogram/V3/predictions`, { method: 'POST', headers: { 'content-type': 'application/json', ...BEARER }, body: JSON.stringify({ input: { prompt: 'a red fox' } }) });
        return download((await readJson(res)).output[0].url);
      };
      const [one, two] = [await atUrl(), await atUrl()];
      expect(one.equals(two)).toBe(false);
      expect(await firstPixel(one)).toEqual([colour.r, colour.g, colour.b]);
    } finally {
      await demo.close();
    }
  });
});
