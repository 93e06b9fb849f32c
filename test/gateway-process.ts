/**
 * A real gateway process (dist/server.js, built by test/global-setup.ts) for the tests that need
 * one: a SIGKILL, a SIGTERM, a restart on the same data.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

const root = new URL('..', import.meta.url).pathname;

/** A port nothing listens on at the moment it is asked for. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise((r) => server.close(r));
  return port;
}

export interface GatewayProcess {
  child: ChildProcess;
  /** What it printed so far (stdout and stderr). */
  output(): string;
}

/** dist/server.js (or `script`) on 127.0.0.1:port with env over a few defaults; its output collected. */
function spawnGateway(port: number, env: Record<string, string | undefined>, script: string, uid?: number, cwd = root): GatewayProcess {
  const given = { PATH: process.env.PATH, PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'warn', STORAGE_MIN_FREE_BYTES: '0', ...env };
  const child = spawn(process.execPath, [new URL(script, new URL('..', import.meta.url)).pathname], {
    cwd,
    // A variable given as undefined is left unset (HOST: undefined, to see the default).
    env: Object.fromEntries(Object.entries(given).filter(([, value]) => value !== undefined)),
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(uid !== undefined ? { uid, gid: uid } : {}),
  });
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  return { child, output: () => output };
}

/**
 * Starts dist/server.js (or `script`: dist/demo.js) on 127.0.0.1:port with env (over a few defaults:
 * warn logs, the storage floor off so the machine's free space decides nothing) and waits until
 * /healthz answers.
 */
export async function startGatewayProcess(port: number, env: Record<string, string | undefined>, script = 'dist/server.js', cwd?: string): Promise<GatewayProcess> {
  const { child, output } = spawnGateway(port, env, script, undefined, cwd);
  for (let i = 0; i < 400; i++) {
    const up = await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false);
    if (up) return { child, output };
    if (child.exitCode !== null) throw new Error(`gateway exited with ${child.exitCode}: ${output()}`);
    await sleep(25);
  }
  child.kill('SIGKILL');
  throw new Error(`gateway did not start: ${output()}`);
}

/**
 * Runs dist/server.js with env (over the defaults of startGatewayProcess), for a start that must
 * stop by itself: its exit code and output. One still running after timeoutMs is killed (code null).
 * `uid`: run as that user (and group of that number), for a test that needs an unprivileged process.
 */
export async function runFailingStart(env: Record<string, string | undefined>, opts: { timeoutMs?: number; uid?: number } = {}): Promise<{ code: number | null; output: string }> {
  const { child, output } = spawnGateway(await freePort(), env, 'dist/server.js', opts.uid);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 10_000);
  const code = await exited;
  clearTimeout(timer);
  return { code, output: output() };
}

/** SIGKILL, and wait until the process is gone. */
export async function kill9(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}
