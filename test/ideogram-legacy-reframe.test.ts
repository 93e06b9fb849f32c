/**
 * Ideogram's legacy reframe (spec: POST /reframe; AiHubMix documents none, so the gateway calls
 * /ideogram/reframe as it calls its other legacy routes) as the edit mode `reframe` of every legacy
 * model: flat multipart (image_file, model, resolution as Ideogram's legacy Resolution enum,
 * num_images, seed, style_type from V_2 on), no prompt, unpriced (no price is published for it),
 * counted by the key's limits and in usage. Every request goes through the gateway to the
 * simulator on loopback.
 */
import { createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, UPSTREAM_KEY, makeHalfTransparentMask, makePng, multipartBody, startHarness, type Harness, usageRecordOf } from './harness.js';

const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` };
const SOURCE = await makePng(64, 64, { r: 40, g: 90, b: 200 });
const MASK = await makeHalfTransparentMask(64, 64);

const dataUrl = (png: Buffer) => `data:image/png;base64,${png.toString('base64')}`;
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ RATE_LIMIT_RPM: '100000' });
});
afterAll(async () => h.close());
beforeEach(() => h.simulator.reset());

function multipartEdit(fields: Record<string, string>, files: Array<{ field: string; bytes: Buffer }> = [{ field: 'image', bytes: SOURCE }], auth = h.auth) {
  const { payload, headers } = multipartBody(fields, files.map((f, i) => ({ field: f.field, filename: `${f.field}-${i}.png`, bytes: f.bytes })));
  return h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...auth, ...headers }, payload });
}

function jsonEdit(body: Record<string, unknown>, auth = h.auth) {
  return h.app.inject({ method: 'POST', url: '/v1/edit', headers: auth, payload: { image: dataUrl(SOURCE), mode: 'reframe', ...body } });
}

async function mintKey(policy: Record<string, unknown>): Promise<Record<string, string>> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: ADMIN, payload: { team: `lr${randomBytes(3).toString('hex')}`, ...policy } });
  expect(res.statusCode, res.body).toBe(201);
  return { authorization: `Bearer ${res.json().key}` };
}


describe('a legacy reframe through POST /v1/edit', () => {
  it("reaches /ideogram/reframe as the spec's multipart: image_file, the fixed model, size as a Resolution value, n, seed, style_type", async () => {
    const res = await multipartEdit({ model: 'ideogram-v2', mode: 'reframe', size: '1024x768', n: '2', seed: '7', style: 'ANIME' });
    expect(res.statusCode, res.body).toBe(200);
    const body = res.json();
    expect(body.model).toBe('ideogram-v2');
    expect(body.images).toHaveLength(2);

    expect(h.simulator.received).toHaveLength(1);
    const [sent] = h.simulator.received;
    expect(sent!.path).toBe('/ideogram/reframe');
    expect(sent!.headers['content-type']).toMatch(/^multipart\/form-data; boundary=/);
    expect(sent!.headers['api-key']).toBe(UPSTREAM_KEY);
    expect(sent!.headers.authorization).toBeUndefined();
    // Exactly these fields: no prompt, no image_request wrapper (legacy /remix's), the model as Ideogram names it.
    expect(sent!.fields).toEqual({ model: 'V_2', resolution: 'RESOLUTION_1024_768', num_images: '2', seed: '7', style_type: 'ANIME' });
    expect(sent!.files!.map((f) => [f.field, f.sha256])).toEqual([['image_file', sha256(SOURCE)]]);
  });

  it('takes the alias and a JSON data URL; a V_1 model sends no style_type', async () => {
    const res = await jsonEdit({ model: 'V_1_TURBO', size: '720x1280' });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().model).toBe('ideogram-v1-turbo');
    const [sent] = h.simulator.received;
    expect(sent!.path).toBe('/ideogram/reframe');
    expect(sent!.fields).toEqual({ model: 'V_1_TURBO', resolution: 'RESOLUTION_720_1280' });
    expect(sent!.files!.map((f) => f.field)).toEqual(['image_file']);
  });

  it.each(['ideogram-v2-turbo', 'ideogram-v2a', 'ideogram-v2a-turbo', 'ideogram-v1'])('is offered by %s too', async (model) => {
    const res = await jsonEdit({ model, size: '1024x1024' });
    expect(res.statusCode, res.body).toBe(200);
    expect(h.simulator.received.map((r) => r.path)).toEqual(['/ideogram/reframe']);
  });
});

describe('a legacy reframe refused before anything is sent', () => {
  it("refuses a size outside Ideogram's legacy Resolution list with a 400 naming size and every allowed value", async () => {
    // 800x1280 is one of Ideogram 3.0's resolutions but not of the legacy list; 1000x1000 of neither.
    for (const size of ['800x1280', '1000x1000', '1024:768']) {
      const res = await jsonEdit({ model: 'ideogram-v2', size });
      expect(res.statusCode, size).toBe(400);
      const detail = res.json().error.details[0];
      expect(detail.field).toBe('size');
      expect(detail.allowed).toHaveLength(78);
      expect(detail.allowed).toContain('1024x768');
      expect(detail.allowed).toContain('1280x720');
      expect(detail.allowed).not.toContain('800x1280');
    }
    expect(h.simulator.received).toHaveLength(0);
  });

  it('refuses a missing size, naming the resolutions it could be', async () => {
    const res = await multipartEdit({ model: 'ideogram-v2a', mode: 'reframe' });
    expect(res.statusCode).toBe(400);
    const detail = res.json().error.details[0];
    expect(detail.field).toBe('size');
    expect(detail.message).toMatch(/required by ideogram-v2a in mode reframe/);
    expect(detail.allowed).toContain('1536x640');
    expect(h.simulator.received).toHaveLength(0);
  });

  it('refuses a prompt, a mask, an aspect ratio, and a style for V_1, each naming its field', async () => {
    const prompted = await jsonEdit({ model: 'ideogram-v2', size: '1024x1024', prompt: 'wider' });
    expect(prompted.statusCode).toBe(400);
    expect(prompted.json().error.details[0]).toMatchObject({ field: 'prompt' });
    expect(prompted.json().error.details[0].message).toMatch(/takes no prompt/);

    const masked = await multipartEdit({ model: 'ideogram-v2', mode: 'reframe', size: '1024x1024' }, [
      { field: 'image', bytes: SOURCE },
      { field: 'mask', bytes: MASK },
    ]);
    expect(masked.statusCode).toBe(400);
    expect(masked.json().error.details[0]).toMatchObject({ field: 'mask' });

    const ratio = await jsonEdit({ model: 'ideogram-v2', size: '1024x1024', aspect_ratio: '16:9' });
    expect(ratio.statusCode).toBe(400);
    expect(ratio.json().error.details[0]).toMatchObject({ field: 'aspect_ratio' });

    const styled = await jsonEdit({ model: 'ideogram-v1', size: '1024x1024', style: 'AUTO' });
    expect(styled.statusCode).toBe(400);
    expect(styled.json().error.details[0]).toMatchObject({ field: 'style' });
    expect(styled.json().error.details[0].message).toMatch(/only for V_2 and later/);

    const badStyle = await jsonEdit({ model: 'ideogram-v2', size: '1024x1024', style: 'FICTION' });
    expect(badStyle.statusCode).toBe(400);
    expect(badStyle.json().error.details[0]).toMatchObject({ field: 'style' });
    expect(h.simulator.received).toHaveLength(0);
  });
});

describe('a legacy reframe counted and (un)priced', () => {
  it("counts reframed images against the key's images_per_day, and refuses what is over it before sending", async () => {
    const key = await mintKey({ images_per_day: 3, rpm: 100 });
    const first = await multipartEdit({ model: 'ideogram-v2', mode: 'reframe', size: '1024x1024', n: '2' }, undefined, key);
    expect(first.statusCode, first.body).toBe(200);
    expect(first.headers['x-ratelimit-images-remaining']).toBe('1');
    h.simulator.reset();
    const over = await multipartEdit({ model: 'ideogram-v2', mode: 'reframe', size: '1024x1024', n: '2' }, undefined, key);
    expect(over.statusCode).toBe(429);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('records its images in usage with an unknown cost (null), never 0: no price is published for it', async () => {
    const key = await mintKey({ rpm: 100 });
    const res = await jsonEdit({ model: 'ideogram-v2-turbo', size: '1152x896', n: 3 }, key);
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().usage).toMatchObject({ images: 3, estimated_cost_usd: null });
    const record = await usageRecordOf(h, res.headers['x-request-id'] as string);
    expect(record).toMatchObject({ route: '/v1/edit', operation: 'edit', model: 'ideogram-v2-turbo', images_requested: 3, images_returned: 3, estimated_cost_usd: null });
    const report = await h.app.inject({ method: 'GET', url: '/v1/usage?from=2000-01-01&to=2100-01-01&group_by=team,model', headers: key });
    expect(report.statusCode, report.body).toBe(200);
    expect(report.json().data).toEqual([expect.objectContaining({ model: 'ideogram-v2-turbo', requests: 1, images: 3, estimated_cost_usd: 0, unpriced_images: 3 })]);
  });

  it("is refused to a key with a monthly budget (403, sending nothing), while the model's priced routes stay open to it", async () => {
    const key = await mintKey({ monthly_budget_usd: 5, rpm: 100 });
    const refused = await jsonEdit({ model: 'ideogram-v2', size: '1024x1024' }, key);
    expect(refused.statusCode).toBe(403);
    expect(refused.json().error.message).toMatch(/ideogram-v2 has no known price in mode reframe/);
    expect(h.simulator.received).toHaveLength(0);
    const remix = await jsonEdit({ model: 'ideogram-v2', mode: 'remix', prompt: 'the same, in winter' }, key);
    expect(remix.statusCode, remix.body).toBe(200);
    expect(remix.json().usage.estimated_cost_usd).toBe(0.08);
  });
});

describe('GET /v1/models', () => {
  it('lists reframe for each legacy model: no prompt, the required size with the 78 legacy resolutions, style from V_2 on', async () => {
    for (const [id, styled] of [['ideogram-v2', true], ['ideogram-v2a-turbo', true], ['ideogram-v1', false]] as const) {
      const res = await h.app.inject({ method: 'GET', url: `/v1/models/${id}`, headers: h.auth });
      expect(res.statusCode).toBe(200);
      const model = res.json();
      expect(model.edit_modes, id).toContain('reframe');
      const reframe = model.input_schema.edit.reframe;
      expect(reframe.prompt).toEqual({ max_length: 0 });
      expect(reframe.parameters.size).toMatchObject({ type: 'enum', required: true });
      expect(reframe.parameters.size.values).toHaveLength(78);
      expect(reframe.mask).toBeNull();
      expect(reframe.images).toEqual({ max: 1, max_bytes: 25_000_000 });
      expect(Object.keys(reframe.parameters).sort(), id).toEqual(styled ? ['n', 'seed', 'size', 'style'] : ['n', 'seed', 'size']);
      expect(reframe.options).toEqual({});
    }
  });
});
