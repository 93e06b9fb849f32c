/**
 * Limits counted in this replica while Redis is away go back to Redis once it answers again. A TCP
 * forwarder stands between one replica and Redis; the test cuts it (every connection dropped, new
 * ones refused) and restores it. A second replica, connected to Redis directly, shows that the
 * first one's counts reach the shared counter again after the return.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Harness } from './harness.js';
import { freshRedis, redisProblem } from './services.js';

async function until(ready: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (ready()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`never: ${what}`);
}

/** A TCP forwarder to `target` that can be cut and restored. */
async function forwarder(target: URL): Promise<{ url: string; cut(): void; restore(): void; close(): Promise<void>; sent: string[] }> {
  let up = true;
  /** What clients sent through it, as text (Redis commands). */
  const sent: string[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    if (!up) {
      client.destroy();
      return;
    }
    const redis = connect(Number(target.port || 6379), target.hostname);
    const end = () => {
      client.destroy();
      redis.destroy();
      sockets.delete(client);
      sockets.delete(redis);
    };
    sockets.add(client);
    sockets.add(redis);
    client.on('error', end).on('close', end);
    redis.on('error', end).on('close', end);
    client.on('data', (chunk: Buffer) => sent.push(chunk.toString('latin1')));
    client.pipe(redis).pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `redis://127.0.0.1:${port}${target.pathname}`,
    sent,
    cut() {
      up = false;
      for (const s of sockets) s.destroy();
    },
    restore() {
      up = true;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

describe.skipIf(redisProblem !== undefined)('limits when Redis goes away and comes back (skipped when Redis is unreachable and REQUIRE_SERVICES is unset)', () => {
  let a: Harness;
  let b: Harness;
  let link: Awaited<ReturnType<typeof forwarder>>;
  const team = `rr${randomBytes(4).toString('hex')}`;
  const key = `gk-${team}-0123456789abcdefghij`;
  const auth = { authorization: `Bearer ${key}` };

  beforeAll(async () => {
    const redisUrl = new URL(freshRedis().url);
    link = await forwarder(redisUrl);
    const env = { GATEWAY_API_KEYS: `${team}:${key}`, RATE_LIMIT_RPM: '3' };
    a = await startHarness({ ...env, REDIS_URL: link.url });
    b = await startHarness({ ...env, REDIS_URL: redisUrl.toString() });
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await link?.close();
  });

  const generate = (h: Harness) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'gpt-image-1', prompt: 'counted' } });
  const limitsMode = async (h: Harness) => (await h.app.inject({ method: 'GET', url: '/readyz' })).json().checks.limits;
  const localFallbackGauge = async (h: Harness) => {
    const exposition = (await h.app.inject({ method: 'GET', url: '/metrics' })).body;
    return Number(/^gateway_limits_local_fallback (\d+)$/m.exec(exposition)?.[1]);
  };

  it('count locally while Redis is cut, and in Redis again once it is back, shared with the other replica', async () => {
    // 1 in Redis.
    expect((await generate(a)).statusCode).toBe(200);
    expect(await limitsMode(a)).toBe('redis');
    expect(await localFallbackGauge(a)).toBe(0);

    link.cut();
    await until(() => a.app.redis!.status !== 'ready', 'the replica to see Redis gone');
    // Counted in this replica only (Redis still 1).
    expect((await generate(a)).statusCode).toBe(200);
    expect(await limitsMode(a)).toBe('memory (redis unavailable)');
    expect(await localFallbackGauge(a)).toBe(1);
    expect(a.logs.filter((l) => /REDIS_URL redis:\/\/127\.0\.0\.1:\d+\S* is unavailable \(.+\): limits are now counted in this replica only/.test(l))).toHaveLength(1);

    link.sent.length = 0;
    link.restore();
    await until(() => a.app.redis!.status === 'ready', 'the replica to reconnect');
    // Its subscriptions (job events, key changes) are made again on the new connections.
    await until(() => link.sent.join('').includes('gw:job-events') && link.sent.join('').includes('gw:client-keys:changed'), 'the subscriptions made again');
    expect(link.sent.join('')).toMatch(/subscribe/i);
    // Back in Redis: 2.
    expect((await generate(a)).statusCode).toBe(200);
    expect(await limitsMode(a)).toBe('redis');
    expect(await localFallbackGauge(a)).toBe(0);
    expect(a.logs.filter((l) => /REDIS_URL redis:\/\/127\.0\.0\.1:\d+\S* answers again: limits are shared between replicas again/.test(l))).toHaveLength(1);

    // The other replica counts on the same Redis counter: 3 is the limit, the 4th is refused. Had
    // the first replica gone on counting locally, Redis would hold 1 and both of these would pass.
    expect((await generate(b)).statusCode).toBe(200);
    const refused = await generate(b);
    expect(refused.statusCode).toBe(429);
    expect(refused.json().error.message).toMatch(/rpm limit/);
  });
});
