/**
 * Held load in bounded memory (docs/held-load.md): a large upstream reply is staged as it streams
 * in; the in-flight image bytes budget (MAX_INFLIGHT_IMAGE_BYTES) lets replies in in turn, the
 * others waiting unread, and once those hold a budget's worth, further upstream calls wait in the
 * queue, unsent. The fake upstream here answers
 * each call with its headers and the first part of a large base64 PNG, and sends the rest only when
 * the test says so; what the gateway does meanwhile is read from its metrics and its staging files.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { WAITING_REPLY_BYTES } from '../src/upstream/reply-byte-budget.js';

const UPSTREAM_KEY = 'sk-test-held-0123456789abcdef';
const CLIENT_KEY = 'gk-test-held-0123456789abcdef';
const headers = { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' };
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
/** Eventually, however slow the machine: never a timing assertion. */
const eventually = { timeout: 30_000, interval: 10 };

let png: Buffer;
/** The whole reply upstream sends for every call, and the part it sends at once. */
let reply: Buffer;
let replyHead: Buffer;
/** What a reply takes from the budget while received: its image's decoded bytes, 3 per 4 characters of base64. */
let replyHolds: number;
/** The JSON around the image, counted whole once the parser has kept it: a reply in takes at most this much more. */
let replyAround: number;
let upstream: Server;
/** Calls upstream has received, each waiting for the rest of its reply. */
let calls: ServerResponse[] = [];

beforeAll(async () => {
  // Noise, so the PNG stays large: ~2.4 MB, ~3.2 MB of base64; more than one staging write (1 MiB).
  const side = 900;
  const raw = Buffer.alloc(side * side * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 2654435761) >>> 24;
  png = await sharp(raw, { raw: { width: side, height: side, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
  reply = Buffer.from(JSON.stringify({ output: { b64_json: [{ bytesBase64: png.toString('base64'), mimeType: 'png' }] } }));
  // Two thirds: ~1.6 MB of the image decoded (a staging write or more), and the reply far from whole.
  replyHead = reply.subarray(0, Math.floor((reply.length * 2) / 3));
  replyHolds = Math.ceil((reply.length * 3) / 4);
  replyAround = reply.length - png.toString('base64').length;
  upstream = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      calls.push(res);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': reply.length });
      res.write(replyHead);
    });
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
});

afterAll(async () => {
  upstream.closeAllConnections();
  await new Promise((resolve) => upstream?.close(resolve));
});

/** Sends the rest of call `i`'s reply. */
const finishCall = (i: number) => calls[i]!.end(reply.subarray(replyHead.length));

let app: FastifyInstance | undefined;
let dataDir: string;

afterEach(async () => {
  for (const call of calls) if (!call.writableEnded) call.destroy();
  calls = [];
  await app?.close();
  app = undefined;
  rmSync(dataDir, { recursive: true, force: true });
});

async function startGateway(maxInflightImageBytes: number): Promise<string> {
  dataDir = mkdtempSync(join(tmpdir(), 'gw-held-'));
  app = await buildApp(
    loadConfig({
      AIHUBMIX_API_KEY: UPSTREAM_KEY,
      AIHUBMIX_BASE_URL: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
      GATEWAY_API_KEYS: `design:${CLIENT_KEY}`,
      DATA_DIR: dataDir,
      UPSTREAM_RETRIES: '0',
      MAX_INFLIGHT_IMAGE_BYTES: String(maxInflightImageBytes),
      RATE_LIMIT_RPM: '1000',
      LOG_LEVEL: 'silent',
    }),
  );
  await app.listen({ port: 0, host: '127.0.0.1' });
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
}

/** That one reply is being received: the budget holds what it decodes to, and what was kept whole of the JSON around it. */
async function expectOneReplyIn(): Promise<void> {
  const inUse = await metric('gateway_inflight_image_bytes');
  expect(inUse).toBeGreaterThanOrEqual(replyHolds);
  expect(inUse).toBeLessThanOrEqual(replyHolds + replyAround);
}

/** One sample of the gateway's metrics, by name and labels as written. */
async function metric(name: string): Promise<number> {
  const text = (await app!.inject({ method: 'GET', url: '/metrics' })).body;
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (line === undefined) throw new Error(`no metric ${name} in /metrics`);
  return Number(line.slice(name.length + 1));
}

function generate(base: string, signal?: AbortSignal, responseFormat?: 'b64_json'): Promise<Response> {
  const body = { model: 'gpt-image-1', prompt: 'noise', ...(responseFormat ? { response_format: responseFormat } : {}) };
  return fetch(`${base}/v1/generate`, { method: 'POST', headers, body: JSON.stringify(body), signal });
}

async function expectStored(answer: Promise<Response>): Promise<void> {
  const res = await answer;
  const body = (await res.json()) as { images: { sha256: string; bytes: number }[] };
  expect(res.status, JSON.stringify(body)).toBe(200);
  expect(body.images[0]).toMatchObject({ sha256: sha256(png), bytes: png.length });
  const file = join(dataDir, 'images', body.images[0]!.sha256.slice(0, 2), `${body.images[0]!.sha256}.png`);
  expect(readFileSync(file).equals(png)).toBe(true);
}

describe('a large base64 image in an upstream reply', { timeout: 120_000 }, () => {
  it('is staged as it arrives: its first bytes are on disk while most of the reply is still to come', async () => {
    const base = await startGateway(64 * 1024 * 1024);
    const answer = generate(base);
    await vi.waitFor(() => expect(calls).toHaveLength(1), eventually);
    const staging = join(dataDir, 'images', '.staging');
    const head = png.subarray(0, 64 * 1024);
    // The staging file already holds the image's first staging write, decoded; the reply is not whole.
    await vi.waitFor(() => {
      const holding = readdirSync(staging).filter((name) => readFileSync(join(staging, name)).subarray(0, head.length).equals(head));
      expect(holding).toHaveLength(1);
    }, eventually);
    expect(calls[0]!.writableEnded).toBe(false);
    // While it is received, the reply counts what its declared length decodes to against the budget.
    await expectOneReplyIn();
    finishCall(0);
    await expectStored(answer);
    expect(await metric('gateway_inflight_image_bytes')).toBe(0);
  });

  it('answered as b64_json, counts its whole declared length: its text is kept for the answer', async () => {
    const base = await startGateway(64 * 1024 * 1024);
    const answer = generate(base, undefined, 'b64_json');
    await vi.waitFor(() => expect(calls).toHaveLength(1), eventually);
    await vi.waitFor(async () => expect(await metric('gateway_inflight_image_bytes')).toBe(reply.length), eventually);
    finishCall(0);
    const res = await answer;
    const body = (await res.json()) as { images: { b64_json: string }[] };
    expect(res.status).toBe(200);
    expect(body.images[0]!.b64_json).toBe(png.toString('base64'));
    expect(await metric('gateway_inflight_image_bytes')).toBe(0);
  });
});

// Each test waits up to `eventually` per step (a loaded machine is slow, never wrong): its own timeout allows several such steps.
describe('MAX_INFLIGHT_IMAGE_BYTES', { timeout: 120_000 }, () => {
  it('is validated: a whole number of bytes, at least 1 MiB', () => {
    const env = { AIHUBMIX_API_KEY: UPSTREAM_KEY, GATEWAY_API_KEYS: `design:${CLIENT_KEY}` };
    expect(loadConfig(env).MAX_INFLIGHT_IMAGE_BYTES).toBe(32 * 1024 * 1024);
    expect(() => loadConfig({ ...env, MAX_INFLIGHT_IMAGE_BYTES: '64' })).toThrow(/MAX_INFLIGHT_IMAGE_BYTES.*at least 1048576/);
    expect(() => loadConfig({ ...env, MAX_INFLIGHT_IMAGE_BYTES: '64MiB' })).toThrow(/MAX_INFLIGHT_IMAGE_BYTES/);
  });

  // At the smallest budget (1 MiB) every reply here (~2.4 MB decoded) is larger than the whole of it, so
  // each goes in alone; the waiting replies hold the queue once they hold a MiB between them.
  const MiB = 1024 * 1024;
  const waitingToShut = MiB / WAITING_REPLY_BYTES;

  /** The first call in (alone), then `waiting` more sent, their replies waiting for room, unread. */
  async function fill(base: string, waiting: number): Promise<Promise<Response>[]> {
    const answers = [generate(base)];
    await vi.waitFor(expectOneReplyIn, eventually);
    for (let i = 0; i < waiting; i++) answers.push(generate(base));
    await vi.waitFor(async () => expect(await metric('gateway_inflight_image_waiting')).toBe(waiting), eventually);
    expect(calls).toHaveLength(1 + waiting);
    return answers;
  }

  /** Sends the rest of every call's reply; each is stored once its turn for room comes. */
  async function finishAll(answers: Promise<Response>[]): Promise<void> {
    calls.forEach((call, i) => !call.writableEnded && !call.destroyed && finishCall(i));
    for (const answer of answers) await expectStored(answer);
    expect(await metric('gateway_inflight_image_bytes')).toBe(0);
    expect(await metric('gateway_inflight_image_waiting')).toBe(0);
  }

  it('sends calls while the budget is in use; their replies wait unread, and past a budget of waiting replies calls wait in the queue', async () => {
    const base = await startGateway(MiB);
    expect(await metric('gateway_inflight_image_bytes_limit')).toBe(MiB);
    // The budget is spent by the first reply, yet the next calls go upstream: renders take seconds.
    const answers = await fill(base, waitingToShut);
    // The waiting replies now hold a budget's worth: the next call waits in the queue, unsent.
    answers.push(generate(base));
    await vi.waitFor(async () => expect(await metric('gateway_upstream_queue_depth')).toBe(1), eventually);
    expect(calls).toHaveLength(1 + waitingToShut);
    finishCall(0);
    await expectStored(answers[0]!);
    // The first reply done, the next waiting one goes in; with one fewer waiting, the queued call goes.
    await vi.waitFor(() => expect(calls).toHaveLength(2 + waitingToShut), eventually);
    expect(await metric('gateway_upstream_queue_depth')).toBe(0);
    await finishAll(answers.slice(1));
  });

  it('drops a call waiting in the queue whose client leaves: it is never sent and takes nothing', async () => {
    const base = await startGateway(MiB);
    const answers = await fill(base, waitingToShut);
    const leaving = new AbortController();
    const left = generate(base, leaving.signal).catch((err: unknown) => err);
    await vi.waitFor(async () => expect(await metric('gateway_upstream_queue_depth')).toBe(1), eventually);
    leaving.abort();
    expect(await left).toBeInstanceOf(Error);
    await vi.waitFor(async () => expect(await metric('gateway_upstream_queue_depth')).toBe(0), eventually);
    expect(await metric('gateway_upstream_queue_wait_seconds_count{outcome="abandoned"}')).toBe(1);
    await expectOneReplyIn();
    await finishAll(answers);
    // The next call is the only other one upstream ever sees.
    const next = generate(base);
    await vi.waitFor(() => expect(calls).toHaveLength(2 + waitingToShut), eventually);
    await finishAll([next]);
  });

  it('drops a reply waiting unread for room whose client leaves, and lets the queue go on', async () => {
    const base = await startGateway(MiB);
    const answers = await fill(base, waitingToShut - 1);
    // The last reply that shuts the queue is the one whose client leaves.
    const leaving = new AbortController();
    const left = generate(base, leaving.signal).catch((err: unknown) => err);
    await vi.waitFor(async () => expect(await metric('gateway_inflight_image_waiting')).toBe(waitingToShut), eventually);
    const leftCall = calls.length - 1;
    const queued = generate(base);
    await vi.waitFor(async () => expect(await metric('gateway_upstream_queue_depth')).toBe(1), eventually);
    leaving.abort();
    expect(await left).toBeInstanceOf(Error);
    // The reply left waiting is dropped: counted as abandoned, its upstream connection closed.
    await vi.waitFor(async () => expect(await metric('gateway_inflight_image_wait_seconds_count{outcome="abandoned"}')).toBe(1), eventually);
    await vi.waitFor(() => expect(calls[leftCall]!.destroyed).toBe(true), eventually);
    // With one fewer waiting, the queued call is sent; its reply waits in its turn (waiting is not
    // checked in between: the call may be sent and its reply waiting before a poll of the metrics).
    await vi.waitFor(() => expect(calls).toHaveLength(2 + waitingToShut), eventually);
    await vi.waitFor(async () => expect(await metric('gateway_inflight_image_waiting')).toBe(waitingToShut), eventually);
    // The reply that was left took nothing.
    await expectOneReplyIn();
    await finishAll([...answers, queued]);
  });

  it('still receives a reply larger than the whole budget, alone', async () => {
    const base = await startGateway(MiB);
    expect(replyHolds).toBeGreaterThan(MiB);
    const [first, second] = await fill(base, 1);
    // Received one after the other: the second waits, unread, while the first is in.
    await expectOneReplyIn();
    finishCall(0);
    await expectStored(first!);
    await vi.waitFor(async () => expect(await metric('gateway_inflight_image_waiting')).toBe(0), eventually);
    await expectOneReplyIn();
    await finishAll([second!]);
  });
});
