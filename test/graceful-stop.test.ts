/**
 * A graceful stop (SIGTERM calls app.close(): src/server.ts) with jobs in flight: a job following
 * an upstream task stops polling at once and frees its lease (another replica, or this one
 * restarted, carries it on), while a job whose synchronous upstream call is on the wire (which
 * cannot be resumed without paying twice) is given JOB_SHUTDOWN_GRACE_MS to finish. The simulator
 * holds its answer until the test releases it, so the order of events is the claim, not timing.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { afterEach, describe, expect, it } from 'vitest';
import { startUpstreamSimulator } from '../src/simulator/upstream-simulator.js';
import { ADMIN_KEY, CLIENT_KEY, UPSTREAM_KEY, jobWhenFinished, startHarness, startListening, type Harness } from './harness.js';
import { freePort, startGatewayProcess } from './gateway-process.js';

let h: Harness | undefined;
afterEach(async () => {
  // The app is closed by each test itself.
  await h?.simulator.close();
  if (h) rmSync(h.dataDir, { recursive: true, force: true });
  h = undefined;
});

/** Upstream answers that wait for release(): every API answer of the simulator is held. */
function gate(): { wait: () => Promise<void>; release: () => void; released: boolean } {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  const g = {
    released: false,
    wait: () => opened,
    release: () => {
      g.released = true;
      open();
    },
  };
  return g;
}

async function until(ready: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (ready()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`never: ${what}`);
}

/** The job's row, read from the SQLite file after the gateway has closed it. */
function jobRow(harness: Pick<Harness, 'dataDir'>, id: string): { status: string; upstream_task_id: string | null; lease_until: number; result_json: string | null } {
  const db = new DatabaseSync(join(harness.dataDir, 'gateway.sqlite'), { readOnly: true });
  try {
    return db.prepare('SELECT status, upstream_task_id, lease_until, result_json FROM jobs WHERE id = ?').get(id) as never;
  } finally {
    db.close();
  }
}

const submit = async (harness: Harness, model: string) => {
  const res = await harness.app.inject({ method: 'POST', url: '/v1/generate', headers: harness.auth, payload: { model, prompt: 'stopping', async: true } });
  expect(res.statusCode).toBe(202);
  return res.json().id as string;
};

describe('a graceful stop', () => {
  it('stops polling an upstream task at once, leaving the job running with its task id and a free lease', async () => {
    h = await startHarness({ JOB_SHUTDOWN_GRACE_MS: '3600000' });
    h.simulator.holdTasks = true;
    const id = await submit(h, 'flux-kontext-pro');
    const polls = () => h!.simulator.received.filter((r) => r.path.startsWith('/v1/tasks/')).length;
    await until(() => polls() >= 2, 'two task polls');
    // The task is never ready, and the grace is an hour: the stop ends without waiting for either.
    await h.app.close();
    const atStop = polls();
    expect(h.simulator.holdTasks).toBe(true);
    const row = jobRow(h, id);
    expect(row.status).toBe('running');
    expect(row.upstream_task_id).toMatch(/^sim-task-/);
    expect(Number(row.lease_until)).toBe(0);
    // Nothing polls any more: a round trip to the simulator later, the count is the same.
    await fetch(`${h.simulator.url}/sim/files/none`);
    expect(polls()).toBe(atStop);
  });

  it('waits for a synchronous upstream call in flight, within JOB_SHUTDOWN_GRACE_MS, and the job ends succeeded', async () => {
    const upstream = gate();
    h = await startHarness({ JOB_SHUTDOWN_GRACE_MS: '3600000' }, { latencyMs: 1, wait: upstream.wait });
    const id = await submit(h, 'gpt-image-1');
    await until(() => h!.simulator.received.some((r) => r.method === 'POST'), 'the upstream submission');
    const events: string[] = [];
    const closed = h.app.close().then(() => events.push('closed'));
    // The jobs have been told to stop (a resumable one would be aborted now) ...
    await until(() => (h!.app.jobs as unknown as { closing: boolean }).closing, 'the job runner closing');
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(events).toEqual([]);
    // ... and only once upstream answers does the stop end, with the job finished, not abandoned.
    events.push('released');
    upstream.release();
    await closed;
    expect(events).toEqual(['released', 'closed']);
    const row = jobRow(h, id);
    expect(row.status).toBe('succeeded');
    expect(JSON.parse(row.result_json!).images).toHaveLength(1);
  });

  it('gives up on the call once JOB_SHUTDOWN_GRACE_MS has passed, leaving the job to be failed (not sent again) on restart', async () => {
    const upstream = gate();
    h = await startHarness({ JOB_SHUTDOWN_GRACE_MS: '50' }, { latencyMs: 1, wait: upstream.wait });
    const id = await submit(h, 'gpt-image-1');
    await until(() => h!.simulator.received.some((r) => r.method === 'POST'), 'the upstream submission');
    // Upstream never answers: the stop ends anyway.
    await h.app.close();
    expect(upstream.released).toBe(false);
    const row = jobRow(h, id);
    expect(row.status).toBe('running');
    expect(row.upstream_task_id).toBeNull();
    expect(Number(row.lease_until)).toBe(0);
    upstream.release();
  });
});

/** The usage records in the SQLite file, read after the gateway has closed it. */
function usageRows(harness: Pick<Harness, 'dataDir'>): Array<{ request_id: string; status: number; error_code: string | null; job_id: string | null; images_returned: number; cost_usd: number | null }> {
  const db = new DatabaseSync(join(harness.dataDir, 'gateway.sqlite'), { readOnly: true });
  try {
    return db.prepare('SELECT request_id, status, error_code, job_id, images_returned, cost_usd FROM usage_records').all() as never;
  } finally {
    db.close();
  }
}

describe('a graceful stop while a synchronous request waits for its job, and no other replica takes it', () => {
  let restarted: Harness | undefined;
  afterEach(async () => {
    await restarted?.app.close();
    restarted = undefined;
  });

  it('answers the request 503 once the grace is over, before the usage log closes: its record is kept, and the job, finished after a restart, adds what it made to it', async () => {
    h = await startHarness({ JOB_SHUTDOWN_GRACE_MS: '200', PRICE_OVERRIDES: JSON.stringify({ 'flux-kontext-pro': 0.04 }) });
    h.simulator.holdTasks = true;
    const waiting = h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { ...h.auth, 'idempotency-key': 'waits-across-a-stop' },
      payload: { model: 'flux-kontext-pro', prompt: 'a heron, left waiting by a stop' },
    });
    await until(() => h!.simulator.received.some((r) => r.path.startsWith('/v1/tasks/')), 'a task poll');
    await h.app.close();
    // Answered within the stop (not after it, nor never), and told to retry under its key.
    const answer = await waiting;
    expect(answer.statusCode, answer.body).toBe(503);
    expect(answer.headers['retry-after']).toBe('1');
    expect(answer.json().error.code).toBe('service_unavailable');
    expect(h.logs.filter((l) => l.includes('arrived after the usage log closed'))).toEqual([]);
    const requestId = answer.headers['x-request-id'] as string;
    const atStop = usageRows(h).filter((r) => r.request_id === requestId);
    expect(atStop).toHaveLength(1);
    expect(atStop[0]).toMatchObject({ status: 503, error_code: 'service_unavailable', images_returned: 0 });
    const jobId = atStop[0]!.job_id!;
    expect(jobRow(h, jobId)).toMatchObject({ status: 'running', lease_until: 0 });

    // Restarted on the same DATA_DIR and upstream: the job is taken over and finished.
    h.simulator.holdTasks = false;
    restarted = await startHarness({ DATA_DIR: h.dataDir, AIHUBMIX_BASE_URL: h.simulator.url, PRICE_OVERRIDES: JSON.stringify({ 'flux-kontext-pro': 0.04 }) });
    const job = await jobWhenFinished(restarted, jobId);
    expect(job.status).toBe('succeeded');
    const retry = await restarted.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { ...restarted.auth, 'idempotency-key': 'waits-across-a-stop' },
      payload: { model: 'flux-kontext-pro', prompt: 'a heron, left waiting by a stop' },
    });
    expect(retry.statusCode, retry.body).toBe(200);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    await restarted.app.close();
    restarted = undefined;
    expect(h.simulator.received.filter((r) => r.method === 'POST')).toHaveLength(1);
    // One record for the stopped request, which kept its 503 and gained what the job made and cost;
    // none standing in for it; the retry's, a replay, costs nothing.
    const rows = usageRows(h).filter((r) => r.job_id === jobId || r.request_id === jobId);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ request_id: requestId, status: 503, images_returned: 1, cost_usd: 0.04 });
    const all = usageRows(h);
    expect(all.reduce((n, r) => n + (r.cost_usd ?? 0), 0)).toBeCloseTo(0.04, 6);
    expect(all.reduce((n, r) => n + r.images_returned, 0)).toBe(1);
  }, 30_000);
});

describe('a graceful stop of a listening server while a client is connected, waiting for its job', () => {
  it('is bounded by JOB_SHUTDOWN_GRACE_MS: the request is answered 503 over its connection, and the server closes', async () => {
    // The connection stays open while the request waits, so the server's close waits for it: the
    // grace must start when the stop does, not once every connection has gone.
    const listening = await startListening({ JOB_SHUTDOWN_GRACE_MS: '200' });
    h = listening;
    listening.simulator.holdTasks = true;
    const waiting = fetch(`${listening.base}/v1/generate`, {
      method: 'POST',
      headers: { ...listening.auth, 'content-type': 'application/json', 'idempotency-key': 'connected-across-a-stop' },
      body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'a heron, connected through a stop' }),
    });
    await until(() => listening.simulator.received.some((r) => r.path.startsWith('/v1/tasks/')), 'a task poll');
    const closed = listening.app.close();
    const answer = await waiting;
    expect(answer.status).toBe(503);
    expect(answer.headers.get('retry-after')).toBe('1');
    expect(((await answer.json()) as { error: { code: string } }).error.code).toBe('service_unavailable');
    // Without the bound, this never settles: the held task is polled until the upstream timeout.
    await closed;
  }, 20_000);
});

describe('a request still arriving when a stop begins', () => {
  it('makes no job the stop would not wait for: a 503 to send again, nothing sent upstream, nothing left reserved', async () => {
    const listening = await startListening({ JOB_SHUTDOWN_GRACE_MS: '200' });
    h = listening;
    const body = JSON.stringify({ model: 'gpt-image-1', prompt: 'a heron, arriving as the gateway stops', async: true });
    const { request } = await import('node:http');
    const url = new URL(`${listening.base}/v1/generate`);
    let closed: Promise<void> | undefined;
    const answer = await new Promise<{ status: number; body: string; headers: Record<string, unknown> }>((resolve, reject) => {
      const req = request(
        { host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers: { ...listening.auth, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
        (res) => {
          let text = '';
          res.setEncoding('utf8').on('data', (c: string) => (text += c)).on('end', () => resolve({ status: res.statusCode!, body: text, headers: res.headers }));
        },
      );
      req.on('error', reject);
      // Half the body, then the stop, then the rest: the request is in flight when the stop begins.
      req.write(body.slice(0, 20));
      setTimeout(() => {
        closed = listening.app.close();
        setTimeout(() => req.end(body.slice(20)), 50);
      }, 50);
    });
    expect(answer.status, answer.body).toBe(503);
    expect(answer.headers['retry-after']).toBe('1');
    expect(JSON.parse(answer.body).error.code).toBe('service_unavailable');
    await closed;
    expect(listening.simulator.received).toHaveLength(0);
    const db = new DatabaseSync(join(listening.dataDir, 'gateway.sqlite'), { readOnly: true });
    try {
      expect((db.prepare('SELECT COUNT(*) AS n FROM jobs').get() as { n: number }).n).toBe(0);
    } finally {
      db.close();
    }
  }, 20_000);
});

describe('a job stopped with its reservation, and failed after a restart, with counters in memory (no Redis)', () => {
  let restarted: Harness | undefined;
  afterEach(async () => {
    await restarted?.app.close();
    restarted = undefined;
  });

  it('gives back nothing the restarted process never counted: images_per_day is counted from the usage records, not below them', async () => {
    h = await startHarness();
    const minted = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'restart', images_per_day: 5, rpm: 100 } });
    expect(minted.statusCode, minted.body).toBe(201);
    const auth = { authorization: `Bearer ${minted.json().key}` };
    h.simulator.failNext('task_error');
    h.simulator.holdTasks = true;
    const accepted = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'flux-kontext-pro', prompt: 'fails after a restart', async: true } });
    expect(accepted.statusCode, accepted.body).toBe(202);
    expect(accepted.headers['x-ratelimit-images-remaining']).toBe('4');
    await until(() => h!.simulator.received.some((r) => r.path.startsWith('/v1/tasks/')), 'a task poll');
    await h.app.close();

    h.simulator.holdTasks = false;
    restarted = await startHarness({ DATA_DIR: h.dataDir, AIHUBMIX_BASE_URL: h.simulator.url });
    expect((await jobWhenFinished(restarted, accepted.json().id, auth)).status).toBe('failed');
    // Its reservation lived in the stopped process's memory; the restarted one counts the day from
    // the usage records (no image made), so the next request leaves 4, not 5.
    const next = await restarted.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'flux-kontext-pro', prompt: 'asked after', async: true } });
    expect(next.statusCode, next.body).toBe(202);
    expect(next.headers['x-ratelimit-images-remaining']).toBe('4');
    await jobWhenFinished(restarted, next.json().id, auth);
  }, 30_000);
});

describe('SIGTERM to the server process (dist/server.js)', () => {
  it('stops it without waiting for a task job: polling ends, the process exits 0, the job is left to resume', async () => {
    const simulator = await startUpstreamSimulator({ apiKey: UPSTREAM_KEY, taskReadyAfterMs: 30 });
    const dataDir = mkdtempSync(join(tmpdir(), 'gw-stop-'));
    const port = await freePort();
    const { child } = await startGatewayProcess(port, {
      DATA_DIR: dataDir,
      AIHUBMIX_API_KEY: UPSTREAM_KEY,
      AIHUBMIX_BASE_URL: simulator.url,
      GATEWAY_API_KEYS: `design:${CLIENT_KEY}`,
      TASK_POLL_INTERVAL_MS: '10',
      // An hour: a stop that waited for the task job would never end within the test.
      JOB_SHUTDOWN_GRACE_MS: '3600000',
    });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      simulator.holdTasks = true;
      const accepted = await fetch(`http://127.0.0.1:${port}/v1/generate`, {
        method: 'POST',
        headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'outlives its process', async: true }),
      });
      expect(accepted.status).toBe(202);
      const { id } = (await accepted.json()) as { id: string };
      const polls = () => simulator.received.filter((r) => r.path.startsWith('/v1/tasks/')).length;
      await until(() => polls() >= 2, 'two task polls');

      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      const atExit = polls();
      const row = jobRow({ dataDir }, id);
      expect(row.status).toBe('running');
      expect(row.upstream_task_id).toMatch(/^sim-task-/);
      expect(Number(row.lease_until)).toBe(0);
      await fetch(`${simulator.url}/sim/files/none`);
      expect(polls()).toBe(atExit);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await simulator.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('a second SIGTERM during a graceful stop (dist/server.js)', () => {
  it('a second later, stops the process at once, exit 1, instead of waiting for the call in flight; not at once after the first', async () => {
    const simulator = await startUpstreamSimulator({ apiKey: UPSTREAM_KEY, taskReadyAfterMs: 30 });
    const dataDir = mkdtempSync(join(tmpdir(), 'gw-stop-twice-'));
    const port = await freePort();
    const { child, output } = await startGatewayProcess(port, {
      DATA_DIR: dataDir,
      AIHUBMIX_API_KEY: UPSTREAM_KEY,
      AIHUBMIX_BASE_URL: simulator.url,
      GATEWAY_API_KEYS: `design:${CLIENT_KEY}`,
      // An hour: the first SIGTERM's stop waits for the hanging call within it.
      JOB_SHUTDOWN_GRACE_MS: '3600000',
      UPSTREAM_TIMEOUT_MS: '3600000',
    });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      simulator.failNext('hang');
      const accepted = await fetch(`http://127.0.0.1:${port}/v1/generate`, {
        method: 'POST',
        headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-image-1', prompt: 'never answered', async: true }),
      });
      expect(accepted.status).toBe(202);
      const { id } = (await accepted.json()) as { id: string };
      await until(() => simulator.received.some((r) => r.method === 'POST'), `the call upstream (${output()})`);

      // The same stop delivered twice at once (npm's copy of a terminal's Ctrl-C, systemd's signal to
      // every process of the unit) is one stop: the gateway waits for the call.
      child.kill('SIGTERM');
      // Apart, so that the kernel does not merge them into one, and within the second.
      await sleep(200);
      child.kill('SIGTERM');
      const first = await Promise.race([exited, sleep(1500).then(() => 'waiting' as const)]);
      expect(first).toBe('waiting');
      child.kill('SIGTERM');
      // Bounded, so that a stop that still waits fails here and the process is killed below.
      expect(await Promise.race([exited, sleep(10_000).then(() => 'still running' as const)])).toBe(1);
      expect(output()).toContain('stopped at once: a second signal came during the graceful stop');
      // Sent, so not sent again after a restart: it stays running until one fails it.
      expect(jobRow({ dataDir }, id).status).toBe('running');
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await simulator.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
