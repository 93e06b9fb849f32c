/**
 * DNS rebinding, end to end. The egress policy checks a URL's host before a request, then every
 * connection looks the name up again (connect.lookup on the Agent) and refuses a non-public answer.
 * Here a resolver given to the app (AppOptions.resolveHost) makes `localhost` resolve to a public
 * address at the check and to loopback at connect, as a rebinding name does. Each of the three
 * Agents that reach URLs the gateway does not control (input images of edits, result images named
 * by upstream, job callbacks) must then refuse to connect: the loopback server gets no request.
 *
 * `localhost` is the name because the system resolver answers it with loopback: an Agent without
 * its connect.lookup would connect there, and the server here would see the request.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { systemResolver, type HostResolver } from '../src/images/image-fetch.js';
import { startUpstreamSimulator, type UpstreamSimulator } from '../src/simulator/upstream-simulator.js';
import { makePng } from './harness.js';

const UPSTREAM_KEY = 'sk-test-rebinding-0123456789abcdef';
const CLIENT_KEY = 'gk-test-rebinding-0123456789abcdef';
const auth = { authorization: `Bearer ${CLIENT_KEY}` };
/** A public address (TEST-NET is not: this is an ordinary unicast one), never connected to. */
const PUBLIC_ADDRESS = '93.184.215.14';

/** What the rebinding name answered, in order: the check's answers and the connections'. */
const lookups: Array<'check' | 'connect'> = [];
/** When set, `localhost` is public at the check (the first `checksPublic` checks) and loopback at connect. */
let checksPublic = Infinity;
const rebinding: HostResolver = async (hostname, phase) => {
  if (hostname === 'unresolvable.test') throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' });
  if (hostname !== 'localhost') return systemResolver(hostname, phase);
  lookups.push(phase);
  const checks = lookups.filter((p) => p === 'check').length;
  return phase === 'check' && checks <= checksPublic ? [{ address: PUBLIC_ADDRESS, family: 4 }] : [{ address: '127.0.0.1', family: 4 }];
};

/** The loopback server the rebinding name leads to; it records every request that reaches it. */
let target: Server;
let port: number;
const hits: Array<{ method: string; url: string }> = [];
let png: Buffer;

const dataDirs: string[] = [];
const apps: FastifyInstance[] = [];
async function startGateway(upstreamUrl: string): Promise<FastifyInstance> {
  const dataDir = mkdtempSync(join(tmpdir(), 'gw-rebind-'));
  dataDirs.push(dataDir);
  const config = loadConfig({
    AIHUBMIX_API_KEY: UPSTREAM_KEY,
    AIHUBMIX_BASE_URL: upstreamUrl,
    GATEWAY_API_KEYS: `design:${CLIENT_KEY}`,
    DATA_DIR: dataDir,
    UPSTREAM_RETRIES: '0',
    LOG_LEVEL: 'silent',
  });
  const app = await buildApp(config, { resolveHost: rebinding });
  await app.ready();
  apps.push(app);
  return app;
}

let simulator: UpstreamSimulator;
let gateway: FastifyInstance;

beforeAll(async () => {
  png = await makePng(32, 32);
  target = createServer((req: IncomingMessage, res) => {
    hits.push({ method: req.method ?? '', url: req.url ?? '' });
    req.resume();
    req.on('end', () => {
      if (req.url?.endsWith('.png')) res.writeHead(200, { 'content-type': 'image/png' }).end(png);
      else res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  // Both families: `localhost` may resolve to ::1 as well as 127.0.0.1.
  await new Promise<void>((resolve) => target.listen(0, '::', resolve));
  port = (target.address() as AddressInfo).port;
  simulator = await startUpstreamSimulator({ apiKey: UPSTREAM_KEY, taskReadyAfterMs: 30 });
  gateway = await startGateway(simulator.url);
});

afterEach(() => {
  hits.length = 0;
  lookups.length = 0;
  checksPublic = Infinity;
  simulator.reset();
});

afterAll(async () => {
  for (const app of apps) await app.close();
  await simulator?.close();
  await new Promise((resolve) => target?.close(resolve));
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
});

/** Polls the job's row until its callback was tried (the attempt runs after the job finishes). */
async function callbackStatus(app: FastifyInstance, id: string): Promise<string> {
  for (let i = 0; i < 250; i++) {
    const row = await app.db.get<{ callback_status: string | null }>('SELECT callback_status FROM jobs WHERE id = $1', [id]);
    if (row?.callback_status) return row.callback_status;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`job ${id} never tried its callback`);
}

describe('a name that resolves to a public address at the check and to loopback at connect', () => {
  it('an edit\'s image URL: the fetch is refused at connect (400 naming the field), the loopback server sees nothing', async () => {
    const res = await gateway.inject({
      method: 'POST',
      url: '/v1/edit',
      headers: auth,
      payload: { model: 'gpt-image-1', prompt: 'add a hat', image: `http://localhost:${port}/cat.png` },
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ code: 'invalid_request', details: [{ field: 'image' }] });
    expect(res.json().error.message).toMatch(/non-public address \(127\.0\.0\.1\)/);
    // The check passed it; the connection's own lookup refused it.
    expect(lookups).toEqual(['check', 'connect']);
    expect(hits).toEqual([]);
    expect(simulator.received.filter((r) => r.path === '/v1/images/edits')).toHaveLength(0);
  });

  it('a result image URL named by upstream: the download is refused at connect, the loopback server sees nothing', async () => {
    // An upstream of its own that names a result image on the rebinding name.
    const upstream = createServer((req, res) => {
      req.resume();
      req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ output: [{ url: `http://localhost:${port}/result.png` }] })));
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    try {
      const app = await startGateway(`http://127.0.0.1:${(upstream.address() as AddressInfo).port}`);
      const res = await app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'doubao-seedream-4-0', prompt: 'a lake' } });
      expect(res.statusCode).toBe(502);
      expect(res.json().error.code).toBe('upstream_error');
      expect(lookups).toEqual(['check', 'connect']);
      expect(hits).toEqual([]);
    } finally {
      await new Promise((resolve) => upstream.close(resolve));
    }
  });

  it('a job\'s callback URL: accepted at submission, refused at connect when delivered (callback_status says so), never called', async () => {
    const res = await gateway.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: auth,
      payload: { model: 'gpt-image-1', prompt: 'call me', async: true, callback_url: `http://localhost:${port}/hook` },
    });
    expect(res.statusCode).toBe(202);
    const status = await callbackStatus(gateway, res.json().id);
    expect(status).toMatch(/^refused: .*non-public address \(127\.0\.0\.1\)/);
    // Checked at submission and at delivery, both public; the connection's lookup refused it, once (not retried).
    expect(lookups).toEqual(['check', 'check', 'connect']);
    expect(hits).toEqual([]);
  });

  it('a job\'s callback URL that is public at submission and loopback by delivery: refused by the delivery check', async () => {
    checksPublic = 1;
    const res = await gateway.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: auth,
      payload: { model: 'gpt-image-1', prompt: 'call me later', async: true, callback_url: `http://localhost:${port}/hook` },
    });
    expect(res.statusCode).toBe(202);
    const status = await callbackStatus(gateway, res.json().id);
    expect(status).toMatch(/^refused: .*non-public address \(127\.0\.0\.1/);
    // Refused at the delivery check, before any connection.
    expect(lookups).toEqual(['check', 'check']);
    expect(hits).toEqual([]);
  });

  it('a callback URL whose host does not resolve at submission is a 400 naming callback_url', async () => {
    const res = await gateway.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: auth,
      payload: { model: 'gpt-image-1', prompt: 'nowhere', async: true, callback_url: 'http://unresolvable.test/hook' },
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ code: 'invalid_request', details: [{ field: 'callback_url' }] });
    expect(res.json().error.message).toMatch(/could not be resolved \(ENOTFOUND\)/);
    expect(simulator.received).toHaveLength(0);
  });
});
