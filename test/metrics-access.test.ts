/**
 * /metrics is protected: with METRICS_TOKEN it needs that bearer token (401 with
 * WWW-Authenticate otherwise); with METRICS_PORT it is served on a listener of its own and not on
 * the API's; with neither it stays open on the API's port and the start says so in a warning.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { bearerMatches } from '../src/observability/metrics.js';
import { mkdtempSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runFailingStart } from './gateway-process.js';
import { startHarness, startListening, type Harness } from './harness.js';

const TOKEN = 'metrics-token-0123456789abcdef0123456789';
const WARNING = /\/metrics is open to anyone/;

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const scrape = (g: Harness, headers: Record<string, string> = {}) => g.app.inject({ method: 'GET', url: '/metrics', headers });

describe('METRICS_TOKEN', () => {
  it('/metrics without the token, or with a wrong one, is 401 with WWW-Authenticate: Bearer; with it, the metrics', async () => {
    h = await startHarness({ METRICS_TOKEN: TOKEN });
    for (const headers of [{} as Record<string, string>, { authorization: 'Bearer wrong-token-0123456789abcdef0123456789' }, { authorization: `Basic ${TOKEN}` }, { authorization: `Bearer ${TOKEN}x` }]) {
      const res = await scrape(h, headers);
      expect(res.statusCode).toBe(401);
      expect(res.headers['www-authenticate']).toMatch(/^Bearer\b/);
      expect(res.json().error.code).toBe('unauthorized');
      expect(res.body).not.toContain('gateway_http_requests_total');
      // The token is never echoed.
      expect(res.body).not.toContain(TOKEN);
    }
    const res = await scrape(h, { authorization: `Bearer ${TOKEN}` });
    expect(res.statusCode).toBe(200);
    expect(res.body).toContain('# TYPE gateway_http_requests_total counter');
    expect((await scrape(h, { authorization: `bearer ${TOKEN}` })).statusCode).toBe(200);
    expect(h.logs.some((l) => WARNING.test(l))).toBe(false);
    expect(h.logs.some((l) => l.includes(TOKEN))).toBe(false);
  });

  it('a token shorter than 32 characters stops the start, naming the variable', async () => {
    await expect(startHarness({ METRICS_TOKEN: 'short-token' })).rejects.toThrow(/METRICS_TOKEN must be at least 32 characters/);
  });

  it('compares whole tokens: a prefix, a longer value or another scheme does not match', () => {
    expect(bearerMatches(`Bearer ${TOKEN}`, TOKEN)).toBe(true);
    expect(bearerMatches(`Bearer ${TOKEN.slice(0, -1)}`, TOKEN)).toBe(false);
    expect(bearerMatches(`Bearer ${TOKEN}0`, TOKEN)).toBe(false);
    expect(bearerMatches(undefined, TOKEN)).toBe(false);
    expect(bearerMatches('Bearer ', TOKEN)).toBe(false);
    expect(bearerMatches(TOKEN, TOKEN)).toBe(false);
  });
});

describe('METRICS_PORT', () => {
  it('serves /metrics on its own listener only, and no longer on the API’s port', async () => {
    const g = await startListening({ METRICS_PORT: '0' });
    h = g;
    const address = g.app.metricsAddress!;
    expect(address.address).toBe('127.0.0.1');
    expect(address.port).not.toBe(Number(new URL(g.base).port));
    const metrics = await g.fetch(`http://127.0.0.1:${address.port}/metrics`);
    expect(metrics.status).toBe(200);
    expect(metrics.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(metrics.headers.get('x-content-type-options')).toBe('nosniff');
    expect(await metrics.text()).toContain('gateway_http_requests_total');

    // Nothing else on the metrics listener: the API is not reachable through it.
    const other = await g.fetch(`http://127.0.0.1:${address.port}/v1/models`);
    expect(other.status).toBe(404);
    expect(((await other.json()) as any).error.code).toBe('not_found');

    // And the API's port has no /metrics.
    const onApi = await g.fetch(`${g.base}/metrics`);
    expect(onApi.status).toBe(404);
    expect(g.logs.some((l) => WARNING.test(l))).toBe(false);
  });

  it('with METRICS_TOKEN too, its listener asks for the token', async () => {
    const g = await startListening({ METRICS_PORT: '0', METRICS_TOKEN: TOKEN });
    h = g;
    const url = `http://127.0.0.1:${g.app.metricsAddress!.port}/metrics`;
    const refused = await g.fetch(url);
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toMatch(/^Bearer\b/);
    expect(((await refused.json()) as any).error.code).toBe('unauthorized');
    expect((await g.fetch(url, { headers: { authorization: `Bearer ${TOKEN}` } })).status).toBe(200);
  });

  it('closes with the gateway', async () => {
    const g = await startListening({ METRICS_PORT: '0' });
    const url = `http://127.0.0.1:${g.app.metricsAddress!.port}/metrics`;
    expect((await g.fetch(url)).status).toBe(200);
    await g.close();
    await expect(fetch(url)).rejects.toThrow();
  });

  it('METRICS_PORT equal to PORT stops the start', async () => {
    await expect(startHarness({ PORT: '9464', METRICS_PORT: '9464' })).rejects.toThrow(/METRICS_PORT must differ from PORT/);
  });
});

describe('neither METRICS_TOKEN nor METRICS_PORT', () => {
  it('keeps /metrics open on the API’s port and warns once listening', async () => {
    h = await startHarness();
    expect((await scrape(h)).statusCode).toBe(200);
    // Not before the gateway listens: a start that cannot bind must not warn about a port it never served.
    expect(h.logs.some((l) => WARNING.test(l))).toBe(false);
    await h.app.listen({ port: 0, host: '127.0.0.1' });
    const warning = h.logs.map((l) => JSON.parse(l)).find((l) => WARNING.test(l.msg));
    expect(warning).toBeDefined();
    expect(warning.level).toBe(40);
    expect(warning.msg).toMatch(/METRICS_TOKEN/);
    expect(warning.msg).toMatch(/METRICS_PORT/);
  });
});

/** What `npm start` needs; warnings logged (the default of a started test gateway), so the warning would show. */
const PROCESS_ENV = {
  AIHUBMIX_API_KEY: 'sk-test-upstream-key',
  GATEWAY_API_KEYS: 'design:gk-test-design-0123456789',
  DATA_DIR: mkdtempSync(join(tmpdir(), 'gw-metrics-')),
};

describe('a start that cannot listen', () => {
  it('ends with its one line and exit code 2, and no /metrics warning after it', async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    try {
      const { port } = taken.address() as AddressInfo;
      const { code, output } = await runFailingStart({ PORT: String(port), ...PROCESS_ENV });
      expect(code, output).toBe(2);
      expect(output).toMatch(/already in use/);
      expect(output).not.toMatch(WARNING);
    } finally {
      await new Promise((r) => taken.close(r));
    }
  });
});
