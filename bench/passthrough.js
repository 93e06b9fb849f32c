// The baseline: a bare undici pass-through proxy. It receives the request, forwards it to the
// upstream with the upstream key added, and streams the reply back — the floor any Node proxy
// in front of this upstream can reach. No auth, validation, storage or logging.
import { createServer } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { Agent, request } from 'undici';
import { reportReady } from './child-process.js';

const upstream = process.env.BENCH_UPSTREAM_URL;
const apiKey = process.env.BENCH_UPSTREAM_KEY ?? '';
// The same keep-alive pool the gateway keeps (UpstreamClient).
const dispatcher = new Agent({ keepAliveTimeout: 30_000, connections: 32 });

const server = createServer({ keepAliveTimeout: 60_000 }, async (req, res) => {
  // A client that leaves (the end of every load run leaves requests in flight) ends the upstream
  // call too, as the gateway does: else a reply nobody reads holds one of the pool's connections
  // for good, and once all 32 were held the pass-through stopped answering.
  const clientGone = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) clientGone.abort();
  });
  try {
    const headers = { authorization: `Bearer ${apiKey}` };
    if (req.headers['content-type']) headers['content-type'] = req.headers['content-type'];
    if (req.headers['content-length']) headers['content-length'] = req.headers['content-length'];
    const reply = await request(new URL(req.url, upstream), {
      method: req.method,
      headers,
      body: req.method === 'GET' || req.method === 'HEAD' ? undefined : req,
      dispatcher,
      signal: clientGone.signal,
    });
    const out = { 'content-type': reply.headers['content-type'] ?? 'application/octet-stream' };
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
