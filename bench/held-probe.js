// Held load, measured on its own: many slow renders in flight at once, each carrying a MiB.
//
//   npm run build && node bench/held-probe.js            # gateway and pass-through, 400 clients, 10 s
//   HELD_TARGETS=gateway HELD_CLIENTS=400 HELD_SECONDS=10 node bench/held-probe.js
//   HELD_TRACE=1 ...                                       # and the gateway's queue and budget every 500 ms
//
// Each party in its own process: a fake upstream that answers every predictions call after
// HELD_REPLY_MS (2 s) with a different 1 MiB PNG as base64, the target (the gateway from dist/ or
// bench/passthrough.js), and the load generator (autocannon). Reported per target: answers per
// second, p50/p99, errors, the target's CPU cores and its peak RSS (VmHWM, reset after warm-up).
// The gateway takes the rest of its configuration from this process's environment
// (MAX_INFLIGHT_IMAGE_BYTES, UPSTREAM_MAX_CONCURRENCY, ...).
import { fork } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const SELF = fileURLToPath(import.meta.url);
const UPSTREAM_KEY = 'sk-held-probe-upstream';
const CLIENT_KEY = 'gk-held-probe-client-0123456789';
const UPSTREAM_PATH = '/v1/models/openai/gpt-image-1/predictions';
const REPLY_MS = Number(process.env.HELD_REPLY_MS ?? 2000);

// ---------------------------------------------------------------------------------------------
// Child roles.

async function runUpstream() {
  const { StampedPng, loadImages } = await import('./fixtures.js');
  const { reportReady } = await import('./child-process.js');
  const png = new StampedPng((await loadImages())['1mib']);
  const prefix = Buffer.from('{"output":{"b64_json":[{"bytesBase64":"');
  const suffix = Buffer.from('","mimeType":"png"}]}}');
  let counter = 0;
  const server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    req.resume();
    req.on('end', () => {
      const stamp = ++counter;
      if (process.env.HELD_DEBUG && stamp % 50 === 0) console.error(`upstream: ${stamp} requests at ${Date.now() % 100000}`);
      const timer = setTimeout(() => {
        const pieces = [prefix, ...png.base64Pieces(stamp), suffix];
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': pieces.reduce((n, p) => n + p.length, 0) });
        for (const piece of pieces.slice(0, -1)) res.write(piece);
        res.end(pieces.at(-1));
      }, REPLY_MS);
      res.once('close', () => clearTimeout(timer));
    });
  });
  server.listen(0, '127.0.0.1', () => reportReady(server.address().port, () => new Promise((resolve) => server.close(resolve))));
}

async function runLoad() {
  const { measure, quantile } = await import('./measure.js');
  process.once('message', async (job) => {
    const result = await measure({ ...job, keepLatencies: true });
    const sorted = result.latencies.sort((a, b) => a - b);
    process.send({
      requestsPerSecond: result.requestsPerSecond,
      ok: result.ok,
      p50: quantile(sorted, 0.5),
      p99: quantile(sorted, 0.99),
      errors: result.non2xx + result.socketErrors + result.timeouts + result.short,
      statuses: result.statuses,
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The runner.

const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** The node flags of `npm start`, as the gateway runs in production. */
const START_FLAGS = JSON.parse(readFileSync(join(BENCH_DIR, '..', 'package.json'), 'utf8')).scripts.start.split(' ').filter((word) => word.startsWith('--'));

function start(script, args, env, stdout = 'ignore', execArgv = []) {
  return new Promise((resolve, reject) => {
    const child = fork(script, args, { env: { ...process.env, ...env }, execArgv, stdio: ['ignore', stdout, 'inherit', 'ipc'] });
    children.add(child);
    child.once('exit', (code) => {
      children.delete(child);
      reject(new Error(`${script} ${args.join(' ')} exited with code ${code}`));
    });
    child.once('message', (message) => resolve({ child, pid: child.pid, url: `http://127.0.0.1:${message?.port}` }));
  });
}

async function stop(server) {
  server.child.removeAllListeners('exit');
  server.child.send({ type: 'close' });
  await Promise.race([new Promise((resolve) => server.child.once('exit', resolve)), sleep(5000)]);
  server.child.kill('SIGKILL');
  children.delete(server.child);
}

function peakMb(pid) {
  return Math.round(Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024);
}

function cpuMs(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

async function load(job) {
  const child = fork(SELF, ['--load'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(child);
  const result = new Promise((resolve) => child.once('message', resolve));
  child.send(job);
  const out = await result;
  child.kill();
  children.delete(child);
  return out;
}

/** Prints, every 500 ms, what the gateway's /metrics say of its upstream queue and reply budget. */
function traceGateway(url) {
  const started = Date.now();
  const pick = (text, name) => {
    let sum = 0;
    for (const line of text.split('\n')) if (line.startsWith(name) && (line[name.length] === ' ' || line[name.length] === '{')) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
    return sum;
  };
  let answered = 0;
  console.log('  t s   queued  waiting  budget MiB  answered/0.5 s');
  const timer = setInterval(async () => {
    const text = await fetch(`${url}/metrics`).then((res) => res.text()).catch(() => '');
    const total = pick(text, 'gateway_http_requests_total');
    console.log(
      `  ${((Date.now() - started) / 1000).toFixed(1).padStart(4)}  ${String(pick(text, 'gateway_upstream_queue_depth')).padStart(6)}  ${String(pick(text, 'gateway_inflight_image_waiting')).padStart(7)}  ` +
        `${(pick(text, 'gateway_inflight_image_bytes') / 2 ** 20).toFixed(1).padStart(10)}  ${String(total - answered).padStart(8)}`,
    );
    answered = total;
  }, 500);
  return { stop: () => clearInterval(timer) };
}

async function main() {
  const clients = Number(process.env.HELD_CLIENTS ?? 400);
  const seconds = Number(process.env.HELD_SECONDS ?? 10);
  const targets = (process.env.HELD_TARGETS ?? 'passthrough,gateway').split(',');
  const work = mkdtempSync(join(tmpdir(), 'held-probe-'));
  const keysFile = join(work, 'keys.yaml');
  writeFileSync(keysFile, `keys:\n  - id: probe\n    key: ${CLIENT_KEY}\n    team: probe\n    rpm: 1000000\n    images_per_day: 100000000\n`);
  const upstream = await start(SELF, ['--upstream'], {});
  const json = { 'content-type': 'application/json' };
  console.log(`held probe: ${clients} clients, ${seconds} s, upstream answers after ${REPLY_MS} ms with a 1 MiB PNG as base64`);
  for (const name of targets) {
    const server =
      name === 'gateway'
        ? await start(join(BENCH_DIR, 'gateway.js'), [], {
            AIHUBMIX_API_KEY: UPSTREAM_KEY,
            AIHUBMIX_BASE_URL: upstream.url,
            GATEWAY_KEYS_FILE: keysFile,
            DATA_DIR: join(work, 'data'),
            LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
            UPSTREAM_RETRIES: '0',
            RATE_LIMIT_RPM: '1000000',
            UPSTREAM_MAX_CONCURRENCY: process.env.UPSTREAM_MAX_CONCURRENCY ?? String(clients),
            IMAGE_URL_SECRET: 'held-probe-url-secret-0123456789abcdef',
            PUBLIC_BASE_URL: 'http://127.0.0.1',
          }, process.env.HELD_GATEWAY_LOG ? openSync(process.env.HELD_GATEWAY_LOG, 'a') : 'ignore', START_FLAGS)
        : await start(process.env.HELD_PASSTHROUGH ?? join(BENCH_DIR, 'passthrough.js'), [], { BENCH_UPSTREAM_URL: upstream.url, BENCH_UPSTREAM_KEY: UPSTREAM_KEY });
    const job =
      name === 'gateway'
        ? { url: `${server.url}/v1/generate`, method: 'POST', headers: { ...json, authorization: `Bearer ${CLIENT_KEY}` }, body: JSON.stringify({ model: 'gpt-image-1', prompt: 'held probe' }) }
        : { url: server.url + UPSTREAM_PATH, method: 'POST', headers: json, body: JSON.stringify({ input: { prompt: 'held probe' } }) };
    // Warm-up: a few answers, so the peak is the load's and not start-up's.
    await load({ ...job, connections: 4, seconds: REPLY_MS / 1000 + 1 });
    writeFileSync(`/proc/${server.pid}/clear_refs`, '5');
    const cpuBefore = cpuMs(server.pid);
    // Where the peak is (V8's heap, buffers outside it), sampled every 100 ms.
    const peaks = { heapUsed: 0, external: 0, arrayBuffers: 0 };
    const onMemory = (message) => {
      if (message?.type !== 'memory') return;
      for (const field of Object.keys(peaks)) peaks[field] = Math.max(peaks[field], Math.round(message.usage[field] / 2 ** 20));
    };
    server.child.on('message', onMemory);
    const sampler = setInterval(() => server.child.send({ type: 'memory' }), 100);
    // HELD_TRACE=1: the gateway's upstream queue and reply budget every 500 ms, to see where it waits.
    const trace = name === 'gateway' && process.env.HELD_TRACE ? traceGateway(server.url) : undefined;
    const result = await load({ ...job, connections: clients, seconds });
    trace?.stop();
    clearInterval(sampler);
    server.child.off('message', onMemory);
    const cores = (cpuMs(server.pid) - cpuBefore) / (seconds * 1000);
    console.log(
      `${name.padEnd(12)} ${result.requestsPerSecond?.toFixed(1)} req/s  p50 ${result.p50?.toFixed(0)} ms  p99 ${result.p99?.toFixed(0)} ms  ` +
        `errors ${result.errors} ${JSON.stringify(result.statuses)}  cores ${cores.toFixed(2)}  peak RSS ${peakMb(server.pid)} MB ` +
        `(peaks in MB: heap ${peaks.heapUsed}, external ${peaks.external}, array buffers ${peaks.arrayBuffers})`,
    );
    await stop(server);
  }
  await stop(upstream);
  rmSync(work, { recursive: true, force: true });
}

if (process.argv[2] === '--upstream') await runUpstream();
else if (process.argv[2] === '--load') await runLoad();
else await main();
