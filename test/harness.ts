/**
 * A gateway wired to the upstream simulator over real HTTP on loopback, with its log lines captured.
 * Each test file builds one (or more) and closes it afterwards.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import sharp from 'sharp';
import { Agent, fetch as undiciFetch } from 'undici';
import { buildApp, type AppOptions } from '../src/app.js';
import { loadConfig, type Config } from '../src/config.js';
import { startUpstreamSimulator, type SimulatorOptions, type UpstreamSimulator } from '../src/simulator/upstream-simulator.js';

export const UPSTREAM_KEY = 'sk-test-upstream-key-0123456789abcdef';
export const CLIENT_KEY = 'gk-test-design-0123456789';
export const OTHER_CLIENT_KEY = 'gk-test-ads-0123456789abcd';
export const ADMIN_KEY = 'gk-test-admin-0123456789abcdef';

export interface Harness {
  app: FastifyInstance;
  simulator: UpstreamSimulator;
  config: Config;
  dataDir: string;
  /** Every log line the gateway wrote, raw. */
  logs: string[];
  auth: Record<string, string>;
  close(): Promise<void>;
}

export async function startHarness(
  env: Record<string, string> = {},
  simulatorOptions: SimulatorOptions = {},
  /** More of buildApp's options (an injected free-space probe, ...); the log stream is the harness's. */
  appOptions: Omit<AppOptions, 'logStream'> = {},
): Promise<Harness> {
  const simulator = await startUpstreamSimulator({ apiKey: UPSTREAM_KEY, taskReadyAfterMs: 30, ...simulatorOptions });
  const dataDir = mkdtempSync(join(tmpdir(), 'gw-test-'));
  const logs: string[] = [];
  const logStream = new Writable({
    write(chunk, _enc, done) {
      logs.push(...String(chunk).split('\n').filter(Boolean));
      done();
    },
  });
  let config: Config;
  let app: FastifyInstance;
  try {
    config = loadConfig({
      AIHUBMIX_API_KEY: UPSTREAM_KEY,
      AIHUBMIX_BASE_URL: simulator.url,
      GATEWAY_API_KEYS: `design:${CLIENT_KEY},ads:${OTHER_CLIENT_KEY}`,
      GATEWAY_ADMIN_KEY: ADMIN_KEY,
      DATA_DIR: dataDir,
      TASK_POLL_INTERVAL_MS: '10',
      // One simulated fault = one failed answer; the retry tests turn retries on themselves.
      UPSTREAM_RETRIES: '0',
      LOG_LEVEL: 'info',
      // The machine's real free space must not decide a test: only tests that inject a
      // free-space probe get the storage floor's default.
      ...(appOptions.freeSpaceProbe ? {} : { STORAGE_MIN_FREE_BYTES: '0' }),
      ...env,
    });
    app = await buildApp(config, { ...appOptions, logStream });
    await app.ready();
  } catch (err) {
    // A start that fails (the tests of bad configuration) leaves nothing running behind it.
    await simulator.close();
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
  return {
    app,
    simulator,
    config,
    dataDir,
    logs,
    auth: { authorization: `Bearer ${CLIENT_KEY}` },
    async close() {
      await app.close();
      await simulator.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export interface ListeningHarness extends Harness {
  /** The gateway's origin on loopback. */
  base: string;
  /** fetch over connections of this harness's own, destroyed before the gateway closes (so its graceful close waits on none of them). */
  fetch(url: string, init?: Parameters<typeof undiciFetch>[1]): ReturnType<typeof undiciFetch>;
}

/** A harness whose gateway listens on a loopback port, for tests that need real HTTP (streams, clients that leave). */
export async function startListening(env: Record<string, string> = {}, simulatorOptions: SimulatorOptions = {}): Promise<ListeningHarness> {
  const h = await startHarness(env, simulatorOptions);
  const base = await h.app.listen({ port: 0, host: '127.0.0.1' });
  const connections = new Agent();
  return {
    ...h,
    base,
    fetch: (url, init = {}) => undiciFetch(url, { ...init, dispatcher: connections }),
    async close() {
      await connections.destroy();
      await h.close();
    },
  };
}

/** Polls GET /v1/jobs/{id} until the job has succeeded or failed, and answers it. */
export async function jobWhenFinished(h: Harness, id: string, auth: Record<string, string> = h.auth): Promise<any> {
  for (let i = 0; i < 250; i++) {
    const job = (await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: auth })).json();
    if (job.status === 'succeeded' || job.status === 'failed') return job;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`job ${id} did not finish`);
}

/** The usage record a request left, by its request id (read with the admin key, polled until written). */
export async function usageRecordOf(h: Harness, requestId: string): Promise<any> {
  for (let i = 0; i < 100; i++) {
    const page = await h.app.inject({ method: 'GET', url: '/v1/usage/records?from=2000-01-01&limit=1000', headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    const record = page.json().data.find((r: any) => r.request_id === requestId);
    if (record) return record;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no usage record for ${requestId}`);
}

/** A real PNG of the given size and colour; `alpha` < 255 makes it (partly) transparent. */
export async function makePng(width = 32, height = 32, colour = { r: 200, g: 40, b: 40 }, alpha = 255): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 4, background: { ...colour, alpha: alpha / 255 } } }).png().toBuffer();
}

/** An OpenAI-style mask: transparent (change) on the left half, opaque (keep) on the right. */
export async function makeHalfTransparentMask(width = 32, height = 32): Promise<Buffer> {
  const raw = Buffer.alloc(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      raw[i + 3] = x < width / 2 ? 0 : 255;
    }
  }
  return sharp(raw, { raw: { width, height, channels: 4 } }).png().toBuffer();
}

/** multipart/form-data body for app.inject. */
export function multipartBody(
  fields: Record<string, string>,
  files: Array<{ field: string; filename: string; bytes: Buffer; type?: string }>,
): { payload: Buffer; headers: Record<string, string> } {
  const boundary = `----gwtest${Math.random().toString(16).slice(2)}`;
  const chunks: Buffer[] = [];
  for (const [name, value] of Object.entries(fields)) {
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`));
  }
  for (const file of files) {
    chunks.push(
      Buffer.from(
        `--${boundary}\r\nContent-Disposition: form-data; name="${file.field}"; filename="${file.filename}"\r\nContent-Type: ${file.type ?? 'image/png'}\r\n\r\n`,
      ),
      file.bytes,
      Buffer.from('\r\n'),
    );
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { payload: Buffer.concat(chunks), headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } };
}
