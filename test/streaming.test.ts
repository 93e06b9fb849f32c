/**
 * Long renders as events, over real HTTP: the gateway's own streams on /v1/generate and /v1/edit,
 * keep-alives through a proxy that cuts silent connections, failures after the headers, clients
 * that leave, and the records each streamed request leaves behind.
 */
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { parse } from 'yaml';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, jobWhenFinished, makePng, multipartBody, startHarness, startListening, type Harness, type ListeningHarness } from './harness.js';
import { eventsOf, parseSse, readStream } from './sse.js';

const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats.default(ajv);
ajv.addSchema({ ...parse(readFileSync(new URL('../openapi.yaml', import.meta.url), 'utf8')), $id: 'openapi.yaml' });
function openApiProblems(schemaName: string, body: unknown): string[] {
  const check = ajv.getSchema(`openapi.yaml#/components/schemas/${schemaName}`);
  if (!check) return [`no schema ${schemaName}`];
  return check(body) ? [] : (check.errors ?? []).map((e) => `${e.instancePath} ${e.message}`);
}

const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` };

let h: ListeningHarness;
let base: string;
const fetch: ListeningHarness['fetch'] = (url, init) => h.fetch(url, init);

beforeAll(async () => {
  h = await startListening({ RATE_LIMIT_RPM: '1000', STREAM_KEEPALIVE_MS: '50' });
  base = h.base;
});
afterAll(async () => h.close());
beforeEach(() => {
  h.simulator.reset();
  h.simulator.holdTasks = false;
});

const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${base}${path}`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });

const polls = () => h.simulator.received.filter((r) => r.path.startsWith('/v1/tasks/'));

/** The usage record a request left, by its request id. */
async function usageRecordOf(requestId: string): Promise<any> {
  for (let i = 0; i < 100; i++) {
    const page = await h.app.inject({ method: 'GET', url: '/v1/usage/records?from=2000-01-01&limit=500', headers: ADMIN });
    const record = page.json().data.find((r: any) => r.request_id === requestId);
    if (record) return record;
    await sleep(20);
  }
  throw new Error(`no usage record for ${requestId}`);
}

describe('"stream": true on the gateway’s own routes', () => {
  it('/v1/generate answers queued, running, image and succeeded, and succeeded is the usual success body', async () => {
    const res = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'streamed', n: 2, stream: true });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    expect(res.headers.get('x-request-id')).toMatch(/^req_/);
    // nginx (docker/nginx.conf) passes on what is marked so without buffering it.
    expect(res.headers.get('x-accel-buffering')).toBe('no');
    expect(res.headers.get('cache-control')).toBe('no-cache, no-transform');
    const events = eventsOf(parseSse(await res.text()));
    expect(events.map((e) => e.event)).toEqual(['queued', 'running', 'image', 'image', 'succeeded']);
    const succeeded = events.at(-1)!.data;
    expect(openApiProblems('GenerationResult', succeeded)).toEqual([]);
    expect(succeeded.images).toHaveLength(2);
    // Each image event carries one stored image of the result, as soon as it was stored.
    const streamed = events.filter((e) => e.event === 'image').map((e) => e.data);
    expect(streamed.map((e) => e.index).sort()).toEqual([0, 1]);
    for (const { index, image } of streamed) expect(image).toEqual(succeeded.images[index]);
    expect((await fetch(succeeded.images[0].url)).status).toBe(200);
    const record = await usageRecordOf(res.headers.get('x-request-id')!);
    expect(record).toMatchObject({ status: 200, images_returned: 2, model: 'gpt-image-1' });
  });

  it('an asynchronous model streams its upstream task id and the progress upstream reports', async () => {
    // The task stays Pending until the stream has carried a progress event, however slow the machine.
    h.simulator.holdTasks = true;
    const res = await post('/v1/generate', { model: 'flux-kontext-pro', prompt: 'a slow render', stream: true });
    const events = eventsOf(
      await readStream(res, (block) => {
        if (block.event === 'progress') h.simulator.holdTasks = false;
      }),
    );
    const names = events.map((e) => e.event);
    expect(names[0]).toBe('queued');
    // Running once sent, then again with the task id once upstream accepted the task.
    const running = events.filter((e) => e.event === 'running');
    expect(running.map((e) => e.data)).toEqual([{}, { task_id: expect.stringMatching(/^sim-task-/) }]);
    expect(polls()[0]!.path).toBe(`/v1/tasks/${running[1]!.data.task_id}`);
    const progress = events.filter((e) => e.event === 'progress');
    expect(progress.length).toBeGreaterThan(0);
    for (const p of progress) {
      expect(p.data.upstream_status).toBe('Pending');
      expect(p.data.progress).toBeGreaterThanOrEqual(0);
      expect(p.data.progress).toBeLessThanOrEqual(1);
    }
    expect(names.indexOf('running')).toBeLessThan(names.indexOf('progress'));
    expect(names.slice(-2)).toEqual(['image', 'succeeded']);
  });

  it('/v1/edit streams too, from multipart (stream=true) and from JSON', async () => {
    const png = await makePng();
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'add a hat', stream: 'true' }, [{ field: 'image', filename: 'a.png', bytes: png }]);
    const multipart = await fetch(`${base}/v1/edit`, { method: 'POST', headers: { ...h.auth, ...headers }, body: payload });
    expect(multipart.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(eventsOf(parseSse(await multipart.text())).map((e) => e.event)).toEqual(['queued', 'running', 'image', 'succeeded']);
    const json = await post('/v1/edit', { model: 'gpt-image-1', prompt: 'add a hat', image: `data:image/png;base64,${png.toString('base64')}`, stream: true });
    const events = eventsOf(parseSse(await json.text()));
    expect(events.at(-1)!.event).toBe('succeeded');
    expect(events.at(-1)!.data.model).toBe('gpt-image-1');
  });

  it('a request refused before the stream opens gets the usual JSON error, and nothing goes upstream', async () => {
    const res = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'x', size: '640x480', stream: true });
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(((await res.json()) as any).error.details[0].field).toBe('size');
    const both = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'x', stream: true, async: true });
    expect(both.status).toBe(400);
    expect(((await both.json()) as any).error.details[0]).toMatchObject({ field: 'stream', message: expect.stringMatching(/GET \/v1\/jobs\/\{id\}\/events/) });
    const notBoolean = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'x', stream: 'yes' });
    expect(((await notBoolean.json()) as any).error.details[0]).toMatchObject({ field: 'stream', allowed: [true, false] });
    // Text stands for a boolean only in a multipart form, as for "async".
    for (const text of ['true', 'false']) {
      const jsonText = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'x', stream: text });
      expect(jsonText.status).toBe(400);
      expect(((await jsonText.json()) as any).error.details[0]).toMatchObject({ field: 'stream', message: 'must be true or false' });
    }
    expect(h.simulator.received).toHaveLength(0);
  });

  it('a failure after the headers is the stream’s last event, `failed` with the error object, and the records keep its status', async () => {
    h.simulator.failNext('http500');
    const res = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'x', stream: true });
    expect(res.status).toBe(200);
    const events = eventsOf(parseSse(await res.text()));
    expect(events.map((e) => e.event)).toEqual(['queued', 'running', 'failed']);
    const failed = events.at(-1)!.data;
    expect(failed).toMatchObject({ code: 'upstream_error', request_id: res.headers.get('x-request-id') });
    expect(openApiProblems('Error', { error: failed })).toEqual([]);
    const record = await usageRecordOf(res.headers.get('x-request-id')!);
    expect(record).toMatchObject({ status: 502, error_code: 'upstream_error' });
    const metrics = (await h.app.inject({ method: 'GET', url: '/metrics' })).body;
    expect(metrics).toMatch(/gateway_http_requests_total\{route="\/v1\/generate",model="gpt-image-1",team="design",status="502"\} [1-9]/);
  });

  it('a client that leaves a stream aborts its upstream call and is recorded as 499', async () => {
    h.simulator.holdTasks = true;
    const leave = new AbortController();
    const res = await fetch(`${base}/v1/generate`, {
      method: 'POST',
      headers: { ...h.auth, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'left', stream: true }),
      signal: leave.signal,
    });
    const requestId = res.headers.get('x-request-id')!;
    await readStream(res, () => {
      if (polls().length >= 2) leave.abort();
    }).catch(() => {});
    const record = await usageRecordOf(requestId);
    expect(record).toMatchObject({ status: 499, error_code: 'client_closed', model: 'flux-kontext-pro' });
    // The same one place writes the log line and the metrics of a request whose client left.
    expect(h.logs.some((l) => l.includes(`"reqId":"${requestId}"`) && l.includes('"status":499') && l.includes('request completed'))).toBe(true);
    const metrics = (await h.app.inject({ method: 'GET', url: '/metrics' })).body;
    expect(metrics).toMatch(/gateway_http_requests_total\{route="\/v1\/generate",model="flux-kontext-pro",team="design",status="499"\} [1-9]/);
    // Its task is polled no more: while another request's task is polled five times, the left one's
    // gets at most the one poll that may have been on the wire at the abort.
    const leftTask = polls()[0]!.path;
    const leftPolls = () => polls().filter((p) => p.path === leftTask).length;
    const after = leftPolls();
    const other = post('/v1/generate', { model: 'flux-kontext-pro', prompt: 'stays', stream: true }).then((r) => r.text());
    for (let i = 0; i < 1000 && polls().filter((p) => p.path !== leftTask).length < 5; i++) await sleep(10);
    expect(polls().filter((p) => p.path !== leftTask).length).toBeGreaterThanOrEqual(5);
    expect(leftPolls() - after).toBeLessThanOrEqual(1);
    h.simulator.holdTasks = false;
    expect(eventsOf(parseSse(await other)).at(-1)!.event).toBe('succeeded');
  });
});

/** A proxy like nginx with a short read timeout: it cuts a connection after `idleMs` without a byte from upstream. */
async function startIdleCuttingProxy(target: string, idleMs: number): Promise<{ url: string; close(): Promise<void> }> {
  const to = new URL(target);
  const server: Server = createServer((req, res) => {
    // As nginx's proxy_read_timeout: counted from the request on, reset by every byte of the answer.
    let idle = setTimeout(() => cut(), idleMs);
    const forward = httpRequest({ host: to.hostname, port: to.port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.on('data', (chunk) => {
        clearTimeout(idle);
        idle = setTimeout(() => cut(), idleMs);
        res.write(chunk);
      });
      answer.on('end', () => {
        clearTimeout(idle);
        res.end();
      });
    });
    function cut() {
      forward.destroy();
      res.destroy();
    }
    forward.on('error', () => res.destroy());
    req.pipe(forward);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe('a render that outlasts a proxy’s idle timeout', () => {
  // An upstream that answers after 1.2 s, saying nothing before: the silence a stream must fill.
  let slow: Harness;
  let proxy: Awaited<ReturnType<typeof startIdleCuttingProxy>>;
  beforeAll(async () => {
    slow = await startHarness({ STREAM_KEEPALIVE_MS: '50' }, { latencyMs: 1200 });
    // The proxy cuts after 300 ms of silence; the gateway's keep-alive comes every 50 ms.
    proxy = await startIdleCuttingProxy(await slow.app.listen({ port: 0, host: '127.0.0.1' }), 300);
  });
  afterAll(async () => {
    await proxy.close();
    await slow.close();
  });

  const through = (body: unknown) =>
    fetch(`${proxy.url}/v1/generate`, { method: 'POST', headers: { ...slow.auth, 'content-type': 'application/json' }, body: JSON.stringify(body) });

  it('arrives whole as a stream, a `: keepalive` written whenever nothing else was for STREAM_KEEPALIVE_MS', async () => {
    const blocks = await readStream(await through({ model: 'gpt-image-1', prompt: 'a long render', stream: true }));
    // The first line opens the stream at once; keep-alives fill the silence between events.
    expect(blocks[0]).toEqual({ comment: 'stream opened' });
    expect(blocks.filter((b) => b.comment === 'keepalive').length).toBeGreaterThan(3);
    expect(eventsOf(blocks).map((e) => e.event)).toEqual(['queued', 'running', 'image', 'succeeded']);
  });

  it('is cut without a stream (which is why streams keep alive)', async () => {
    const outcome = await through({ model: 'gpt-image-1', prompt: 'a long render' }).then(
      (res) => res.text().then(() => 'answered'),
      () => 'cut',
    );
    expect(outcome).toBe('cut');
  });
});
