/**
 * SIGHUP never ends the gateway (Node's default for it is to terminate): it reloads what can be
 * reloaded, CATALOGUE_FILE and GATEWAY_KEYS_FILE, whichever is set, and does nothing more otherwise.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { freePort, startGatewayProcess } from './gateway-process.js';
import { ADMIN_KEY, CLIENT_KEY, OTHER_CLIENT_KEY, UPSTREAM_KEY, startHarness, type Harness } from './harness.js';

const KEPT = 'gk-test-sighup-kept-0123456789ab';
const LEAKED = 'gk-test-sighup-leaked-0123456789';

let child: ChildProcess | undefined;
let dir: string | undefined;
let h: Harness | undefined;

afterEach(async () => {
  if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  child = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
  await h?.close();
  h = undefined;
});

const keysFile = (...keys: Array<[string, string]>) => `keys:\n${keys.map(([id, key]) => `  - id: ${id}\n    team: ${id}\n    key: ${key}\n`).join('')}`;

describe('SIGHUP to a gateway process', () => {
  it('does not end a gateway without CATALOGUE_FILE or GATEWAY_KEYS_FILE: it still answers', async () => {
    dir = mkdtempSync(join(tmpdir(), 'gw-hup-'));
    const port = await freePort();
    const gateway = await startGatewayProcess(port, { AIHUBMIX_API_KEY: UPSTREAM_KEY, GATEWAY_API_KEYS: `design:${CLIENT_KEY}`, DATA_DIR: dir, LOG_LEVEL: 'info' });
    child = gateway.child;
    for (let i = 0; i < 3; i++) {
      child.kill('SIGHUP');
      await sleep(200);
    }
    expect(child.exitCode, gateway.output()).toBeNull();
    expect(child.signalCode, gateway.output()).toBeNull();
    const models = await fetch(`http://127.0.0.1:${port}/v1/models`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
    expect(models.status).toBe(200);
    await vi.waitFor(() => expect(gateway.output()).toMatch(/"signal":"SIGHUP".*SIGHUP: no file to reload/), { timeout: 5000, interval: 50 });
  }, 30_000);

  it('does not end a gateway still loading: the entry points take SIGHUP before anything else loads', async () => {
    // The guard, alone in a process: a SIGHUP after it is survived.
    const guard = new URL('../dist/hangup-guard.js', import.meta.url).pathname;
    const script = `await import(${JSON.stringify(guard)}); process.kill(process.pid, 'SIGHUP'); setTimeout(() => console.log('alive'), 200);`;
    const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 10_000 });
    expect(run.signal).toBeNull();
    expect(run.stdout.trim()).toBe('alive');
    // And each entry point imports it first, before the modules that take time to load.
    for (const entry of ['server.js', 'demo.js']) {
      const firstImport = /^import\s[^;]*;/m.exec(readFileSync(new URL(`../dist/${entry}`, import.meta.url), 'utf8'))?.[0];
      expect(firstImport, entry).toBe("import './hangup-guard.js';");
    }
  });

  it('reloads GATEWAY_KEYS_FILE: a key removed from the file is refused (401) at once after the HUP, the others still work', async () => {
    dir = mkdtempSync(join(tmpdir(), 'gw-hup-'));
    const file = join(dir, 'keys.yaml');
    writeFileSync(file, keysFile(['kept', KEPT], ['leaked', LEAKED]));
    const port = await freePort();
    const gateway = await startGatewayProcess(port, { AIHUBMIX_API_KEY: UPSTREAM_KEY, GATEWAY_KEYS_FILE: file, DATA_DIR: join(dir, 'data'), LOG_LEVEL: 'info' });
    child = gateway.child;
    const status = (key: string) => fetch(`http://127.0.0.1:${port}/v1/models`, { headers: { authorization: `Bearer ${key}` } }).then((r) => r.status);
    expect(await status(LEAKED)).toBe(200);

    writeFileSync(file, keysFile(['kept', KEPT]));
    // The file is not watched: without the HUP the key would keep working.
    await sleep(300);
    expect(await status(LEAKED)).toBe(200);
    child.kill('SIGHUP');
    const sent = Date.now();
    await vi.waitFor(async () => expect(await status(LEAKED)).toBe(401), { timeout: 5000, interval: 20 });
    expect(Date.now() - sent).toBeLessThan(2000);
    expect(await status(KEPT)).toBe(200);
    expect(child.exitCode).toBeNull();
    // The log is written out in batches.
    await vi.waitFor(() => expect(gateway.output()).toMatch(/"removed":\["leaked"\].*GATEWAY_KEYS_FILE reloaded/), { timeout: 5000, interval: 50 });
  }, 30_000);
});

describe('SIGHUP in the app (reloadFiles)', () => {
  it('keeps the keys the file had when the new file does not validate, and says why', async () => {
    dir = mkdtempSync(join(tmpdir(), 'gw-hup-'));
    const file = join(dir, 'keys.yaml');
    writeFileSync(file, keysFile(['kept', KEPT], ['leaked', LEAKED]));
    h = await startHarness({ GATEWAY_KEYS_FILE: file });
    const status = async (key: string) => (await h!.app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: `Bearer ${key}` } })).statusCode;
    const minted = await h.app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${LEAKED}` }, payload: {} });
    expect(minted.statusCode, minted.body).toBe(201);
    const token = minted.json().token as string;
    expect(await status(token)).toBe(200);
    writeFileSync(file, 'keys:\n  - id: kept\n    team: kept\n');
    process.emit('SIGHUP', 'SIGHUP');
    expect(await status(LEAKED)).toBe(200);
    expect(h.logs.some((line) => line.includes('GATEWAY_KEYS_FILE reload refused, the keys it had keep working'))).toBe(true);
    // A file that reuses a key of GATEWAY_API_KEYS is refused as at start, naming the entry.
    writeFileSync(file, keysFile(['kept', KEPT], ['copy', OTHER_CLIENT_KEY]));
    const result = h.app.keyStore.reloadFile((name) => h!.app.catalogue.find(name));
    expect(result.ok ? '' : result.error).toMatch(/key copy is the same key as GATEWAY_API_KEYS \(team ads\)/);
    expect(await status(LEAKED)).toBe(200);
    // A good one is served: the env keys and the admin key are untouched.
    writeFileSync(file, keysFile(['kept', KEPT]));
    process.emit('SIGHUP', 'SIGHUP');
    expect(await status(LEAKED)).toBe(401);
    // A browser token of the removed key goes with it.
    expect(await status(token)).toBe(401);
    expect(await status(KEPT)).toBe(200);
    expect(await status(CLIENT_KEY)).toBe(200);
    expect(await status(ADMIN_KEY)).toBe(200);
  });

  it('takes one edit of both files: a model dropped from the catalogue with the key that allowed it', async () => {
    dir = mkdtempSync(join(tmpdir(), 'gw-hup-'));
    const keys = join(dir, 'keys.yaml');
    const catalogue = join(dir, 'catalogue.yaml');
    const withModels = (models: string[]) => `${keysFile(['kept', KEPT])}    models: [${models.join(', ')}]\n`;
    writeFileSync(catalogue, 'models:\n  - id: house-style\n    from: gpt-image-1\n    upstream_model: house-style\n');
    writeFileSync(keys, withModels(['gpt-image-1', 'house-style']));
    h = await startHarness({ GATEWAY_KEYS_FILE: keys, CATALOGUE_FILE: catalogue });
    const served = () => h!.app.catalogue.find('house-style') !== undefined;
    expect(served()).toBe(true);
    // Alone, the new catalogue strands the key's allow-list: refused. With the new keys file, taken.
    writeFileSync(catalogue, 'models: []\n');
    writeFileSync(keys, withModels(['gpt-image-1']));
    process.emit('SIGHUP', 'SIGHUP');
    expect(served()).toBe(false);
    expect(h.app.keyStore.keys.list().find((c) => c.id === 'kept')?.models).toEqual(['gpt-image-1']);
    expect(h.logs.some((line) => line.includes('SIGHUP: CATALOGUE_FILE reloaded once GATEWAY_KEYS_FILE was'))).toBe(true);
  });

  it('the handler goes with the app', async () => {
    const before = process.listenerCount('SIGHUP');
    h = await startHarness();
    expect(process.listenerCount('SIGHUP')).toBe(before + 1);
    await h.close();
    h = undefined;
    expect(process.listenerCount('SIGHUP')).toBe(before);
  });
});
