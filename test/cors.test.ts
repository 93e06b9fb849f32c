/**
 * CORS for the exact origins of CORS_ORIGINS: a listed origin's preflight is answered 204 before
 * authentication and the rate limit; its requests (JSON, event streams, errors) carry the CORS
 * headers a page needs to read the answer; an unlisted origin gets none; unset, no CORS at all; a
 * bad entry stops the start; image URLs work as before in <img> tags.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { OTHER_CLIENT_KEY, startHarness, type Harness } from './harness.js';

const APP = 'https://app.example.com';
const DEV = 'http://localhost:5173';
const REQUIRED_ALLOWED = ['authorization', 'content-type', 'idempotency-key', 'x-request-id', 'x-api-key'];
const REQUIRED_EXPOSED = [
  'x-request-id',
  'retry-after',
  'x-ratelimit-limit',
  'x-ratelimit-remaining',
  'x-ratelimit-reset',
  'x-ratelimit-images-limit',
  'x-ratelimit-images-remaining',
  'x-ratelimit-budget-limit-usd',
  'x-ratelimit-budget-remaining-usd',
  'idempotent-replayed',
  // A paid_image_lost answer's: OpenAI's SDK in a browser must read it, or it resends (and pays) on its own.
  'x-should-retry',
];

const list = (value: unknown) =>
  String(value ?? '')
    .split(',')
    .map((v) => v.trim().toLowerCase())
    .filter(Boolean);
const corsHeaders = (headers: Record<string, unknown>) => Object.keys(headers).filter((name) => name.startsWith('access-control-'));

const preflight = (h: Harness, origin: string, url = '/v1/generate', method = 'POST') =>
  h.app.inject({
    method: 'OPTIONS',
    url,
    headers: { origin, 'access-control-request-method': method, 'access-control-request-headers': 'authorization,content-type,idempotency-key,x-request-id' },
  });

describe('with CORS_ORIGINS listing two origins', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ CORS_ORIGINS: ` ${APP} , ${DEV}` });
  });
  afterAll(async () => h.close());

  it('answers a listed origin’s preflight 204 without a key, with the allowed methods and headers, and no credentials', async () => {
    for (const origin of [APP, DEV]) {
      const res = await preflight(h, origin);
      expect(res.statusCode).toBe(204);
      expect(res.body).toBe('');
      expect(res.headers['access-control-allow-origin']).toBe(origin);
      expect(list(res.headers['access-control-allow-methods'])).toEqual(expect.arrayContaining(['get', 'post', 'delete']));
      expect(list(res.headers['access-control-allow-headers'])).toEqual(expect.arrayContaining(REQUIRED_ALLOWED));
      expect(res.headers['access-control-max-age']).toBe('600');
      expect(res.headers['access-control-allow-credentials']).toBeUndefined();
      expect(list(res.headers.vary)).toContain('origin');
      expect(res.headers['x-content-type-options']).toBe('nosniff');
    }
    // Other routes a page calls: the OpenAI form, a job's status and its deletion.
    expect((await preflight(h, APP, '/v1/images/generations')).statusCode).toBe(204);
    expect((await preflight(h, APP, '/v1/jobs/job_abc', 'GET')).statusCode).toBe(204);
    expect((await preflight(h, APP, '/v1/jobs/job_abc', 'DELETE')).statusCode).toBe(204);
  });

  it('a listed origin’s POST /v1/generate carries Allow-Origin and exposes the request id, limits, Retry-After and replay headers', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${OTHER_CLIENT_KEY}`, origin: DEV }, payload: { model: 'gpt-image-1', prompt: 'from a page' } });
    expect(res.statusCode).toBe(200);
    expect(res.headers['access-control-allow-origin']).toBe(DEV);
    expect(list(res.headers['access-control-expose-headers'])).toEqual(expect.arrayContaining(REQUIRED_EXPOSED));
    expect(res.headers['access-control-allow-credentials']).toBeUndefined();
    expect(list(res.headers.vary)).toContain('origin');
    expect(res.headers['x-request-id']).toBeDefined();
    // An unauthenticated call is refused as before, readable by the page.
    const refused = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { origin: APP }, payload: { model: 'gpt-image-1', prompt: 'x' } });
    expect(refused.statusCode).toBe(401);
    expect(refused.headers['access-control-allow-origin']).toBe(APP);
  });

  it('an event stream to a listed origin carries the CORS headers', async () => {
    const stream = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { authorization: `Bearer ${OTHER_CLIENT_KEY}`, origin: APP },
      payload: { model: 'gpt-image-1', prompt: 'streamed to a page', stream: true },
    });
    expect(stream.statusCode).toBe(200);
    expect(stream.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(stream.headers['access-control-allow-origin']).toBe(APP);
    expect(list(stream.headers['access-control-expose-headers'])).toContain('x-request-id');
  });

  it('a path the router refuses (it does not decode) still carries the CORS headers for a listed origin, none for another', async () => {
    const listed = await h.app.inject({ method: 'GET', url: '/v1/jobs/%zz', headers: { ...h.auth, origin: APP } });
    expect(listed.statusCode).toBe(400);
    expect(listed.headers['access-control-allow-origin']).toBe(APP);
    expect(list(listed.headers['access-control-expose-headers'])).toEqual(expect.arrayContaining(REQUIRED_EXPOSED));
    expect(list(listed.headers.vary)).toContain('origin');
    const unlisted = await h.app.inject({ method: 'GET', url: '/v1/jobs/%zz', headers: { ...h.auth, origin: 'https://evil.example.com' } });
    expect(unlisted.statusCode).toBe(400);
    expect(corsHeaders(unlisted.headers)).toEqual([]);
  });

  it('gives an unlisted origin no CORS headers, and does not answer its preflight as allowed', async () => {
    for (const origin of ['https://evil.example.com', 'http://app.example.com', 'https://app.example.com.evil.com', 'https://app.example.com:8443', 'null']) {
      const pre = await preflight(h, origin);
      // No route answers OPTIONS but the preflight's: not found, as for a path that does not exist.
      expect(pre.statusCode).toBe(404);
      expect(pre.json().error.code).toBe('not_found');
      expect(corsHeaders(pre.headers)).toEqual([]);
      const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: { ...h.auth, origin } });
      expect(res.statusCode).toBe(200);
      expect(corsHeaders(res.headers)).toEqual([]);
    }
    // A listed origin's OPTIONS without Access-Control-Request-Method is a broken preflight: 400 naming the header.
    const broken = await h.app.inject({ method: 'OPTIONS', url: '/v1/generate', headers: { origin: APP } });
    expect(broken.statusCode).toBe(400);
    expect(broken.json().error).toMatchObject({ code: 'invalid_request' });
    expect(broken.json().error.message).toContain('Access-Control-Request-Method');
    expect(corsHeaders(broken.headers)).toEqual([]);
    // An OPTIONS without Origin is no preflight either.
    const bare = await h.app.inject({ method: 'OPTIONS', url: '/v1/generate', headers: { 'access-control-request-method': 'POST' } });
    expect(bare.statusCode).toBe(404);
    expect(corsHeaders(bare.headers)).toEqual([]);
  });

  it('serves image URLs as before, with their caching headers, with or without an Origin', async () => {
    const made = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: h.auth,
      payload: { model: 'gpt-image-1', prompt: 'an image for an img tag' },
    });
    expect(made.statusCode).toBe(200);
    const url = new URL(made.json().images[0].url);
    // An <img> tag sends no Origin (no crossorigin attribute): as today.
    const plain = await h.app.inject({ method: 'GET', url: url.pathname + url.search });
    expect(plain.statusCode).toBe(200);
    expect(plain.headers['content-type']).toMatch(/^image\//);
    expect(plain.headers['cache-control']).toMatch(/^private, max-age=\d+, immutable$/);
    expect(plain.headers['x-content-type-options']).toBe('nosniff');
    expect(plain.headers['access-control-allow-origin']).toBeUndefined();
    // A page fetching it from a listed origin may read it.
    const fetched = await h.app.inject({ method: 'GET', url: url.pathname + url.search, headers: { origin: APP } });
    expect(fetched.statusCode).toBe(200);
    expect(fetched.rawPayload.equals(plain.rawPayload)).toBe(true);
    // The same caching, max-age aside: it counts down, and a second may tick between the two answers.
    const withoutAge = (value: unknown) => String(value).replace(/max-age=\d+/, 'max-age=N');
    expect(withoutAge(fetched.headers['cache-control'])).toBe(withoutAge(plain.headers['cache-control']));
    expect(fetched.headers['cache-control']).toMatch(/^private, max-age=\d+, immutable$/);
    expect(fetched.headers['access-control-allow-origin']).toBe(APP);
  });
});

describe('preflights and the rate limit', () => {
  let h: Harness;
  beforeAll(async () => {
    // One request per minute: preflights must not use it up, nor be refused by it.
    h = await startHarness({ CORS_ORIGINS: APP, RATE_LIMIT_RPM: '1', RATE_LIMIT_READ_RPM: '1' });
  });
  afterAll(async () => h.close());

  it('counts no preflight against the rate limit, and a refused request still carries the CORS headers (a page can read Retry-After)', async () => {
    for (let i = 0; i < 5; i++) expect((await preflight(h, APP)).statusCode).toBe(204);
    const first = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, origin: APP }, payload: { model: 'gpt-image-1', prompt: 'first' } });
    // The key's one request of the minute was still there after the preflights.
    expect(first.statusCode).toBe(200);
    for (let i = 0; i < 3; i++) expect((await preflight(h, APP)).statusCode).toBe(204);
    const second = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, origin: APP }, payload: { model: 'gpt-image-1', prompt: 'second' } });
    expect(second.statusCode).toBe(429);
    expect(second.headers['retry-after']).toBeDefined();
    expect(second.headers['access-control-allow-origin']).toBe(APP);
    expect(list(second.headers['access-control-expose-headers'])).toContain('retry-after');
  });
});

describe('without CORS_ORIGINS', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());

  it('sends no CORS headers: a preflight is an unauthenticated request, refused 401', async () => {
    const pre = await preflight(h, APP);
    expect(pre.statusCode).toBe(401);
    expect(corsHeaders(pre.headers)).toEqual([]);
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, origin: APP }, payload: { model: 'gpt-image-1', prompt: 'no cors' } });
    expect(res.statusCode).toBe(200);
    expect(corsHeaders(res.headers)).toEqual([]);
  });
});

describe('a bad CORS_ORIGINS', () => {
  const refusal = (value: string): string => {
    try {
      loadConfig({ CORS_ORIGINS: value });
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as Error).message;
    }
    throw new Error(`CORS_ORIGINS=${value} was accepted`);
  };

  it('stops the start with one line naming CORS_ORIGINS and the entry', () => {
    for (const [value, entry] of [
      ['*', '*'],
      [`${APP},*`, '*'],
      ['https://*.example.com', 'https://*.example.com'],
      ['app.example.com', 'app.example.com'],
      [`${APP}/`, `${APP}/`],
      [`${APP}/console`, `${APP}/console`],
      ['https://app.example.com:443', 'https://app.example.com:443'],
      ['https://App.Example.com', 'https://App.Example.com'],
      ['ftp://files.example.com', 'ftp://files.example.com'],
      ['null', 'null'],
    ] as const) {
      const message = refusal(value);
      const line = message.split('\n').find((l) => l.includes('CORS_ORIGINS'));
      expect(line, value).toBeDefined();
      expect(line).toContain(`"${entry}"`);
    }
    // The form a browser sends is suggested when there is one.
    expect(refusal(`${APP}/`)).toContain(`did you mean "${APP}"`);
    expect(refusal('https://app.example.com:443')).toContain(`did you mean "${APP}"`);
  });

  it('refuses the gateway’s start', async () => {
    await expect(startHarness({ CORS_ORIGINS: '*' })).rejects.toThrow(/CORS_ORIGINS: "\*"/);
  });

  it('accepts exact origins, with ports, and keeps them as given', () => {
    expect(loadConfig({ CORS_ORIGINS: `${APP}, ${DEV},http://127.0.0.1:3000,${APP}` }).CORS_ORIGINS).toEqual([APP, DEV, 'http://127.0.0.1:3000']);
    expect(loadConfig({}).CORS_ORIGINS).toEqual([]);
  });
});
