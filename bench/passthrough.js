// The baseline: a bare undici pass-through proxy, the fastest honest one we know how to write. It
// adds the upstream key, forwards the request and returns the reply — nothing else: no auth,
// validation, storage or logging. Bodies under 64 KiB (every request here, the small image's
// reply) are read whole and written in one piece, as a proxy tuned for small JSON would; larger
// ones (the image replies) are streamed, so it holds no more than a socket's worth of each.
import { createServer } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { Agent } from 'undici';
import { reportReady } from './child-process.js';

const SMALL_BODY_BYTES = 64 * 1024;
const upstream = new URL(process.env.BENCH_UPSTREAM_URL);
const authorization = `Bearer ${process.env.BENCH_UPSTREAM_KEY ?? ''}`;
// Keep-alive, and as many connections as there are requests in flight (the held scenario has 400):
// a pool cap would make the baseline queue where the upstream does not.
const dispatcher = new Agent({ keepAliveTimeout: 30_000 });

/** A body of known length under SMALL_BODY_BYTES, read whole; undefined when it must be streamed. */
function smallLength(headers) {
  const length = Number(headers['content-length']);
  return Number.isInteger(length) && length < SMALL_BODY_BYTES ? length : undefined;
}

function readWhole(stream, length) {
  return new Promise((resolve, reject) => {
    const body = Buffer.allocUnsafe(length);
    let at = 0;
    stream.on('data', (chunk) => {
      chunk.copy(body, at);
      at += chunk.length;
    });
    stream.once('end', () => resolve(at === length ? body : body.subarray(0, at)));
    stream.once('error', reject);
  });
}

const server = createServer({ keepAliveTimeout: 60_000 }, async (req, res) => {
  // A client that leaves (the end of every load run leaves requests in flight) ends the upstream
  // call too, as the gateway does: else a reply nobody reads holds one of the pool's connections.
  const clientGone = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) clientGone.abort();
  });
  try {
    const headers = { authorization };
    if (req.headers['content-type']) headers['content-type'] = req.headers['content-type'];
    let body;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      const length = smallLength(req.headers);
      if (length !== undefined) {
        body = await readWhole(req, length);
      } else {
        body = req;
        if (req.headers['content-length']) headers['content-length'] = req.headers['content-length'];
      }
    }
    const reply = await dispatcher.request({
      origin: upstream.origin,
      path: req.url,
      method: req.method,
      headers,
      body,
      signal: clientGone.signal,
    });
    const out = { 'content-type': reply.headers['content-type'] ?? 'application/octet-stream' };
    const length = smallLength(reply.headers);
    if (length !== undefined) {
      const whole = await readWhole(reply.body, length);
      out['content-length'] = whole.length;
      res.writeHead(reply.statusCode, out);
      res.end(whole);
      return;
    }
    if (reply.headers['content-length']) out['content-length'] = reply.headers['content-length'];
    res.writeHead(reply.statusCode, out);
    await pipeline(reply.body, res);
  } catch (err) {
    if (clientGone.signal.aborted) return;
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { message: String(err?.message ?? err) } }));
  }
});

server.listen(0, '127.0.0.1', () => {
  reportReady(server.address().port, async () => {
    await new Promise((resolve) => server.close(resolve));
    await dispatcher.close();
  });
});
