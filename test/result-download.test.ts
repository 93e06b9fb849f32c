/**
 * Downloading a result image from the URL upstream gave (UpstreamClient.download), against a small
 * scripted server on loopback: the size cap (declared and actual), the check that the bytes are an
 * image, and the retries. What the code does: up to 3 attempts in all, after pauses of 200 ms and
 * 400 ms, only when the connection failed or the server answered 5xx; an expired URL (403/404/410),
 * an over-size body or bytes that are not an image are not tried again. The pauses are recorded
 * instead of slept.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { GatewayError } from '../src/errors.js';
import { UpstreamClient } from '../src/upstream/upstream-client.js';
import { UpstreamFailure, toGatewayError } from '../src/upstream/upstream-failure.js';
import { makePng, startHarness, type Harness } from './harness.js';

const MAX = 4096;
let h: Harness;
let server: Server;
let origin: string;
/** How each request to the file server is answered, in turn; the last one repeats. */
let script: Array<(req: IncomingMessage, res: ServerResponse) => void> = [];
let requests = 0;
let waits: number[] = [];
let upstream: UpstreamClient;
let png: Buffer;

beforeAll(async () => {
  png = await makePng(16, 16);
  h = await startHarness();
  server = createServer((req, res) => {
    const answer = script[Math.min(requests, script.length - 1)]!;
    requests++;
    answer(req, res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // Result URLs on the upstream's own host are allowed by the egress policy: this server is "upstream".
  upstream = new UpstreamClient({
    baseUrl: origin,
    apiKeys: ['sk-unused-0123456789'],
    maxConcurrency: 2,
    queueTimeoutMs: 1000,
    retries: 0,
    retryBaseMs: 10,
    keyCooldownMs: 1000,
    pollIntervalMs: 10,
    maxReplyBytes: MAX,
    maxDownloadBytes: MAX,
    wait: async (ms) => void waits.push(ms),
  });
});
afterAll(async () => {
  await upstream?.close();
  server?.closeAllConnections();
  await new Promise((r) => server?.close(r));
  await h?.close();
});
beforeEach(() => {
  script = [];
  requests = 0;
  waits = [];
});

const pngAnswer = (_req: IncomingMessage, res: ServerResponse) => res.writeHead(200, { 'content-type': 'image/png' }).end(png);
const status = (code: number) => (_req: IncomingMessage, res: ServerResponse) => res.writeHead(code).end('no');
/** Sends a little and then cuts the connection: a download that broke off. */
const broken = (_req: IncomingMessage, res: ServerResponse) => {
  res.writeHead(200, { 'content-type': 'image/png', 'content-length': String(png.length) });
  res.write(png.subarray(0, 8));
  setImmediate(() => res.socket?.destroy());
};

/** Downloads into the gateway's own staging (the byte check included), as a generation does. */
const download = () => upstream.download(`${origin}/file.png`, AbortSignal.timeout(15_000), (body) => h.app.images.stage(body));

async function failure(promise: Promise<unknown>): Promise<GatewayError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  // The download's own failures are UpstreamFailures, answered at the edge as toGatewayError says.
  const answered = err instanceof UpstreamFailure ? toGatewayError(err) : err;
  expect(answered).toBeInstanceOf(GatewayError);
  return answered as GatewayError;
}

describe('the result download', () => {
  it('takes an image in one request when all is well', async () => {
    script = [pngAnswer];
    const staged = await download();
    expect(staged.mime).toBe('image/png');
    expect(staged.bytes).toBe(png.length);
    expect(requests).toBe(1);
    expect(waits).toEqual([]);
  });

  it('a 5xx is tried again after 200 ms, and the second answer is taken', async () => {
    script = [status(502), pngAnswer];
    const staged = await download();
    expect(staged.bytes).toBe(png.length);
    expect(requests).toBe(2);
    expect(waits).toEqual([200]);
  });

  it('a connection cut mid-body is tried again', async () => {
    script = [broken, pngAnswer];
    const staged = await download();
    expect(staged.bytes).toBe(png.length);
    expect(requests).toBe(2);
    expect(waits).toEqual([200]);
  });

  it('gives up after 3 attempts in all (2 retries, after 200 ms and 400 ms) with the last error', async () => {
    script = [status(500)];
    const err = await failure(download());
    expect(err.code).toBe('upstream_error');
    expect(err.message).toContain('HTTP 500');
    expect(requests).toBe(3);
    expect(waits).toEqual([200, 400]);
  });

  it('an expired URL (404) is not tried again and is named as expired', async () => {
    script = [status(404)];
    const err = await failure(download());
    expect(err.message).toMatch(/expired or is gone/);
    expect(requests).toBe(1);
    expect(waits).toEqual([]);
  });

  it('a declared Content-Length over the cap is refused before the body is read, and not tried again', async () => {
    let consumed = false;
    // Headers only: the body would follow if the client read on.
    script = [(_req, res) => res.writeHead(200, { 'content-type': 'image/png', 'content-length': String(MAX + 1) }).flushHeaders()];
    const err = await failure(
      upstream.download(`${origin}/file.png`, AbortSignal.timeout(15_000), async (body) => {
        consumed = true;
        return h.app.images.stage(body);
      }),
    );
    expect(err.message).toContain(`${MAX + 1} bytes, over the ${MAX} byte limit`);
    expect(requests).toBe(1);
    expect(waits).toEqual([]);
    expect(consumed).toBe(false);
  });

  it('a body that runs past the cap without declaring its length is cut there and not tried again', async () => {
    // A PNG's head, then more bytes than the cap allows, chunked (no Content-Length).
    script = [
      (_req, res) => {
        res.writeHead(200, { 'content-type': 'image/png' });
        res.write(png);
        res.end(Buffer.alloc(MAX));
      },
    ];
    const err = await failure(download());
    // The download's failure, not the disk's: no storage_full for a bad body.
    expect(err.code).toBe('upstream_error');
    expect(err.message).toContain(`over the ${MAX} byte limit`);
    expect(requests).toBe(1);
    expect(waits).toEqual([]);
  });

  it('bytes that are not an image are refused by the byte check and not tried again', async () => {
    script = [(_req, res) => res.writeHead(200, { 'content-type': 'image/png' }).end('<html>an error page, not an image</html>')];
    const err = await failure(download());
    expect(err.code).toBe('upstream_error');
    expect(err.message).toMatch(/not a PNG, JPEG or WebP image/);
    expect(requests).toBe(1);
    expect(waits).toEqual([]);
  });
});
