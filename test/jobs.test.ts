import { createHash, createHmac } from 'node:crypto';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, OTHER_CLIENT_KEY, jobWhenFinished, startHarness, type Harness } from './harness.js';

let h: Harness;
const CALLBACK_SECRET = 'a-callback-secret-of-at-least-32-characters';
beforeAll(async () => {
  h = await startHarness({ CALLBACK_SECRET, ALLOWED_CALLBACK_HOSTS: '127.0.0.1' });
});
afterAll(async () => h.close());
beforeEach(() => {
  h.simulator.reset();
  h.simulator.holdTasks = false;
});

const generate = (payload: Record<string, unknown>, headers: Record<string, string> = {}) =>
  h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, ...headers }, payload });

const finished = (id: string, auth = h.auth) => jobWhenFinished(h, id, auth);

const submissions = (pathPart: string) => h.simulator.received.filter((r) => r.method === 'POST' && r.path.includes(pathPart)).length;

describe('asynchronous jobs', () => {
  it('an async request answers 202 at once with a job that then succeeds with the images', async () => {
    const res = await generate({ model: 'flux-kontext-pro', prompt: 'a lighthouse', async: true });
    expect(res.statusCode).toBe(202);
    const accepted = res.json();
    expect(accepted).toMatchObject({ id: expect.stringMatching(/^job_/), status: expect.stringMatching(/queued|running/), status_url: `/v1/jobs/${accepted.id}` });
    expect(res.headers.location).toBe(`/v1/jobs/${accepted.id}`);
    const job = await finished(accepted.id);
    expect(job.status).toBe('succeeded');
    expect(job.result.model).toBe('flux-kontext-pro');
    const url = new URL(job.result.images[0].url);
    const image = await h.app.inject({ method: 'GET', url: url.pathname + url.search });
    expect(image.statusCode).toBe(200);
    expect(image.headers['content-type']).toBe('image/png');
  });

  it('keeps no base64 in the jobs table, yet answers b64_json from the image store', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'inline please', async: true, response_format: 'b64_json' });
    const job = await finished(res.json().id);
    expect(job.status).toBe('succeeded');
    const row = await h.app.db.get<{ result_json: string }>('SELECT result_json FROM jobs WHERE id = $1', [job.id]);
    expect(row?.result_json).not.toContain('iVBORw0KGgo');
    const bytes = Buffer.from(job.result.images[0].b64_json, 'base64');
    expect(bytes.subarray(1, 4).toString()).toBe('PNG');
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(job.result.images[0].sha256);
    expect(job.result.inline_images).toBeUndefined();
  });

  it('a job that fails upstream ends failed with the error object', async () => {
    h.simulator.failNext('http500');
    const res = await generate({ model: 'gpt-image-1', prompt: 'x', async: true });
    const job = await finished(res.json().id);
    expect(job.status).toBe('failed');
    expect(job.error).toMatchObject({ code: 'upstream_error', request_id: job.id });
    expect(job.result).toBeUndefined();
  });

  it('another team cannot read a job, which answers like a missing one; the admin key can', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'mine', async: true });
    const id = res.json().id;
    await finished(id);
    const other = await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: { authorization: `Bearer ${OTHER_CLIENT_KEY}` } });
    expect(other.statusCode).toBe(404);
    expect(other.json().error.code).toBe('not_found');
    const admin = await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    expect(admin.statusCode).toBe(200);
  });

  it('an unknown job is a 404', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/jobs/job_nope', headers: h.auth });
    expect(res.statusCode).toBe(404);
  });

  it('an invalid async request is refused at once, with no job and no upstream call', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'x', async: true, quality: 'hd' });
    expect(res.statusCode).toBe(400);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('a finished job is POSTed to its callback_url with a valid signature', async () => {
    const received: Array<{ headers: IncomingMessage['headers']; body: string }> = [];
    const server = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        received.push({ headers: req.headers, body });
        res.end('ok');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as AddressInfo).port;
      const res = await generate({ model: 'gpt-image-1', prompt: 'call me', async: true, callback_url: `http://127.0.0.1:${port}/hook` });
      const id = res.json().id;
      await finished(id);
      for (let i = 0; i < 100 && received.length === 0; i++) await sleep(20);
      expect(received).toHaveLength(1);
      const { headers, body } = received[0]!;
      expect(JSON.parse(body)).toMatchObject({ id, status: 'succeeded' });
      const [t, v1] = String(headers['x-gateway-signature']).split(',').map((p) => p.split('=')[1]);
      expect(v1).toBe(createHmac('sha256', CALLBACK_SECRET).update(`${t}.${body}`).digest('hex'));
    } finally {
      server.close();
    }
  });

  it.each([
    ['a loopback address', (port: number) => `http://127.0.0.2:${port}/hook`],
    ['the cloud metadata address', () => 'http://169.254.169.254/latest/meta-data'],
    ['an IPv4-translated loopback address', (port: number) => `http://[::ffff:0:7f00:1]:${port}/hook`],
    ['a local-use NAT64 address', (port: number) => `http://[64:ff9b:1::a00:1]:${port}/hook`],
    ['a name that resolves to loopback', (port: number) => `http://localhost:${port}/hook`],
  ])('a callback_url to %s is refused at submission (400 naming callback_url): no job, nothing paid', async (_name, url) => {
    let called = false;
    const server = createServer((_req, res) => {
      called = true;
      res.end('ok');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.2', r));
    try {
      const port = (server.address() as AddressInfo).port;
      const jobsBefore = (await h.app.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM jobs'))!.n;
      const res = await generate({ model: 'gpt-image-1', prompt: 'no call', async: true, callback_url: url(port) });
      expect(res.statusCode).toBe(400);
      expect(res.json().error).toMatchObject({ code: 'invalid_request', details: [{ field: 'callback_url' }] });
      expect(res.json().error.message).toMatch(/^callback_url: .*non-public/);
      expect(h.simulator.received).toHaveLength(0);
      expect(Number((await h.app.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM jobs'))!.n)).toBe(Number(jobsBefore));
      expect(called).toBe(false);
    } finally {
      server.close();
    }
  });

  it('a callback_url on a synchronous request is refused, since it would never be called', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'x', callback_url: 'https://hooks.example/x' });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toMatch(/callback_url.*async/);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('a callback_url that is not http(s) is refused', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'x', async: true, callback_url: 'file:///etc/passwd' });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('callback_url');
  });
});

describe('Idempotency-Key', () => {
  it('a retried request returns the first one’s result without a second upstream call', async () => {
    const body = { model: 'gpt-image-1', prompt: 'only once' };
    const first = await generate(body, { 'idempotency-key': 'k-retry' });
    const second = await generate(body, { 'idempotency-key': 'k-retry' });
    expect(first.statusCode).toBe(200);
    expect(second.statusCode).toBe(200);
    expect(second.json().id).toBe(first.json().id);
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(submissions('gpt-image-1')).toBe(1);
  });

  it('N concurrent requests with one key cost one upstream call and all get the same result', async () => {
    h.simulator.holdTasks = true;
    const body = { model: 'flux-kontext-max', prompt: 'together' };
    const pending = Array.from({ length: 6 }, () => generate(body, { 'idempotency-key': 'k-concurrent' }));
    await sleep(150);
    h.simulator.holdTasks = false;
    const answers = await Promise.all(pending);
    expect(answers.map((a) => a.statusCode)).toEqual([200, 200, 200, 200, 200, 200]);
    expect(new Set(answers.map((a) => a.json().id)).size).toBe(1);
    expect(submissions('flux-kontext-max')).toBe(1);
  });

  it('the same key with a different body is a 409 and sends nothing upstream', async () => {
    await generate({ model: 'gpt-image-1', prompt: 'first' }, { 'idempotency-key': 'k-conflict' });
    h.simulator.reset();
    const res = await generate({ model: 'gpt-image-1', prompt: 'second' }, { 'idempotency-key': 'k-conflict' });
    expect(res.statusCode).toBe(409);
    expect(res.json().error.code).toBe('conflict');
    expect(h.simulator.received).toHaveLength(0);
  });

  it('the same body written with its fields in another order is the same request', async () => {
    const a = await generate({ model: 'gpt-image-1', prompt: 'order', n: 2 }, { 'idempotency-key': 'k-order' });
    const b = await generate({ n: 2, prompt: 'order', model: 'openai/gpt-image-1' }, { 'idempotency-key': 'k-order' });
    expect(b.json().id).toBe(a.json().id);
  });

  it('keys are per client key: another team’s identical key is a separate request', async () => {
    const body = { model: 'gpt-image-1', prompt: 'scoped' };
    await generate(body, { 'idempotency-key': 'k-scope' });
    const other = await generate(body, { 'idempotency-key': 'k-scope', authorization: `Bearer ${OTHER_CLIENT_KEY}` });
    expect(other.statusCode).toBe(200);
    expect(submissions('gpt-image-1')).toBe(2);
  });

  it('an async request with a key returns the same job when retried', async () => {
    const body = { model: 'gpt-image-1', prompt: 'async once', async: true };
    const a = await generate(body, { 'idempotency-key': 'k-async' });
    const b = await generate(body, { 'idempotency-key': 'k-async' });
    expect(a.statusCode).toBe(202);
    expect(b.json().id).toBe(a.json().id);
    await finished(a.json().id);
    expect(submissions('gpt-image-1')).toBe(1);
  });

  it('a first request that may have been paid for replays its error', async () => {
    h.simulator.failNext('http500');
    const body = { model: 'gpt-image-1', prompt: 'fails' };
    const a = await generate(body, { 'idempotency-key': 'k-fail' });
    const b = await generate(body, { 'idempotency-key': 'k-fail' });
    expect(a.statusCode).toBe(502);
    expect(b.statusCode).toBe(502);
    expect(b.json().error.code).toBe('upstream_error');
    expect(submissions('gpt-image-1')).toBe(1);
    // Told apart as a success's replay is: the retry was answered from what is kept, not by upstream.
    expect(a.headers['idempotent-replayed']).toBe('false');
    expect(b.headers['idempotent-replayed']).toBe('true');
    // Both tell a client library not to send it again on its own: upstream may have billed the call.
    expect(a.headers['x-should-retry']).toBe('false');
    expect(b.headers['x-should-retry']).toBe('false');
    // The failure itself was logged as an error once; its replay is one warning, without a stack.
    const linesOf = (id: string) => h.logs.map((l) => JSON.parse(l)).filter((l) => l.reqId === id && l.msg !== 'request completed');
    const replayLines = linesOf(b.json().error.request_id);
    expect(replayLines).toHaveLength(1);
    expect(replayLines[0]).toMatchObject({ level: 40, code: 'upstream_error' });
    expect(replayLines[0].err).toBeUndefined();
    expect(JSON.stringify(replayLines[0])).not.toMatch(/stack/);
  });

  it('a first request that upstream refused (never paid) is tried again by its retry, and its 429 keeps Retry-After', async () => {
    h.simulator.failNext('http429');
    const body = { model: 'gpt-image-1', prompt: 'throttled' };
    const a = await generate(body, { 'idempotency-key': 'k-throttled' });
    expect(a.statusCode).toBe(429);
    expect(Number(a.headers['retry-after'])).toBeGreaterThan(0);
    // Never paid, and over within seconds: a client library may send it again.
    expect(a.headers['x-should-retry']).toBeUndefined();
    const b = await generate(body, { 'idempotency-key': 'k-throttled' });
    expect(b.statusCode).toBe(200);
    expect(submissions('gpt-image-1')).toBe(2);
  });

  it('an over-long key is refused', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'x' }, { 'idempotency-key': 'k'.repeat(256) });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('Idempotency-Key');
  });
});
