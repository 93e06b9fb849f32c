/**
 * The upstream failure taxonomy: every fault the simulator can play (and a few it cannot: a refused
 * connection, "no available channel", an expired result URL) is thrown by the UpstreamClient as an
 * UpstreamFailure of the right kind, with whether it may have been billed and whether another model
 * may serve the request; and every kind has its HTTP answer at the edge (toGatewayError). The
 * client talks to the simulator over loopback; time is a virtual clock moved by the client's waits.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { GatewayError, retryCannotHelp } from '../src/errors.js';
import { startUpstreamSimulator, type UpstreamSimulator } from '../src/simulator/upstream-simulator.js';
import { UpstreamClient, type UpstreamClientOptions } from '../src/upstream/upstream-client.js';
import { EDGE_CODE, FAILURE_KINDS, FAILURE_TRAITS, UpstreamFailure, toGatewayError, type UpstreamFailureKind } from '../src/upstream/upstream-failure.js';
import { UpstreamKeyPool } from '../src/upstream/upstream-key-pool.js';
import type { UpstreamRequest } from '../src/upstream/upstream-request.js';
import { parseGenerateBody } from '../src/request/image-request.js';
import { newOutcome } from '../src/usage/request-outcome.js';
import { UPSTREAM_KEY, startHarness } from './harness.js';

const KEY = 'sk-test-failure-kinds-0123456789';
const URL_TTL_MS = 60_000;

let t = 0;
let waits: number[] = [];
const now = () => t;
const wait = async (ms: number, signal: AbortSignal) => {
  signal.throwIfAborted();
  waits.push(ms);
  t += ms;
};

const closers: Array<() => Promise<unknown>> = [];
beforeEach(() => {
  t = Date.now();
  waits = [];
});
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

async function simulator(): Promise<UpstreamSimulator> {
  const sim = await startUpstreamSimulator({ apiKey: KEY, taskReadyAfterMs: 1_000, urlTtlMs: URL_TTL_MS, now });
  closers.push(() => sim.close());
  return sim;
}

function client(baseUrl: string, options: Partial<UpstreamClientOptions> = {}): UpstreamClient {
  const made = new UpstreamClient({
    baseUrl,
    apiKeys: [KEY],
    maxConcurrency: 4,
    queueTimeoutMs: 5_000,
    retries: 1,
    retryBaseMs: 100,
    keyCooldownMs: 60_000,
    pollIntervalMs: 100,
    maxReplyBytes: 1024 * 1024,
    maxDownloadBytes: 1024 * 1024,
    now,
    wait,
    ...options,
  });
  closers.push(() => made.close());
  return made;
}

const openAi = (prompt: string, extra: Record<string, unknown> = {}): UpstreamRequest => ({
  path: '/v1/images/generations',
  auth: 'bearer',
  body: { kind: 'json', value: { model: 'gpt-image-1', prompt, ...extra } },
  async: false,
});

const fluxTask = (prompt: string): UpstreamRequest => ({
  path: '/v1/models/bfl/flux-kontext-pro/predictions',
  auth: 'bearer',
  body: { kind: 'json', value: { input: { prompt } } },
  async: true,
});

async function failureOf(promise: Promise<unknown>): Promise<UpstreamFailure> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UpstreamFailure);
  return err as UpstreamFailure;
}

interface Expected {
  kind: UpstreamFailureKind;
  mayHaveBilled: boolean;
  otherModelMayServe: boolean;
  upstreamStatus?: number;
  /** The HTTP answer at the edge: as before the taxonomy. */
  status: number;
  code: string;
}

const SUBMISSION_FAULTS: Array<[string, Expected]> = [
  ['http429', { kind: 'throttled', mayHaveBilled: false, otherModelMayServe: true, upstreamStatus: 429, status: 429, code: 'rate_limited' }],
  ['no_channel', { kind: 'no_channel', mayHaveBilled: false, otherModelMayServe: true, upstreamStatus: 503, status: 502, code: 'upstream_error' }],
  ['http503', { kind: 'unavailable', mayHaveBilled: false, otherModelMayServe: true, upstreamStatus: 503, status: 502, code: 'upstream_error' }],
  ['http500', { kind: 'server_error', mayHaveBilled: true, otherModelMayServe: false, upstreamStatus: 500, status: 502, code: 'upstream_error' }],
  ['http400', { kind: 'rejected_input', mayHaveBilled: false, otherModelMayServe: false, upstreamStatus: 400, status: 400, code: 'invalid_request' }],
  ['moderated', { kind: 'moderated', mayHaveBilled: false, otherModelMayServe: false, upstreamStatus: 422, status: 422, code: 'content_rejected' }],
  ['malformed', { kind: 'malformed_reply', mayHaveBilled: true, otherModelMayServe: false, upstreamStatus: 200, status: 502, code: 'upstream_error' }],
  ['http401', { kind: 'auth', mayHaveBilled: false, otherModelMayServe: false, upstreamStatus: 401, status: 502, code: 'upstream_error' }],
  ['http403', { kind: 'auth', mayHaveBilled: false, otherModelMayServe: false, upstreamStatus: 403, status: 502, code: 'upstream_error' }],
  ['http403_model', { kind: 'auth', mayHaveBilled: false, otherModelMayServe: false, upstreamStatus: 403, status: 502, code: 'upstream_error' }],
];

function expectClassified(failure: UpstreamFailure, expected: Expected): void {
  expect({
    kind: failure.kind,
    mayHaveBilled: failure.mayHaveBilled,
    otherModelMayServe: failure.otherModelMayServe,
    upstreamStatus: failure.upstreamStatus,
  }).toEqual({
    kind: expected.kind,
    mayHaveBilled: expected.mayHaveBilled,
    otherModelMayServe: expected.otherModelMayServe,
    upstreamStatus: expected.upstreamStatus,
  });
  const answered = toGatewayError(failure);
  expect(answered).toBeInstanceOf(GatewayError);
  expect({ status: answered.status, code: answered.code }).toEqual({ status: expected.status, code: expected.code });
}

describe('the upstream client classifies each simulated fault', () => {
  it.each(SUBMISSION_FAULTS)('#sim:%s', async (fault, expected) => {
    const sim = await simulator();
    const failure = await failureOf(client(sim.url).generate(openAi(`a fox #sim:${fault}`), new AbortController().signal));
    expectClassified(failure, expected);
    // No secret reaches the failure's words.
    expect(`${failure.message} ${failure.detail ?? ''}`).not.toContain(KEY);
  });

  it('a throttled or unavailable call is retried first; the failure tells when to come back', async () => {
    const sim = await simulator();
    const throttled = await failureOf(client(sim.url).generate(openAi('#sim:http429'), new AbortController().signal));
    expect(throttled.retryAfterSeconds).toBe(1); // the simulator's Retry-After
    const unavailable = await failureOf(client(sim.url).generate(openAi('#sim:http503'), new AbortController().signal));
    expect(unavailable.retryAfterSeconds).toBe(5); // none given: the gateway's own after its retries
    // One retry each (retries: 1): two submissions per call.
    expect(sim.received.filter((r) => r.method === 'POST')).toHaveLength(4);
  });

  it('a refused key is set aside only when upstream blames the key (401, a 403 for the balance), not a model permission', async () => {
    const sim = await simulator();
    const upstream = client(sim.url);
    expect((await failureOf(upstream.generate(openAi('#sim:http401'), new AbortController().signal))).keyRefused).toBe(true);
    expect((await failureOf(upstream.generate(openAi('#sim:http403'), new AbortController().signal))).keyRefused).toBe(true);
    expect((await failureOf(upstream.generate(openAi('#sim:http403_model'), new AbortController().signal))).keyRefused).toBe(false);
  });

  it('#sim:hang cut off by the deadline is a timeout that may have been billed; the caller leaving is not a timeout', async () => {
    const sim = await simulator();
    const upstream = client(sim.url);
    const atDeadline = new AbortController();
    const call = failureOf(upstream.generate(openAi('#sim:hang'), atDeadline.signal, { deadline: t }));
    await vi.waitFor(() => expect(sim.received).toHaveLength(1));
    atDeadline.abort();
    expectClassified(await call, { kind: 'timeout', mayHaveBilled: true, otherModelMayServe: false, status: 504, code: 'upstream_timeout' });

    const leaving = new AbortController();
    const left = upstream.generate(openAi('#sim:hang'), leaving.signal, { deadline: t + 3_600_000 }).catch((e: unknown) => e);
    await vi.waitFor(() => expect(sim.received).toHaveLength(2));
    leaving.abort();
    expect(await left).not.toBeInstanceOf(UpstreamFailure);
  });

  it('a task that ends in Error, or is moderated after it was accepted, may have been billed', async () => {
    const sim = await simulator();
    const upstream = client(sim.url);
    sim.failNext('task_error');
    expectClassified(await failureOf(upstream.generate(fluxTask('a deer'), new AbortController().signal)), {
      kind: 'task_failed',
      mayHaveBilled: true,
      otherModelMayServe: false,
      upstreamStatus: 200,
      status: 502,
      code: 'upstream_error',
    });
    expectClassified(await failureOf(upstream.generate(fluxTask('a deer #sim:moderated'), new AbortController().signal)), {
      kind: 'moderated',
      mayHaveBilled: true,
      otherModelMayServe: false,
      upstreamStatus: 200,
      status: 422,
      code: 'content_rejected',
    });
  });

  it('an expired result URL is a download failure, paid for, not served elsewhere', async () => {
    const sim = await simulator();
    const upstream = client(sim.url);
    const made = await upstream.generate(openAi('a heron', { response_format: 'url' }), new AbortController().signal);
    const url = made.images[0]!.url!;
    t += URL_TTL_MS + 1;
    const failure = await failureOf(upstream.download(url, new AbortController().signal, async (body) => body));
    expectClassified(failure, { kind: 'download_failed', mayHaveBilled: true, otherModelMayServe: false, upstreamStatus: 404, status: 502, code: 'upstream_error' });
    expect(failure.message).toMatch(/expired or is gone/);
  });
});

describe('faults the simulator does not play', () => {
  it('a refused connection: nothing was sent, another model may serve', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const failure = await failureOf(client(`http://127.0.0.1:${port}`).generate(openAi('a fox'), new AbortController().signal));
    expectClassified(failure, { kind: 'connection_refused', mayHaveBilled: false, otherModelMayServe: true, status: 502, code: 'upstream_error' });
    expect(toGatewayError(failure).message).toBe('could not reach upstream');
  });

  it('"no available channel" (AiHubMix / new-api, 503) is no_channel, answered as the 503 always was', async () => {
    let server: Server | undefined;
    await new Promise<void>((r) => {
      server = createServer((_req, res) => {
        res.writeHead(503, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: '当前分组 default 下对于模型 gpt-image-1 无可用渠道', type: 'new_api_error' } }));
      }).listen(0, '127.0.0.1', r);
    });
    closers.push(() => new Promise((r) => server!.close(r)));
    const failure = await failureOf(
      client(`http://127.0.0.1:${(server!.address() as AddressInfo).port}`).generate(openAi('a fox'), new AbortController().signal),
    );
    expectClassified(failure, { kind: 'no_channel', mayHaveBilled: false, otherModelMayServe: true, upstreamStatus: 503, status: 502, code: 'upstream_error' });
    expect(toGatewayError(failure).message).toMatch(/^upstream is unavailable for this model \(HTTP 503\): /);
  });

  it('every key set aside: auth, not served elsewhere (the keys are the same for every model)', () => {
    const pool = new UpstreamKeyPool(['sk-a-0123456789', 'sk-b-0123456789'], 60_000);
    pool.setAside('sk-a-0123456789');
    expect(pool.pick()).toBe('sk-b-0123456789');
    pool.setAside('sk-b-0123456789');
    let thrown: unknown;
    try {
      pool.pick();
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(UpstreamFailure);
    expect((thrown as UpstreamFailure).kind).toBe('auth');
    expect((thrown as UpstreamFailure).otherModelMayServe).toBe(false);
  });
});

describe('the edge mapping', () => {
  /** Today's HTTP answer for each kind: the public behaviour the taxonomy must keep. */
  const STATUS: Record<UpstreamFailureKind, number> = {
    no_channel: 502,
    throttled: 429,
    unavailable: 502,
    server_error: 502,
    timeout: 504,
    rejected_input: 400,
    moderated: 422,
    auth: 502,
    malformed_reply: 502,
    reply_too_large: 502,
    connection_lost: 502,
    connection_refused: 502,
    task_failed: 502,
    download_failed: 502,
  };

  it('is exhaustive: every kind has traits and an HTTP status', () => {
    expect(new Set(Object.keys(EDGE_CODE))).toEqual(new Set(FAILURE_KINDS));
    expect(new Set(Object.keys(STATUS))).toEqual(new Set(FAILURE_KINDS));
    for (const kind of FAILURE_KINDS) {
      const answered = toGatewayError(new UpstreamFailure(kind, `a ${kind}`, { upstreamStatus: 599 }));
      expect({ kind, status: answered.status }).toEqual({ kind, status: STATUS[kind] });
      expect(answered.message).toBe(`a ${kind}`);
      expect(answered.upstreamStatus).toBe(599);
      expect(typeof FAILURE_TRAITS[kind].mayHaveBilled).toBe('boolean');
    }
  });

  it('only failures that cannot have been billed may go to another model', () => {
    for (const kind of FAILURE_KINDS) {
      if (FAILURE_TRAITS[kind].otherModelMayServe) expect({ kind, billed: FAILURE_TRAITS[kind].mayHaveBilled }).toEqual({ kind, billed: false });
    }
  });

  it('keeps Retry-After, the rejected input as a detail, and the cause for the log', () => {
    const cause = new Error('socket hang up');
    const answered = toGatewayError(new UpstreamFailure('rejected_input', 'upstream refused the request: size', { detail: 'size', upstreamStatus: 400, cause }));
    expect(answered.details).toEqual([{ message: 'size' }]);
    expect(answered.cause).toBe(cause);
    expect(toGatewayError(new UpstreamFailure('throttled', 'x', { retryAfterSeconds: 7 })).retryAfter).toBe(7);
  });

  it('tells client libraries not to resend on their own exactly the failures that may have been billed', () => {
    for (const kind of FAILURE_KINDS) {
      const header = toGatewayError(new UpstreamFailure(kind, 'x')).headers['x-should-retry'];
      expect({ kind, header }).toEqual({ kind, header: FAILURE_TRAITS[kind].mayHaveBilled ? 'false' : undefined });
    }
    // A failure that says otherwise than its kind's default (a timeout while the task still queued).
    expect(toGatewayError(new UpstreamFailure('timeout', 'x', { mayHaveBilled: false })).headers['x-should-retry']).toBeUndefined();
    expect(toGatewayError(new UpstreamFailure('moderated', 'x', { mayHaveBilled: true })).headers['x-should-retry']).toBe('false');
  });
});

describe('answers a client library should not send again on its own (retryCannotHelp)', () => {
  it('a 409, a browser token cap, any answer whose Retry-After is more than a minute away; not one within the minute', () => {
    expect(retryCannotHelp(new GatewayError('conflict', 'used with another body'))).toBe(true);
    expect(retryCannotHelp(new GatewayError('rate_limited', 'cap', { retryAfter: 5, limit: 'token_max_images' }))).toBe(true);
    expect(retryCannotHelp(new GatewayError('rate_limited', 'day', { retryAfter: 61, limit: 'images_per_day' }))).toBe(true);
    expect(retryCannotHelp(new GatewayError('rate_limited', 'day', { retryAfter: 60, limit: 'images_per_day' }))).toBe(false);
    expect(retryCannotHelp(new GatewayError('rate_limited', 'rpm', { retryAfter: 42, limit: 'rpm' }))).toBe(false);
    // An upstream that said to come back in an hour (its 503, answered 502), or a long queue wait.
    expect(retryCannotHelp(new GatewayError('upstream_error', 'no channel', { retryAfter: 3600 }))).toBe(true);
    expect(retryCannotHelp(new GatewayError('service_unavailable', 'queue', { retryAfter: 120 }))).toBe(true);
    expect(retryCannotHelp(new GatewayError('service_unavailable', 'stopping', { retryAfter: 1 }))).toBe(false);
    expect(retryCannotHelp(new GatewayError('upstream_error', 'bad gateway'))).toBe(false);
    // Upstream refused the gateway's own key or balance: refused again until an operator acts.
    expect(retryCannotHelp(new GatewayError('upstream_error', 'credentials', { upstreamStatus: 401 }))).toBe(true);
    expect(retryCannotHelp(new GatewayError('upstream_error', 'balance', { upstreamStatus: 403 }))).toBe(true);
    expect(retryCannotHelp(new GatewayError('upstream_error', 'no channel', { upstreamStatus: 503 }))).toBe(false);
    expect(retryCannotHelp(new GatewayError('invalid_request', 'bad'))).toBe(false);
  });
});

describe('the pipeline (the edge)', () => {
  it('answers with the GatewayError of old and notes the failure kind on the request outcome', async () => {
    const h = await startHarness();
    closers.push(() => h.close());
    const client = { id: 'design', team: 'design', admin: false, source: 'env' as const };
    const attempt = async (prompt: string) => {
      const outcome = newOutcome();
      const admitted = await h.app.pipeline.admit({
        client,
        request: parseGenerateBody({ model: 'gpt-image-1', prompt }),
        signal: new AbortController().signal,
        publicBaseUrl: 'http://gateway.test',
        outcome,
      });
      const err = await admitted.run().then(
        () => undefined,
        (e: unknown) => e,
      );
      return { err: err as GatewayError, outcome };
    };
    const unavailable = await attempt('a fox #sim:http503');
    expect(unavailable.err).toBeInstanceOf(GatewayError);
    expect({ status: unavailable.err.status, code: unavailable.err.code, upstreamStatus: unavailable.err.upstreamStatus }).toEqual({
      status: 502,
      code: 'upstream_error',
      upstreamStatus: 503,
    });
    expect(unavailable.outcome.failureKind).toBe('unavailable');
    const rejected = await attempt('a fox #sim:http400');
    expect({ status: rejected.err.status, code: rejected.err.code }).toEqual({ status: 400, code: 'invalid_request' });
    expect(rejected.err.details).toEqual([{ message: 'size not supported' }]);
    expect(rejected.outcome.failureKind).toBe('rejected_input');
  });
});

describe("upstream refusing the gateway's own key (401), answered so that no client library resends it on its own", () => {
  it('every key set aside: a 502 with Retry-After when the first is tried again (UPSTREAM_KEY_COOLDOWN_MS), and x-should-retry: false', async () => {
    const h = await startHarness({ AIHUBMIX_API_KEY: `${UPSTREAM_KEY},${UPSTREAM_KEY}-second`, UPSTREAM_KEY_COOLDOWN_MS: '300000' });
    closers.push(() => h.close());
    h.simulator.failNext('http401', 2);
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'no key left' } });
    expect(res.statusCode, res.body).toBe(502);
    expect(res.json().error.message).toMatch(/refused every configured upstream key/);
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(290);
    expect(res.headers['x-should-retry']).toBe('false');
  });

  it('a request run as a job (an Idempotency-Key) says so too; never paid, its key is freed for the next try', async () => {
    const h = await startHarness();
    closers.push(() => h.close());
    h.simulator.failNext('http401');
    const send = () =>
      h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, 'idempotency-key': 'upstream-401' }, payload: { model: 'gpt-image-1', prompt: 'refused key' } });
    const first = await send();
    expect(first.statusCode, first.body).toBe(502);
    expect(first.headers['x-should-retry']).toBe('false');
    // Never paid: the key is freed, so the same key sends it again once an operator has fixed the upstream key.
    const again = await send();
    expect(again.headers['idempotent-replayed']).not.toBe('true');
    expect(again.statusCode, again.body).toBe(200);
  });

  it('every key set aside, in a job: nothing was sent, so the key is freed, not kept with a stale Retry-After', async () => {
    const h = await startHarness({ AIHUBMIX_API_KEY: `${UPSTREAM_KEY},${UPSTREAM_KEY}-second`, UPSTREAM_KEY_COOLDOWN_MS: '300000' });
    closers.push(() => h.close());
    h.simulator.failNext('http401', 2);
    const send = () =>
      h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...h.auth, 'idempotency-key': 'keys-set-aside' }, payload: { model: 'gpt-image-1', prompt: 'no key left' } });
    const first = await send();
    expect(first.statusCode, first.body).toBe(502);
    expect(first.headers['x-should-retry']).toBe('false');
    // Both keys are still set aside: refused again, but run again, not replayed.
    const again = await send();
    expect(again.statusCode, again.body).toBe(502);
    expect(again.headers['idempotent-replayed']).not.toBe('true');
  });
});
