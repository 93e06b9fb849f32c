/**
 * PostgreSQL that stops answering (a black hole: connections accepted, nothing forwarded either
 * way, nothing refused) or refuses connections, then comes back. PostgreSQL is reached through a
 * TCP forwarder the test switches between the three; the gateway's PostgreSQL limits are made short
 * (AppOptions.postgresTimeouts) so the test need not wait the defaults out.
 *
 * Expected: /readyz answers 503 within its 2 s deadline; a generation is refused with 503 and
 * Retry-After before anything goes upstream (its image and cost could not be kept); /metrics still
 * answers; once the network is back the pool reconnects by itself and generations work again; a
 * stop under a black hole ends in bounded time.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { ADMIN_KEY, jobWhenFinished, startHarness, usageRecordOf, type Harness } from './harness.js';
import { freshPostgres, postgresProblem } from './services.js';
import pg from 'pg';
import { DatabaseUnreachable, isUnreachable, type PostgresTimeouts } from '../src/storage/database.js';
import { isRowFault } from '../src/usage/usage-log.js';

type Mode = 'forward' | 'blackhole' | 'refuse';

/**
 * A TCP forwarder to `target`. `blackhole`: every connection, open or new, is held with nothing
 * passed either way (what it sent waits in its buffers, as over a network that drops packets until
 * it heals); `refuse`: every connection is dropped, new ones too; `forward` again: held connections
 * go on where they stopped.
 */
async function forwarder(target: URL): Promise<{ url: string; set(mode: Mode): void; accepted: () => number; close(): Promise<void> }> {
  let mode: Mode = 'forward';
  let accepted = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    accepted++;
    if (mode === 'refuse') {
      client.destroy();
      return;
    }
    const upstream = createConnection({ host: target.hostname, port: Number(target.port || 5432) });
    for (const [from, to] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      sockets.add(from);
      from.on('data', (chunk: Buffer) => to.write(chunk));
      from.on('error', () => {});
      from.on('close', () => {
        sockets.delete(from);
        to.destroy();
      });
      if (mode === 'blackhole') from.pause();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = new URL(target);
  url.host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: url.toString(),
    accepted: () => accepted,
    set(next) {
      mode = next;
      for (const socket of sockets) {
        if (next === 'refuse') socket.destroy();
        else if (next === 'blackhole') socket.pause();
        else socket.resume();
      }
    },
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

const SHORT: PostgresTimeouts = { connectMs: 1000, statementMs: 1500, queryMs: 2000, probeIntervalMs: 200, closeMs: 1000 };

async function until(check: () => Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`never: ${what}`);
}

async function timed<T>(work: Promise<T>): Promise<{ value: T; ms: number }> {
  const start = Date.now();
  const value = await work;
  return { value, ms: Date.now() - start };
}

describe('what a failure of PostgreSQL means', () => {
  const serverError = (code: string) => Object.assign(new pg.DatabaseError('refused', 0, 'error'), { code });

  it('a timeout or a lost connection is the database out of reach, and no fault of the rows (usage records are kept and retried)', () => {
    for (const err of [new Error('Query read timeout'), new Error('Connection terminated due to connection timeout'), new Error('timeout exceeded when trying to connect'), Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }), new DatabaseUnreachable(new Error('x')), serverError('57P01'), serverError('08006')]) {
      expect(isUnreachable(err)).toBe(true);
      expect(isRowFault(err)).toBe(false);
    }
  });

  it("the server's own errors are the statement's: its statement_timeout cancel, a constraint", () => {
    expect(isUnreachable(serverError('57014'))).toBe(false);
    expect(isRowFault(serverError('57014'))).toBe(false);
    expect(isUnreachable(serverError('23505'))).toBe(false);
    expect(isRowFault(serverError('23505'))).toBe(true);
  });
});

describe.skipIf(postgresProblem !== undefined)('PostgreSQL that stops answering or refuses, then comes back (skipped when unreachable and REQUIRE_SERVICES is unset)', () => {
  let h: Harness;
  let link: Awaited<ReturnType<typeof forwarder>>;
  let drop: () => Promise<void>;

  beforeAll(async () => {
    const pg = await freshPostgres();
    drop = pg.drop;
    link = await forwarder(new URL(pg.url));
    h = await startHarness({ DATABASE_URL: link.url }, {}, { postgresTimeouts: SHORT });
  });
  afterAll(async () => {
    link?.set('forward');
    await h?.close();
    await link?.close();
    await drop?.();
  });

  const generate = () => h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a lighthouse' } });
  const readyz = () => h.app.inject({ method: 'GET', url: '/readyz' });
  const ready = async () => (await readyz()).statusCode === 200;

  /** While the database is out of reach: a generation is refused before upstream, and the gateway keeps answering. */
  async function refusedWhileDown(): Promise<string> {
    const before = h.simulator.received.length;
    const { value: refused, ms } = await timed(generate());
    expect(refused.statusCode).toBe(503);
    expect(refused.headers['retry-after']).toBe('5');
    expect(refused.json().error).toMatchObject({ code: 'service_unavailable', message: expect.stringMatching(/database.*nothing was sent upstream/) });
    // Not held for the usage record's commit either.
    expect(ms).toBeLessThan(1000);
    expect(h.simulator.received.length).toBe(before);
    const { value: metrics, ms: metricsMs } = await timed(h.app.inject({ method: 'GET', url: '/metrics' }));
    expect(metrics.statusCode).toBe(200);
    expect(metricsMs).toBeLessThan(3000);
    // An operator sees it, and the records waiting for the database.
    expect(metrics.body).toMatch(/^gateway_database_unreachable 1$/m);
    expect(Number(/^gateway_usage_records_pending (\d+)$/m.exec(metrics.body)?.[1])).toBeGreaterThanOrEqual(1);
    expect((await h.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
    // Requests that need the database are a 503 to retry too, not an internal error.
    for (const [method, url] of [['GET', '/v1/usage'], ['GET', '/v1/images'], ['GET', '/v1/jobs/job_none'], ['POST', '/v1/tokens']] as const) {
      const res = await h.app.inject({ method, url, headers: h.auth, ...(method === 'POST' ? { payload: {} } : {}) });
      expect(res.statusCode, `${method} ${url}: ${res.body}`).toBe(503);
      expect(res.headers['retry-after']).toBe('5');
      expect(res.json().error).toMatchObject({ code: 'service_unavailable', message: expect.stringMatching(/database/) });
    }
    return refused.json().error.request_id as string;
  }

  it('under a black hole: /readyz 503 within its deadline, generations refused before upstream; back by itself once the network heals', async () => {
    expect((await generate()).statusCode).toBe(200);
    expect(await ready()).toBe(true);

    link.set('blackhole');
    const { value: down, ms } = await timed(readyz());
    expect(down.statusCode).toBe(503);
    expect(down.json()).toMatchObject({ status: 'unavailable', checks: { database: 'unavailable' } });
    expect(ms).toBeLessThan(3000);
    expect(h.logs.some((l) => /PostgreSQL database cannot be reached.*refused with 503/.test(l))).toBe(true);
    const refusedId = await refusedWhileDown();
    // Reads that need no database are not refused.
    expect((await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })).statusCode).toBe(200);
    // Past the query limit every connection held in the black hole has been dropped.
    await new Promise((r) => setTimeout(r, 2500));

    link.set('forward');
    await until(ready, '/readyz 200 again');
    expect((await h.app.inject({ method: 'GET', url: '/metrics' })).body).toMatch(/^gateway_database_unreachable 0$/m);
    // The pool works again (not 10 connections stuck in it): generations one after another, and at once.
    for (let i = 0; i < 3; i++) expect((await generate()).statusCode).toBe(200);
    expect((await Promise.all(Array.from({ length: 12 }, generate))).map((r) => r.statusCode)).toEqual(Array(12).fill(200));
    expect(h.logs.some((l) => /PostgreSQL database answers again/.test(l))).toBe(true);
    // The refusal's usage record, kept queued while the database was away, is written once it is back.
    const record = await usageRecordOf(h, refusedId);
    expect(record).toMatchObject({ status: 503, error_code: 'service_unavailable', images_returned: 0 });
  });

  it('a black hole is found by the gateway itself, without /readyz: a statement left unanswered has the database pinged', async () => {
    expect(await ready()).toBe(true);
    link.set('blackhole');
    const start = Date.now();
    // The key poll's statement (every second) goes unanswered; the ping it calls for, on a connection of its own, too.
    await until(async () => !h.app.db.reachable, 'the database known to be unreachable', 10_000);
    expect(Date.now() - start).toBeLessThan(5000);
    await refusedWhileDown();
    link.set('forward');
    await until(ready, '/readyz 200 again');
    expect((await generate()).statusCode).toBe(200);
  });

  it('with connections refused: the same refusal, and back once they are taken again', async () => {
    link.set('refuse');
    // Found by the gateway's own statements (the key poll's) and the ping they call for, without /readyz.
    await until(async () => !h.app.db.reachable, 'the database known to be unreachable');
    expect((await readyz()).json().checks.database).toBe('unavailable');
    await refusedWhileDown();
    link.set('forward');
    await until(ready, '/readyz 200 again');
    expect((await generate()).statusCode).toBe(200);
  });

  it('a stop under a black hole ends in bounded time, with a statement in flight', async () => {
    const pg = await freshPostgres();
    const other = await forwarder(new URL(pg.url));
    const g = await startHarness({ DATABASE_URL: other.url }, {}, { postgresTimeouts: SHORT });
    try {
      expect((await g.app.inject({ method: 'POST', url: '/v1/generate', headers: g.auth, payload: { model: 'gpt-image-1', prompt: 'kept' } })).statusCode).toBe(200);
      other.set('blackhole');
      // A read of the database, stuck in the black hole while the stop begins.
      const inFlight = g.app.inject({ method: 'GET', url: '/v1/usage?from=2000-01-01', headers: g.auth });
      await new Promise((r) => setTimeout(r, 100));
      const { ms } = await timed(g.close());
      expect(ms).toBeLessThan(8000);
      expect((await inFlight).statusCode).toBeGreaterThanOrEqual(500);
    } finally {
      other.set('forward');
      await other.close();
      await pg.drop();
    }
  });
});

/**
 * The database (or the deadline) lost after upstream answered: the image was made and paid for.
 * That is never an ordinary failure to refund or to try again on a fallback model (paying twice):
 * 503 (database) or 504 (deadline) `paid_image_lost`, its cost counted against the key's budget
 * and in its usage record.
 */
describe('a paid image lost after upstream answered', () => {
  const month = () => new Date().toISOString().slice(0, 7);
  /** A key with a budget, and what its budget has counted so far (USD). */
  async function budgetedKey(h: Harness): Promise<{ auth: Record<string, string>; spentUsd: () => Promise<number> }> {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'lost', monthly_budget_usd: 10, rpm: 100 } });
    expect(res.statusCode, res.body).toBe(201);
    const { id, key } = res.json();
    return { auth: { authorization: `Bearer ${key}` }, spentUsd: async () => (await h.app.counters.peek(`usd:${id}:${month()}`)).total / 1e6 };
  }

  describe('the database refuses the image row', () => {
    let h: Harness;
    beforeAll(async () => {
      h = await startHarness();
    });
    afterAll(async () => h.close());
    afterEach(() => vi.restoreAllMocks());

    it('answers 503 paid_image_lost with Retry-After 5, counts its cost in budget and usage, and tries no fallback model', async () => {
      const key = await budgetedKey(h);
      vi.spyOn((h.app.images as any).records, 'save').mockRejectedValue(new DatabaseUnreachable(new Error('Connection terminated unexpectedly')));
      h.simulator.reset();
      const res = await h.app.inject({
        method: 'POST',
        url: '/v1/generate',
        headers: key.auth,
        payload: { model: 'gpt-image-1', prompt: 'a lost lighthouse', quality: 'low', fallback_models: ['gpt-image-1.5'] },
      });
      expect(res.statusCode, res.body).toBe(503);
      expect(res.headers['retry-after']).toBe('5');
      expect(res.json().error).toMatchObject({ code: 'paid_image_lost', message: expect.stringMatching(/paid for.*database/) });
      // One model was sent the request, once: no fallback after a paid answer.
      expect(h.simulator.received.filter((r) => r.method === 'POST')).toHaveLength(1);
      vi.restoreAllMocks();
      const record = await usageRecordOf(h, res.headers['x-request-id'] as string);
      expect(record).toMatchObject({ status: 503, error_code: 'paid_image_lost', model: 'gpt-image-1', images_returned: 0 });
      expect(record.estimated_cost_usd).toBeGreaterThan(0);
      // Counted, not refunded: the budget holds exactly what the record says it cost.
      expect(await key.spentUsd()).toBeCloseTo(record.estimated_cost_usd, 6);
    });
  });

  describe('the result cannot be fetched: the deadline passes while it is, or its URL has expired (UPSTREAM_TIMEOUT_MS=500)', () => {
    let upstream: HttpServer;
    let h: Harness;
    let generations = 0;
    /** The result URL each generation answers with: one whose download never answers, or one that is gone. */
    let resultPath = '/never.png';
    beforeEach(() => {
      resultPath = '/never.png';
    });
    beforeAll(async () => {
      // Answers every generation at once with a URL to its result.
      upstream = createHttpServer((req, res) => {
        if (req.url === '/never.png') return;
        if (req.url === '/gone.png') return void res.writeHead(404).end('expired');
        req.resume();
        req.on('end', () => {
          generations++;
          const { port } = upstream.address() as AddressInfo;
          const body = JSON.stringify({ output: { urls: [`http://127.0.0.1:${port}${resultPath}`] }, usage: { input_tokens: 10, output_tokens: 400, total_tokens: 410 } });
          res.writeHead(200, { 'content-type': 'application/json' }).end(body);
        });
      });
      await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
      h = await startHarness({ AIHUBMIX_BASE_URL: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`, UPSTREAM_TIMEOUT_MS: '500' });
    });
    afterAll(async () => {
      await h?.close();
      upstream?.closeAllConnections();
      await new Promise((resolve) => upstream?.close(resolve));
    });

    it('is a 504 paid_image_lost that counts its cost, never a timeout that falls back (even with fallback_on_timeout)', async () => {
      const key = await budgetedKey(h);
      const res = await h.app.inject({
        method: 'POST',
        url: '/v1/generate',
        headers: key.auth,
        payload: { model: 'gpt-image-1', prompt: 'a slow lighthouse', quality: 'low', fallback_models: ['gpt-image-1.5'], fallback_on_timeout: true },
      });
      expect(res.statusCode, res.body).toBe(504);
      expect(res.json().error).toMatchObject({ code: 'paid_image_lost', message: expect.stringMatching(/paid for.*deadline/) });
      expect(generations).toBe(1);
      const record = await usageRecordOf(h, res.headers['x-request-id'] as string);
      expect(record).toMatchObject({ status: 504, error_code: 'paid_image_lost', model: 'gpt-image-1' });
      // 10 text tokens at $5 and 400 image tokens at $40 per million.
      expect(record.estimated_cost_usd).toBeCloseTo((10 * 5 + 400 * 40) / 1e6, 6);
      expect(await key.spentUsd()).toBeCloseTo(record.estimated_cost_usd, 6);
    });

    it('with an Idempotency-Key: answered 504 paid_image_lost as its job failed, and its retry replays that, sending nothing again', async () => {
      const key = await budgetedKey(h);
      const before = generations;
      const send = () =>
        h.app.inject({
          method: 'POST',
          url: '/v1/generate',
          headers: { ...key.auth, 'idempotency-key': 'lost-once' },
          payload: { model: 'gpt-image-1', prompt: 'a slow lighthouse', quality: 'low', fallback_models: ['gpt-image-1.5'], fallback_on_timeout: true },
        });
      const requestIds: string[] = [];
      for (const replayed of ['false', 'true']) {
        const res = await send();
        expect(res.statusCode, res.body).toBe(504);
        expect(res.json().error.code).toBe('paid_image_lost');
        expect(res.headers['idempotent-replayed']).toBe(replayed);
        requestIds.push(res.headers['x-request-id'] as string);
      }
      expect(generations - before).toBe(1);
      expect(await key.spentUsd()).toBeCloseTo((10 * 5 + 400 * 40) / 1e6, 6);
      // The request that waited for its job records what the budget was charged; its replay, nothing.
      const first = await usageRecordOf(h, requestIds[0]!);
      expect(first).toMatchObject({ status: 504, error_code: 'paid_image_lost' });
      expect(first.estimated_cost_usd).toBeCloseTo((10 * 5 + 400 * 40) / 1e6, 6);
      expect((await usageRecordOf(h, requestIds[1]!)).estimated_cost_usd ?? 0).toBe(0);
    });

    it('an expired result URL: still the 502 it was, but its cost counted, no fallback, and a retry under its Idempotency-Key replays it', async () => {
      resultPath = '/gone.png';
      const key = await budgetedKey(h);
      const before = generations;
      const body = { model: 'gpt-image-1', prompt: 'an expired lighthouse', quality: 'low', fallback_models: ['gpt-image-1.5'] };
      const direct = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: key.auth, payload: body });
      expect(direct.statusCode, direct.body).toBe(502);
      expect(direct.json().error.code).toBe('upstream_error');
      // Paid for: a client library must not send it again on its own (OpenAI's SDKs retry any 5xx).
      expect(direct.headers['x-should-retry']).toBe('false');
      expect(generations - before).toBe(1);
      const record = await usageRecordOf(h, direct.headers['x-request-id'] as string);
      expect(record.estimated_cost_usd).toBeCloseTo((10 * 5 + 400 * 40) / 1e6, 6);
      expect(await key.spentUsd()).toBeCloseTo(record.estimated_cost_usd, 6);
      // As a job: paid for, so its Idempotency-Key is kept and a retry replays the failure (the
      // download's 404 is not upstream refusing the request unpaid).
      for (const replayed of ['false', 'true']) {
        const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...key.auth, 'idempotency-key': 'expired-once' }, payload: body });
        expect(res.statusCode, res.body).toBe(502);
        expect(res.headers['idempotent-replayed']).toBe(replayed);
        // Told as the direct answer is: its job's failure was paid for.
        expect(res.headers['x-should-retry']).toBe('false');
        // The request that started the job records what it cost, as the direct one did.
        if (replayed === 'false') expect((await usageRecordOf(h, res.headers['x-request-id'] as string)).estimated_cost_usd).toBeCloseTo((10 * 5 + 400 * 40) / 1e6, 6);
      }
      expect(generations - before).toBe(2);
      expect(await key.spentUsd()).toBeCloseTo((2 * (10 * 5 + 400 * 40)) / 1e6, 6);
    });

    it('in a job too: the job fails 504 paid_image_lost on its first model, its cost counted', async () => {
      const key = await budgetedKey(h);
      const before = generations;
      const accepted = await h.app.inject({
        method: 'POST',
        url: '/v1/generate',
        headers: key.auth,
        payload: { model: 'gpt-image-1', prompt: 'a slow lighthouse', quality: 'low', async: true, fallback_models: ['gpt-image-1.5'], fallback_on_timeout: true },
      });
      expect(accepted.statusCode, accepted.body).toBe(202);
      const job = await jobWhenFinished(h, accepted.json().id, key.auth);
      expect(job).toMatchObject({ status: 'failed', error: { code: 'paid_image_lost' } });
      expect(generations - before).toBe(1);
      expect(await key.spentUsd()).toBeCloseTo((10 * 5 + 400 * 40) / 1e6, 6);
    });
  });
});
