// A minimal fake upstream serving canned replies, the common floor of all three targets.
// POST /v1/models/<vendor>/<model>/predictions answers by the prompt's scenario:
//   bench small | bench 1mib | bench 4mib → {"output":{"b64_json":[{"bytesBase64":"...","mimeType":"png"}]}}
//   bench url                            → {"output":[{"url":"http://127.0.0.1:<port>/files/<n>.png"}]}
//   bench held                           → the 1 MiB image's reply, after HELD_REPLY_MS (a slow render)
// GET /files/<n>.png serves the 1 MiB PNG. Every image is made unique by a counter (see StampedPng).
import { createServer } from 'node:http';
import { StampedPng, loadImages } from './fixtures.js';
import { reportReady } from './child-process.js';

const apiKey = process.env.BENCH_UPSTREAM_KEY ?? '';
const images = await loadImages();
const stamped = Object.fromEntries(Object.entries(images).map(([name, png]) => [name, new StampedPng(png)]));
const URL_IMAGE = stamped['1mib'];
/** How long a `bench held` reply takes: many renders in flight at once, each carrying a MiB. */
const HELD_REPLY_MS = 2000;

const B64_PREFIX = Buffer.from('{"output":{"b64_json":[{"bytesBase64":"');
const B64_SUFFIX = Buffer.from('","mimeType":"png"}]}}');
let counter = 0;
let port = 0;

function sendJson(res, status, body) {
  const bytes = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': bytes.length });
  res.end(bytes);
}

function sendPieces(res, contentType, pieces) {
  const length = pieces.reduce((sum, piece) => sum + piece.length, 0);
  res.writeHead(200, { 'content-type': contentType, 'content-length': length });
  res.cork();
  for (const piece of pieces.slice(0, -1)) res.write(piece);
  res.end(pieces.at(-1));
}

function predictions(req, res, body) {
  if (req.headers.authorization !== `Bearer ${apiKey}`) return sendJson(res, 401, { error: { message: 'invalid api key', type: 'authentication_error' } });
  let prompt = '';
  try {
    prompt = JSON.parse(body).input.prompt;
  } catch {
    return sendJson(res, 400, { error: { message: 'body must be {"input":{"prompt":...}}', type: 'invalid_request_error' } });
  }
  const scenario = /^bench (\S+)/.exec(prompt)?.[1];
  counter++;
  if (scenario === 'url') {
    return sendJson(res, 200, { output: [{ url: `http://127.0.0.1:${port}/files/${counter}.png` }] });
  }
  if (scenario === 'held') {
    const stamp = counter;
    const timer = setTimeout(() => sendPieces(res, 'application/json', [B64_PREFIX, ...stamped['1mib'].base64Pieces(stamp), B64_SUFFIX]), HELD_REPLY_MS);
    res.once('close', () => clearTimeout(timer));
    return;
  }
  const image = stamped[scenario];
  if (!image) return sendJson(res, 400, { error: { message: `unknown bench scenario in prompt: ${prompt}`, type: 'invalid_request_error' } });
  return sendPieces(res, 'application/json', [B64_PREFIX, ...image.base64Pieces(counter), B64_SUFFIX]);
}

const server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
  const file = /^\/files\/(\d+)\.png$/.exec(req.url);
  if (req.method === 'GET' && file) return sendPieces(res, 'image/png', URL_IMAGE.pieces(Number(file[1])));
  if (req.method === 'POST' && /^\/v1\/models\/[^/]+\/[^/]+\/predictions$/.test(req.url)) {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => predictions(req, res, Buffer.concat(chunks).toString('utf8')));
    return;
  }
  sendJson(res, 404, { error: { message: `no route ${req.method} ${req.url}`, type: 'invalid_request_error' } });
});

server.listen(0, '127.0.0.1', () => {
  port = server.address().port;
  reportReady(port, () => new Promise((resolve) => server.close(resolve)));
});
