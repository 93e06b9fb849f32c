/**
 * An Idempotency-Key freed by its first request (its job failed where upstream did not bill) and
 * taken by a retry that arrived while it was still held: the retry was admitted as a replay, which
 * reserves nothing, so it must count the key's limits once it finds itself the first claimant, before
 * its job starts.
 */
import { createServer, type Server } from 'node:http';
import { PassThrough } from 'node:stream';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, expect, it } from 'vitest';
import { parseGenerateBody } from '../src/request/image-request.js';
import { newOutcome } from '../src/usage/request-outcome.js';
import { ADMIN_KEY, makePng, multipartBody, startHarness, type Harness } from './harness.js';

let h: Harness;
let server: Server;
let imageUrl: string;
let png: Buffer;
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
  png = await makePng(32, 32, { r: 200, g: 20, b: 20 });
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

it('a request the rate limit counted as a read (its Idempotency-Key then held) that finds the key free once admitted counts against the rpm before it runs', async () => {
  // A holds K while upstream is held; B, a multipart edit under K, is counted as a read by the rate
  // limit (K is held) and then sends its body slowly; A fails unbilled and frees K; C spends the
  // key's last request; B's body ends, and B is admitted as a first request, not as a retry.
  const key = await mintKey({ rpm: 2 });
  const upstream = deferred();
  upstreamGate = upstream.promise;
  h.simulator.failNext('http503');
  const a = h.app.inject({
    method: 'POST',
    url: '/v1/generate',
    headers: { ...key.auth, 'idempotency-key': 'counted-as-read' },
    payload: { model: 'gpt-image-1', prompt: 'a hat' },
  });
  await until(() => h.simulator.received.length === 1, 'A to reach upstream');
  const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'add a hat' }, [{ field: 'image', filename: 'red.png', bytes: png }]);
  const body = new PassThrough();
  const b = h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...key.auth, ...headers, 'idempotency-key': 'counted-as-read' }, payload: body });
  body.write(payload.subarray(0, 100));
  await until(async () => (await h.app.counters.peek(`rpm:read:${key.id}`)).total === 1, 'B to be counted as a read');
  upstreamGate = undefined;
  upstream.resolve();
  expect((await a).statusCode).toBe(502);
  expect(await h.app.jobs.idempotencyKeyClaimed(`${key.id}:counted-as-read`)).toBe(false);
  const c = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: key.auth, payload: { model: 'gpt-image-1', prompt: 'plain' } });
  expect(c.statusCode, c.body).toBe(200);
  body.end(payload.subarray(100));
  const answer = await b;
  expect(answer.statusCode, answer.body).toBe(429);
  expect(answer.json().error.message).toMatch(/rpm limit reached/);
  // Upstream saw A and C only; B gave the key back.
  expect(h.simulator.received).toHaveLength(2);
  expect(await h.app.jobs.idempotencyKeyClaimed(`${key.id}:counted-as-read`)).toBe(false);
});

it('a request counted against the rpm, admitted as a retry, that then takes the freed key is not counted twice', async () => {
  // B was counted against the rpm by the rate limit (K free then); A takes K and holds it, so B is
  // admitted as A's retry; A fails unbilled and frees K; B takes it and runs, counted once. B is
  // driven through the pipeline itself, to hold it between its admission and its claim.
  const key = await mintKey({ rpm: 2 });
  const client = h.app.keyStore.keys.findById(key.id)!;
  await h.app.limits.countRequest(client, 60); // B, by the rate limit
  const upstream = deferred();
  upstreamGate = upstream.promise;
  h.simulator.failNext('http503');
  const a = h.app.inject({
    method: 'POST',
    url: '/v1/generate',
    headers: { ...key.auth, 'idempotency-key': 'counted-once' },
    payload: { model: 'gpt-image-1', prompt: 'a hat' },
  });
  await until(() => h.simulator.received.length === 1, 'A to reach upstream');
  const b = await h.app.pipeline.admit({
    client,
    request: parseGenerateBody({ model: 'gpt-image-1', prompt: 'a hat' }),
    signal: new AbortController().signal,
    publicBaseUrl: 'http://gateway.test',
    idempotencyKey: 'counted-once',
    countedInRpm: true,
    outcome: newOutcome(),
  });
  upstreamGate = undefined;
  upstream.resolve();
  expect((await a).statusCode).toBe(502);
  expect(await h.app.jobs.idempotencyKeyClaimed(`${key.id}:counted-once`)).toBe(false);
  const answer = await b.run();
  expect(answer).toMatchObject({ kind: 'result', replayed: false });
  expect(h.simulator.received).toHaveLength(2);
  // A and B, one each.
  expect((await h.app.counters.peek(`rpm:${key.id}`)).total).toBe(2);
});
