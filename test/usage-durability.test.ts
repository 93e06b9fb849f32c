/**
 * No record of an answered request is lost to `kill -9`: a real gateway process (the built
 * dist/server.js) answers N concurrent requests, is killed with SIGKILL as soon as the last answer
 * has arrived, and a new process on the same storage finds N records, and counts the key's daily
 * images from them as they were answered. On SQLite (DATA_DIR) and on PostgreSQL (DATABASE_URL).
 */
import type { ChildProcess } from 'node:child_process';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startUpstreamSimulator, type UpstreamSimulator } from '../src/simulator/upstream-simulator.js';
import { DatabaseSync } from 'node:sqlite';
import { CLIENT_KEY, UPSTREAM_KEY, startListening, type ListeningHarness } from './harness.js';
import { freshPostgres, postgresProblem } from './services.js';
import { readStream } from './sse.js';
import { freePort, kill9, startGatewayProcess } from './gateway-process.js';

const REQUESTS = 120;
/** The key's daily image limit: a few more than the requests answered before the kill. */
const IMAGES_PER_DAY = REQUESTS + 3;

let simulator: UpstreamSimulator;
const children: ChildProcess[] = [];

async function startGateway(port: number, env: Record<string, string>): Promise<ChildProcess> {
  const { child } = await startGatewayProcess(port, {
    AIHUBMIX_API_KEY: UPSTREAM_KEY,
    AIHUBMIX_BASE_URL: simulator.url,
    UPSTREAM_RETRIES: '0',
    ...env,
  });
  children.push(child);
  return child;
}

beforeAll(async () => {
  simulator = await startUpstreamSimulator({ apiKey: UPSTREAM_KEY, taskReadyAfterMs: 30 });
}, 60_000);

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await simulator?.close();
});

/** The whole story on one storage: N answered, SIGKILL, restart, N records and the limit counted from them. */
async function answeredThenKilled(storageEnv: Record<string, string>): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'gw-durable-'));
  const keysFile = join(dataDir, 'keys.yaml');
  writeFileSync(
    keysFile,
    `keys:\n  - id: design-web\n    key: ${CLIENT_KEY}\n    team: design\n    rpm: 100000\n    images_per_day: ${IMAGES_PER_DAY}\n`,
  );
  const port = await freePort();
  const env = { DATA_DIR: dataDir, GATEWAY_KEYS_FILE: keysFile, ...storageEnv };
  const generate = () =>
    fetch(`http://127.0.0.1:${port}/v1/generate`, {
      method: 'POST',
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-image-1', prompt: 'a lighthouse at dusk', size: '1024x1024' }),
    });
  try {
    const first = await startGateway(port, env);
    const answers = await Promise.all(Array.from({ length: REQUESTS }, async () => (await generate()).status));
    // Killed the moment the last answer is in: nothing the gateway did after answering counts.
    await kill9(first);
    expect(answers.filter((s) => s === 200)).toHaveLength(REQUESTS);

    await startGateway(port, env);
    const hour = 3600_000;
    const query = new URLSearchParams({ from: new Date(Date.now() - hour).toISOString(), to: new Date(Date.now() + hour).toISOString(), group_by: 'key' });
    const usage = (await (await fetch(`http://127.0.0.1:${port}/v1/usage?${query}`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } })).json()) as {
      data: Array<{ key: string; requests: number; images: number; errors: number }>;
    };
    expect(usage.data).toEqual([expect.objectContaining({ key: 'design-web', requests: REQUESTS, images: REQUESTS, errors: 0 })]);

    // The daily limit is counted from those records: exactly the 3 images left, then refused.
    const after: number[] = [];
    for (let i = 0; i < 4; i++) after.push((await generate()).status);
    expect(after).toEqual([200, 200, 200, 429]);
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) await kill9(c);
    rmSync(dataDir, { recursive: true, force: true });
  }
}

describe('usage is durable before the answer', () => {
  it(`SQLite: ${REQUESTS} answered, then SIGKILL: ${REQUESTS} records after the restart, and the daily limit counted from them`, async () => {
    await answeredThenKilled({});
  }, 120_000);

  describe.skipIf(postgresProblem !== undefined)('PostgreSQL (skipped when unreachable and REQUIRE_SERVICES is unset)', () => {
    let pg: Awaited<ReturnType<typeof freshPostgres>>;
    beforeAll(async () => {
      pg = await freshPostgres();
    });
    afterAll(async () => {
      await pg?.drop();
    });

    it(`PostgreSQL: ${REQUESTS} answered, then SIGKILL: ${REQUESTS} records after the restart, and the daily limit counted from them`, async () => {
      await answeredThenKilled({ DATABASE_URL: pg.url });
    }, 120_000);
  });
});

describe('nothing is told before its usage is committed', () => {
  let h: ListeningHarness;
  beforeAll(async () => {
    h = await startListening({ RATE_LIMIT_RPM: '1000', STREAM_KEEPALIVE_MS: '20' });
  });
  afterAll(async () => h?.close());

  const post = (body: unknown) =>
    h.fetch(`${h.base}/v1/generate`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  /** The request's committed record, read from the database itself (no flush of the usage log). */
  const committed = (requestId: string) => h.app.db.get<{ status: number; images_returned: number }>('SELECT status, images_returned FROM usage_records WHERE request_id = $1', [requestId]);

  it('a JSON answer is written only once its record is committed', async () => {
    const responses: ServerResponse[] = [];
    const capture = (_req: IncomingMessage, res: ServerResponse) => responses.push(res);
    h.app.server.prependListener('request', capture);
    const db = h.app.db;
    const batch = db.batch.bind(db);
    // At each commit: had the answer's headers gone out already?
    const answeredAtCommit: boolean[] = [];
    db.batch = (statements) => {
      answeredAtCommit.push(responses.some((r) => r.headersSent));
      return batch(statements);
    };
    try {
      const res = await post({ model: 'gpt-image-1', prompt: 'durable' });
      expect(res.status).toBe(200);
      await res.arrayBuffer();
      // Two commits, both before the answer: the image with its owner's entry, then the usage record.
      expect(answeredAtCommit).toEqual([false, false]);
      expect(await committed(res.headers.get('x-request-id')!)).toEqual({ status: 200, images_returned: 1 });
    } finally {
      db.batch = batch;
      h.app.server.off('request', capture);
    }
  });

  /**
   * Streams `body` from `path` while the usage commit is held: the events the client has once two
   * keep-alives came after the gateway asked for the commit (the keep-alive restarts with each
   * write, so the second was written after anything sent before that ask), then all of them.
   */
  async function streamWithCommitHeld(path: string, body: unknown): Promise<{ beforeCommit: string[]; all: string[] }> {
    const usage = h.app.usageLog;
    const original = usage.record.bind(usage);
    let asked = false;
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    usage.record = async (record) => {
      asked = true;
      await released;
      return original(record);
    };
    try {
      const res = await h.fetch(`${h.base}${path}`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const all: string[] = [];
      let beforeCommit: string[] | undefined;
      let keepAlives = 0;
      await readStream(res, (block) => {
        if (block.event) all.push(block.event);
        if (asked && beforeCommit === undefined && block.comment === 'keepalive' && ++keepAlives === 2) {
          beforeCommit = [...all];
          release();
        }
      });
      return { beforeCommit: beforeCommit ?? ['(never asked)'], all };
    } finally {
      usage.record = original;
      release();
    }
  }

  it('a stream’s image and succeeded events wait for its record’s commit; where it stands does not', async () => {
    const { beforeCommit, all } = await streamWithCommitHeld('/v1/generate', { model: 'flux-kontext-pro', prompt: 'durable stream', stream: true });
    expect(beforeCommit).toContain('running');
    expect(beforeCommit.filter((e) => e === 'image' || e === 'succeeded')).toEqual([]);
    expect(all.slice(-2)).toEqual(['image', 'succeeded']);
  });

  it('an OpenAI stream’s completed event waits for its record’s commit', async () => {
    const { beforeCommit, all } = await streamWithCommitHeld('/v1/images/generations', { model: 'gpt-image-1', prompt: 'durable openai stream', stream: true });
    expect(beforeCommit).toEqual([]);
    expect(all).toEqual(['image_generation.completed']);
  });

  it('an async job shows as succeeded only once its outcome is in the usage record of the request that started it', async () => {
    const usage = h.app.usageLog;
    const original = usage.completeJob.bind(usage);
    let writing!: () => void;
    const outcomeBeingWritten = new Promise<void>((resolve) => (writing = resolve));
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    usage.completeJob = async (...args: Parameters<typeof usage.completeJob>) => {
      writing();
      await released;
      return original(...args);
    };
    const reader = new DatabaseSync(join(h.dataDir, 'gateway.sqlite'), { readOnly: true });
    try {
      const res = await post({ model: 'gpt-image-1', prompt: 'durable job', async: true });
      expect(res.status).toBe(202);
      const { id } = (await res.json()) as { id: string };
      await outcomeBeingWritten;
      // Another reader of the file (a replica, or this one after a crash) sees no finished job yet.
      expect(reader.prepare('SELECT status FROM jobs WHERE id = ?').get(id)).not.toEqual({ status: 'succeeded' });
      release();
      for (let i = 0; i < 200 && (reader.prepare('SELECT status FROM jobs WHERE id = ?').get(id) as { status: string }).status !== 'succeeded'; i++) await sleep(10);
      expect(reader.prepare('SELECT status FROM jobs WHERE id = ?').get(id)).toEqual({ status: 'succeeded' });
      expect(reader.prepare('SELECT status, images_returned FROM usage_records WHERE job_id = ?').get(id)).toEqual({ status: 200, images_returned: 1 });
    } finally {
      usage.completeJob = original;
      release();
      reader.close();
    }
  });

  it('answers sent after a graceful stop began carry Connection: close', async () => {
    const stopping = await startListening();
    try {
      stopping.simulator.holdTasks = true;
      const submitted = await stopping.fetch(`${stopping.base}/v1/generate`, {
        method: 'POST',
        headers: { ...stopping.auth, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'outlives its gateway', async: true }),
      });
      const { id } = (await submitted.json()) as { id: string };
      expect(submitted.headers.get('connection')).not.toBe('close');
      const longPoll = stopping.fetch(`${stopping.base}/v1/jobs/${id}?wait=60`, { headers: stopping.auth });
      for (let i = 0; i < 200 && !stopping.simulator.received.some((r) => r.path.startsWith('/v1/tasks/')); i++) await sleep(10);
      // The long-poll ends when the stop begins, with the job's state.
      const closing = stopping.app.close();
      const answer = await longPoll;
      expect(answer.status).toBe(200);
      expect(answer.headers.get('connection')).toBe('close');
      await answer.arrayBuffer();
      await closing;
    } finally {
      await stopping.close().catch(() => {});
    }
  }, 20_000);
});
