/**
 * Connection hygiene over real sockets: a body that trickles in is cut with 408 request_timeout
 * (answered and recorded like any other error), an idle connection is closed but a request being
 * worked on (a slow render, a stream) is not, connections past MAX_CONNECTIONS are refused and
 * counted, and what Node refuses before any route (malformed HTTP, oversized headers) is answered
 * in the gateway's JSON shape. Small limits (a few hundred ms) keep it quick; nothing asserts how
 * long anything took, only what was answered and in which order.
 */
import { connect, type Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { timeOutBody } from '../src/http/connections.js';
import { ADMIN_KEY, CLIENT_KEY, startListening, type ListeningHarness } from './harness.js';

const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` };

interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** One HTTP/1.1 answer read off a raw socket (by its Content-Length), or undefined if the socket closed first. */
function readAnswer(socket: Socket): Promise<RawAnswer | undefined> {
  return new Promise((resolve) => {
    let data = Buffer.alloc(0);
    const tryParse = () => {
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return false;
      const [statusLine, ...lines] = data.subarray(0, end).toString('latin1').split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      const length = Number(headers['content-length'] ?? 0);
      if (data.length < end + 4 + length) return false;
      socket.off('data', onData).off('close', onClose);
      resolve({ status: Number(statusLine!.split(' ')[1]), headers, body: data.subarray(end + 4, end + 4 + length).toString('utf8') });
      return true;
    };
    const onData = (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      tryParse();
    };
    const onClose = () => {
      if (!tryParse()) resolve(undefined);
    };
    socket.on('data', onData).on('close', onClose);
  });
}

const closed = (socket: Socket) => new Promise<void>((resolve) => (socket.destroyed ? resolve() : socket.once('close', () => resolve())));

function open(h: ListeningHarness): Promise<Socket> {
  const { port } = new URL(h.base);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), '127.0.0.1', () => resolve(socket));
    socket.on('error', reject);
  });
}

/** Sends the head of a POST with a large Content-Length, then one byte of body every `everyMs` until the socket closes. */
function trickle(socket: Socket, path: string, headers: Record<string, string>, everyMs = 25): void {
  const head = Object.entries({ host: 'gateway.test', 'content-type': 'application/json', 'content-length': '100000', ...headers })
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  socket.write(`POST ${path} HTTP/1.1\r\n${head}\r\n{`);
  const timer = setInterval(() => {
    if (socket.writable) socket.write(' ');
  }, everyMs);
  socket.on('error', () => {}); // the gateway closes while bytes are still being sent
  socket.once('close', () => clearInterval(timer));
}

async function usageRecordOf(h: ListeningHarness, requestId: string): Promise<any> {
  await h.app.usageLog.flush();
  const page = await h.app.inject({ method: 'GET', url: '/v1/usage/records?from=2000-01-01&limit=1000', headers: ADMIN });
  return page.json().data.find((r: any) => r.request_id === requestId);
}

async function metric(h: ListeningHarness, name: string): Promise<number | undefined> {
  const text = (await h.app.inject({ method: 'GET', url: '/metrics' })).body;
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

let h: ListeningHarness | undefined;
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await h?.close();
  h = undefined;
});

async function gateway(env: Record<string, string>, simulator = {}): Promise<ListeningHarness> {
  h = await startListening(env, simulator);
  return h;
}

async function socketTo(g: ListeningHarness): Promise<Socket> {
  const socket = await open(g);
  sockets.push(socket);
  return socket;
}

describe('a body that arrives too slowly (REQUEST_TIMEOUT_MS)', () => {
  it('is cut with 408 request_timeout in the gateway’s shape, the connection closed, and recorded', async () => {
    const g = await gateway({ REQUEST_TIMEOUT_MS: '300' });
    const socket = await socketTo(g);
    const answer = readAnswer(socket);
    trickle(socket, '/v1/generate', { authorization: `Bearer ${CLIENT_KEY}`, 'x-request-id': 'slow-body-generate' });
    const res = await answer;
    expect(res?.status).toBe(408);
    expect(res!.headers['content-type']).toMatch(/^application\/json/);
    expect(res!.headers['x-request-id']).toBe('slow-body-generate');
    expect(res!.headers.connection).toBe('close');
    expect(JSON.parse(res!.body)).toEqual({ error: { code: 'request_timeout', message: expect.stringMatching(/300 ms/), request_id: 'slow-body-generate' } });
    await closed(socket);
    expect(g.simulator.received).toHaveLength(0);
    const record = await usageRecordOf(g, 'slow-body-generate');
    expect(record).toMatchObject({ status: 408, error_code: 'request_timeout', route: '/v1/generate', team: 'design' });
  });

  it('answers in OpenAI’s error shape on /v1/images/generations', async () => {
    const g = await gateway({ REQUEST_TIMEOUT_MS: '300' });
    const socket = await socketTo(g);
    const answer = readAnswer(socket);
    trickle(socket, '/v1/images/generations', { authorization: `Bearer ${CLIENT_KEY}`, 'x-request-id': 'slow-body-openai' });
    const res = await answer;
    expect(res?.status).toBe(408);
    expect(JSON.parse(res!.body)).toEqual({ error: { message: expect.any(String), type: 'invalid_request_error', param: null, code: 'request_timeout' } });
    expect((await usageRecordOf(g, 'slow-body-openai'))?.status).toBe(408);
  });

  it('cuts a multipart edit whose body trickles in the same way', async () => {
    const g = await gateway({ REQUEST_TIMEOUT_MS: '300' });
    const socket = await socketTo(g);
    const answer = readAnswer(socket);
    trickle(socket, '/v1/edit', {
      authorization: `Bearer ${CLIENT_KEY}`,
      'x-request-id': 'slow-body-edit',
      'content-type': 'multipart/form-data; boundary=XyZ',
    });
    const res = await answer;
    expect(res?.status).toBe(408);
    expect(JSON.parse(res!.body).error.code).toBe('request_timeout');
    expect((await usageRecordOf(g, 'slow-body-edit'))?.error_code).toBe('request_timeout');
  });

  it('headers that never end are cut with 408 too, in the JSON shape', async () => {
    const g = await gateway({ REQUEST_TIMEOUT_MS: '60000', HEADERS_TIMEOUT_MS: '200' });
    const socket = await socketTo(g);
    const answer = readAnswer(socket);
    socket.write('GET /healthz HTTP/1.1\r\nhost: gateway.test\r\nx-slow: ');
    const res = await answer;
    expect(res?.status).toBe(408);
    expect(JSON.parse(res!.body).error.code).toBe('request_timeout');
    expect(res!.headers['x-content-type-options']).toBe('nosniff');
  });
});

describe('an answer given before the body is in', () => {
  it('closes the connection after it: one request, one answer (no late 408)', async () => {
    const g = await gateway({ REQUEST_TIMEOUT_MS: '300', HEADERS_TIMEOUT_MS: '200' });
    const socket = await socketTo(g);
    socket.on('error', () => {});
    const answer = readAnswer(socket);
    socket.write('POST /v1/generate HTTP/1.1\r\nhost: gateway.test\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"model":"');
    const res = await answer;
    expect(res?.status).toBe(401);
    expect(res!.headers.connection).toBe('close');
    // Whatever else comes before the socket closes is a second answer.
    let more = '';
    socket.on('data', (chunk: Buffer) => (more += chunk.toString('latin1')));
    await closed(socket);
    expect(more).toBe('');
  }, 20_000);
});

describe('a late body whose reader is not attached yet (authentication still running)', () => {
  const config = loadConfig({ REQUEST_TIMEOUT_MS: '300' });
  const fakeReply = () => {
    const headers: Record<string, string> = {};
    return { headers, header: (name: string, value: string) => (headers[name] = value) };
  };

  it('fails the reader that attaches later with request_timeout, once, and closes the connection after the answer', async () => {
    const raw = new PassThrough();
    const reply = fakeReply();
    timeOutBody({ raw } as any, reply as any, config);
    expect(reply.headers.connection).toBe('close');
    const errors: unknown[] = [];
    raw.on('error', (err) => errors.push(err));
    raw.on('error', (err) => errors.push(err));
    await new Promise((r) => setImmediate(r));
    expect(errors).toHaveLength(2); // one emit, both listeners
    expect(errors[0]).toMatchObject({ code: 'request_timeout', status: 408 });
  });

  it('fails a reader already attached at once', () => {
    const raw = new PassThrough();
    const errors: unknown[] = [];
    raw.on('error', (err) => errors.push(err));
    timeOutBody({ raw } as any, fakeReply() as any, config);
    expect(errors).toEqual([expect.objectContaining({ code: 'request_timeout' })]);
  });
});

describe('idle connections (CONNECTION_TIMEOUT_MS, KEEP_ALIVE_TIMEOUT_MS)', () => {
  it('closes a connection that sends nothing', async () => {
    const g = await gateway({ CONNECTION_TIMEOUT_MS: '200', REQUEST_TIMEOUT_MS: '60000', HEADERS_TIMEOUT_MS: '60000' });
    const socket = await socketTo(g);
    const answer = readAnswer(socket);
    await closed(socket);
    expect(await answer).toBeUndefined();
  });

  it('closes silent connections after HEADERS_TIMEOUT_MS, so they cannot hold every place under MAX_CONNECTIONS', async () => {
    // A socket that never sends a byte carries no request: it is closed without an answer (Node's
    // own timers do not reliably cut it; the gateway's timer does).
    const g = await gateway({ MAX_CONNECTIONS: '3', HEADERS_TIMEOUT_MS: '200', CONNECTION_TIMEOUT_MS: '60000', REQUEST_TIMEOUT_MS: '60000' });
    const silent = [await socketTo(g), await socketTo(g), await socketTo(g)];
    const answers = silent.map((s) => readAnswer(s));
    await Promise.all(silent.map(closed));
    for (const answer of answers) expect(await answer).toBeUndefined();
    for (let i = 0; i < 200 && g.app.connections.open > 0; i++) await new Promise((r) => setTimeout(r, 5));
    const next = await socketTo(g);
    const served = readAnswer(next);
    next.write('GET /healthz HTTP/1.1\r\nhost: gateway.test\r\n\r\n');
    expect((await served)?.status).toBe(200);
  }, 20_000);

  it('closes a kept-alive connection idle after its answer', async () => {
    const g = await gateway({ KEEP_ALIVE_TIMEOUT_MS: '200' });
    const socket = await socketTo(g);
    const answer = readAnswer(socket);
    socket.write('GET /healthz HTTP/1.1\r\nhost: gateway.test\r\n\r\n');
    const res = await answer;
    expect(res?.status).toBe(200);
    expect(res!.headers.connection).toBe('keep-alive');
    await closed(socket);
  });

  it('never cuts a request being worked on: an upstream answer slower than the timeout arrives', async () => {
    // The upstream holds every answer 4x the connection timeout; no byte crosses the socket meanwhile.
    const g = await gateway({ CONNECTION_TIMEOUT_MS: '150', KEEP_ALIVE_TIMEOUT_MS: '150' }, { latencyMs: 600 });
    const socket = await socketTo(g);
    const answer = readAnswer(socket);
    const body = JSON.stringify({ model: 'gpt-image-1', prompt: 'a slow render' });
    socket.write(`POST /v1/generate HTTP/1.1\r\nhost: gateway.test\r\nauthorization: Bearer ${CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    const res = await answer;
    expect(res?.status).toBe(200);
    expect(JSON.parse(res!.body).images).toHaveLength(1);
    // Once answered, the connection is idle between requests, and is closed in its turn.
    await closed(socket);
  });

  it('never cuts a stream whose events are further apart than the timeout', async () => {
    const g = await gateway({ CONNECTION_TIMEOUT_MS: '150', STREAM_KEEPALIVE_MS: '60000' }, { latencyMs: 600 });
    const res = await g.fetch(`${g.base}/v1/generate`, {
      method: 'POST',
      headers: { ...g.auth, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-image-1', prompt: 'a slow stream', stream: true }),
    });
    expect(res.status).toBe(200);
    const text = await res.text();
    const events = [...text.matchAll(/^event: (\w+)$/gm)].map((m) => m[1]);
    expect(events.at(-1)).toBe('succeeded');
    expect(events).toContain('image');
  });
});

describe('MAX_CONNECTIONS', () => {
  it('closes connections past the cap as they arrive, and counts them', async () => {
    const g = await gateway({ MAX_CONNECTIONS: '2' });
    await socketTo(g);
    await socketTo(g);
    for (let i = 0; i < 200 && g.app.connections.open < 2; i++) await new Promise((r) => setTimeout(r, 5));
    expect(g.app.connections.open).toBe(2);

    const third = await socketTo(g);
    third.on('error', () => {});
    const answer = readAnswer(third);
    third.write('GET /healthz HTTP/1.1\r\nhost: gateway.test\r\n\r\n');
    expect(await answer).toBeUndefined();
    expect(g.app.connections.refused).toBe(1);
    expect(await metric(g, 'gateway_connections_refused_total')).toBe(1);
    expect(await metric(g, 'gateway_open_connections')).toBe(2);

    // A place frees up: the next connection is served.
    sockets.shift()!.destroy();
    for (let i = 0; i < 200 && g.app.connections.open > 1; i++) await new Promise((r) => setTimeout(r, 5));
    const fourth = await socketTo(g);
    const served = readAnswer(fourth);
    fourth.write('GET /healthz HTTP/1.1\r\nhost: gateway.test\r\n\r\n');
    expect((await served)?.status).toBe(200);
  });
});

describe('requests Node refuses before any route', () => {
  it('malformed HTTP: 400 invalid_request as JSON', async () => {
    const g = await gateway({});
    const socket = await socketTo(g);
    const answer = readAnswer(socket);
    socket.write('THIS IS NOT HTTP\r\n\r\n');
    const res = await answer;
    expect(res?.status).toBe(400);
    expect(res!.headers['content-type']).toMatch(/^application\/json/);
    expect(res!.headers['x-content-type-options']).toBe('nosniff');
    const body = JSON.parse(res!.body);
    expect(body.error).toMatchObject({ code: 'invalid_request', request_id: res!.headers['x-request-id'] });
    await closed(socket);
  });

  it('headers over the size limit: 431 as JSON', async () => {
    const g = await gateway({});
    const socket = await socketTo(g);
    const answer = readAnswer(socket);
    socket.on('error', () => {});
    socket.write(`GET /healthz HTTP/1.1\r\nhost: gateway.test\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`);
    const res = await answer;
    expect(res?.status).toBe(431);
    expect(JSON.parse(res!.body).error).toMatchObject({ code: 'invalid_request', message: expect.stringMatching(/headers/) });
  });
});

describe('configuration', () => {
  it('refuses HEADERS_TIMEOUT_MS above REQUEST_TIMEOUT_MS, naming both', async () => {
    await expect(startListening({ REQUEST_TIMEOUT_MS: '1000', HEADERS_TIMEOUT_MS: '2000' })).rejects.toThrow(/HEADERS_TIMEOUT_MS.*REQUEST_TIMEOUT_MS/);
    await expect(startListening({ MAX_CONNECTIONS: '0' })).rejects.toThrow(/MAX_CONNECTIONS must be a positive integer/);
  });
});
