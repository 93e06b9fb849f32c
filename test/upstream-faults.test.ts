import { setTimeout as sleep } from 'node:timers/promises';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { LightMyRequestResponse } from 'fastify';
import { CLIENT_KEY, UPSTREAM_KEY, makePng, multipartBody, startHarness, type Harness } from './harness.js';

interface ErrorBody {
  error: { code: string; message: string; details?: Array<{ field?: string; message: string }>; request_id: string };
}

function generate(harness: Harness, body: Record<string, unknown>): Promise<LightMyRequestResponse> {
  return harness.app.inject({ method: 'POST', url: '/v1/generate', headers: harness.auth, payload: body });
}

function errorOf(res: LightMyRequestResponse, status: number, code: string): ErrorBody['error'] {
  expect(res.statusCode, res.body).toBe(status);
  const body = res.json() as ErrorBody;
  expect(body.error.code).toBe(code);
  expect(body.error.request_id).toBe(res.headers['x-request-id']);
  return body.error;
}

const submissions = (harness: Harness) => harness.simulator.received.filter((r) => r.method === 'POST');
/** Waits until `ready` holds, failing after `ms` rather than spinning until the test times out. */
async function waitFor(ready: () => boolean, what: string, ms = 5000): Promise<void> {
  const until = performance.now() + ms;
  while (!ready()) {
    if (performance.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

const polls = (harness: Harness) => harness.simulator.received.filter((r) => r.method === 'GET' && r.path.startsWith('/v1/tasks/'));

describe('upstream answers mapped to the contract', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());
  beforeEach(() => h.simulator.reset());

  it('a fault injected into the simulator does reach the gateway (control)', async () => {
    h.simulator.failNext('http500');
    const res = await generate(h, { model: 'gpt-image-1', prompt: 'a deer' });
    expect(res.statusCode).not.toBe(200);
    const again = await generate(h, { model: 'gpt-image-1', prompt: 'a deer' });
    expect(again.statusCode).toBe(200);
  });

  it('maps an upstream 400 to 400 invalid_request carrying the upstream reason', async () => {
    h.simulator.failNext('http400');
    const err = errorOf(await generate(h, { model: 'gpt-image-1', prompt: 'a deer' }), 400, 'invalid_request');
    expect(err.message).toContain('size not supported');
    expect(err.message).toMatch(/upstream/i);
    expect(submissions(h)).toHaveLength(1);
  });

  it('maps an Ideogram-style upstream 400 ({"error":"..."}) to 400 with its reason', async () => {
    h.simulator.failNext('http400');
    const err = errorOf(await generate(h, { model: 'ideogram-v3', prompt: 'a deer' }), 400, 'invalid_request');
    expect(err.message).toContain('size not supported');
  });

  it('maps upstream moderation (422) to 422 content_rejected', async () => {
    h.simulator.failNext('moderated');
    const err = errorOf(await generate(h, { model: 'gpt-image-1', prompt: 'a deer' }), 422, 'content_rejected');
    expect(err.message).toMatch(/moderation/i);
  });

  it('maps an async Flux task ending "Content Moderated" to 422 content_rejected', async () => {
    h.simulator.failNext('moderated');
    const err = errorOf(await generate(h, { model: 'flux-kontext-pro', prompt: 'a deer' }), 422, 'content_rejected');
    expect(err.message).toMatch(/moderat/i);
    expect(polls(h).length).toBeGreaterThan(0);
  });

  it('maps an async Flux task ending in Error to 502 upstream_error', async () => {
    h.simulator.failNext('task_error');
    const err = errorOf(await generate(h, { model: 'flux-kontext-pro', prompt: 'a deer' }), 502, 'upstream_error');
    expect(err.message).toMatch(/task/i);
    expect(polls(h).length).toBeGreaterThan(0);
  });

  it.each(['http401', 'http403'] as const)(
    'maps upstream %s (the gateway key refused) to 502 upstream_error that does not blame the client',
    async (fault) => {
      h.simulator.failNext(fault);
      const err = errorOf(await generate(h, { model: 'gpt-image-1', prompt: 'a deer' }), 502, 'upstream_error');
      expect(err.message).toMatch(/gateway|operator/i);
      expect(err.message).not.toMatch(/your (api )?key|client key|invalid api key|unauthori[sz]ed/i);
      expect(err.message).not.toContain(UPSTREAM_KEY);
      expect(err.message).not.toContain(CLIENT_KEY);
    },
  );

  it('maps a real upstream 401 (the simulator refusing a wrong upstream key) to 502', async () => {
    const wrongKey = await startHarness({ AIHUBMIX_API_KEY: 'sk-wrong-upstream-key-9876543210' });
    try {
      const res = await generate(wrongKey, { model: 'gpt-image-1', prompt: 'a deer' });
      const err = errorOf(res, 502, 'upstream_error');
      expect(err.message).not.toContain('sk-wrong-upstream-key-9876543210');
      expect(wrongKey.simulator.received).toHaveLength(1);
    } finally {
      await wrongKey.close();
    }
  });

  it('maps upstream throttling (429) to 429 rate_limited with a Retry-After header', async () => {
    // Enough faults to outlast any retries the gateway makes.
    h.simulator.failNext('http429', 5);
    const res = await generate(h, { model: 'gpt-image-1', prompt: 'a deer' });
    errorOf(res, 429, 'rate_limited');
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
  });

  it.each(['http500', 'http503'] as const)('maps upstream %s to 502 upstream_error', async (fault) => {
    h.simulator.failNext(fault, 5);
    const err = errorOf(await generate(h, { model: 'gpt-image-1', prompt: 'a deer' }), 502, 'upstream_error');
    expect(err.message).toMatch(/HTTP 50[03]/);
  });

  it('maps a malformed upstream reply to 502 upstream_error', async () => {
    h.simulator.failNext('malformed');
    const err = errorOf(await generate(h, { model: 'gpt-image-1', prompt: 'a deer' }), 502, 'upstream_error');
    expect(err.message).toMatch(/malformed/i);
  });

  it('maps a malformed reply on an Ideogram route to 502 upstream_error', async () => {
    h.simulator.failNext('malformed');
    errorOf(await generate(h, { model: 'ideogram-v3', prompt: 'a deer' }), 502, 'upstream_error');
  });

  it('does not pass upstream error statuses through on edits either (a 503 on /v1/images/edits is a 502)', async () => {
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it blue' }, [
      { field: 'image', filename: 'a.png', bytes: await makePng() },
    ]);
    h.simulator.failNext('http503', 5);
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
    errorOf(res, 502, 'upstream_error');
    expect(submissions(h)[0]?.path).toBe('/v1/images/edits');
  });
});

describe('an upstream that never answers (UPSTREAM_TIMEOUT_MS=300)', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ UPSTREAM_TIMEOUT_MS: '300' });
  });
  afterAll(async () => h.close());

  it('answers 504 upstream_timeout at the limit instead of hanging with upstream', async () => {
    h.simulator.failNext('hang');
    // An upstream that never answers: without the limit this request would hang until the test's own timeout.
    const res = await generate(h, { model: 'gpt-image-1', prompt: 'a deer' });
    const err = errorOf(res, 504, 'upstream_timeout');
    expect(err.message).toContain('300 ms');
    // Sent once and given up on, not retried (an image may have been made and paid for).
    expect(h.simulator.received.filter((r) => r.method === 'POST')).toHaveLength(1);
  });

  it('counts task polling within the same limit', async () => {
    const slow = await startHarness({ UPSTREAM_TIMEOUT_MS: '300' }, { taskReadyAfterMs: 3_600_000 });
    try {
      const res = await generate(slow, { model: 'flux-kontext-pro', prompt: 'a deer' });
      errorOf(res, 504, 'upstream_timeout');
      expect(polls(slow).length).toBeGreaterThan(0);
    } finally {
      await slow.close();
    }
  });
});

describe('an upstream image URL that expired before the download', () => {
  let h: Harness;
  beforeAll(async () => {
    // URLs that are already expired when handed out.
    h = await startHarness({}, { urlTtlMs: 0 });
  });
  afterAll(async () => h.close());

  it('answers 502 upstream_error naming the failed download and its cause', async () => {
    const err = errorOf(await generate(h, { model: 'Stable-Diffusion-3-5-Large', prompt: 'a deer' }), 502, 'upstream_error');
    expect(err.message).toMatch(/download/i);
    expect(err.message).toMatch(/expired/i);
    expect(err.message).toContain('404');
  });

  it('still serves models whose upstream answers with inline base64 (control)', async () => {
    const res = await generate(h, { model: 'gpt-image-1', prompt: 'a deer' });
    expect(res.statusCode).toBe(200);
  });
});

describe('a client that disconnects mid-request', () => {
  let h: Harness;
  let base: string;
  beforeAll(async () => {
    // A task that stays Pending for a very long time: the gateway polls until something stops it.
    h = await startHarness({}, { taskReadyAfterMs: 3_600_000 });
    await h.app.listen({ port: 0, host: '127.0.0.1' });
    base = `http://127.0.0.1:${(h.app.server.address() as AddressInfo).port}`;
  });
  afterAll(async () => h.close());

  async function startThenAbort(afterPolls: number): Promise<{ pollsAtAbort: number }> {
    const controller = new AbortController();
    const pending = fetch(`${base}/v1/generate`, {
      method: 'POST',
      headers: { ...h.auth, 'content-type': 'application/json', 'x-request-id': 'disconnect-test' },
      body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'a deer' }),
      signal: controller.signal,
    }).catch((err: unknown) => err);
    await waitFor(() => polls(h).length >= afterPolls, `${afterPolls} task polls`);
    controller.abort();
    const outcome = await pending;
    expect((outcome as Error).name).toBe('AbortError');
    return { pollsAtAbort: polls(h).length };
  }

  it('stops polling the upstream task once the client has gone', async () => {
    h.simulator.reset();
    await startThenAbort(3);
    const leftTask = polls(h)[0]!.path;
    const leftPolls = () => polls(h).filter((p) => p.path === leftTask).length;
    const atAbort = leftPolls();
    // Another request's task, polled on the same schedule: while it is polled five times, the left
    // one is not (a poll already on the wire at the abort may still land).
    const controller = new AbortController();
    const other = fetch(`${base}/v1/generate`, {
      method: 'POST',
      headers: { ...h.auth, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'a deer that stays' }),
      signal: controller.signal,
    }).catch((err: unknown) => err);
    await waitFor(() => polls(h).filter((p) => p.path !== leftTask).length >= 5, 'five polls of the other task');
    expect(leftPolls()).toBeLessThanOrEqual(atAbort + 1);
    controller.abort();
    await other;
  });

  it('logs that the client disconnected and the upstream call was aborted', async () => {
    h.simulator.reset();
    const before = h.logs.length;
    await startThenAbort(2);
    const disconnected = (l: Record<string, unknown>) => l.reqId === 'disconnect-test' && /client disconnected/.test(String(l.msg));
    await waitFor(() => h.logs.slice(before).some((l) => disconnected(JSON.parse(l) as Record<string, unknown>)), 'the disconnect log line');
  });

  it('keeps polling while the client stays connected (control)', async () => {
    h.simulator.reset();
    const controller = new AbortController();
    const pending = fetch(`${base}/v1/generate`, {
      method: 'POST',
      headers: { ...h.auth, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'flux-kontext-pro', prompt: 'a deer' }),
      signal: controller.signal,
    }).catch((err: unknown) => err);
    await waitFor(() => polls(h).length >= 3, '3 task polls');
    const atThree = polls(h).length;
    // The polls go on (this fails by timing out if they stop).
    await waitFor(() => polls(h).length >= atThree + 3, 'three more polls');
    controller.abort();
    await pending;
  });
});

describe('image URLs in upstream replies', () => {
  it('are held to the egress policy: a private or metadata address is not fetched', async () => {
    const { createServer } = await import('node:http');
    let fetchedPrivate = false;
    const decoy = createServer((_req, res) => {
      fetchedPrivate = true;
      res.end('secret');
    });
    await new Promise<void>((r) => decoy.listen(0, '127.0.0.2', r));
    const decoyUrl = `http://127.0.0.2:${(decoy.address() as AddressInfo).port}/latest/meta-data`;
    const upstream = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ output: [{ url: req.url?.includes('qianfan') ? decoyUrl : 'http://169.254.169.254/latest/meta-data' }] }));
      });
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const h = await startHarness({ AIHUBMIX_BASE_URL: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` });
    try {
      for (const model of ['doubao-seedream-4-0', 'irag-1.0']) {
        const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model, prompt: 'x' } });
        expect(res.statusCode).toBe(502);
        expect(res.json().error.message).toMatch(/image URL the gateway does not fetch/);
      }
      expect(fetchedPrivate).toBe(false);
    } finally {
      await h.close();
      upstream.close();
      decoy.close();
    }
  });
});
