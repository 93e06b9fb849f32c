/**
 * No record of an answered request is lost to `kill -9`: a real gateway process (the built
 * dist/server.js) answers N concurrent requests, is killed with SIGKILL as soon as the last answer
 * has arrived, and a new process on the same storage finds N records, and counts the key's daily
 * images from them as they were answered. On SQLite (DATA_DIR) and on PostgreSQL (DATABASE_URL).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startUpstreamSimulator, type UpstreamSimulator } from '../src/simulator/upstream-simulator.js';
import { CLIENT_KEY, UPSTREAM_KEY } from './harness.js';
import { freshPostgres, postgresProblem } from './services.js';

const root = new URL('..', import.meta.url).pathname;
const REQUESTS = 120;
/** The key's daily image limit: a few more than the requests answered before the kill. */
const IMAGES_PER_DAY = REQUESTS + 3;

let simulator: UpstreamSimulator;
const children: ChildProcess[] = [];

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise((r) => server.close(r));
  return port;
}

async function startGateway(port: number, env: Record<string, string>): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['dist/server.js'], {
    cwd: root,
    env: {
      PATH: process.env.PATH,
      PORT: String(port),
      HOST: '127.0.0.1',
      AIHUBMIX_API_KEY: UPSTREAM_KEY,
      AIHUBMIX_BASE_URL: simulator.url,
      UPSTREAM_RETRIES: '0',
      LOG_LEVEL: 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  for (let i = 0; i < 300; i++) {
    const up = await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false);
    if (up) return child;
    if (child.exitCode !== null) throw new Error(`gateway exited with ${child.exitCode}: ${output}`);
    await sleep(50);
  }
  throw new Error(`gateway did not start: ${output}`);
}

async function kill9(child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
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
