/**
 * `npm run simulator` (dist/simulator/serve-simulator.js): the upstream simulator alone, for
 * gateways started with `npm start`; what it prints is what a replica is started with.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, kill9, startGatewayProcess, type GatewayProcess } from './gateway-process.js';

const script = new URL('../dist/simulator/serve-simulator.js', import.meta.url).pathname;
const children: ChildProcess[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const child of children.splice(0)) await kill9(child);
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function startSimulator(env: Record<string, string>): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, [script], { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => output, exited };
}

describe('npm run simulator', () => {
  it('prints the variables to start a gateway with; two replicas started so share its tasks', async () => {
    const sim = startSimulator({ SIMULATOR_PORT: String(await freePort()), SIMULATOR_KEY: 'sim-shared-test-key' });
    for (let i = 0; i < 200 && !/npm start/.test(sim.output()); i++) await sleep(25);
    const line = /AIHUBMIX_BASE_URL=(\S+) AIHUBMIX_API_KEY=(\S+) npm start/.exec(sim.output());
    expect(line, sim.output()).not.toBeNull();
    const [, baseUrl, key] = line!;
    expect(key).toBe('sim-shared-test-key');

    const data = mkdtempSync(join(tmpdir(), 'gw-sim-'));
    dirs.push(data);
    const upstream = { AIHUBMIX_BASE_URL: baseUrl, AIHUBMIX_API_KEY: key, GATEWAY_API_KEYS: 'team:gk-sim-test-0123456789abcdef', DATA_DIR: data, TASK_POLL_INTERVAL_MS: '100', JOB_LEASE_MS: '1000' };
    const ports = [await freePort(), await freePort()];
    const replicas: GatewayProcess[] = [];
    for (const port of ports) {
      const replica = await startGatewayProcess(port, upstream);
      children.push(replica.child);
      replicas.push(replica);
    }
    // A task-based model's job made on one replica, which dies once its task is sent: the other
    // replica carries it on, polling the same task of the one upstream.
    const made = await fetch(`http://127.0.0.1:${ports[0]}/v1/generate`, {
      method: 'POST',
      headers: { authorization: 'Bearer gk-sim-test-0123456789abcdef', 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'a lighthouse', async: true }),
    });
    expect(made.status, await made.clone().text()).toBe(202);
    const { id } = (await made.json()) as { id: string };
    const auth = { authorization: 'Bearer gk-sim-test-0123456789abcdef' };
    // Its first progress event: the task was made upstream, and its id kept in the job's row.
    const events = await fetch(`http://127.0.0.1:${ports[0]}/v1/jobs/${id}/events`, { headers: auth });
    const reader = events.body!.getReader();
    let seen = '';
    while (!/event: progress/.test(seen)) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += new TextDecoder().decode(value);
    }
    expect(seen).toMatch(/event: progress/);
    await kill9(replicas[0]!.child);
    const job = await fetch(`http://127.0.0.1:${ports[1]}/v1/jobs/${id}?wait=30`, { headers: auth });
    const body = (await job.json()) as { status: string; result?: { images: unknown[] } };
    expect(body.status, JSON.stringify(body)).toBe('succeeded');
    expect(body.result?.images).toHaveLength(1);
  });

  it('stops on SIGHUP (a closed terminal), as on SIGTERM, freeing its port', async () => {
    const port = await freePort();
    const sim = startSimulator({ SIMULATOR_PORT: String(port) });
    for (let i = 0; i < 200 && !/npm start/.test(sim.output()); i++) await sleep(25);
    expect(sim.output()).toMatch(/npm start/);
    sim.child.kill('SIGHUP');
    expect(await sim.exited).toBe(0);
  });

  it('a SIMULATOR_PORT that is no port stops it at once, naming the variable', async () => {
    const sim = startSimulator({ SIMULATOR_PORT: 'eighty' });
    expect(await sim.exited).toBe(2);
    expect(sim.output()).toMatch(/^SIMULATOR_PORT must be a port number \(0 to 65535; 0: any free one\), not "eighty"/);
  });
});
