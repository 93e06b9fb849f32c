import { readFileSync } from 'node:fs';
import type { FastifyRequest } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelCatalogue } from '../src/catalogue/catalogue.js';
import { GatewayMetrics } from '../src/observability/metrics.js';
import { newOutcome, type RequestOutcome } from '../src/usage/request-outcome.js';
import { ADMIN_KEY, CLIENT_KEY, OTHER_CLIENT_KEY, UPSTREAM_KEY, startHarness, type Harness } from './harness.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The Prometheus text exposition format, samples only. */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[key!] = value!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

function valueOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

async function scrape(h: Harness): Promise<Sample[]> {
  const res = await h.app.inject({ method: 'GET', url: '/metrics' });
  expect(res.statusCode).toBe(200);
  return parseExposition(res.body);
}

const generate = (h: Harness, payload: Record<string, unknown>, auth = h.auth) =>
  h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload });

describe('GET /metrics', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());

  it('answers the Prometheus text format without a client key', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(res.body).toContain('# TYPE gateway_http_requests_total counter');
  });

  it("every gateway_* metric it serves is in docs/metrics.md's table", async () => {
    const res = await h.app.inject({ method: 'GET', url: '/metrics' });
    const served = [...res.body.matchAll(/^# TYPE (gateway_\w+) /gm)].map((m) => m[1]!);
    expect(served.length).toBeGreaterThan(20);
    const documented = new Set([...readFileSync('docs/metrics.md', 'utf8').matchAll(/`(gateway_\w+)`/g)].map((m) => m[1]!));
    expect(served.filter((name) => !documented.has(name))).toEqual([]);
  });

  it('counts requests by route, model, team and status', async () => {
    const labels = { route: '/v1/generate', model: 'ideogram-v2-turbo', team: 'design', status: '200' };
    const before = valueOf(await scrape(h), 'gateway_http_requests_total', labels) ?? 0;
    for (let i = 0; i < 3; i++) expect((await generate(h, { model: 'ideogram-v2-turbo', prompt: `p${i}` })).statusCode).toBe(200);
    await generate(h, { model: 'ideogram-v2-turbo', prompt: 'x', n: 99 });
    const samples = await scrape(h);
    expect(valueOf(samples, 'gateway_http_requests_total', labels)).toBe(before + 3);
    expect(valueOf(samples, 'gateway_http_requests_total', { ...labels, status: '400' })).toBe(1);
  });

  it('counts a request refused without a key under no team', async () => {
    await generate(h, { model: 'gpt-image-1', prompt: 'x' }, {});
    expect(valueOf(await scrape(h), 'gateway_http_requests_total', { route: '/v1/generate', team: '', status: '401' })).toBeGreaterThanOrEqual(1);
  });

  it('labels a model the catalogue does not know as unknown, not by the name given', async () => {
    await generate(h, { model: 'made-up-model-123', prompt: 'x' });
    const samples = await scrape(h);
    expect(valueOf(samples, 'gateway_http_requests_total', { model: 'unknown', status: '400' })).toBeGreaterThanOrEqual(1);
    expect(samples.some((s) => s.labels.model === 'made-up-model-123')).toBe(false);
  });

  it('has latency histograms for whole requests and upstream exchanges', async () => {
    await generate(h, { model: 'ideogram-v1-turbo', prompt: 'timed' });
    const samples = await scrape(h);
    expect(valueOf(samples, 'gateway_http_request_duration_seconds_count', { route: '/v1/generate' })).toBeGreaterThanOrEqual(1);
    expect(valueOf(samples, 'gateway_http_request_duration_seconds_bucket', { route: '/v1/generate', le: '+Inf' })).toBeGreaterThanOrEqual(1);
    expect(valueOf(samples, 'gateway_upstream_duration_seconds_count', { model: 'ideogram-v1-turbo' })).toBe(1);
    expect(valueOf(samples, 'gateway_upstream_duration_seconds_bucket', { model: 'ideogram-v1-turbo', le: '300' })).toBe(1);
  });

  it('counts upstream errors by error code', async () => {
    h.simulator.failNext('http500');
    expect((await generate(h, { model: 'ideogram-v2a', prompt: 'fails' })).statusCode).toBe(502);
    expect(valueOf(await scrape(h), 'gateway_upstream_errors_total', { code: 'upstream_error', model: 'ideogram-v2a' })).toBe(1);
  });

  it('counts images stored and their bytes', async () => {
    const res = await generate(h, { model: 'gpt-image-1.5', prompt: 'two', n: 2 });
    const bytes = res.json().images.reduce((sum: number, i: { bytes: number }) => sum + i.bytes, 0);
    const samples = await scrape(h);
    expect(valueOf(samples, 'gateway_images_stored_total', { model: 'gpt-image-1.5' })).toBe(2);
    expect(valueOf(samples, 'gateway_image_bytes_stored_total', { model: 'gpt-image-1.5' })).toBe(bytes);
  });

  it('shows the upstream queue depth and the jobs in each state, read from the job store', async () => {
    const before = valueOf(await scrape(h), 'gateway_jobs', { state: 'succeeded' }) ?? 0;
    const accepted = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a job', async: true } });
    const id = accepted.json().id;
    for (let i = 0; i < 100; i++) {
      const job = await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: h.auth });
      if (job.json().status === 'succeeded') break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const samples = await scrape(h);
    expect(valueOf(samples, 'gateway_upstream_queue_depth')).toBe(0);
    expect(valueOf(samples, 'gateway_jobs', { state: 'succeeded' })).toBe(before + 1);
    expect(valueOf(samples, 'gateway_jobs', { state: 'failed' })).toBe(0);
  });

  it('shows the usage records not committed yet, while the database holds their commit', async () => {
    const db = h.app.db;
    const batch = db.batch.bind(db);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let holding = false;
    db.batch = async (statements) => {
      if (statements.some((s) => s.sql.startsWith('INSERT INTO usage_records'))) {
        holding = true;
        await held;
      }
      return batch(statements);
    };
    try {
      expect(valueOf(await scrape(h), 'gateway_usage_records_pending')).toBe(0);
      const answered = generate(h, { model: 'gpt-image-1', prompt: 'held record' });
      for (let i = 0; i < 200 && !holding; i++) await new Promise((r) => setTimeout(r, 10));
      expect(holding).toBe(true);
      // The generation's record, and the scrape's own once it answers, wait behind the held commit.
      expect(valueOf(await scrape(h), 'gateway_usage_records_pending')).toBeGreaterThanOrEqual(1);
      release();
      expect((await answered).statusCode).toBe(200);
    } finally {
      release();
      db.batch = batch;
    }
    for (let i = 0; i < 200 && h.app.usageLog.pending > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(valueOf(await scrape(h), 'gateway_usage_records_pending')).toBe(0);
  });

  it('labels refusals by the limit that refused them', async () => {
    const minted = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'limited', rpm: 1, images_per_day: 1 } });
    const auth = { authorization: `Bearer ${minted.json().key}` };
    await h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'gpt-image-1', prompt: 'x', n: 2 } });
    await h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'gpt-image-1', prompt: 'y' } });
    const samples = await scrape(h);
    expect(valueOf(samples, 'gateway_limit_refusals_total', { reason: 'images_per_day' })).toBe(1);
    expect(valueOf(samples, 'gateway_limit_refusals_total', { reason: 'rpm' })).toBe(1);
  });

  it('includes the default process metrics', async () => {
    const names = new Set((await scrape(h)).map((s) => s.name));
    expect(names).toContain('process_cpu_user_seconds_total');
    expect(names).toContain('nodejs_heap_size_used_bytes');
  });

  it('keeps each app its own registry', async () => {
    const other = await startHarness();
    try {
      await generate(h, { model: 'ideogram-v2', prompt: 'only in the first app' });
      const samples = await scrape(other);
      expect(valueOf(samples, 'gateway_http_requests_total', { model: 'ideogram-v2' })).toBeUndefined();
    } finally {
      await other.close();
    }
  });
});

describe('GatewayMetrics.observe', () => {
  const metrics = new GatewayMetrics(new ModelCatalogue(), () => 0);

  function answered(status: number, outcome: Partial<RequestOutcome>): void {
    const request = { outcome: { ...newOutcome(), ...outcome }, routeOptions: { url: '/v1/generate' }, client: { id: 'design', team: 'design', admin: false } };
    metrics.observe(request as unknown as FastifyRequest, status, 0.012);
  }

  it("counts a 429 from the client's own limit as a limit refusal labelled by the limit", async () => {
    answered(429, { errorCode: 'rate_limited', limitReason: 'images_per_day' });
    const samples = parseExposition(await metrics.registry.metrics());
    expect(valueOf(samples, 'gateway_limit_refusals_total', { reason: 'images_per_day' })).toBe(1);
  });

  it('counts upstream throttling as an upstream error, not a limit refusal', async () => {
    answered(429, { errorCode: 'rate_limited', upstreamStatus: 429, model: 'gpt-image-1' });
    const samples = parseExposition(await metrics.registry.metrics());
    expect(valueOf(samples, 'gateway_upstream_errors_total', { code: 'rate_limited', model: 'gpt-image-1' })).toBe(1);
    expect(samples.filter((s) => s.name === 'gateway_limit_refusals_total').map((s) => s.labels.reason)).toEqual(['images_per_day']);
  });
});

describe('request log lines', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());

  it('carry the request id, key id, team, model, status and time of each request', async () => {
    const res = await generate(h, { model: 'gpt-image-1', prompt: 'logged' });
    const line = h.logs.map((l) => JSON.parse(l)).find((l) => l.msg === 'request completed' && l.reqId === res.headers['x-request-id']);
    expect(line).toMatchObject({ key_id: 'design', team: 'design', model: 'gpt-image-1', status: 200, path: '/v1/generate', ms: expect.any(Number) });
  });

  it('never carry a key or base64 image data', async () => {
    await generate(h, { model: 'gpt-image-1', prompt: 'inline', response_format: 'b64_json' });
    h.simulator.failNext('http500');
    await generate(h, { model: 'gpt-image-1', prompt: 'fails' });
    await h.app.inject({ method: 'GET', url: '/v1/usage', headers: { 'x-api-key': ADMIN_KEY } });
    await h.app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: `Bearer ${OTHER_CLIENT_KEY}` } });
    const all = h.logs.join('\n');
    for (const secret of [CLIENT_KEY, OTHER_CLIENT_KEY, ADMIN_KEY, UPSTREAM_KEY]) expect(all).not.toContain(secret);
    expect(all).not.toMatch(/[A-Za-z0-9+/]{200,}/);
    expect(all).not.toContain('iVBORw0KGgo'); // a PNG's first bytes in base64
  });
});
