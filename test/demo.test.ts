/**
 * `npm run demo` (dist/demo.js): the gateway in front of the built-in simulator, with a client key
 * made for the run and printed, unless GATEWAY_API_KEYS gives the keys.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, kill9, startGatewayProcess, type GatewayProcess } from './gateway-process.js';

let demo: GatewayProcess | undefined;
let dir: string | undefined;
afterEach(async () => {
  if (demo) await kill9(demo.child);
  demo = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

/** The demo's banner comes once it listens; the key is read off it as a user would. */
async function startDemo(env: Record<string, string | undefined>, opts: { inDir?: boolean } = {}): Promise<{ url: string; key: string | undefined; banner: string }> {
  dir = mkdtempSync(join(tmpdir(), 'gw-demo-'));
  const port = await freePort();
  // inDir: run from the temporary directory, so a relative DATA_DIR lands in it.
  demo = await startGatewayProcess(port, { DATA_DIR: join(dir, 'data'), ...env }, 'dist/demo.js', opts.inDir ? dir : undefined);
  for (let i = 0; i < 200 && !demo.output().includes('Try:'); i++) await sleep(25);
  const banner = demo.output();
  return { url: `http://127.0.0.1:${port}`, key: /client key: +(gk-demo-[0-9a-f]+)/.exec(banner)?.[1], banner };
}

const generate = (url: string, key: string) =>
  fetch(`${url}/v1/generate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-image-1', prompt: 'A deer drinking in the lake' }),
  });

describe('npm run demo', () => {
  it('prints a client key made for the run, and the printed request succeeds against the simulator with no upstream key', async () => {
    const { url, key, banner } = await startDemo({});
    expect(banner).toContain('built-in simulator');
    expect(key).toBeDefined();
    const res = await generate(url, key!);
    expect(res.status, await res.clone().text()).toBe(200);
    const body = (await res.json()) as { images: Array<{ url: string }> };
    expect((await fetch(body.images[0]!.url)).headers.get('content-type')).toBe('image/png');
  });

  it('prints an admin key made for the run, which manages keys; one given in GATEWAY_ADMIN_KEY is used and never printed', async () => {
    const { url, key, banner } = await startDemo({});
    const adminKey = /admin key: +(ga-demo-[0-9a-f]+)/.exec(banner)?.[1];
    expect(adminKey).toBeDefined();
    const asAdmin = await fetch(`${url}/v1/keys`, { headers: { authorization: `Bearer ${adminKey}` } });
    expect(asAdmin.status, await asAdmin.clone().text()).toBe(200);
    // The client key is not the operator's.
    expect((await fetch(`${url}/v1/keys`, { headers: { authorization: `Bearer ${key}` } })).status).toBe(403);
    await kill9(demo!.child);
    demo = undefined;

    const given = 'ga-operator-0123456789abcdef0123';
    const second = await startDemo({ GATEWAY_ADMIN_KEY: given });
    expect(second.banner).not.toContain(given);
    expect(second.banner).toMatch(/admin key: +GATEWAY_ADMIN_KEY as set/);
    expect((await fetch(`${second.url}/v1/keys`, { headers: { authorization: `Bearer ${given}` } })).status).toBe(200);
  });

  it('makes its key when only GATEWAY_KEYS_FILE is set: the file\'s keys work beside it', async () => {
    const fileKey = 'gk-file-0123456789abcdef0123456789';
    const keysDir = mkdtempSync(join(tmpdir(), 'gw-demo-keys-'));
    try {
      const file = join(keysDir, 'keys.yaml');
      writeFileSync(file, `keys:\n  - id: web\n    team: web\n    key: ${fileKey}\n`);
      const { url, key } = await startDemo({ GATEWAY_KEYS_FILE: file });
      expect(key).toBeDefined();
      expect((await generate(url, key!)).status).toBe(200);
      expect((await generate(url, fileKey)).status).toBe(200);
    } finally {
      rmSync(keysDir, { recursive: true, force: true });
    }
  });

  it('listens where the gateway does, on every interface, unless HOST says otherwise, and says so', async () => {
    const { url, key, banner } = await startDemo({ HOST: undefined });
    expect(banner).toMatch(/every interface.*HOST=127\.0\.0\.1/);
    // Reached at another address than 127.0.0.1 (Linux answers all of 127/8 on loopback): a gateway
    // listening on 127.0.0.1 alone would refuse this connection.
    const res = await generate(url.replace('127.0.0.1', '127.0.0.2'), key!);
    expect(res.status).toBe(200);
  });

  it('says when DATABASE_URL, REDIS_URL or S3_BUCKET send its state to shared services, and not otherwise', async () => {
    const { banner } = await startDemo({ REDIS_URL: 'redis://127.0.0.1:1' });
    // What goes there, not more: with Redis alone, jobs and usage stay in DATA_DIR.
    expect(banner).toMatch(/shared: +REDIS_URL set: its limit counters and key changes go there; unset to keep them apart/);
    await kill9(demo!.child);
    demo = undefined;
    expect((await startDemo({})).banner).not.toContain('shared:');
  });

  it('says a DATA_DIR it was given is the one used, shared with anything else using it, not a demo directory of its own', async () => {
    const { banner } = await startDemo({});
    const given = join(dir!, 'data');
    expect(banner).toContain(`state:      ${given} (DATA_DIR as set: shared with npm start or anything else using it; unset for the demo's own ./data-demo)`);
    expect(banner).not.toContain('kept apart');
    // Its jobs are shared: a gateway sharing them cannot carry on its simulator's tasks.
    expect(banner).toMatch(/replicas: +each demo has a simulator of its own: a demo job left unfinished is taken over by the gateways sharing its jobs, and fails there \(keep demos off a production database\); for replicas, run one with npm run simulator/);
  });

  it('keeps its state in ./data-demo, apart from the gateway\'s ./data, when DATA_DIR is unset or empty', async () => {
    for (const DATA_DIR of [undefined, '', '  ']) {
      const { banner } = await startDemo({ DATA_DIR }, { inDir: true });
      expect(banner).toContain("state:      ./data-demo (the demo's own, kept apart from the real gateway's DATA_DIR)");
      expect(banner).not.toContain('replicas:');
      expect(existsSync(join(dir!, 'data-demo'))).toBe(true);
      expect(existsSync(join(dir!, 'data'))).toBe(false);
      await kill9(demo!.child);
      demo = undefined;
      rmSync(dir!, { recursive: true, force: true });
    }
  });

  it('makes no key of its own when GATEWAY_API_KEYS is set', async () => {
    const given = 'gk-given-0123456789abcdef0123456789';
    const { url, key, banner } = await startDemo({ GATEWAY_API_KEYS: `team:${given}` });
    expect(key).toBeUndefined();
    expect(banner).toContain('<one of your GATEWAY_API_KEYS>');
    expect((await generate(url, given)).status).toBe(200);
  });
});
