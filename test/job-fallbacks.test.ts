/**
 * Fallbacks inside persisted jobs (`"async": true`, an Idempotency-Key): the job keeps its chain in
 * its row and moves along it as models fail, on the same terms as a direct request; a job taken
 * over after `kill -9` goes on with the model it had moved to.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, CLIENT_KEY, UPSTREAM_KEY, startHarness, type Harness } from './harness.js';
import { freePort, kill9, startGatewayProcess } from './gateway-process.js';
import { eventsOf, parseSse } from './sse.js';
import { freshPostgres, postgresProblem } from './services.js';
import { startUpstreamSimulator, type UpstreamSimulator } from '../src/simulator/upstream-simulator.js';

const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` };
const ALL_TIME = 'from=2000-01-01&to=2100-01-01';

type Json = any;

const submissions = (sim: UpstreamSimulator) => sim.received.filter((r) => r.method === 'POST');
/** The model each upstream submission was for (in the path or the JSON body). */
const modelsSent = (sim: UpstreamSimulator) =>
  submissions(sim).map((r) => {
    const named = `${r.path} ${String((r.json as { model?: unknown } | undefined)?.model ?? '')}`;
    return named.includes('gpt-image-1.5') ? 'gpt-image-1.5' : named.includes('gpt-image-1') ? 'gpt-image-1' : named;
  });

async function usageOf(h: Harness, requestId: string): Promise<Record<string, unknown>> {
  const page = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}&limit=1000`, headers: ADMIN });
  expect(page.statusCode, page.body).toBe(200);
  const records = (page.json().data as Array<Record<string, unknown>>).filter((r) => r.request_id === requestId);
  expect(records).toHaveLength(1);
  return records[0]!;
}

describe('fallback_models in jobs', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());
  beforeEach(() => h.simulator.reset());

  const generate = (payload: Record<string, unknown>, headers: Record<string, string> = {}) =>
    h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, ...headers }, payload });
  const finished = async (id: string): Promise<Json> => {
    const res = await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}?wait=30`, headers: h.auth });
    expect(res.statusCode, res.body).toBe(200);
    return res.json();
  };
  const metricLines = async () => (await h.app.inject({ method: 'GET', url: '/metrics' })).body.split('\n').filter((l) => l.startsWith('gateway_fallbacks_total{'));

  it('an async job whose model has no channel is served by the next: the job, its result, its usage record and the metric say so', async () => {
    h.simulator.failNext('no_channel');
    const res = await generate({ model: 'gpt-image-1', prompt: 'a fox, later', async: true, fallback_models: ['gpt-image-1.5'] });
    expect(res.statusCode, res.body).toBe(202);
    const job = await finished(res.json().id);
    expect(job.status).toBe('succeeded');
    expect(job.model).toBe('gpt-image-1.5');
    expect(job.result.model).toBe('gpt-image-1.5');
    expect(job.result.requested_model).toBe('gpt-image-1');
    expect(job.result.images).toHaveLength(1);
    expect(modelsSent(h.simulator)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
    // One record, the async request's, completed under the model that served.
    const record = await usageOf(h, String(res.headers['x-request-id']));
    expect(record.status).toBe(200);
    expect(record.model).toBe('gpt-image-1.5');
    expect(record.models_tried).toEqual(['gpt-image-1', 'gpt-image-1.5']);
    expect(record.images_returned).toBe(1);
    expect(await metricLines()).toContain('gateway_fallbacks_total{from="gpt-image-1",to="gpt-image-1.5",reason="no_channel"} 1');
  });

  it('a job whose first model served keeps its chain unused: requested_model equals model, one submission', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'first time', async: true, fallback_models: ['gpt-image-1.5'] });
    const job = await finished(res.json().id);
    expect(job.status).toBe('succeeded');
    expect(job.model).toBe('gpt-image-1');
    expect(job.result.requested_model).toBe('gpt-image-1');
    expect(modelsSent(h.simulator)).toEqual(['gpt-image-1']);
    expect((await usageOf(h, String(res.headers['x-request-id']))).models_tried).toEqual(['gpt-image-1']);
  });

  it('a failure another model may not serve (moderation) ends the job: no other model is tried', async () => {
    h.simulator.failNext('moderated');
    const res = await generate({ model: 'gpt-image-1', prompt: 'refused', async: true, fallback_models: ['gpt-image-1.5'] });
    const job = await finished(res.json().id);
    expect(job.status).toBe('failed');
    expect(job.error.code).toBe('content_rejected');
    expect(modelsSent(h.simulator)).toEqual(['gpt-image-1']);
    const record = await usageOf(h, String(res.headers['x-request-id']));
    expect(record.model).toBe('gpt-image-1');
    expect(record.models_tried).toEqual(['gpt-image-1']);
  });

  it('every model of the chain without a channel: the job fails with the last failure, each model tried once', async () => {
    const res = await generate({ model: 'gpt-image-1', prompt: 'nowhere #sim:no_channel', async: true, fallback_models: ['gpt-image-1.5'] });
    const job = await finished(res.json().id);
    expect(job.status).toBe('failed');
    expect(job.error.code).toBe('upstream_error');
    // Its error says the whole chain was tried, as a direct request's does.
    expect(job.error.message).toMatch(/; every model of the chain failed \(tried gpt-image-1, gpt-image-1\.5\)$/);
    expect(job.model).toBe('gpt-image-1.5');
    expect(modelsSent(h.simulator)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
    const record = await usageOf(h, String(res.headers['x-request-id']));
    expect(record.status).toBe(502);
    expect(record.models_tried).toEqual(['gpt-image-1', 'gpt-image-1.5']);
  });

  it('with an Idempotency-Key: the answer is the serving model; a retry replays it without sending anything again', async () => {
    h.simulator.failNext('http503');
    const body = { model: 'gpt-image-1', prompt: 'once only', fallback_models: ['gpt-image-1.5'] };
    const first = await generate(body, { 'idempotency-key': 'job-fallback-1' });
    expect(first.statusCode, first.body).toBe(200);
    expect(first.json().model).toBe('gpt-image-1.5');
    expect(first.json().requested_model).toBe('gpt-image-1');
    const record = await usageOf(h, String(first.headers['x-request-id']));
    expect(record.model).toBe('gpt-image-1.5');
    expect(record.models_tried).toEqual(['gpt-image-1', 'gpt-image-1.5']);

    const again = await generate(body, { 'idempotency-key': 'job-fallback-1' });
    expect(again.statusCode, again.body).toBe(200);
    expect(again.json().images[0].url).toBe(first.json().images[0].url);
    expect(modelsSent(h.simulator)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
  });

  it("a job's stream shows the fallback, then the next model running, then the result", async () => {
    h.simulator.failNext('no_channel');
    const res = await generate({ model: 'gpt-image-1', prompt: 'streamed job', stream: true, fallback_models: ['gpt-image-1.5'] }, { 'idempotency-key': 'job-fallback-stream' });
    expect(res.statusCode).toBe(200);
    const events = eventsOf(parseSse(res.body));
    const names = events.map((e) => e.event);
    expect(events.find((e) => e.event === 'fallback')?.data).toEqual({ from: 'gpt-image-1', to: 'gpt-image-1.5', reason: 'no_channel' });
    expect(names.lastIndexOf('running')).toBeGreaterThan(names.indexOf('fallback'));
    expect(names.indexOf('fallback')).toBeLessThan(names.indexOf('succeeded'));
    expect(events.find((e) => e.event === 'succeeded')?.data.model).toBe('gpt-image-1.5');
  });

  it('a timeout falls back in a job only with fallback_on_timeout', async () => {
    const slow = await startHarness({ UPSTREAM_TIMEOUT_MS: '300' });
    try {
      slow.simulator.failNext('hang');
      const off = await slow.app.inject({ method: 'POST', url: '/v1/generate', headers: slow.auth, payload: { model: 'gpt-image-1', prompt: 'slow', async: true, fallback_models: ['gpt-image-1.5'] } });
      const offJob = (await slow.app.inject({ method: 'GET', url: `/v1/jobs/${off.json().id}?wait=30`, headers: slow.auth })).json();
      expect(offJob.status).toBe('failed');
      expect(offJob.error.code).toBe('upstream_timeout');
      expect(modelsSent(slow.simulator)).toEqual(['gpt-image-1']);

      slow.simulator.reset();
      slow.simulator.failNext('hang');
      const on = await slow.app.inject({
        method: 'POST',
        url: '/v1/generate',
        headers: slow.auth,
        payload: { model: 'gpt-image-1', prompt: 'slow', async: true, fallback_models: ['gpt-image-1.5'], fallback_on_timeout: true },
      });
      const onJob = (await slow.app.inject({ method: 'GET', url: `/v1/jobs/${on.json().id}?wait=30`, headers: slow.auth })).json();
      expect(onJob.status).toBe('succeeded');
      expect(onJob.model).toBe('gpt-image-1.5');
      expect(modelsSent(slow.simulator)).toEqual(['gpt-image-1', 'gpt-image-1.5']);
    } finally {
      await slow.close();
    }
  });
});

describe('a job whose chain left a model after a timeout', () => {
  it('answers its last model\'s unbilled failure with x-should-retry: false, replayed too (the timed-out model may have billed)', async () => {
    const slow = await startHarness({ UPSTREAM_TIMEOUT_MS: '300' });
    try {
      slow.simulator.failNext('hang');
      slow.simulator.failNext('no_channel', 10);
      const payload = { model: 'gpt-image-1', prompt: 'slow then none', fallback_models: ['gpt-image-1.5'], fallback_on_timeout: true };
      // With an Idempotency-Key, a direct request runs as a job.
      const headers = { ...slow.auth, 'idempotency-key': 'chain-timeout-then-none' };
      const first = await slow.app.inject({ method: 'POST', url: '/v1/generate', headers, payload });
      expect(first.statusCode, first.body).toBe(502);
      expect(modelsSent(slow.simulator)).toContain('gpt-image-1.5');
      expect(first.headers['x-should-retry']).toBe('false');
      const replay = await slow.app.inject({ method: 'POST', url: '/v1/generate', headers, payload });
      expect(replay.headers['idempotent-replayed']).toBe('true');
      expect(replay.headers['x-should-retry']).toBe('false');
    } finally {
      await slow.close();
    }
  });

  it('does not when the timeout came while upstream was not holding the request (waiting to resend after a 429)', async () => {
    const slow = await startHarness({ UPSTREAM_TIMEOUT_MS: '600', UPSTREAM_RETRIES: '2', UPSTREAM_RETRY_BASE_MS: '20' });
    try {
      // A first request warms the path, so that the timeout below comes where the test means it to.
      expect((await slow.app.inject({ method: 'POST', url: '/v1/generate', headers: slow.auth, payload: { model: 'gpt-image-1', prompt: 'warm' } })).statusCode).toBe(200);
      // The simulator's 429 asks for one second: the 600 ms deadline passes during that wait.
      slow.simulator.failNext('http429');
      slow.simulator.failNext('http400');
      const payload = { model: 'gpt-image-1', prompt: 'throttled then none', async: true, fallback_models: ['gpt-image-1.5'], fallback_on_timeout: true };
      const created = await slow.app.inject({ method: 'POST', url: '/v1/generate', headers: slow.auth, payload });
      const job = (await slow.app.inject({ method: 'GET', url: `/v1/jobs/${created.json().id}?wait=30`, headers: slow.auth })).json();
      expect(job.status).toBe('failed');
      expect(job.model).toBe('gpt-image-1.5');
      expect(job.error.code).toBe('invalid_request');
      // With an Idempotency-Key, a direct request runs as a job.
      slow.simulator.reset();
      slow.simulator.failNext('http429');
      slow.simulator.failNext('http400');
      const synchronous = await slow.app.inject({
        method: 'POST',
        url: '/v1/generate',
        headers: { ...slow.auth, 'idempotency-key': 'chain-throttled-then-none' },
        payload: { ...payload, async: false },
      });
      expect(synchronous.statusCode, synchronous.body).toBe(400);
      expect(synchronous.headers['x-should-retry']).toBeUndefined();
    } finally {
      await slow.close();
    }
  });
});

describe('limits with a chain in a job', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ PRICE_OVERRIDES: JSON.stringify({ 'gpt-image-1': 0.02, 'gpt-image-1.5': 0.3 }) });
  });
  afterAll(async () => h.close());

  it('the reservation takes the dearest model of the chain, and settles to what the job ran', async () => {
    const minted = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: ADMIN, payload: { team: 'job-chain-budget', monthly_budget_usd: 0.35, rpm: 100 } });
    const key = { authorization: `Bearer ${minted.json().key}` };
    const generate = (payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: key, payload });
    // 0.02 spent by the job (its first model served), though 0.30 was reserved while it ran.
    const cheap = await generate({ model: 'gpt-image-1', prompt: 'cheap', async: true, fallback_models: ['gpt-image-1.5'] });
    expect(cheap.statusCode, cheap.body).toBe(202);
    expect((await h.app.inject({ method: 'GET', url: `/v1/jobs/${cheap.json().id}?wait=30`, headers: key })).json().status).toBe('succeeded');
    // Had the first job's reservation stayed at 0.30, 0.05 would be left and this one refused.
    const second = await generate({ model: 'gpt-image-1', prompt: 'again', async: true, fallback_models: ['gpt-image-1.5'] });
    expect(second.statusCode, second.body).toBe(202);
    expect((await h.app.inject({ method: 'GET', url: `/v1/jobs/${second.json().id}?wait=30`, headers: key })).json().status).toBe('succeeded');
    // 0.31 left: two images at the chain's dearest (0.60) do not fit, though two at the requested model's (0.04) would.
    const refused = await generate({ model: 'gpt-image-1', prompt: 'too dear', async: true, fallback_models: ['gpt-image-1.5'], n: 2 });
    expect(refused.statusCode, refused.body).toBe(429);
  });
});

describe('a gateway killed while a job runs its fallback model', () => {
  let simulator: UpstreamSimulator;
  let port: number;
  const children: ChildProcess[] = [];
  beforeAll(async () => {
    simulator = await startUpstreamSimulator({ apiKey: UPSTREAM_KEY, taskReadyAfterMs: 30 });
    port = await freePort();
  }, 60_000);
  afterAll(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await simulator?.close();
  });

  /** A gateway process on `dataDir` (with `env`: its database, ...), started anew after each kill. */
  const gatewayOn = (dataDir: string, env: Record<string, string> = {}) => async () => {
    const { child } = await startGatewayProcess(port, {
      DATA_DIR: dataDir,
      AIHUBMIX_API_KEY: UPSTREAM_KEY,
      AIHUBMIX_BASE_URL: simulator.url,
      GATEWAY_API_KEYS: `design:${CLIENT_KEY}`,
      GATEWAY_ADMIN_KEY: ADMIN_KEY,
      JOB_LEASE_MS: '300',
      TASK_POLL_INTERVAL_MS: '20',
      // A fault is answered as it is, not retried on the same model first.
      UPSTREAM_RETRIES: '0',
      ...env,
    });
    children.push(child);
  };
  const api = (path: string, init: RequestInit = {}, key = CLIENT_KEY) =>
    fetch(`http://127.0.0.1:${port}${path}`, { ...init, headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...(init.headers ?? {}) } });
  const taskPolled = async () => {
    for (let i = 0; i < 300 && !simulator.received.some((r) => r.path.startsWith('/v1/tasks/')); i++) await sleep(20);
    expect(simulator.received.some((r) => r.path.startsWith('/v1/tasks/'))).toBe(true);
  };

  /** gpt-image-1 has no channel; flux-kontext-pro takes the job as an upstream task, held until the gateway has been killed and restarted. */
  async function killedOnTheFallbackModel(database: Record<string, string>): Promise<void> {
    const dataDir = mkdtempSync(join(tmpdir(), 'gw-job-chain-'));
    const startGateway = gatewayOn(dataDir, database);
    try {
      simulator.reset();
      simulator.holdTasks = true;
      await startGateway();
      simulator.failNext('no_channel');
      const res = await api('/v1/generate', { method: 'POST', body: JSON.stringify({ model: 'gpt-image-1', prompt: 'survives', async: true, fallback_models: ['flux-kontext-pro'] }) });
      expect(res.status).toBe(202);
      const accepted: Json = await res.json();
      await taskPolled();
      await kill9(children.at(-1)!);

      simulator.holdTasks = false;
      await startGateway();
      let job: Json;
      for (let i = 0; i < 300; i++) {
        job = await (await api(`/v1/jobs/${accepted.id}`)).json();
        if (job.status === 'succeeded' || job.status === 'failed') break;
        await sleep(30);
      }
      expect(job.status).toBe('succeeded');
      expect(job.model).toBe('flux-kontext-pro');
      expect(job.result.requested_model).toBe('gpt-image-1');
      // The first model once, the fallback model once: its task was polled again, not submitted again.
      const posts = submissions(simulator).map((r) => r.path);
      expect(posts).toHaveLength(2);
      expect(posts.filter((p) => p.includes('flux-kontext-pro'))).toHaveLength(1);
      const page: Json = await (await api(`/v1/usage/records?${ALL_TIME}&limit=100`, {}, ADMIN_KEY)).json();
      const record = page.data.find((r: Json) => r.request_id === res.headers.get('x-request-id'));
      expect(record.status).toBe(200);
      expect(record.model).toBe('flux-kontext-pro');
      expect(record.models_tried).toEqual(['gpt-image-1', 'flux-kontext-pro']);
    } finally {
      await kill9(children.at(-1)!);
      rmSync(dataDir, { recursive: true, force: true });
    }
  }

  it('SQLite: the restarted gateway polls the fallback model’s task (nothing sent again) and counts the job under it', async () => {
    await killedOnTheFallbackModel({});
  }, 60_000);

  it("the OpenAI façade's size, translated for each model, stays so after a restart: the fallback model resumes with its own aspect ratio, not the first model's size", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'gw-job-chain-size-'));
    const startGateway = gatewayOn(dataDir);
    // An Idempotency-Key runs the façade's request as a job; its retry after the restart joins that job.
    const ask = () =>
      api('/v1/images/generations', {
        method: 'POST',
        headers: { 'idempotency-key': 'facade-size-after-restart' },
        body: JSON.stringify({ model: 'gpt-image-1', prompt: 'a wide lake, survives', size: '1536x1024', fallback_models: ['flux-kontext-pro'] }),
      });
    try {
      simulator.reset();
      simulator.holdTasks = true;
      await startGateway();
      simulator.failNext('no_channel');
      // Its connection dies with the gateway: the retry below answers.
      const first = ask().catch(() => undefined);
      await taskPolled();
      await kill9(children.at(-1)!);
      await first;

      simulator.holdTasks = false;
      await startGateway();
      const retry = await ask();
      const body: Json = await retry.json();
      expect(retry.status, JSON.stringify(body)).toBe(200);
      expect(body.data).toHaveLength(1);
      // Each model got its own shape; the fallback model's task was polled again, not submitted again.
      expect(submissions(simulator).map((r) => [r.path, r.json])).toEqual([
        [expect.stringContaining('gpt-image-1'), { input: { prompt: 'a wide lake, survives', size: '1536x1024' } }],
        [expect.stringContaining('flux-kontext-pro'), { input: { prompt: 'a wide lake, survives', aspect_ratio: '3:2' } }],
      ]);
    } finally {
      await kill9(children.at(-1)!);
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 60_000);

  it("and when the chain moves only after the restart: a façade job left queued for an upstream slot gives the fallback model its own aspect ratio", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'gw-job-chain-queued-'));
    // One upstream slot, held by a call that never answers: the façade's job waits for it, never sent.
    const startGateway = gatewayOn(dataDir, { UPSTREAM_MAX_CONCURRENCY: '1' });
    const ask = () =>
      api('/v1/images/generations', {
        method: 'POST',
        headers: { 'idempotency-key': 'facade-size-queued' },
        body: JSON.stringify({ model: 'gpt-image-1', prompt: 'a wide lake, queued', size: '1536x1024', fallback_models: ['flux-kontext-pro'] }),
      });
    try {
      simulator.reset();
      await startGateway();
      simulator.failNext('hang');
      await api('/v1/generate', { method: 'POST', body: JSON.stringify({ model: 'dall-e-3', prompt: 'holds the slot', async: true }) });
      for (let i = 0; i < 200 && submissions(simulator).length === 0; i++) await sleep(20);
      const first = ask().catch(() => undefined);
      // Give the façade's job time to be written and to queue behind the held slot.
      await sleep(300);
      expect(submissions(simulator)).toHaveLength(1);
      await kill9(children.at(-1)!);
      await first;

      // After the restart its first model has no channel: the chain moves there, not before.
      simulator.failNext('no_channel');
      await startGateway();
      const retry = await ask();
      const body: Json = await retry.json();
      expect(retry.status, JSON.stringify(body)).toBe(200);
      expect(submissions(simulator).slice(1).map((r) => [r.path, r.json])).toEqual([
        [expect.stringContaining('gpt-image-1'), { input: { prompt: 'a wide lake, queued', size: '1536x1024' } }],
        [expect.stringContaining('flux-kontext-pro'), { input: { prompt: 'a wide lake, queued', aspect_ratio: '3:2' } }],
      ]);
    } finally {
      await kill9(children.at(-1)!);
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 60_000);

  describe.skipIf(postgresProblem !== undefined)('PostgreSQL (skipped when unreachable and REQUIRE_SERVICES is unset)', () => {
    let pg: Awaited<ReturnType<typeof freshPostgres>>;
    beforeAll(async () => {
      pg = await freshPostgres();
    });
    afterAll(async () => {
      await pg?.drop();
    });

    it('PostgreSQL: the same, the chain read back from a PostgreSQL row', async () => {
      await killedOnTheFallbackModel({ DATABASE_URL: pg.url });
    }, 60_000);
  });
});
