import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { ADMIN_KEY, jobWhenFinished, startHarness, usageRecordOf, type Harness } from './harness.js';
import { Redis } from 'ioredis';
import { ConfigError } from '../src/config.js';
import { freshPostgres, freshRedis, postgresProblem, redisProblem } from './services.js';

const admin = { authorization: `Bearer ${ADMIN_KEY}` };

async function mint(h: Harness, policy: Record<string, unknown>): Promise<Record<string, string>> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: `t${randomBytes(3).toString('hex')}`, ...policy } });
  expect(res.statusCode).toBe(201);
  return { authorization: `Bearer ${res.json().key}` };
}

describe('limits on one gateway', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ RATE_LIMIT_RPM: '3' });
  });
  afterAll(async () => h.close());
  beforeEach(() => h.simulator.reset());

  const generate = (auth: Record<string, string>, payload: Record<string, unknown>) =>
    h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload });

  it('a key at its rpm is refused with 429, Retry-After and a message naming the limit, before any upstream call', async () => {
    const key = await mint(h, { rpm: 2 });
    const first = await generate(key, { model: 'gpt-image-1', prompt: 'a' });
    expect(first.headers['x-ratelimit-limit']).toBe('2');
    expect(first.headers['x-ratelimit-remaining']).toBe('1');
    await generate(key, { model: 'gpt-image-1', prompt: 'b' });
    h.simulator.reset();
    const third = await generate(key, { model: 'gpt-image-1', prompt: 'c' });
    expect(third.statusCode).toBe(429);
    expect(third.json().error.code).toBe('rate_limited');
    expect(third.json().error.message).toMatch(/rpm limit/);
    expect(Number(third.headers['retry-after'])).toBeGreaterThan(0);
    expect(Number(third.headers['retry-after'])).toBeLessThanOrEqual(60);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('keys without their own rpm get RATE_LIMIT_RPM', async () => {
    const key = await mint(h, {});
    const codes = [];
    for (let i = 0; i < 4; i++) codes.push((await generate(key, { model: 'gpt-image-1', prompt: `rpm ${i}` })).statusCode);
    expect(codes).toEqual([200, 200, 200, 429]);
  });

  it('one key’s limit does not touch another key', async () => {
    const a = await mint(h, { rpm: 1 });
    const b = await mint(h, { rpm: 1 });
    expect((await generate(a, { model: 'gpt-image-1', prompt: 'a1' })).statusCode).toBe(200);
    expect((await generate(a, { model: 'gpt-image-1', prompt: 'a2' })).statusCode).toBe(429);
    expect((await generate(b, { model: 'gpt-image-1', prompt: 'b1' })).statusCode).toBe(200);
  });

  it('images_per_day counts n, refuses the request that would cross it, and says what is left', async () => {
    const key = await mint(h, { images_per_day: 3, rpm: 100 });
    const two = await generate(key, { model: 'gpt-image-1', prompt: 'x', n: 2 });
    expect(two.statusCode).toBe(200);
    expect(two.headers['x-ratelimit-images-remaining']).toBe('1');
    h.simulator.reset();
    const over = await generate(key, { model: 'gpt-image-1', prompt: 'x', n: 2 });
    expect(over.statusCode).toBe(429);
    expect(over.json().error.message).toMatch(/images_per_day/);
    expect(Number(over.headers['retry-after'])).toBeGreaterThan(0);
    expect(Number(over.headers['retry-after'])).toBeLessThanOrEqual(86_400);
    expect(h.simulator.received).toHaveLength(0);
    expect((await generate(key, { model: 'gpt-image-1', prompt: 'x', n: 1 })).statusCode).toBe(200);
    expect((await generate(key, { model: 'gpt-image-1', prompt: 'x', n: 1 })).statusCode).toBe(429);
  });

  it('an images_per_day refusal carries the images headers, as every answer does', async () => {
    const key = await mint(h, { images_per_day: 3, rpm: 100 });
    expect((await generate(key, { model: 'gpt-image-1', prompt: 'x', n: 2 })).statusCode).toBe(200);
    const over = await generate(key, { model: 'gpt-image-1', prompt: 'x', n: 2 });
    expect(over.statusCode).toBe(429);
    expect(over.headers['x-ratelimit-images-limit']).toBe('3');
    expect(over.headers['x-ratelimit-images-remaining']).toBe('1');
  });

  it('a monthly_budget_usd refusal carries the budget headers, and the images headers without the refused request', async () => {
    // Ideogram 3.0 Turbo: $0.03 an image.
    const key = await mint(h, { monthly_budget_usd: 0.1, images_per_day: 10, rpm: 100 });
    const body = { model: 'ideogram-v3', prompt: 'x', n: 3, options: { rendering_speed: 'TURBO' } };
    expect((await generate(key, body)).statusCode).toBe(200);
    const over = await generate(key, { ...body, n: 2 });
    expect(over.statusCode).toBe(429);
    expect(over.json().error.message).toMatch(/monthly_budget_usd/);
    expect(over.headers['x-ratelimit-budget-limit-usd']).toBe('0.1');
    expect(Number(over.headers['x-ratelimit-budget-remaining-usd'])).toBeCloseTo(0.01, 6);
    expect(over.headers['x-ratelimit-images-limit']).toBe('10');
    expect(over.headers['x-ratelimit-images-remaining']).toBe('7');
  });

  it('the usage record of an rpm refusal names the model its JSON body asked for', async () => {
    const key = await mint(h, { rpm: 1 });
    expect((await generate(key, { model: 'gpt-image-1', prompt: 'a' })).statusCode).toBe(200);
    const refused = await generate(key, { model: 'gpt-image-1', prompt: 'b' });
    expect(refused.statusCode).toBe(429);
    const record = await usageRecordOf(h, String(refused.headers['x-request-id']));
    expect(record).toMatchObject({ status: 429, model: 'gpt-image-1', operation: 'generate' });
  });

  it('images_per_day starts again at midnight UTC', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      vi.setSystemTime(new Date('2031-03-31T23:59:58.500Z'));
      const key = await mint(h, { images_per_day: 1, rpm: 100 });
      expect((await generate(key, { model: 'gpt-image-1', prompt: 'x' })).statusCode).toBe(200);
      const over = await generate(key, { model: 'gpt-image-1', prompt: 'x' });
      expect(over.statusCode).toBe(429);
      expect(Number(over.headers['retry-after'])).toBeLessThanOrEqual(2);
      // A new day, and a new month.
      vi.setSystemTime(new Date('2031-04-01T00:00:00.500Z'));
      const next = await generate(key, { model: 'gpt-image-1', prompt: 'x' });
      expect(next.statusCode).toBe(200);
      expect(next.headers['x-ratelimit-images-remaining']).toBe('0');
      expect((await generate(key, { model: 'gpt-image-1', prompt: 'x' })).statusCode).toBe(429);
    } finally {
      vi.useRealTimers();
    }
  });

  it('images of a request that failed upstream are given back', async () => {
    const key = await mint(h, { images_per_day: 2, rpm: 100 });
    h.simulator.failNext('http500');
    expect((await generate(key, { model: 'gpt-image-1', prompt: 'x', n: 2 })).statusCode).toBe(502);
    expect((await generate(key, { model: 'gpt-image-1', prompt: 'x', n: 2 })).statusCode).toBe(200);
  });

  it('an answer’s limit headers tell the settled figures: a failure shows what it reserved given back, a success what it really cost', async () => {
    const key = await mint(h, { images_per_day: 5, monthly_budget_usd: 1, rpm: 100 });
    const body = { model: 'gpt-image-1', prompt: 'x', n: 2, quality: 'low' };
    for (const fault of ['http500', 'moderated'] as const) {
      h.simulator.failNext(fault);
      const failed = await generate(key, body);
      expect(failed.statusCode, fault).toBe(fault === 'http500' ? 502 : 422);
      expect(failed.headers['x-ratelimit-images-remaining'], fault).toBe('5');
      expect(failed.headers['x-ratelimit-budget-remaining-usd'], fault).toBe('1');
    }
    const ok = await generate(key, body);
    expect(ok.statusCode).toBe(200);
    expect(ok.headers['x-ratelimit-images-remaining']).toBe('3');
    // Token-priced: it reserved the most 2 low images may cost, and settled to what the reply's tokens cost.
    const cost = ok.json().usage.estimated_cost_usd as number;
    expect(cost).toBeLessThan((2 * 408 * 40 + 5) / 1e6);
    expect(Number(ok.headers['x-ratelimit-budget-remaining-usd'])).toBeCloseTo(1 - cost, 6);
  });

  it('a browser token’s images left, on a failed answer, do not count the images it gave back', async () => {
    const key = await mint(h, { rpm: 100 });
    const minted = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: key, payload: { max_images: 3 } });
    expect(minted.statusCode, minted.body).toBe(201);
    const token = { authorization: `Bearer ${minted.json().token}` };
    h.simulator.failNext('http500');
    const failed = await generate(token, { model: 'gpt-image-1', prompt: 'x', n: 2 });
    expect(failed.statusCode).toBe(502);
    expect(failed.headers['x-ratelimit-token-images-remaining']).toBe('3');
    const ok = await generate(token, { model: 'gpt-image-1', prompt: 'x', n: 2 });
    expect(ok.headers['x-ratelimit-token-images-remaining']).toBe('1');
  });

  it('monthly_budget_usd refuses the request whose estimated price would cross it', async () => {
    // Ideogram 3.0 Turbo: $0.03 an image.
    const key = await mint(h, { monthly_budget_usd: 0.1, rpm: 100 });
    const body = { model: 'ideogram-v3', prompt: 'x', n: 3, options: { rendering_speed: 'TURBO' } };
    const ok = await generate(key, body);
    expect(ok.statusCode).toBe(200);
    expect(Number(ok.headers['x-ratelimit-budget-remaining-usd'])).toBeCloseTo(0.01, 6);
    h.simulator.reset();
    const over = await generate(key, { ...body, n: 1 });
    expect(over.statusCode).toBe(429);
    expect(over.json().error.message).toMatch(/monthly_budget_usd/);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('images_per_day counts a Seedream group (sequential_image_generation auto) as the max_images it may make, 15 when not given', async () => {
    const key = await mint(h, { images_per_day: 5, rpm: 100 });
    const group = (options: Record<string, unknown>) =>
      generate(key, { model: 'doubao-seedream-4-0', prompt: 'a comic strip', options: { sequential_image_generation: 'auto', ...options } });
    // Without max_images upstream may make 15: refused before any upstream call.
    const unbounded = await group({});
    expect(unbounded.statusCode).toBe(429);
    expect(unbounded.json().error.message).toMatch(/images_per_day limit reached: .* asked for 15/);
    // The refusal names the field that set the count: here sequential_image_generation itself ("auto", up to 15).
    expect(unbounded.json().error.details).toEqual([
      {
        field: 'options.sequential_image_generation',
        message: 'over the images_per_day limit; "auto" without sequential_image_generation_options.max_images may make up to 15 images',
        allowed: 5,
      },
    ]);
    const tooMany = await group({ sequential_image_generation_options: { max_images: 6 } });
    expect(tooMany.statusCode).toBe(429);
    expect(tooMany.json().error.details).toEqual([{ field: 'options.sequential_image_generation_options.max_images', message: 'over the images_per_day limit', allowed: 5 }]);
    expect(h.simulator.received).toHaveLength(0);
    // Four asked for, four made (the simulator answers a group with max_images images) and counted.
    const four = await group({ sequential_image_generation_options: { max_images: 4 } });
    expect(four.statusCode).toBe(200);
    expect(four.json().images).toHaveLength(4);
    expect(four.headers['x-ratelimit-images-remaining']).toBe('1');
    expect((await group({ sequential_image_generation_options: { max_images: 2 } })).statusCode).toBe(429);
    // "disabled" makes one image, counted as one.
    const one = await generate(key, { model: 'doubao-seedream-4-0', prompt: 'one', options: { sequential_image_generation: 'disabled', sequential_image_generation_options: { max_images: 9 } } });
    expect(one.statusCode).toBe(200);
    expect(one.headers['x-ratelimit-images-remaining']).toBe('0');
  });

  it('a browser token’s max_images counts a Seedream group as its max_images', async () => {
    const key = await mint(h, { rpm: 100 });
    const minted = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: key, payload: { max_images: 3 } });
    expect(minted.statusCode).toBe(201);
    const token = { authorization: `Bearer ${minted.json().token}` };
    const over = await generate(token, { model: 'doubao-seedream-4-0', prompt: 'x', options: { sequential_image_generation: 'auto', sequential_image_generation_options: { max_images: 4 } } });
    expect(over.statusCode).toBe(429);
    expect(over.json().error.message).toMatch(/max_images limit reached: .* asked for 4/);
    expect(over.json().error.details).toEqual([{ field: 'options.sequential_image_generation_options.max_images', message: "over the token's max_images", allowed: 3 }]);
    const unbounded = await generate(token, { model: 'doubao-seedream-4-0', prompt: 'x', options: { sequential_image_generation: 'auto' } });
    expect(unbounded.statusCode).toBe(429);
    expect(unbounded.json().error.details[0]).toMatchObject({ field: 'options.sequential_image_generation', allowed: 3 });
    // n still names n.
    const plain = await generate(token, { model: 'gpt-image-1', prompt: 'x', n: 4 });
    expect(plain.statusCode).toBe(429);
    expect(plain.json().error.details[0]).toMatchObject({ field: 'n', allowed: 3 });
    expect(h.simulator.received).toHaveLength(0);
  });

  it('a model outside the key’s allow-list is 403 forbidden with no upstream call', async () => {
    const key = await mint(h, { models: ['imagen-*'], rpm: 100 });
    const res = await generate(key, { model: 'gpt-image-1', prompt: 'x' });
    expect(res.statusCode).toBe(403);
    expect(res.json().error.details[0].allowed).toEqual(['imagen-*']);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('without Redis, readiness says limits are counted in memory', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/readyz' });
    expect(res.json().checks.limits).toBe('memory');
  });
});

describe('a Redis that is not there', () => {
  it('leaves the gateway serving with local limits, saying so in readiness and logs', async () => {
    const h = await startHarness({ REDIS_URL: 'redis://127.0.0.1:1', RATE_LIMIT_RPM: '2' });
    try {
      const codes = [];
      for (let i = 0; i < 3; i++) {
        codes.push((await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: `local ${i}` } })).statusCode);
      }
      expect(codes).toEqual([200, 200, 429]);
      expect((await h.app.inject({ method: 'GET', url: '/readyz' })).json().checks.limits).toBe('memory (redis unavailable)');
      expect(h.logs.some((l) => /limits are (now )?counted in this replica only/.test(l))).toBe(true);
    } finally {
      await h.close();
    }
  });

  it('is one warning, at start, naming REDIS_URL without its password and the reason, with no stack', async () => {
    const h = await startHarness({ REDIS_URL: 'redis://gw:s3cret@127.0.0.1:1/2' });
    try {
      // Requests that count against the limits, and an authentication that fails: nothing more to say.
      for (let i = 0; i < 2; i++) await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: `local ${i}` } });
      await h.app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: 'Bearer gk-not-a-key-0123456789abcdef' } });
      const warnings = h.logs.map((l) => JSON.parse(l)).filter((l) => l.level >= 40 && /redis/i.test(JSON.stringify(l)));
      expect(warnings.map((w) => w.msg)).toEqual([
        expect.stringMatching(/^REDIS_URL redis:\/\/gw@127\.0\.0\.1:1\/2 cannot be reached \(connect ECONNREFUSED 127\.0\.0\.1:1\): limits are counted in this replica only until it answers$/),
      ]);
      expect(warnings[0].err).toBeUndefined();
      expect(h.logs.join('\n')).not.toContain('s3cret');
    } finally {
      await h.close();
    }
  });

  it('never shows a password given in the query, as ioredis also reads it', async () => {
    const h = await startHarness({ REDIS_URL: 'redis://127.0.0.1:1/2?password=q-s3cret' });
    try {
      await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'local' } });
      expect(h.logs.some((l) => l.includes('REDIS_URL redis://127.0.0.1:1/2 cannot be reached'))).toBe(true);
      expect(h.logs.join('\n')).not.toContain('q-s3cret');
    } finally {
      await h.close();
    }
  });
});

describe.skipIf(redisProblem !== undefined)('the Redis database REDIS_URL names (skipped when Redis is unreachable and REQUIRE_SERVICES is unset)', () => {
  // Database 11: no other test uses it (they all count in database 0, with keys of their own).
  const DB = 11;
  const team = `db${randomBytes(4).toString('hex')}`;
  const key = `gk-${team}-0123456789abcdef`;
  const counter = `gw:limit:rpm:${team}`;
  /** A connection to database `db` of the test Redis. */
  const database = (db: number) => {
    const url = new URL(freshRedis().url);
    url.pathname = `/${db}`;
    return new Redis(url.toString(), { lazyConnect: true });
  };
  const inDatabase = async (db: number, name: string) => {
    const redis = database(db);
    try {
      await redis.connect();
      return (await redis.exists(name)) === 1;
    } finally {
      redis.disconnect();
    }
  };
  afterAll(async () => {
    for (const db of [0, DB]) {
      const redis = database(db);
      await redis.connect();
      await redis.del(counter);
      redis.disconnect();
    }
  });

  it('holds the limit counters, not database 0', async () => {
    const url = new URL(freshRedis().url);
    url.pathname = `/${DB}`;
    const h = await startHarness({ REDIS_URL: url.toString(), GATEWAY_API_KEYS: `${team}:${key}` });
    try {
      const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${key}` }, payload: { model: 'gpt-image-1', prompt: 'db' } });
      expect(res.statusCode).toBe(200);
      expect((await h.app.inject({ method: 'GET', url: '/readyz' })).json().checks.limits).toBe('redis');
    } finally {
      await h.close();
    }
    expect(await inDatabase(DB, counter)).toBe(true);
    expect(await inDatabase(0, counter)).toBe(false);
  });

  it('stops the start, naming REDIS_URL, when Redis has no such database, and counts nothing in database 0', async () => {
    // The first database number past the server's "databases" setting (16 unless configured).
    const probe = database(0);
    await probe.connect();
    const [, count] = (await probe.config('GET', 'databases')) as [string, string];
    probe.disconnect();
    const url = new URL(freshRedis().url);
    url.username = 'default';
    url.password = 'not-needed-s3cret';
    url.pathname = `/${count}`;
    const started = await startHarness({ REDIS_URL: url.toString(), GATEWAY_API_KEYS: `${team}:${key}` }).then(
      async (h) => {
        // The old way: started on database 0. A request shows where it counts.
        await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${key}` }, payload: { model: 'gpt-image-1', prompt: 'db' } });
        await h.close();
        return 'started';
      },
      (err: unknown) => err,
    );
    expect(await inDatabase(0, counter)).toBe(false);
    expect(started).toBeInstanceOf(ConfigError);
    const message = (started as Error).message;
    expect(message).toMatch(new RegExp(`^REDIS_URL redis://default@[^ ]+/${count}: Redis has no database ${count} \\(ERR DB index is out of range\\)`));
    expect(message).not.toContain('s3cret');
  });
});

describe('reads and requests that can cost money count in buckets of their own', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ RATE_LIMIT_RPM: '5' });
  });
  afterAll(async () => h.close());

  const generate = (auth: Record<string, string>, payload: Record<string, unknown>, headers: Record<string, string> = {}) =>
    h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...auth, ...headers }, payload });

  it('at rpm 5, 30 status reads of a job in a row leave the key’s next generate its rpm', async () => {
    const key = await mint(h, {});
    const accepted = await generate(key, { model: 'flux-kontext-pro', prompt: 'followed', async: true });
    expect(accepted.statusCode).toBe(202);
    const reads = [];
    for (let i = 0; i < 30; i++) reads.push(await h.app.inject({ method: 'GET', url: `/v1/jobs/${accepted.json().id}`, headers: key }));
    expect(reads.map((r) => r.statusCode)).toEqual(Array(30).fill(200));
    // Reads answer with their own bucket: 10 x the key's rpm by default.
    expect(reads[29]!.headers['x-ratelimit-limit']).toBe('50');
    expect(reads[29]!.headers['x-ratelimit-remaining']).toBe('20');
    const next = await generate(key, { model: 'gpt-image-1', prompt: 'after the reads' });
    expect(next.statusCode).toBe(200);
    expect(next.headers['x-ratelimit-limit']).toBe('5');
    expect(next.headers['x-ratelimit-remaining']).toBe('3');
    await jobWhenFinished(h, accepted.json().id, key);
  });

  it('reads past RATE_LIMIT_READ_RPM are refused with a 429 naming the read limit, and generating goes on', async () => {
    const limited = await startHarness({ RATE_LIMIT_RPM: '5', RATE_LIMIT_READ_RPM: '3' });
    try {
      const key = await mint(limited, {});
      const codes = [];
      for (let i = 0; i < 4; i++) codes.push((await limited.app.inject({ method: 'GET', url: '/v1/models', headers: key })).statusCode);
      expect(codes).toEqual([200, 200, 200, 429]);
      const refused = await limited.app.inject({ method: 'GET', url: '/v1/usage', headers: key });
      expect(refused.statusCode).toBe(429);
      expect(refused.json().error.message).toMatch(/read limit reached: .* 3 reads per minute/);
      expect(Number(refused.headers['retry-after'])).toBeGreaterThan(0);
      const generated = await limited.app.inject({ method: 'POST', url: '/v1/generate', headers: key, payload: { model: 'gpt-image-1', prompt: 'still allowed' } });
      expect(generated.statusCode).toBe(200);
      const metrics = (await limited.app.inject({ method: 'GET', url: '/metrics' })).body;
      expect(metrics).toMatch(/gateway_limit_refusals_total\{reason="read_rpm"\} 2/);
    } finally {
      await limited.close();
    }
  });

  it('an idempotent replay reserves nothing: it is answered when the key’s images_per_day is spent', async () => {
    const key = await mint(h, { images_per_day: 1 });
    const retry = { 'idempotency-key': `quota-${randomBytes(4).toString('hex')}` };
    const first = await generate(key, { model: 'gpt-image-1', prompt: 'the only one today' }, retry);
    expect(first.statusCode).toBe(200);
    const replayed = await generate(key, { model: 'gpt-image-1', prompt: 'the only one today' }, retry);
    expect(replayed.statusCode).toBe(200);
    expect(replayed.json().images[0].url).toBe(first.json().images[0].url);
    const another = await generate(key, { model: 'gpt-image-1', prompt: 'one more' });
    expect(another.statusCode).toBe(429);
    expect(another.json().error.message).toMatch(/images_per_day/);
  });

  it('an idempotent replay is a read: it is answered when the key’s rpm is spent', async () => {
    const key = await mint(h, { rpm: 1 });
    const retry = { 'idempotency-key': `replay-${randomBytes(4).toString('hex')}` };
    const first = await generate(key, { model: 'gpt-image-1', prompt: 'once' }, retry);
    expect(first.statusCode).toBe(200);
    const replayed = await generate(key, { model: 'gpt-image-1', prompt: 'once' }, retry);
    expect(replayed.statusCode).toBe(200);
    expect(replayed.headers['idempotent-replayed']).toBe('true');
    expect(replayed.json().id).toBe(first.json().id);
    const fresh = await generate(key, { model: 'gpt-image-1', prompt: 'a new one' });
    expect(fresh.statusCode).toBe(429);
    expect(fresh.json().error.message).toMatch(/rpm limit/);
  });
});

describe.skipIf(redisProblem !== undefined || postgresProblem !== undefined)('two replicas on one Redis and one PostgreSQL (skipped when either is unreachable and REQUIRE_SERVICES is unset)', () => {
  let a: Harness;
  let b: Harness;
  const team = `r${randomBytes(4).toString('hex')}`;
  const key = `gk-${team}-0123456789abcdef`;
  const auth = { authorization: `Bearer ${key}` };
  let database: Awaited<ReturnType<typeof freshPostgres>>;
  beforeAll(async () => {
    database = await freshPostgres();
    const env = { REDIS_URL: freshRedis().url, DATABASE_URL: database.url, GATEWAY_API_KEYS: `${team}:${key}`, RATE_LIMIT_RPM: '4' };
    // Keys are re-read from the database once an hour here: only Redis can carry a mint or a
    // revocation from one replica to the other within the test.
    a = await startHarness(env, {}, { keyPollIntervalMs: 3_600_000 });
    b = await startHarness(env, {}, { keyPollIntervalMs: 3_600_000 });
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await database?.drop();
  });

  it('enforce one rpm limit between them', async () => {
    const codes = [];
    for (const h of [a, b, a, b, a, b]) {
      codes.push((await h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'gpt-image-1', prompt: 'shared rpm' } })).statusCode);
    }
    expect(codes).toEqual([200, 200, 200, 200, 429, 429]);
    expect((await a.app.inject({ method: 'GET', url: '/readyz' })).json().checks.limits).toBe('redis');
  });

  it('see a key revoked on one replica refused on the other at once', async () => {
    const minted = (await a.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'shared', rpm: 100 } })).json();
    const use = { authorization: `Bearer ${minted.key}` };
    // Minting reaches the other replica through Redis, like revocation.
    let seen = 0;
    for (let i = 0; i < 250 && seen !== 200; i++) {
      seen = (await b.app.inject({ method: 'GET', url: '/v1/models', headers: use })).statusCode;
      if (seen !== 200) await new Promise((r) => setTimeout(r, 20));
    }
    expect(seen).toBe(200);
    await a.app.inject({ method: 'DELETE', url: `/v1/keys/${minted.id}`, headers: admin });
    let after = 200;
    for (let i = 0; i < 250 && after !== 401; i++) {
      after = (await b.app.inject({ method: 'GET', url: '/v1/models', headers: use })).statusCode;
      if (after !== 401) await new Promise((r) => setTimeout(r, 20));
    }
    expect(after).toBe(401);
  });
});

describe('limits settled by what really happened', () => {
  let h: Harness;
  let base: string;
  beforeAll(async () => {
    h = await startHarness({ RATE_LIMIT_RPM: '1000' }, { taskReadyAfterMs: 3_600_000 });
    await h.app.listen({ port: 0, host: '127.0.0.1' });
    base = `http://127.0.0.1:${(h.app.server.address() as { port: number }).port}`;
  });
  afterAll(async () => h.close());

  const settled = (auth: Record<string, string>, id: string) => jobWhenFinished(h, id, auth);

  it('an async job that fails gives its images back', async () => {
    const key = await mint(h, { images_per_day: 2 });
    h.simulator.failNext('http500');
    const accepted = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: key, payload: { model: 'gpt-image-1', prompt: 'x', n: 2, async: true } });
    expect((await settled(key, accepted.json().id)).status).toBe('failed');
    const next = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: key, payload: { model: 'gpt-image-1', prompt: 'y', n: 2 } });
    expect(next.statusCode).toBe(200);
  });

  it('an async job of a token-priced model counts its real cost against the budget', async () => {
    // gpt-image-1 in the simulator: about $0.00405 an image; quality low reserves about $0.0163.
    // Had each job kept its reservation, the second would be refused.
    const key = await mint(h, { monthly_budget_usd: 0.025 });
    for (let i = 0; i < 3; i++) {
      const accepted = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: key, payload: { model: 'gpt-image-1', prompt: `p${i}`, quality: 'low', async: true } });
      expect(accepted.statusCode).toBe(202);
      expect((await settled(key, accepted.json().id)).status).toBe('succeeded');
    }
    const over = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: key, payload: { model: 'gpt-image-1', prompt: 'one more', quality: 'low', async: true } });
    expect(over.statusCode).toBe(429);
    expect(over.json().error.message).toMatch(/monthly_budget_usd/);
  });

  it('a client that hangs up mid-call keeps its images counted, and the request is recorded as 499', async () => {
    const key = await mint(h, { images_per_day: 1 });
    const controller = new AbortController();
    const pending = fetch(`${base}/v1/generate`, {
      method: 'POST',
      headers: { ...key, 'content-type': 'application/json', 'x-request-id': 'hang-up' },
      body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'paid anyway' }),
      signal: controller.signal,
    }).catch((err: unknown) => err);
    for (let i = 0; i < 200 && !h.simulator.received.some((r) => r.path.startsWith('/v1/tasks/')); i++) await new Promise((r) => setTimeout(r, 10));
    controller.abort();
    await pending;
    const next = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: key, payload: { model: 'gpt-image-1', prompt: 'z' } });
    expect(next.statusCode).toBe(429);
    // The record is written once the gateway has noticed the hang-up: read until it is there.
    let rows: Array<{ status: number; error_code: string }> = [];
    for (let i = 0; i < 500 && rows.length === 0; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 10));
      await h.app.usageLog.flush();
      rows = await h.app.db.all<{ status: number; error_code: string }>("SELECT status, error_code FROM usage_records WHERE request_id = 'hang-up'");
    }
    expect(rows).toEqual([{ status: 499, error_code: 'client_closed' }]);
  });
});

describe.skipIf(redisProblem !== undefined)('an answer that waited for its job, with counters in Redis (skipped when Redis is unreachable and REQUIRE_SERVICES is unset)', () => {
  let h: Harness;
  beforeAll(async () => {
    const url = new URL(freshRedis().url);
    url.pathname = '/7';
    h = await startHarness({ REDIS_URL: url.toString(), RATE_LIMIT_RPM: '1000' });
  });
  afterAll(async () => h.close());

  // The job's reservation is settled over the network: the answer must wait for it, not race it.
  it('with an Idempotency-Key, tells its limits as its job settled them', async () => {
    for (let i = 0; i < 5; i++) {
      const key = await mint(h, { images_per_day: 5, monthly_budget_usd: 1, rpm: 100 });
      const body = { model: 'gpt-image-1', prompt: 'x', n: 2, quality: 'low' };
      h.simulator.failNext('http500');
      const failed = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...key, 'idempotency-key': `settled-failed-${i}` }, payload: body });
      expect(failed.statusCode).toBe(502);
      expect(failed.headers['x-ratelimit-images-remaining']).toBe('5');
      expect(failed.headers['x-ratelimit-budget-remaining-usd']).toBe('1');
      const ok = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...key, 'idempotency-key': `settled-ok-${i}` }, payload: body });
      expect(ok.statusCode).toBe(200);
      expect(ok.headers['x-ratelimit-images-remaining']).toBe('3');
      expect(Number(ok.headers['x-ratelimit-budget-remaining-usd'])).toBeCloseTo(1 - (ok.json().usage.estimated_cost_usd as number), 6);
    }
  });
});

describe('limits across a restart', () => {
  it('a key’s day of images continues after the gateway restarts, without Redis', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'gw-restart-'));
    const first = await startHarness({ DATA_DIR: dataDir });
    const key = await mint(first, { images_per_day: 2 });
    expect((await first.app.inject({ method: 'POST', url: '/v1/generate', headers: key, payload: { model: 'gpt-image-1', prompt: 'x', n: 2 } })).statusCode).toBe(200);
    await first.close();
    const second = await startHarness({ DATA_DIR: dataDir });
    try {
      const again = await second.app.inject({ method: 'POST', url: '/v1/generate', headers: key, payload: { model: 'gpt-image-1', prompt: 'y' } });
      expect(again.statusCode).toBe(429);
      expect(again.json().error.message).toMatch(/images_per_day/);
    } finally {
      await second.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('a Seedream group against a monthly budget', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ PRICE_OVERRIDES: '{"doubao-seedream-4-0": 0.03}' });
  });
  afterAll(async () => h.close());

  it('reserves the price of max_images images, refusing the group the budget cannot pay for', async () => {
    const key = await mint(h, { monthly_budget_usd: 0.1, rpm: 100 });
    const group = (maxImages: number) =>
      h.app.inject({
        method: 'POST',
        url: '/v1/generate',
        headers: key,
        payload: { model: 'doubao-seedream-4-0', prompt: 'x', options: { sequential_image_generation: 'auto', sequential_image_generation_options: { max_images: maxImages } } },
      });
    const over = await group(4);
    expect(over.statusCode).toBe(429);
    expect(over.json().error.message).toMatch(/monthly_budget_usd limit reached: .* would cost about \$0\.1200/);
    expect(h.simulator.received).toHaveLength(0);
    const three = await group(3);
    expect(three.statusCode).toBe(200);
    expect(three.json().images).toHaveLength(3);
    expect(Number(three.headers['x-ratelimit-budget-remaining-usd'])).toBeCloseTo(0.01, 6);
  });
});
