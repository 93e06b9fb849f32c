/**
 * OpenTelemetry traces, end to end: a gateway exporting to an OTLP receiver of the test's own (a
 * node:http server on loopback taking POST /v1/traces), a client traceparent carried to upstream,
 * the spans of one request under it, and log lines naming the trace. Without an endpoint, no SDK
 * is loaded and nothing new goes upstream.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { jobWhenFinished, startHarness, type Harness } from './harness.js';
import { sdkLoadCount } from '../src/observability/tracing.js';
import { ConfigError } from '../src/config.js';

interface Received {
  contentType: string;
  body: Buffer;
}

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: Array<{ key: string; value: Record<string, unknown> }>;
  events?: Array<{ name: string; attributes?: Array<{ key: string; value: Record<string, unknown> }> }>;
  links?: Array<{ traceId: string; spanId: string }>;
  status?: { code?: number; message?: string };
}

/** An OTLP/HTTP receiver: every POST /v1/traces kept as it came; it also takes job callbacks (POST /hook), keeping their headers. */
async function startReceiver(answer = 200): Promise<{ url: string; received: Received[]; callbacks: Array<Record<string, unknown>>; close(): Promise<void> }> {
  const received: Received[] = [];
  const callbacks: Array<Record<string, unknown>> = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method === 'POST' && req.url === '/v1/traces') {
        received.push({ contentType: String(req.headers['content-type'] ?? ''), body: Buffer.concat(chunks) });
        res.writeHead(answer, { 'content-type': 'application/json' }).end('{}');
      } else if (req.method === 'POST' && req.url === '/hook') {
        callbacks.push({ ...req.headers });
        res.writeHead(200).end('ok');
      } else res.writeHead(404).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, received, callbacks, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

/** Every span of the JSON exports received so far. */
function spansOf(received: Received[]): OtlpSpan[] {
  return received.flatMap((r) =>
    (JSON.parse(r.body.toString('utf8')).resourceSpans ?? []).flatMap((rs: any) => rs.scopeSpans.flatMap((ss: any) => ss.spans as OtlpSpan[])),
  );
}

function attr(span: OtlpSpan, key: string): unknown {
  const v = span.attributes?.find((a) => a.key === key)?.value;
  if (!v) return undefined;
  return v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : undefined) ?? v.boolValue ?? v.doubleValue;
}

/** True when `span` lies under `ancestor` (by parent ids within the spans). */
function isUnder(span: OtlpSpan, ancestor: OtlpSpan, spans: OtlpSpan[]): boolean {
  let current: OtlpSpan | undefined = span;
  for (let i = 0; current && i < 50; i++) {
    if (current.parentSpanId === ancestor.spanId) return true;
    current = spans.find((s) => s.spanId === current!.parentSpanId);
  }
  return false;
}

const CLIENT_TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const CLIENT_PARENT_ID = '00f067aa0ba902b7';
const TRACEPARENT = `00-${CLIENT_TRACE_ID}-${CLIENT_PARENT_ID}-01`;

/** A generate that carries the client's traceparent. */
function generateTraced(h: Harness, payload: Record<string, unknown>) {
  return h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, traceparent: TRACEPARENT }, payload });
}

let harness: Harness | undefined;
let receiver: Awaited<ReturnType<typeof startReceiver>> | undefined;
afterEach(async () => {
  await harness?.close();
  harness = undefined;
  await receiver?.close();
  receiver = undefined;
});

async function tracedHarness(protocol: 'http/json' | 'http/protobuf', env: Record<string, string> = {}): Promise<Harness> {
  receiver = await startReceiver();
  harness = await startHarness({
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
    OTEL_BSP_SCHEDULE_DELAY: '50',
    OTEL_SERVICE_NAME: 'gw-under-test',
    ...env,
  });
  expect(harness.app.tracing.enabled).toBe(true);
  return harness;
}

describe('without an OTLP endpoint', () => {
  it('loads no SDK, makes no spans and sends no traceparent upstream', async () => {
    const loadsBefore = sdkLoadCount();
    harness = await startHarness();
    expect(harness.app.tracing.enabled).toBe(false);
    const res = await harness.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { ...harness.auth, traceparent: TRACEPARENT },
      payload: { model: 'gpt-image-1', prompt: 'a deer drinking in the lake' },
    });
    expect(res.statusCode).toBe(200);
    expect(sdkLoadCount()).toBe(loadsBefore);
    expect(harness.simulator.received.length).toBeGreaterThan(0);
    for (const r of harness.simulator.received) expect(r.headers.traceparent).toBeUndefined();
    expect(harness.logs.some((line) => line.includes('trace_id'))).toBe(false);
  });

  it('OTEL_SDK_DISABLED=true keeps it off even with an endpoint', async () => {
    const loadsBefore = sdkLoadCount();
    harness = await startHarness({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9', OTEL_SDK_DISABLED: 'true' });
    expect(harness.app.tracing.enabled).toBe(false);
    expect(sdkLoadCount()).toBe(loadsBefore);
  });

  it('refuses grpc at start, naming the variable', async () => {
    await expect(startHarness({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4317', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' })).rejects.toThrow(ConfigError);
    await expect(startHarness({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4317', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' })).rejects.toThrow(
      /OTEL_EXPORTER_OTLP_PROTOCOL must be http\/protobuf .* or http\/json; grpc is not supported/,
    );
  });
});

describe('with an OTLP endpoint (http/json)', () => {
  it('exports one trace per request, continuing the client traceparent, with the spans of the queue, upstream, the store and the usage commit', async () => {
    const h = await tracedHarness('http/json');
    const res = await generateTraced(h, { model: 'gpt-image-1', prompt: 'a deer drinking in the lake' });
    expect(res.statusCode).toBe(200);
    await h.app.tracing.forceFlush();

    expect(receiver!.received.length).toBeGreaterThan(0);
    expect(receiver!.received[0]!.contentType).toContain('application/json');
    const resource = JSON.parse(receiver!.received[0]!.body.toString('utf8')).resourceSpans[0].resource;
    expect(resource.attributes).toContainEqual({ key: 'service.name', value: { stringValue: 'gw-under-test' } });

    const spans = spansOf(receiver!.received);
    const server = spans.find((s) => s.name === 'POST /v1/generate');
    expect(server).toBeDefined();
    // The client's trace, under the client's span.
    expect(server!.traceId).toBe(CLIENT_TRACE_ID);
    expect(server!.parentSpanId).toBe(CLIENT_PARENT_ID);
    expect(server!.kind).toBe(2); // SERVER
    expect(attr(server!, 'http.request.method')).toBe('POST');
    expect(attr(server!, 'http.route')).toBe('/v1/generate');
    expect(attr(server!, 'http.response.status_code')).toBe(200);
    expect(attr(server!, 'gateway.key_id')).toBe('design');
    expect(attr(server!, 'gateway.team')).toBe('design');
    expect(attr(server!, 'gateway.model')).toBe('gpt-image-1');
    expect(attr(server!, 'gateway.request_id')).toBe(res.headers['x-request-id']);

    for (const name of ['upstream.queue_wait', 'upstream.exchange', 'image.store', 'db.image_row', 'db.commit']) {
      const child = spans.find((s) => s.name === name);
      expect(child, name).toBeDefined();
      expect(child!.traceId, name).toBe(CLIENT_TRACE_ID);
      expect(isUnder(child!, server!, spans), name).toBe(true);
    }
    const exchange = spans.find((s) => s.name === 'upstream.exchange')!;
    expect(exchange.kind).toBe(3); // CLIENT
    expect(attr(exchange, 'http.response.status_code')).toBe(200);
    // The group commit links to the request it carried.
    const commit = spans.find((s) => s.name === 'db.commit' && attr(s, 'gateway.usage.records') !== undefined)!;
    expect(commit.links?.some((l) => l.spanId === server!.spanId)).toBe(true);

    // Upstream was sent a traceparent of the same trace, whose parent is the exchange span.
    const sent = h.simulator.received;
    expect(sent).toHaveLength(1);
    expect(attr(exchange, 'url.path')).toBe(sent[0]!.path);
    expect(sent[0]!.headers.traceparent).toBe(`00-${CLIENT_TRACE_ID}-${exchange.spanId}-01`);

    // The request's log line names the trace.
    const completed = h.logs.map((l) => JSON.parse(l)).find((l) => l.msg === 'request completed' && l.path === '/v1/generate');
    expect(completed?.trace_id).toBe(CLIENT_TRACE_ID);
    expect(completed?.span_id).toBe(server!.spanId);
  });

  it('an async-task model shows task polling with an event per poll and the result download; its upstream calls carry the trace', async () => {
    const h = await tracedHarness('http/json');
    const res = await generateTraced(h, { model: 'flux-kontext-pro', prompt: 'a lighthouse at dusk' });
    expect(res.statusCode).toBe(200);
    await h.app.tracing.forceFlush();
    const spans = spansOf(receiver!.received);
    const server = spans.find((s) => s.name === 'POST /v1/generate')!;
    expect(server.traceId).toBe(CLIENT_TRACE_ID);
    const polling = spans.find((s) => s.name === 'upstream.task_poll');
    expect(polling).toBeDefined();
    expect(isUnder(polling!, server, spans)).toBe(true);
    const polls = h.simulator.received.filter((r) => r.path.startsWith('/v1/tasks/'));
    expect(polls.length).toBeGreaterThan(0);
    // One event per poll, the last one Ready.
    const events = polling!.events!.filter((e) => e.name === 'poll');
    expect(events).toHaveLength(polls.length);
    expect(events.at(-1)!.attributes).toContainEqual({ key: 'gateway.upstream.task_status', value: { stringValue: 'Ready' } });
    for (const poll of polls) expect(poll.headers.traceparent).toBe(`00-${CLIENT_TRACE_ID}-${polling!.spanId}-01`);

    const download = spans.find((s) => s.name === 'upstream.download');
    expect(download).toBeDefined();
    expect(isUnder(download!, server, spans)).toBe(true);
    const fetched = h.simulator.downloads;
    expect(fetched.length).toBeGreaterThan(0);
    expect(fetched.every((r) => r.headers.traceparent === `00-${CLIENT_TRACE_ID}-${download!.spanId}-01`)).toBe(true);
  });

  it('an async job continues the trace of the request that created it, and its failure is an ERROR span', async () => {
    const h = await tracedHarness('http/json');
    // The job fails (retries are off in the harness): its span says how.
    h.simulator.failNext('http500');
    const res = await generateTraced(h, { model: 'gpt-image-1', prompt: 'a deer drinking in the lake', async: true });
    expect(res.statusCode).toBe(202);
    const job = await jobWhenFinished(h, res.json().id);
    await h.app.tracing.forceFlush();
    const spans = spansOf(receiver!.received);
    const server = spans.find((s) => s.name === 'POST /v1/generate')!;
    const run = spans.find((s) => s.name === 'job.run');
    expect(run).toBeDefined();
    expect(run!.traceId).toBe(CLIENT_TRACE_ID);
    expect(isUnder(run!, server, spans)).toBe(true);
    expect(attr(run!, 'gateway.job_id')).toBe(job.id);
    for (const name of ['db.job_row', 'db.job_finish']) expect(spans.find((s) => s.name === name && s.traceId === CLIENT_TRACE_ID), name).toBeDefined();
    const exchange = spans.find((s) => s.name === 'upstream.exchange')!;
    expect(isUnder(exchange, run!, spans)).toBe(true);
    expect(job.status).toBe('failed');
    expect(run!.status?.code).toBe(2); // ERROR
    expect(run!.status?.message).toBe(job.error.code);
    expect(exchange.status).toMatchObject({ code: 2, message: 'upstream_error' });
    // Lines the job logs (not a request's: the job runner's own logger) name its trace too.
    const failedLine = h.logs.map((l) => JSON.parse(l)).find((l) => l.job_id === job.id && l.code === 'upstream_error');
    expect(failedLine?.trace_id).toBe(CLIENT_TRACE_ID);
  });

  it('a refused upstream call tried again is one exchange span with a retry event, each attempt carrying the trace', async () => {
    const h = await tracedHarness('http/json', { UPSTREAM_RETRIES: '1', UPSTREAM_RETRY_BASE_MS: '1' });
    h.simulator.failNext('http503');
    const res = await generateTraced(h, { model: 'gpt-image-1', prompt: 'a deer drinking in the lake' });
    expect(res.statusCode).toBe(200);
    await h.app.tracing.forceFlush();
    const spans = spansOf(receiver!.received);
    const exchanges = spans.filter((s) => s.name === 'upstream.exchange');
    expect(exchanges).toHaveLength(1);
    const retries = exchanges[0]!.events!.filter((e) => e.name === 'retry');
    expect(retries).toHaveLength(1);
    expect(retries[0]!.attributes).toContainEqual({ key: 'http.response.status_code', value: { intValue: 503 } });
    expect(h.simulator.received).toHaveLength(2);
    for (const r of h.simulator.received) expect(r.headers.traceparent).toBe(`00-${CLIENT_TRACE_ID}-${exchanges[0]!.spanId}-01`);
  });

  it("a job's callback carries the job's trace", async () => {
    receiver = await startReceiver();
    harness = await startHarness({
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${receiver.url}/v1/traces`,
      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json',
      ALLOWED_CALLBACK_HOSTS: '127.0.0.1',
      CALLBACK_SECRET: 'a-callback-secret-of-at-least-32-characters',
    });
    const h = harness;
    const res = await generateTraced(h, { model: 'gpt-image-1', prompt: 'call me back', async: true, callback_url: `${receiver.url}/hook` });
    expect(res.statusCode).toBe(202);
    await jobWhenFinished(h, res.json().id);
    for (let i = 0; i < 250 && receiver.callbacks.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(receiver.callbacks).toHaveLength(1);
    expect(String(receiver.callbacks[0]!.traceparent)).toMatch(new RegExp(`^00-${CLIENT_TRACE_ID}-[0-9a-f]{16}-01$`));
  });

  it('a listed browser origin may send traceparent (CORS), and its trace is continued', async () => {
    const origin = 'https://app.example.com';
    const h = await tracedHarness('http/json', { CORS_ORIGINS: origin });
    const preflight = await h.app.inject({
      method: 'OPTIONS',
      url: '/v1/generate',
      headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type, traceparent, tracestate' },
    });
    expect(preflight.statusCode).toBe(204);
    const allowed = String(preflight.headers['access-control-allow-headers']).toLowerCase().split(/\s*,\s*/);
    expect(allowed).toEqual(expect.arrayContaining(['traceparent', 'tracestate']));
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { ...h.auth, origin, traceparent: TRACEPARENT },
      payload: { model: 'gpt-image-1', prompt: 'a deer drinking in the lake' },
    });
    expect(res.statusCode).toBe(200);
    await h.app.tracing.forceFlush();
    expect(spansOf(receiver!.received).find((s) => s.name === 'POST /v1/generate')?.traceId).toBe(CLIENT_TRACE_ID);
  });

  it('a malformed traceparent is ignored: a trace of its own', async () => {
    const h = await tracedHarness('http/json');
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { ...h.auth, traceparent: '00-not-a-trace-01' },
      payload: { model: 'gpt-image-1', prompt: 'a deer drinking in the lake' },
    });
    expect(res.statusCode).toBe(200);
    await h.app.tracing.forceFlush();
    const server = spansOf(receiver!.received).find((s) => s.name === 'POST /v1/generate')!;
    expect(server.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(server.parentSpanId ?? '').toBe('');
    const sent = h.simulator.received[0]!;
    expect(String(sent.headers.traceparent)).toContain(server.traceId);
  });

  it('a refused request is an ERROR span with the gateway error code', async () => {
    const h = await tracedHarness('http/json');
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth }, payload: { model: 'gpt-image-1' } });
    expect(res.statusCode).toBe(400);
    await h.app.tracing.forceFlush();
    const server = spansOf(receiver!.received).find((s) => s.name === 'POST /v1/generate')!;
    expect(server.status).toMatchObject({ code: 2, message: 'invalid_request' });
    expect(attr(server, 'http.response.status_code')).toBe(400);
  });
});

describe('a collector that refuses the spans', () => {
  it("the exporter's failure is a log line, and the request is served as usual", async () => {
    receiver = await startReceiver(400);
    harness = await startHarness({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_BSP_SCHEDULE_DELAY: '10' });
    const h = harness;
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a deer drinking in the lake' } });
    expect(res.statusCode).toBe(200);
    const failures = () => h.logs.map((l) => JSON.parse(l)).filter((l) => String(l.msg).startsWith('OpenTelemetry: '));
    for (let i = 0; i < 250 && failures().length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    const lines = failures();
    expect(receiver.received.length).toBeGreaterThan(0);
    expect(lines.length).toBeGreaterThan(0);
    expect(lines[0].level).toBeGreaterThanOrEqual(40);
  });
});

describe('with an OTLP endpoint (http/protobuf, the default)', () => {
  it('exports protobuf carrying the client trace id', async () => {
    const h = await tracedHarness('http/protobuf');
    const res = await generateTraced(h, { model: 'gpt-image-1', prompt: 'a deer drinking in the lake' });
    expect(res.statusCode).toBe(200);
    await h.app.tracing.forceFlush();
    expect(receiver!.received.length).toBeGreaterThan(0);
    const body = Buffer.concat(receiver!.received.map((r) => r.body));
    expect(receiver!.received.every((r) => r.contentType === 'application/x-protobuf')).toBe(true);
    // Trace ids go as 16 raw bytes; span names as strings.
    expect(body.includes(Buffer.from(CLIENT_TRACE_ID, 'hex'))).toBe(true);
    expect(body.includes(Buffer.from('POST /v1/generate'))).toBe(true);
    expect(body.includes(Buffer.from('db.commit'))).toBe(true);
  });
});
