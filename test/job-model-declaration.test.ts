/**
 * A job keeps the model declaration it started with (issue 18): retired or changed in CATALOGUE_FILE
 * while the job's upstream task runs, the model does not fail or change the job when it resumes.
 * The app is closed (a graceful stop frees the job's lease) and built again on the same DATA_DIR,
 * whose catalogue no longer serves the model; the simulator holds the task until the restart.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { startUpstreamSimulator, type UpstreamSimulator } from '../src/simulator/upstream-simulator.js';
import { CLIENT_KEY, UPSTREAM_KEY } from './harness.js';

const auth = { authorization: `Bearer ${CLIENT_KEY}` };
let dir: string | undefined;
let simulator: UpstreamSimulator | undefined;
const apps: FastifyInstance[] = [];

afterEach(async () => {
  for (const app of apps.splice(0)) await app.close();
  await simulator?.close();
  simulator = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

async function until(ready: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (await ready()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`never: ${what}`);
}

async function gateway(file: string, env: Record<string, string> = {}): Promise<FastifyInstance> {
  const config = loadConfig({
    AIHUBMIX_API_KEY: UPSTREAM_KEY,
    AIHUBMIX_BASE_URL: simulator!.url,
    GATEWAY_API_KEYS: `design:${CLIENT_KEY}`,
    DATA_DIR: join(dir!, 'data'),
    CATALOGUE_FILE: file,
    TASK_POLL_INTERVAL_MS: '10',
    UPSTREAM_RETRIES: '0',
    STORAGE_MIN_FREE_BYTES: '0',
    LOG_LEVEL: 'silent',
    ...env,
  });
  const app = await buildApp(config);
  apps.push(app);
  await app.ready();
  return app;
}

describe('a resumed job', () => {
  it('runs with the model declaration it started with, though CATALOGUE_FILE has retired the model since', async () => {
    dir = mkdtempSync(join(tmpdir(), 'gw-jobdecl-'));
    const file = join(dir, 'catalogue.yaml');
    writeFileSync(file, 'models: []\n');
    simulator = await startUpstreamSimulator({ apiKey: UPSTREAM_KEY, taskReadyAfterMs: 30 });
    simulator.holdTasks = true;
    const first = await gateway(file);
    const accepted = await first.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'flux-kontext-pro', prompt: 'kept', async: true } });
    expect(accepted.statusCode).toBe(202);
    const id = accepted.json().id as string;
    const polls = () => simulator!.received.filter((r) => r.path.startsWith('/v1/tasks/'));
    await until(() => polls().length >= 1, 'a task poll');
    const submissions = simulator.received.filter((r) => r.method === 'POST');
    expect(submissions.map((r) => r.path)).toEqual(['/v1/models/bfl/flux-kontext-pro/predictions']);

    writeFileSync(file, 'models:\n  - id: flux-kontext-pro\n    retired: true\n    replacement: gpt-image-2\n');
    // Retired while its task runs: a new request for it is refused, with nothing sent.
    expect(first.reloadCatalogue()).toEqual({ ok: true });
    expect((await first.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'flux-kontext-pro', prompt: 'x' } })).statusCode).toBe(410);
    await first.close();
    apps.splice(0);

    simulator.holdTasks = false;
    const second = await gateway(file);
    const job = async () => (await second.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: auth })).json();
    await until(async () => ['succeeded', 'failed'].includes((await job()).status), 'the job ending');
    const finished = await job();
    expect(finished.error).toBeUndefined();
    expect(finished.status).toBe('succeeded');
    expect(finished.model).toBe('flux-kontext-pro');
    // Its task was polled to the end, never sent again.
    expect(simulator.received.filter((r) => r.method === 'POST')).toHaveLength(1);
    const taskPaths = new Set(polls().map((r) => r.path));
    expect(taskPaths.size).toBe(1);
  });

  it('left queued, is sent with the upstream model it was accepted for, though CATALOGUE_FILE has changed it since', async () => {
    dir = mkdtempSync(join(tmpdir(), 'gw-jobdecl-'));
    const file = join(dir, 'catalogue.yaml');
    const derived = (upstream: string) => `models:\n  - id: gpt-image-2.5\n    from: gpt-image-2\n    upstream_model: ${upstream}\n`;
    writeFileSync(file, derived('gpt-image-2.5'));
    simulator = await startUpstreamSimulator({ apiKey: UPSTREAM_KEY, taskReadyAfterMs: 30 });
    // One upstream slot, held by a call that never answers: the second job waits for it, never sent.
    simulator.failNext('hang');
    const env = { UPSTREAM_MAX_CONCURRENCY: '1', JOB_SHUTDOWN_GRACE_MS: '20' };
    const first = await gateway(file, env);
    const generate = (prompt: string) => first.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'gpt-image-2.5', prompt, async: true } });
    expect((await generate('holds the slot')).statusCode).toBe(202);
    await until(() => simulator!.received.length === 1, 'the first submission');
    const waiting = await generate('waits for a slot');
    expect(waiting.statusCode).toBe(202);
    const id = waiting.json().id as string;
    expect((await first.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: auth })).json().status).toBe('queued');

    writeFileSync(file, derived('gpt-image-2.6'));
    expect(first.reloadCatalogue()).toEqual({ ok: true });
    await first.close();
    apps.splice(0);

    const second = await gateway(file, env);
    const job = async () => (await second.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: auth })).json();
    await until(async () => ['succeeded', 'failed'].includes((await job()).status), 'the job ending');
    expect((await job()).status).toBe('succeeded');
    const sent = simulator.received.filter((r) => r.method === 'POST' && JSON.stringify(r.json ?? '').includes('waits for a slot'));
    expect(sent.map((r) => r.path)).toEqual(['/v1/models/openai/gpt-image-2.5/predictions']);
  });
});
