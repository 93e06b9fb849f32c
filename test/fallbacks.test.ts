/**
 * fallback_models: a request whose model upstream cannot serve (no channel, throttled, unavailable)
 * is answered by the next model it named; one upstream refused as invalid or unsafe never reaches
 * another model. The whole chain is checked before anything is sent.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { LightMyRequestResponse } from 'fastify';
import { ADMIN_KEY, makePng, multipartBody, startHarness, type Harness } from './harness.js';
import { eventsOf, parseSse } from './sse.js';
import { billedToo, fallbackAllowed } from '../src/generation/fallbacks.js';
import { GatewayError } from '../src/errors.js';
import { UpstreamFailure } from '../src/upstream/upstream-failure.js';
import { parseGenerateBody } from '../src/request/image-request.js';

const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` };
const ALL_TIME = 'from=2000-01-01&to=2100-01-01';

const submissions = (h: Harness) => h.simulator.received.filter((r) => r.method === 'POST');
/** The model each upstream submission was for. */
const modelsSent = (h: Harness) =>
  submissions(h).map((r) => {
    // The model is in the path (predictions), the JSON body or the multipart fields (OpenAI's edits).
    const named = [r.path, (r.json as { model?: unknown } | undefined)?.model, r.fields?.model].map((v) => String(v ?? '')).join(' ');
    return named.includes('gpt-image-1.5') ? 'gpt-image-1.5' : named.includes('gpt-image-1') ? 'gpt-image-1' : named;
  });

async function mint(h: Harness, policy: Record<string, unknown>): Promise<Record<string, string>> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: ADMIN, payload: { team: `t${randomBytes(3).toString('hex')}`, ...policy } });
  expect(res.statusCode, res.body).toBe(201);
  return { authorization: `Bearer ${res.json().key}` };
}

async function usageOf(h: Harness, requestId: string): Promise<Record<string, unknown>> {
  const page = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}&limit=1000`, headers: ADMIN });
  expect(page.statusCode, page.body).toBe(200);
  const records = (page.json().data as Array<Record<string, unknown>>).filter((r) => r.request_id === requestId);
  expect(records).toHaveLength(1);
  return records[0]!;
}

async function fallbackMetric(h: Harness): Promise<string[]> {
  const res = await h.app.inject({ method: 'GET', url: '/metrics' });
  return res.body.split('\n').filter((l) => l.startsWith('gateway_fallbacks_total{'));
}

function errorOf(res: LightMyRequestResponse, status: number, code: string) {
  expect(res.statusCode, res.body).toBe(status);
  const error = res.json().error as { code: string; message: string; details: Array<{ field?: string; message: string }> };
  expect(error.code).toBe(code);
  return error;
}

describe('fallback_models on one gateway', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());
  beforeEach(() => h.simulator.reset());

  const generate = (payload: Record<string, unknown>, auth: Record<string, string> = h.auth) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload });

  for (const [fault, kind] of [
    ['no_channel', 'no_channel'],
    ['http429', 'throttled'],
    ['http503', 'unavailable'],
  ] as const) {
    it(`${kind} on the first model: the second answers; model/requested_model, one usage record under the server naming the models tried, the metric`, async () => {
      h.simulator.failNext(fault);
      const res = await generate({ model: 'gpt-image-1', prompt: `a fox (${kind})`, fallback_models: ['gpt-image-1.5'] });
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json().model).toBe('gpt-image-1.5');
      expect(res.json().requested_model).toBe('gpt-image-1');
      expect(res.json().images).toHaveLength(1);
      expect(modelsSent(h)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
      const record = await usageOf(h, String(res.headers['x-request-id']));
      expect(record.model).toBe('gpt-image-1.5');
      expect(record.status).toBe(200);
      expect(record.models_tried).toEqual(['gpt-image-1', 'gpt-image-1.5']);
      expect(await fallbackMetric(h)).toContain(`gateway_fallbacks_total{from="gpt-image-1",to="gpt-image-1.5",reason="${kind}"} 1`);
    });
  }

  it('the simulator\'s #sim:no_channel fails every model of the chain: the last failure is answered, each model tried once', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a fox #sim:no_channel', fallback_models: ['gpt-image-1.5'] });
    errorOf(res, 502, 'upstream_error');
    // The answer says the whole chain was tried, not only the last model's failure.
    expect(res.json().error.message).toMatch(/; every model of the chain failed \(tried gpt-image-1, gpt-image-1\.5\)$/);
    expect(modelsSent(h)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
    const record = await usageOf(h, String(res.headers['x-request-id']));
    expect(record.models_tried).toEqual(['gpt-image-1', 'gpt-image-1.5']);
  });

  it('the simulator\'s #sim:no_channel:<model> fails that model alone: the demo shows the next one serving', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a fox #sim:no_channel:gpt-image-1', fallback_models: ['gpt-image-1.5'] });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toMatchObject({ model: 'gpt-image-1.5', requested_model: 'gpt-image-1' });
    expect(modelsSent(h)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
    // Named for another model, the fault leaves this one alone.
    h.simulator.reset();
    const other = await generate({ model: 'gpt-image-1', prompt: 'a fox #sim:no_channel:gpt-image-1.5', fallback_models: ['gpt-image-1.5'] });
    expect(other.statusCode, other.body).toBe(200);
    expect(other.json().model).toBe('gpt-image-1');
  });

  for (const [fault, status] of [
    ['http400', 400],
    ['moderated', 422],
    // Upstream may have worked on (and billed) these.
    ['http500', 502],
    ['malformed', 502],
  ] as const) {
    it(`${fault}: never sent to another model`, async () => {
      h.simulator.failNext(fault);
      const res = await generate({ model: 'gpt-image-1', prompt: 'a fox', fallback_models: ['gpt-image-1.5'] });
      expect(res.statusCode, res.body).toBe(status);
      expect(modelsSent(h)).toEqual(['gpt-image-1']);
      const record = await usageOf(h, String(res.headers['x-request-id']));
      expect(record.model).toBe('gpt-image-1');
      expect(record.models_tried).toEqual(['gpt-image-1']);
    });
  }

  it('a request without fallback_models keeps its body and record as before (no requested_model, no models_tried)', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'plain' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).not.toHaveProperty('requested_model');
    expect((await usageOf(h, String(res.headers['x-request-id']))).models_tried).toBeNull();
  });

  it('the chain is checked whole before anything is sent: a model that cannot take a field is a 400 naming it and the field', async () => {
    // dall-e-3 makes one image per request: n = 2 is fine for gpt-image-1, not for it.
    const err = errorOf(await generate({ model: 'gpt-image-1', prompt: 'two', n: 2, fallback_models: ['dall-e-3'] }), 400, 'invalid_request');
    expect(err.message).toContain('dall-e-3');
    expect(err.details.some((d) => d.field === 'fallback_models[0]')).toBe(true);
    expect(err.details.some((d) => d.field === 'n')).toBe(true);
    const notAModel = errorOf(await generate({ model: 'gpt-image-1', prompt: 'x', fallback_models: ['no-such-model'] }), 400, 'invalid_request');
    expect(notAModel.details[0]!.field).toBe('fallback_models[0]');
    expect(notAModel.message).toContain('no-such-model');
    const itself = errorOf(await generate({ model: 'gpt-image-1', prompt: 'x', fallback_models: ['gpt-image-1'] }), 400, 'invalid_request');
    expect(itself.message).toMatch(/requested model/);
    const twice = errorOf(await generate({ model: 'gpt-image-1', prompt: 'x', fallback_models: ['gpt-image-1.5', 'gpt-image-1.5'] }), 400, 'invalid_request');
    expect(twice.details[0]!.field).toBe('fallback_models');
    const many = errorOf(await generate({ model: 'gpt-image-1', prompt: 'x', fallback_models: ['gpt-image-1.5', 'gpt-image-2', 'dall-e-3', 'FLUX-1.1-pro'] }), 400, 'invalid_request');
    expect(many.message).toMatch(/at most 3/);
    const onTimeout = errorOf(await generate({ model: 'gpt-image-1', prompt: 'x', fallback_on_timeout: 'yes' }), 400, 'invalid_request');
    expect(onTimeout.details[0]!.field).toBe('fallback_on_timeout');
    expect(submissions(h)).toHaveLength(0);
  });

  it('an edit checks its fallbacks for the edit: a generate-only model is refused by name', async () => {
    const image = `data:image/png;base64,${(await makePng(64, 64)).toString('base64')}`;
    const err = errorOf(
      await h.app.inject({ method: 'POST', url: '/v1/edit', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', image, fallback_models: ['wan2.6-t2i'] } }),
      400,
      'invalid_request',
    );
    expect(err.message).toContain('wan2.6-t2i');
    expect(err.details[0]!.field).toBe('fallback_models[0]');
    expect(submissions(h)).toHaveLength(0);
  });

  it('an edit falls back too', async () => {
    const image = `data:image/png;base64,${(await makePng(64, 64)).toString('base64')}`;
    h.simulator.failNext('no_channel');
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', image, fallback_models: ['gpt-image-1.5'] } });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().model).toBe('gpt-image-1.5');
    expect(modelsSent(h)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
  });

  it("a key's allow-list applies to each fallback model: 403 naming it", async () => {
    const key = await mint(h, { models: ['gpt-image-1'] });
    const err = errorOf(await generate({ model: 'gpt-image-1', prompt: 'x', fallback_models: ['gpt-image-1.5'] }, key), 403, 'forbidden');
    expect(err.message).toContain('gpt-image-1.5');
    expect(err.details[0]!.field).toBe('fallback_models[0]');
    expect(submissions(h)).toHaveLength(0);
  });

  it('a stream shows the fallback event before the result', async () => {
    h.simulator.failNext('no_channel');
    const res = await generate({ model: 'gpt-image-1', prompt: 'streamed', stream: true, fallback_models: ['gpt-image-1.5'] });
    expect(res.statusCode).toBe(200);
    const events = eventsOf(parseSse(res.body));
    const names = events.map((e) => e.event);
    const fallback = events.find((e) => e.event === 'fallback');
    expect(fallback?.data).toEqual({ from: 'gpt-image-1', to: 'gpt-image-1.5', reason: 'no_channel' });
    expect(names.indexOf('fallback')).toBeLessThan(names.indexOf('succeeded'));
    expect(events.find((e) => e.event === 'succeeded')?.data.model).toBe('gpt-image-1.5');
  });

  it('the OpenAI route takes fallback_models as an extra field', async () => {
    h.simulator.failNext('no_channel');
    const res = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', fallback_models: ['gpt-image-1.5'] } });
    expect(res.statusCode, res.body).toBe(200);
    expect(modelsSent(h)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
  });

  it("the OpenAI route translates size for each model of the chain: ideogram-v3 gets its ratio, gpt-image-1 after it the size itself", async () => {
    h.simulator.failNext('no_channel');
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/images/generations',
      headers: h.auth,
      payload: { model: 'ideogram-v3', prompt: 'a tall poster', size: '1024x1536', fallback_models: ['gpt-image-1'] },
    });
    expect(res.statusCode, res.body).toBe(200);
    const [first, second] = submissions(h);
    expect(first!.fields).toMatchObject({ aspect_ratio: '2x3' });
    expect(first!.fields).not.toHaveProperty('size');
    expect(second!.json).toEqual({ input: { prompt: 'a tall poster', size: '1024x1536' } });
  });

  it('and the other way: gpt-image-1 gets the size, flux-kontext-pro after it the ratio 3:2', async () => {
    h.simulator.failNext('no_channel');
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/images/generations',
      headers: h.auth,
      payload: { model: 'gpt-image-1', prompt: 'a wide lake', size: '1536x1024', fallback_models: ['flux-kontext-pro'] },
    });
    expect(res.statusCode, res.body).toBe(200);
    expect(submissions(h).map((r) => r.json)).toEqual([
      { input: { prompt: 'a wide lake', size: '1536x1024' } },
      { input: { prompt: 'a wide lake', aspect_ratio: '3:2' } },
    ]);
  });

  it("OpenAI's default size auto falls back to a model whose sizes have no auto (dall-e-3) as that model's default size", async () => {
    h.simulator.failNext('no_channel');
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/images/generations',
      headers: h.auth,
      payload: { model: 'gpt-image-1', prompt: 'a lighthouse', size: 'auto', fallback_models: ['dall-e-3'] },
    });
    expect(res.statusCode, res.body).toBe(200);
    expect(submissions(h).map((r) => r.json)).toEqual([{ input: { prompt: 'a lighthouse', size: 'auto' } }, { input: { prompt: 'a lighthouse' } }]);
  });

  it('an OpenAI size a named fallback model cannot take as its own shape is a 400 naming the model and size, before anything is sent', async () => {
    // dall-e-3 takes 1792x1024; its ratio 7:4 is none of ideogram-v3's.
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/images/generations',
      headers: h.auth,
      payload: { model: 'dall-e-3', prompt: 'x', size: '1792x1024', fallback_models: ['ideogram-v3'] },
    });
    expect(res.statusCode, res.body).toBe(400);
    const error = res.json().error as { message: string; param: string };
    expect(error.message).toContain('ideogram-v3');
    expect(error.message).toContain('7:4');
    expect(submissions(h)).toHaveLength(0);
  });

  it('multipart edits take fallback_models as a comma-separated list (and a JSON array)', async () => {
    const bytes = await makePng(64, 64);
    for (const list of ['gpt-image-1.5', '["gpt-image-1.5"]']) {
      h.simulator.reset();
      h.simulator.failNext('no_channel');
      const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'x', fallback_models: list, response_format: 'url' }, [{ field: 'image', filename: 'a.png', bytes }]);
      const res = await h.app.inject({ method: 'POST', url: '/v1/images/edits', headers: { ...h.auth, ...headers }, payload });
      expect(res.statusCode, res.body).toBe(200);
      expect(modelsSent(h)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
    }
  });

});

describe('fallback_models and upstream auth failures', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());

  it('auth: never sent to another model', async () => {
    h.simulator.failNext('http401');
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', fallback_models: ['gpt-image-1.5'] } });
    expect(res.statusCode).not.toBe(200);
    expect(modelsSent(h)).toEqual(['gpt-image-1']);
  });
});

describe('fallback_on_timeout (UPSTREAM_TIMEOUT_MS=300)', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ UPSTREAM_TIMEOUT_MS: '300' });
  });
  afterAll(async () => h.close());
  beforeEach(() => h.simulator.reset());

  const generate = (payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload });

  it('off (the default): a timeout after upstream took the request is answered, no other model tried', async () => {
    h.simulator.failNext('hang');
    const res = await generate({ model: 'gpt-image-1', prompt: 'slow', fallback_models: ['gpt-image-1.5'] });
    errorOf(res, 504, 'upstream_timeout');
    expect(modelsSent(h)).toEqual(['gpt-image-1']);
  });

  it('on, the next model then refused unbilled: the answer still says not to resend on its own (the first may have billed)', async () => {
    h.simulator.failNext('hang');
    h.simulator.failNext('no_channel', 10);
    const res = await generate({ model: 'gpt-image-1', prompt: 'slow then none', fallback_models: ['gpt-image-1.5'], fallback_on_timeout: true });
    errorOf(res, 502, 'upstream_error');
    expect(modelsSent(h)).toContain('gpt-image-1.5');
    expect(res.headers['x-should-retry']).toBe('false');
    // Without the timeout before it, the same refusal may be resent.
    h.simulator.reset();
    h.simulator.failNext('no_channel', 10);
    const alone = await generate({ model: 'gpt-image-1.5', prompt: 'none', fallback_models: [] });
    errorOf(alone, 502, 'upstream_error');
    expect(alone.headers['x-should-retry']).toBeUndefined();
  });

  it('on: the next model answers', async () => {
    h.simulator.failNext('hang');
    const res = await generate({ model: 'gpt-image-1', prompt: 'slow', fallback_models: ['gpt-image-1.5'], fallback_on_timeout: true });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().model).toBe('gpt-image-1.5');
    expect(modelsSent(h)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
  });
});

describe('a deadline that passes while upstream does not hold the request (UPSTREAM_TIMEOUT_MS=600, retries on)', () => {
  let h: Harness;
  beforeAll(async () => {
    // Retries after a 503 come at once; the simulator's 429 asks for one second, past the deadline.
    h = await startHarness({ UPSTREAM_TIMEOUT_MS: '600', UPSTREAM_RETRIES: '2', UPSTREAM_RETRY_BASE_MS: '20' });
    // A first request warms the path, so that a timeout below comes where the test means it to.
    expect((await generate({ model: 'gpt-image-1', prompt: 'warm' })).statusCode).toBe(200);
  });
  afterAll(async () => h.close());
  beforeEach(() => h.simulator.reset());

  const generate = (payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload });

  it('waiting to send it again after an unbilled 429: a timeout that was not billed, which a client may resend', async () => {
    h.simulator.failNext('http429');
    const alone = await generate({ model: 'gpt-image-1', prompt: 'throttled', fallback_models: [] });
    errorOf(alone, 504, 'upstream_timeout');
    expect(alone.headers['x-should-retry']).toBeUndefined();
  });

  it('and with fallback_on_timeout, the next model refused unbilled: nothing says it may have billed', async () => {
    h.simulator.failNext('http429');
    h.simulator.failNext('http400');
    const chained = await generate({ model: 'gpt-image-1', prompt: 'throttled then refused', fallback_models: ['gpt-image-1.5'], fallback_on_timeout: true });
    errorOf(chained, 400, 'invalid_request');
    expect(modelsSent(h)).toContain('gpt-image-1.5');
    expect(chained.headers['x-should-retry']).toBeUndefined();
  });

  it('once sent again (the deadline passes in the second attempt): may have billed', async () => {
    h.simulator.failNext('http503');
    h.simulator.failNext('hang');
    const res = await generate({ model: 'gpt-image-1', prompt: 'unavailable then slow', fallback_models: [] });
    errorOf(res, 504, 'upstream_timeout');
    expect(res.headers['x-should-retry']).toBe('false');
  });
});

describe('limits with a chain', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ PRICE_OVERRIDES: JSON.stringify({ 'gpt-image-1': 0.02, 'gpt-image-1.5': 0.3 }) });
  });
  afterAll(async () => h.close());
  beforeEach(() => h.simulator.reset());

  const generate = (payload: Record<string, unknown>, auth: Record<string, string>) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload });

  it('the reservation takes the dearest model of the chain', async () => {
    const key = await mint(h, { monthly_budget_usd: 0.1, rpm: 100 });
    expect((await generate({ model: 'gpt-image-1', prompt: 'cheap' }, key)).statusCode).toBe(200);
    h.simulator.reset();
    const err = errorOf(await generate({ model: 'gpt-image-1', prompt: 'chain', fallback_models: ['gpt-image-1.5'] }, key), 429, 'rate_limited');
    expect(err.message).toMatch(/monthly_budget_usd/);
    expect(submissions(h)).toHaveLength(0);
  });

  it('and settles to what ran', async () => {
    const key = await mint(h, { monthly_budget_usd: 0.35, rpm: 100 });
    // Served by the first model: 0.02 spent, not the 0.3 reserved.
    const first = await generate({ model: 'gpt-image-1', prompt: 'chain 1', fallback_models: ['gpt-image-1.5'] }, key);
    expect(first.statusCode, first.body).toBe(200);
    expect(first.json().usage.estimated_cost_usd).toBeCloseTo(0.02);
    // 0.02 + 0.3 fits in 0.35; had the first kept 0.3, this would be refused.
    const second = await generate({ model: 'gpt-image-1', prompt: 'chain 2', fallback_models: ['gpt-image-1.5'] }, key);
    expect(second.statusCode, second.body).toBe(200);
  });
});

describe("a chain's last failure after a model it left may have billed (billedToo)", () => {
  it('is marked whatever it is: an upstream failure as may-have-billed, a gateway refusal (no upstream slot in time) with x-should-retry: false', () => {
    const unbilled = billedToo(new UpstreamFailure('no_channel', 'none', { mayHaveBilled: false })) as UpstreamFailure;
    expect(unbilled.mayHaveBilled).toBe(true);
    expect(unbilled.kind).toBe('no_channel');
    const noSlot = billedToo(new GatewayError('service_unavailable', 'no upstream slot within 300 ms', { retryAfter: 1 })) as GatewayError;
    expect(noSlot.status).toBe(503);
    expect(noSlot.retryAfter).toBe(1);
    expect(noSlot.headers['x-should-retry']).toBe('false');
    // Not an error of another kind (nothing to mark).
    const other = new Error('x');
    expect(billedToo(other)).toBe(other);
  });
});

describe('which upstream failures fall back', () => {
  const request = parseGenerateBody({ model: 'gpt-image-1', prompt: 'x', fallback_models: ['gpt-image-1.5'] });
  it('those another model may serve and upstream did not bill, a refused connection among them', () => {
    for (const kind of ['no_channel', 'throttled', 'unavailable', 'connection_refused'] as const) expect(fallbackAllowed(new UpstreamFailure(kind, kind), request)).toBe(true);
  });
  it('never one that may have been billed, nor one about the request itself', () => {
    for (const kind of ['server_error', 'rejected_input', 'moderated', 'auth', 'malformed_reply', 'connection_lost', 'task_failed', 'download_failed'] as const) {
      expect(fallbackAllowed(new UpstreamFailure(kind, kind), request)).toBe(false);
    }
    // A throttle upstream says it billed for is not passed on.
    expect(fallbackAllowed(new UpstreamFailure('throttled', 'x', { mayHaveBilled: true }), request)).toBe(false);
    expect(fallbackAllowed(new Error('not upstream'), request)).toBe(false);
  });
  it('a timeout only with fallback_on_timeout', () => {
    expect(fallbackAllowed(new UpstreamFailure('timeout', 't'), request)).toBe(false);
    expect(fallbackAllowed(new UpstreamFailure('timeout', 't'), { ...request, fallbackOnTimeout: true })).toBe(true);
  });
});

describe('default chains: the key\'s fallbacks (GATEWAY_KEYS_FILE), else the model\'s (CATALOGUE_FILE)', () => {
  let h: Harness;
  let dir: string;
  const KEYED = 'gk-test-fallbacks-keyed-0123456789';
  const keyed = { authorization: `Bearer ${KEYED}` };
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gw-fallbacks-'));
    const catalogue = join(dir, 'catalogue.yaml');
    // dall-e-3 first: it makes one image per request, so a request for two leaves it out.
    writeFileSync(catalogue, 'models:\n  - id: gpt-image-1\n    fallbacks: [dall-e-3, gpt-image-1.5]\n');
    const keys = join(dir, 'keys.yaml');
    writeFileSync(keys, `keys:\n  - id: keyed\n    team: keyed\n    key: ${KEYED}\n    models: ["gpt-image-*"]\n    fallbacks: [gpt-image-2]\n`);
    h = await startHarness({ CATALOGUE_FILE: catalogue, GATEWAY_KEYS_FILE: keys });
  });
  afterAll(async () => {
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(() => h.simulator.reset());

  const generate = (payload: Record<string, unknown>, auth: Record<string, string> = h.auth) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload });

  it("the model's catalogue fallbacks serve a request that names none", async () => {
    h.simulator.failNext('no_channel');
    const res = await generate({ model: 'gpt-image-1', prompt: 'a fox' });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().model).toBe('dall-e-3');
    expect(res.json().requested_model).toBe('gpt-image-1');
    expect((await usageOf(h, String(res.headers['x-request-id']))).models_tried).toEqual(['gpt-image-1', 'dall-e-3']);
  });

  it('#sim:no_channel walks the whole default chain', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'a fox #sim:no_channel' });
    errorOf(res, 502, 'upstream_error');
    expect((await usageOf(h, String(res.headers['x-request-id']))).models_tried).toEqual(['gpt-image-1', 'dall-e-3', 'gpt-image-1.5']);
  });

  it('a default model that cannot take the request is left out silently, not a 400', async () => {
    h.simulator.failNext('no_channel');
    const res = await generate({ model: 'gpt-image-1', prompt: 'two foxes', n: 2 });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().model).toBe('gpt-image-1.5');
    expect(modelsSent(h)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
  });

  it("a default model outside the key's allow-list is left out silently, not a 403", async () => {
    const key = await mint(h, { models: ['gpt-image-1', 'gpt-image-1.5'] });
    h.simulator.failNext('no_channel');
    const res = await generate({ model: 'gpt-image-1', prompt: 'a fox' }, key);
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().model).toBe('gpt-image-1.5');
  });

  it("the key's fallbacks come before the model's", async () => {
    h.simulator.failNext('no_channel');
    const res = await generate({ model: 'gpt-image-1', prompt: 'a fox' }, keyed);
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().model).toBe('gpt-image-2');
    expect(res.json().requested_model).toBe('gpt-image-1');
  });

  it("the request's fallback_models come before both", async () => {
    for (const auth of [h.auth, keyed]) {
      h.simulator.reset();
      h.simulator.failNext('no_channel');
      const res = await generate({ model: 'gpt-image-1', prompt: 'a fox', fallback_models: ['gpt-image-1.5'] }, auth);
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json().model).toBe('gpt-image-1.5');
    }
  });

  it('"fallback_models": [] turns the defaults off for one request', async () => {
    for (const auth of [h.auth, keyed]) {
      h.simulator.reset();
      h.simulator.failNext('no_channel');
      const res = await generate({ model: 'gpt-image-1', prompt: 'a fox', fallback_models: [] }, auth);
      expect(res.statusCode).not.toBe(200);
      expect(res.json()).not.toHaveProperty('requested_model');
      expect(modelsSent(h)).toEqual(['gpt-image-1']);
    }
  });

  it('an async request follows the default chain too, as a job', async () => {
    h.simulator.failNext('no_channel');
    const res = await generate({ model: 'gpt-image-1', prompt: 'later', async: true });
    expect(res.statusCode, res.body).toBe(202);
    const job = await h.app.inject({ method: 'GET', url: `/v1/jobs/${res.json().id}?wait=30`, headers: h.auth });
    expect(job.json().status).toBe('succeeded');
    expect(job.json().model).toBe('dall-e-3');
    expect(job.json().result.requested_model).toBe('gpt-image-1');
    expect(submissions(h)).toHaveLength(2);
    expect((await usageOf(h, String(res.headers['x-request-id']))).models_tried).toEqual(['gpt-image-1', 'dall-e-3']);
  });
});

describe('GATEWAY_KEYS_FILE fallbacks are checked at start', () => {
  it('and on a CATALOGUE_FILE reload: one that drops a model a key falls back to is refused', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gw-fallbacks-reload-'));
    const catalogue = join(dir, 'catalogue.yaml');
    const keys = join(dir, 'keys.yaml');
    writeFileSync(catalogue, 'models: []\n');
    writeFileSync(keys, 'keys:\n  - id: k1\n    team: t1\n    key: gk-test-fallbacks-reload-0123456789\n    fallbacks: [gpt-image-1.5]\n');
    const h = await startHarness({ CATALOGUE_FILE: catalogue, GATEWAY_KEYS_FILE: keys });
    try {
      writeFileSync(catalogue, 'models:\n  - id: gpt-image-1.5\n    disabled: true\n');
      const result = h.app.reloadCatalogue();
      expect(result.ok ? '' : result.error).toMatch(/key k1: fallbacks\[0\] names gpt-image-1.5/);
      expect(h.app.catalogue.find('gpt-image-1.5')).toBeDefined();
    } finally {
      await h.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('an unknown model, or one outside the key allow-list, stops the start naming the file, the key and the entry', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gw-fallbacks-keys-'));
    try {
      const keys = join(dir, 'keys.yaml');
      for (const [extra, message] of [
        ['fallbacks: [gpt-image-1.5, no-such-model]', /GATEWAY_KEYS_FILE .*keys\.yaml: key k1: fallbacks\[1\] names no-such-model, which is not a model/],
        ['models: ["gpt-image-1"]\n    fallbacks: [gpt-image-1.5]', /GATEWAY_KEYS_FILE .*: key k1: fallbacks\[0\] names model gpt-image-1.5, which the key's models allow-list does not allow/],
      ] as const) {
        writeFileSync(keys, `keys:\n  - id: k1\n    team: t1\n    key: gk-test-fallbacks-start-0123456789\n    ${extra}\n`);
        await expect(startHarness({ GATEWAY_KEYS_FILE: keys })).rejects.toThrow(message);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
