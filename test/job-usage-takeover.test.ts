/**
 * A synchronous request with an Idempotency-Key whose job another replica carries on (this one
 * stalled past its lease): what the job made is counted once, by the replica that finished it, and
 * the waiting request still answers with it.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_KEY, jobWhenFinished, startHarness, type Harness } from './harness.js';
import { freshPostgres, freshRedis, postgresProblem, redisProblem } from './services.js';

type Json = any;

/** Until harness's upstream has been polled for a task (the job was sent and accepted). */
async function untilTaskPolled(harness: Harness): Promise<void> {
  for (let i = 0; i < 200 && !harness.simulator.received.some((r) => r.path.startsWith('/v1/tasks/')); i++) await sleep(20);
}

/** Every usage record `harness` can read (admin key), the log flushed first. */
async function usageRecords(harness: Harness): Promise<Json[]> {
  await harness.app.usageLog.flush();
  const page = await harness.app.inject({ method: 'GET', url: '/v1/usage/records?from=2000-01-01&limit=1000', headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  return page.json().data as Json[];
}

describe.skipIf(postgresProblem !== undefined)(
  'a job taken over while its starting request waits (skipped when PostgreSQL is unreachable and REQUIRE_SERVICES is unset)',
  () => {
    let a: Harness;
    let b: Harness;
    let database: Awaited<ReturnType<typeof freshPostgres>>;

    beforeAll(async () => {
      database = await freshPostgres();
      const shared = {
        DATABASE_URL: database.url,
        IMAGE_URL_SECRET: randomBytes(32).toString('hex'),
        PRICE_OVERRIDES: JSON.stringify({ 'flux-kontext-pro': 0.04 }),
        TASK_POLL_INTERVAL_MS: '20',
      };
      a = await startHarness(shared);
      // Both call one upstream: the task A submitted is the one B polls.
      b = await startHarness({ ...shared, AIHUBMIX_BASE_URL: a.simulator.url });
    }, 60_000);

    afterAll(async () => {
      await a?.close();
      await b?.close();
      await database?.drop();
    });

    /** A request with an Idempotency-Key, held at its upstream task until A's lease lapses and B takes its job over; its answer. */
    async function takenOverWhileWaiting(url: string, key: string, prompt: string) {
      a.simulator.holdTasks = true;
      const waiting = a.app.inject({ method: 'POST', url, headers: { ...a.auth, 'idempotency-key': key }, payload: { model: 'flux-kontext-pro', prompt } });
      await untilTaskPolled(a);
      // A's lease lapses (as when its event loop stalls), and B takes the job over.
      await a.app.db.run("UPDATE jobs SET lease_until = 0 WHERE status <> 'succeeded' AND status <> 'failed'");
      expect(await b.app.jobs.takeOverAbandoned()).toBe(1);
      a.simulator.holdTasks = false;
      return waiting;
    }

    it('counts the image once, in one record: the waiting request’s, which takes the place of the one the taking replica wrote for it', async () => {
      const answer = await takenOverWhileWaiting('/v1/generate', 'taken-over', 'a heron, carried on elsewhere');
      expect(answer.statusCode, answer.body).toBe(200);
      expect(answer.json().images).toHaveLength(1);
      expect(a.simulator.received.filter((r) => r.method === 'POST')).toHaveLength(1);

      const records = (await usageRecords(a)).filter((r) => r.route === '/v1/generate');
      expect(records.reduce((n: number, r: Json) => n + r.images_returned, 0)).toBe(1);
      expect(records.reduce((n: number, r: Json) => n + (r.estimated_cost_usd ?? 0), 0)).toBeCloseTo(0.04, 6);
      // One request, one record: the waiting request's own, which took the place of the record B
      // wrote standing for it (with what the job made and cost, as B counted it).
      expect(records).toHaveLength(1);
      const own = records.find((r: Json) => r.request_id === answer.headers['x-request-id']);
      expect(own).toMatchObject({ status: 200, images_returned: 1, estimated_cost_usd: 0.04, upstream_status: 200 });
    }, 30_000);

    it('a request made through the OpenAI façade keeps the façade’s route in the one record it leaves', async () => {
      a.simulator.reset();
      const answer = await takenOverWhileWaiting('/v1/images/generations', 'taken-over-openai', 'a heron, asked the OpenAI way');
      expect(answer.statusCode, answer.body).toBe(200);
      expect(answer.json().data).toHaveLength(1);
      const records = (await usageRecords(a)).filter((r) => r.route === '/v1/images/generations');
      expect(records).toHaveLength(1);
      expect(records[0]).toMatchObject({ request_id: answer.headers['x-request-id'], operation: 'generate', model: 'flux-kontext-pro', images_returned: 1, estimated_cost_usd: 0.04 });
    }, 30_000);
  },
);

describe.skipIf(postgresProblem !== undefined)(
  'a graceful stop while a synchronous request waits for its job (skipped when PostgreSQL is unreachable and REQUIRE_SERVICES is unset)',
  () => {
    let a: Harness;
    let b: Harness;
    let database: Awaited<ReturnType<typeof freshPostgres>>;

    beforeAll(async () => {
      database = await freshPostgres();
      const shared = {
        DATABASE_URL: database.url,
        IMAGE_URL_SECRET: randomBytes(32).toString('hex'),
        PRICE_OVERRIDES: JSON.stringify({ 'flux-kontext-pro': 0.04 }),
        TASK_POLL_INTERVAL_MS: '20',
      };
      a = await startHarness({ ...shared, JOB_SHUTDOWN_GRACE_MS: '10000' });
      b = await startHarness({ ...shared, AIHUBMIX_BASE_URL: a.simulator.url });
    }, 60_000);

    afterAll(async () => {
      await a?.simulator.close();
      await b?.close();
      await database?.drop();
    });

    it('counts the request once: the stopping replica hands the job over, the other finishes it, and the waiting request answers in one record', async () => {
      a.simulator.holdTasks = true;
      const waiting = a.app.inject({
        method: 'POST',
        url: '/v1/generate',
        headers: { ...a.auth, 'idempotency-key': 'handed-over-at-stop' },
        payload: { model: 'flux-kontext-pro', prompt: 'a heron, across a stop' },
      });
      await untilTaskPolled(a);
      // SIGTERM: A stops polling the task and frees the job's lease; its request still waits (within the grace).
      const stopped = a.app.close();
      let taken = 0;
      for (let i = 0; i < 200 && taken === 0; i++) {
        taken = await b.app.jobs.takeOverAbandoned();
        if (taken === 0) await sleep(20);
      }
      expect(taken).toBe(1);
      a.simulator.holdTasks = false;

      const answer = await waiting;
      expect(answer.statusCode, answer.body).toBe(200);
      expect(answer.json().images).toHaveLength(1);
      await stopped;
      expect(a.simulator.received.filter((r) => r.method === 'POST')).toHaveLength(1);

      const records = (await usageRecords(b)).filter((r) => r.route === '/v1/generate');
      // One request, one record (not the waiting request's plus the one B wrote standing for it), its cost once.
      expect(records).toHaveLength(1);
      expect(records[0]).toMatchObject({ request_id: answer.headers['x-request-id'], status: 200, images_returned: 1, estimated_cost_usd: 0.04 });
    }, 30_000);
  },
);

describe.skipIf(postgresProblem !== undefined || redisProblem !== undefined)(
  'a job that fails on the replica that took it over after a stop (skipped when PostgreSQL or Redis is unreachable and REQUIRE_SERVICES is unset)',
  () => {
    let a: Harness;
    let b: Harness;
    let database: Awaited<ReturnType<typeof freshPostgres>>;

    beforeAll(async () => {
      database = await freshPostgres();
      const shared = {
        DATABASE_URL: database.url,
        REDIS_URL: freshRedis().url,
        IMAGE_URL_SECRET: randomBytes(32).toString('hex'),
        PRICE_OVERRIDES: JSON.stringify({ 'flux-kontext-pro': 0.04 }),
        TASK_POLL_INTERVAL_MS: '20',
      };
      a = await startHarness(shared);
      b = await startHarness({ ...shared, AIHUBMIX_BASE_URL: a.simulator.url });
    }, 60_000);

    afterAll(async () => {
      await a?.simulator.close();
      await b?.close();
      await database?.drop();
    });

    it('gives its reservation back there: images_per_day and monthly_budget_usd are as before the request', async () => {
      const minted = await a.app.inject({
        method: 'POST',
        url: '/v1/keys',
        headers: { authorization: `Bearer ${ADMIN_KEY}` },
        payload: { team: 'takeover', images_per_day: 5, monthly_budget_usd: 10, rpm: 100 },
      });
      expect(minted.statusCode, minted.body).toBe(201);
      const auth = { authorization: `Bearer ${minted.json().key}` };
      const keyId = minted.json().id as string;

      // The task fails once it is let go (after the takeover).
      a.simulator.failNext('task_error');
      a.simulator.holdTasks = true;
      const accepted = await a.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'flux-kontext-pro', prompt: 'a heron that never comes', async: true } });
      expect(accepted.statusCode, accepted.body).toBe(202);
      expect(accepted.headers['x-ratelimit-images-remaining']).toBe('4');
      const jobId = accepted.json().id as string;
      await untilTaskPolled(a);

      // SIGTERM on A: it stops polling and frees the lease, its reservation still counted; B carries the job on.
      await a.app.close();
      let taken = 0;
      for (let i = 0; i < 200 && taken === 0; i++) {
        taken = await b.app.jobs.takeOverAbandoned();
        if (taken === 0) await sleep(20);
      }
      expect(taken).toBe(1);
      a.simulator.holdTasks = false;
      const job = await jobWhenFinished(b, jobId, auth);
      expect(job.status).toBe('failed');

      // Given back on B (shared through Redis), as A would have on a failure of its own.
      const day = new Date().toISOString().slice(0, 10);
      for (let i = 0; i < 100 && (await b.app.counters.peek(`images:${keyId}:${day}`)).total !== 0; i++) await sleep(20);
      expect((await b.app.counters.peek(`images:${keyId}:${day}`)).total).toBe(0);
      expect((await b.app.counters.peek(`usd:${keyId}:${day.slice(0, 7)}`)).total).toBe(0);
      const next = await b.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'flux-kontext-pro', prompt: 'a heron, asked again', async: true } });
      expect(next.statusCode, next.body).toBe(202);
      expect(next.headers['x-ratelimit-images-remaining']).toBe('4');
      expect(next.headers['x-ratelimit-budget-remaining-usd']).toBe('9.96');
      await jobWhenFinished(b, next.json().id, auth);
    }, 30_000);
  },
);
