/**
 * `npm start` as an operator runs it: it builds only when dist/ is older than its sources, and a
 * SIGTERM to npm (what a process supervisor sends) stops the gateway too, instead of leaving it
 * serving on the port.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { CLIENT_KEY, UPSTREAM_KEY } from './harness.js';
import { freePort } from './gateway-process.js';

const root = new URL('..', import.meta.url).pathname;
let npm: ChildProcess | undefined;
/** npm was started in a process group of its own: the whole group is killed after the test. */
let npmGroup = false;
let dataDir: string | undefined;

afterEach(() => {
  if (npm && npmGroup) {
    try {
      process.kill(-npm.pid!, 'SIGKILL');
    } catch {
      // the group is gone already
    }
  } else if (npm && npm.exitCode === null && npm.signalCode === null) npm.kill('SIGKILL');
  npm = undefined;
  npmGroup = false;
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  dataDir = undefined;
});

const answers = (port: number) => fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false);

/** `npm start` on a free port; `detached`: in a process group of its own, as a terminal's foreground job is. */
async function startNpm(detached = false): Promise<{ port: number; output: () => string; exited: Promise<number | null> }> {
  dataDir = mkdtempSync(join(tmpdir(), 'gw-npm-start-'));
  const port = await freePort();
  const started = spawn('npm', ['start'], {
    cwd: root,
    detached,
    env: {
      // npm and the scripts run on this Node (the pinned one), whatever the PATH's node is.
      PATH: `${join(process.execPath, '..')}:${process.env.PATH}`,
      PORT: String(port),
      HOST: '127.0.0.1',
      DATA_DIR: dataDir,
      AIHUBMIX_API_KEY: UPSTREAM_KEY,
      AIHUBMIX_BASE_URL: 'http://127.0.0.1:9',
      GATEWAY_API_KEYS: `design:${CLIENT_KEY}`,
      LOG_LEVEL: 'info',
      STORAGE_MIN_FREE_BYTES: '0',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  npm = started;
  npmGroup = detached;
  let output = '';
  started.stdout!.on('data', (chunk) => (output += chunk));
  started.stderr!.on('data', (chunk) => (output += chunk));
  // 'close': the process has exited and its output has all been read.
  const exited = new Promise<number | null>((resolve) => started.once('close', (code) => resolve(code)));
  for (let i = 0; i < 600 && !(await answers(port)); i++) {
    if (started.exitCode !== null) throw new Error(`npm start exited: ${output}`);
    await sleep(25);
  }
  expect(await answers(port), output).toBe(true);
  return { port, output: () => output, exited };
}

describe('npm start', () => {
  it('starts the built gateway without building it again, and stops it on a SIGTERM to npm', async () => {
    const builtAt = statSync(join(root, 'dist', '.built')).mtimeMs;
    const { port, output, exited } = await startNpm();
    // dist/ is fresh (test/global-setup.ts built it): nothing was compiled.
    expect(output()).not.toMatch(/> tsc /);
    expect(statSync(join(root, 'dist', '.built')).mtimeMs).toBe(builtAt);

    npm!.kill('SIGTERM');
    expect(await exited).toBe(0);
    // The gateway went with npm: nothing answers on its port.
    for (let i = 0; i < 200 && (await answers(port)); i++) await sleep(25);
    expect(await answers(port)).toBe(false);
    // It stopped as on its own SIGTERM: gracefully, saying so.
    expect(output()).toMatch(/"signal":"SIGTERM".*"msg":"shutting down/);
    // And that it finished draining, as its last line.
    expect(output().trim().split('\n').at(-1)).toMatch(/"signal":"SIGTERM".*"msg":"stopped: the graceful stop is over"/);
  }, 60_000);

  it("stops gracefully on one Ctrl-C in a terminal, which reaches the gateway twice (from the terminal, and npm's copy)", async () => {
    const { port, output, exited } = await startNpm(true);
    // What a terminal does on Ctrl-C: SIGINT to every process of the foreground group.
    process.kill(-npm!.pid!, 'SIGINT');
    await exited;
    for (let i = 0; i < 200 && (await answers(port)); i++) await sleep(25);
    expect(await answers(port)).toBe(false);
    expect(output()).not.toContain('stopped at once');
    expect(output()).toMatch(/"signal":"SIGINT".*"msg":"stopped: the graceful stop is over"/);
  }, 60_000);
});

describe('scripts/build-if-stale.mjs (before npm start and npm run demo)', () => {
  /** A checkout of its own: the script, one source file, a stamp of `stampAge` ms ago (none: never built), and an `npm` that notes its call. */
  function checkout(stampAge: number | undefined): { dir: string; run: () => string | undefined } {
    const dir = mkdtempSync(join(tmpdir(), 'gw-stale-'));
    dataDir = dir;
    mkdirSync(join(dir, 'scripts'));
    mkdirSync(join(dir, 'src'));
    mkdirSync(join(dir, 'dist'));
    mkdirSync(join(dir, 'bin'));
    copyFileSync(join(root, 'scripts', 'build-if-stale.mjs'), join(dir, 'scripts', 'build-if-stale.mjs'));
    writeFileSync(join(dir, 'src', 'server.ts'), 'export {};\n');
    const fakeNpm = join(dir, 'bin', 'npm');
    writeFileSync(fakeNpm, `#!/bin/sh\necho "$@" > "${join(dir, 'npm-called')}"\n`);
    chmodSync(fakeNpm, 0o755);
    const now = Date.now() / 1000;
    for (const path of [join(dir, 'scripts'), join(dir, 'scripts', 'build-if-stale.mjs'), join(dir, 'src'), join(dir, 'src', 'server.ts')]) utimesSync(path, now - 60, now - 60);
    if (stampAge !== undefined) {
      writeFileSync(join(dir, 'dist', '.built'), '');
      utimesSync(join(dir, 'dist', '.built'), now - 60 + stampAge / 1000, now - 60 + stampAge / 1000);
    }
    return {
      dir,
      run: () => {
        execFileSync(process.execPath, [join(dir, 'scripts', 'build-if-stale.mjs')], { env: { PATH: `${join(dir, 'bin')}:${process.env.PATH}` } });
        const called = join(dir, 'npm-called');
        return existsSync(called) ? readFileSync(called, 'utf8').trim() : undefined;
      },
    };
  }

  it('builds when dist/ was never built', () => {
    expect(checkout(undefined).run()).toBe('run build');
  });

  it('builds when a source changed after the last build', () => {
    // Built 10 s before the source's last change.
    expect(checkout(-10_000).run()).toBe('run build');
  });

  it('builds when openapi.yaml changed (dist/openapi.json, which /docs reads, comes from it)', () => {
    const { dir, run } = checkout(10_000);
    writeFileSync(join(dir, 'openapi.yaml'), 'openapi: 3.1.0\n');
    expect(run()).toBe('run build');
  });

  it('does not build when dist/ is newer than every source', () => {
    expect(checkout(10_000).run()).toBeUndefined();
  });

  it('--stamp records a build', () => {
    const { dir } = checkout(undefined);
    execFileSync(process.execPath, [join(dir, 'scripts', 'build-if-stale.mjs'), '--stamp']);
    expect(statSync(join(dir, 'dist', '.built')).mtimeMs).toBeGreaterThan(Date.now() - 60_000);
  });
});
