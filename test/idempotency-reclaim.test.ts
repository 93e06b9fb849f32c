/**
 * An Idempotency-Key freed by its first request (its job failed where upstream did not bill) and
 * taken by a retry that arrived while it was still held: the retry was admitted as a replay, which
 * reserves nothing, so it must count the key's limits once it finds itself the first claimant, before
 * its job starts.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, expect, it } from 'vitest';
import { ADMIN_KEY, makePng, startHarness, type Harness } from './harness.js';

let h: Harness;
let server: Server;
let imageUrl: string;
/** Requests the image host got. */
let hits = 0;
/** While set, the image host holds its answers until it resolves. */
let fetchGate: Promise<void> | undefined;
/** While set, the fake upstream holds its answers until it resolves. */
let upstreamGate: Promise<void> | undefined;

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

async function until(condition: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

beforeAll(async () => {
  const png = await makePng(32, 32, { r: 200, g: 20, b: 20 });
  server = createServer((req, res) => {
    hits += 1;
    const answer = () => res.writeHead(200, { 'content-type': 'image/png' }).end(png);
    if (fetchGate) void fetchGate.then(answer);
    else answer();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  imageUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/red.png`;
  h = await startHarness({ ALLOWED_IMAGE_HOSTS: '127.0.0.1' }, { latencyMs: 1, wait: () => upstreamGate ?? Promise.resolve() });
});
afterAll(async () => {
  await h.close();
  await new Promise((resolve) => server.close(resolve));
});
beforeEach(() => {
  hits = 0;
  fetchGate = undefined;
  upstreamGate = undefined;
  h.simulator.reset();
});

async function mintKey(policy: Record<string, unknown>): Promise<{ auth: Record<string, string>; id: string }> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'reclaim', ...policy } });
  expect(res.statusCode, res.body).toBe(201);
  return { auth: { authorization: `Bearer ${res.json().key}` }, id: res.json().id };
}

/**
 * A (Idempotency-Key K) holds K while upstream is held; B, the same request under K, is admitted as
 * A's retry and held fetching its image; A fails with a 503 (never billed), which frees K; C, a plain
 * request, spends what the key has left; then B's fetch goes on and B claims K as the first.
 */
async function reclaimRace(key: { auth: Record<string, string>; id: string }, idempotencyKey: string) {
  const auth = key.auth;
  const edit = () =>
    h.app.inject({
      method: 'POST',
      url: '/v1/edit',
      headers: { ...auth, 'idempotency-key': idempotencyKey },
      payload: { model: 'gpt-image-1', prompt: 'add a hat', image: imageUrl },
    });
  const upstream = deferred();
  upstreamGate = upstream.promise;
  h.simulator.failNext('http503');
  const a = edit();
  await until(() => h.simulator.received.length === 1, 'A to reach upstream');
  const fetch = deferred();
  fetchGate = fetch.promise;
  const b = edit();
  await until(() => hits === 2, 'B to fetch its image');
  upstreamGate = undefined;
  upstream.resolve();
  const first = await a;
  expect(first.statusCode, first.body).toBe(502);
  // Upstream's 503 billed nothing: A's job gave K back.
  expect(await h.app.jobs.idempotencyKeyClaimed(`${key.id}:${idempotencyKey}`)).toBe(false);
  const c = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: 'gpt-image-1', prompt: 'plain' } });
  expect(c.statusCode, c.body).toBe(200);
  fetchGate = undefined;
  fetch.resolve();
  return b;
}

it('a retry that takes a freed Idempotency-Key counts against images_per_day before its job starts', async () => {
  const key = await mintKey({ images_per_day: 1, rpm: 100 });
  const b = await reclaimRace(key, 'reclaim-images');
  expect(b.statusCode, b.body).toBe(429);
  expect(b.json().error.message).toMatch(/images_per_day limit reached/);
  // Upstream saw A and C only.
  expect(h.simulator.received).toHaveLength(2);
  // The refused claimant gives the key back: the same request later is a new first request.
  expect(await h.app.jobs.idempotencyKeyClaimed(`${key.id}:reclaim-images`)).toBe(false);
});

it('a retry that takes a freed Idempotency-Key counts against the key’s rpm before its job starts', async () => {
  // A and C count; B, admitted as A's retry, was counted as a read.
  const key = await mintKey({ rpm: 2 });
  const b = await reclaimRace(key, 'reclaim-rpm');
  expect(b.statusCode, b.body).toBe(429);
  expect(b.json().error.message).toMatch(/rpm limit reached/);
  expect(h.simulator.received).toHaveLength(2);
});

it('a retry that takes a freed Idempotency-Key with the limits to spare runs and counts its image', async () => {
  const key = await mintKey({ images_per_day: 3, rpm: 100 });
  const b = await reclaimRace(key, 'reclaim-ok');
  expect(b.statusCode, b.body).toBe(200);
  expect(b.headers['x-ratelimit-images-remaining']).toBe('1');
  expect(h.simulator.received).toHaveLength(3);
  const next = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: key.auth, payload: { model: 'gpt-image-1', prompt: 'again', n: 2 } });
  expect(next.statusCode).toBe(429);
});
