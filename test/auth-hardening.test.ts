import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addressGroup } from '../src/auth/auth-failures.js';
import { CLIENT_KEY, jobWhenFinished, startHarness, type Harness } from './harness.js';
import { freshRedis, redisProblem } from './services.js';

const WRONG = { authorization: 'Bearer gk-wrong-key-0123456789abcdefgh' };
const RIGHT = { authorization: `Bearer ${CLIENT_KEY}` };

/** An address no other run of this file uses (the Redis counters outlive a run by their minute). */
const freshAddress = () => `2001:db8:${randomBytes(2).toString('hex')}:${randomBytes(2).toString('hex')}::${randomBytes(2).toString('hex')}`;

const models = (h: Harness, remoteAddress: string, headers: Record<string, string>, extra: Record<string, string> = {}) =>
  h.app.inject({ method: 'GET', url: '/v1/models', remoteAddress, headers: { ...headers, ...extra } });

const logLines = (h: Harness) => h.logs.map((line) => JSON.parse(line) as Record<string, unknown>);

describe('failed authentications are limited per client address', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());

  it('answers the 21st wrong key in a minute 429 with Retry-After, and then even the right key, before looking at it', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 21; i++) statuses.push((await models(h, '198.51.100.7', WRONG)).statusCode);
    expect(statuses).toEqual([...Array<number>(20).fill(401), 429]);

    const refused = await models(h, '198.51.100.7', WRONG);
    expect(refused.statusCode).toBe(429);
    expect(refused.json().error).toMatchObject({ code: 'rate_limited', message: expect.stringMatching(/failed authentications/) });
    const retryAfter = Number(refused.headers['retry-after']);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);

    // A right guess from the same address is refused like a wrong one: the guesser learns nothing.
    expect((await models(h, '198.51.100.7', RIGHT)).statusCode).toBe(429);
    // Another address with the right key is not affected.
    expect((await models(h, '198.51.100.8', RIGHT)).statusCode).toBe(200);
  });

  it('counts a missing key as no guess', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 25; i++) statuses.push((await models(h, '198.51.100.20', {})).statusCode);
    expect(new Set(statuses)).toEqual(new Set([401]));
    expect((await models(h, '198.51.100.20', RIGHT)).statusCode).toBe(200);
  });

  it('writes the client address on the 401 and 429 log lines, never the key', async () => {
    const address = '198.51.100.33';
    const res = await models(h, address, WRONG);
    expect(res.statusCode).toBe(401);
    const lines = logLines(h).filter((l) => l.reqId === res.headers['x-request-id']);
    const refusal = lines.find((l) => l.code === 'unauthorized');
    const completed = lines.find((l) => l.msg === 'request completed');
    expect(refusal).toMatchObject({ client_address: address });
    expect(completed).toMatchObject({ status: 401, client_address: address });

    for (let i = 0; i < 20; i++) await models(h, address, WRONG);
    const throttled = await models(h, address, WRONG);
    expect(throttled.statusCode).toBe(429);
    const throttledLines = logLines(h).filter((l) => l.reqId === throttled.headers['x-request-id']);
    expect(throttledLines.find((l) => l.code === 'rate_limited')).toMatchObject({ client_address: address });
    expect(h.logs.join('\n')).not.toContain('gk-wrong-key-0123456789abcdefgh');
  });

  it('groups IPv6 addresses by their /64', async () => {
    expect(addressGroup('2001:db8:1:2::1')).toBe('2001:db8:1:2::/64');
    expect(addressGroup('2001:0db8:0001:0002:aaaa:bbbb:cccc:dddd')).toBe('2001:db8:1:2::/64');
    expect(addressGroup('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(addressGroup('192.0.2.1')).toBe('192.0.2.1');
    expect(addressGroup('::1')).toBe('0:0:0:0::/64');

    for (let i = 0; i < 20; i++) expect((await models(h, `2001:db8:77:1::${(i + 1).toString(16)}`, WRONG)).statusCode).toBe(401);
    // Another address of the same /64 is the same client.
    expect((await models(h, '2001:db8:77:1::ffff', WRONG)).statusCode).toBe(429);
    expect((await models(h, '2001:db8:77:1:abcd::1', RIGHT)).statusCode).toBe(429);
    // The next /64 is another.
    expect((await models(h, '2001:db8:77:2::1', RIGHT)).statusCode).toBe(200);
  });
});

describe('AUTH_FAILURES_PER_MINUTE and TRUST_PROXY', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ AUTH_FAILURES_PER_MINUTE: '3', TRUST_PROXY: '1' });
  });
  afterAll(async () => h.close());

  it('counts the address the trusted proxy saw, not the addresses a client wrote before it', async () => {
    const statuses: number[] = [];
    // Each request claims another origin address; one trusted hop reads only the last entry, the proxy's view.
    for (let i = 0; i < 4; i++) statuses.push((await models(h, '127.0.0.1', WRONG, { 'x-forwarded-for': `10.9.9.${i}, 203.0.113.50` })).statusCode);
    expect(statuses).toEqual([401, 401, 401, 429]);
    expect((await models(h, '127.0.0.1', RIGHT, { 'x-forwarded-for': '203.0.113.51' })).statusCode).toBe(200);
    const completed = logLines(h).filter((l) => l.msg === 'request completed' && l.status === 401);
    expect(completed.map((l) => l.client_address)).toEqual(['203.0.113.50', '203.0.113.50', '203.0.113.50']);
  });
});

describe.skipIf(redisProblem !== undefined)('failed authentications shared through Redis (skipped when Redis is unreachable and REQUIRE_SERVICES is unset)', () => {
  let a: Harness;
  let b: Harness;
  beforeAll(async () => {
    const env = { REDIS_URL: freshRedis().url, AUTH_FAILURES_PER_MINUTE: '4' };
    a = await startHarness(env);
    b = await startHarness(env);
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
  });

  it('failures on one replica count on the other', async () => {
    const address = freshAddress();
    const statuses: number[] = [];
    for (const h of [a, b, a, b, a, b]) statuses.push((await models(h, address, WRONG)).statusCode);
    expect(statuses).toEqual([401, 401, 401, 401, 429, 429]);
    // Neither replica looks at a key from that address any more; another address is served.
    expect((await models(a, address, RIGHT)).statusCode).toBe(429);
    expect((await models(b, address, RIGHT)).statusCode).toBe(429);
    expect((await models(b, freshAddress(), RIGHT)).statusCode).toBe(200);
  });
});

describe('job rows never keep a client-supplied host', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());

  it('keeps image paths in the row and gives each reader its own origin', async () => {
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { ...RIGHT, host: 'evil.example' },
      payload: { model: 'gpt-image-1', prompt: 'a deer', async: true },
    });
    expect(res.statusCode).toBe(202);
    const id = res.json().id as string;
    const job = await jobWhenFinished(h, id, { ...RIGHT, host: 'gateway.example' });
    expect(job.status).toBe('succeeded');
    expect(job.result.images[0].url).toMatch(/^http:\/\/gateway\.example\/v1\/images\/img_/);

    const row = await h.app.db.get<Record<string, unknown>>('SELECT * FROM jobs WHERE id = $1', [id]);
    expect(JSON.stringify(row)).not.toContain('evil.example');
    expect(row!.public_base_url).toBe('');

    // The stored URL still downloads.
    const url = new URL(job.result.images[0].url);
    expect((await h.app.inject({ method: 'GET', url: url.pathname + url.search })).statusCode).toBe(200);
  });

  it('answers a synchronous request that ran as a job with its own origin', async () => {
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { ...RIGHT, host: 'evil.example', 'idempotency-key': `k-${randomBytes(4).toString('hex')}` },
      payload: { model: 'gpt-image-1', prompt: 'a deer at dusk' },
    });
    expect(res.statusCode).toBe(200);
    expect(res.json().images[0].url).toMatch(/^http:\/\/evil\.example\/v1\/images\/img_/);
    const rows = await h.app.db.all<Record<string, unknown>>('SELECT * FROM jobs');
    expect(rows.length).toBeGreaterThan(0);
    expect(JSON.stringify(rows)).not.toContain('evil.example');
  });
});

describe('a key sent without its scheme', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());

  it('is a 401 saying the header needs "Bearer <key>", never echoing what was sent; with no header at all, the key is asked for', async () => {
    for (const value of [CLIENT_KEY, `Basic ${CLIENT_KEY}`, `Bearer`]) {
      const res = await models(h, '198.51.100.40', { authorization: value });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.message).toMatch(/^the Authorization header must be "Bearer <key>"/);
      expect(res.body).not.toContain(CLIENT_KEY);
    }
    const none = await models(h, '198.51.100.40', {});
    expect(none.statusCode).toBe(401);
    expect(none.json().error.message).toBe('a client key is required: Authorization: Bearer <key> or x-api-key: <key>');
  });
});
