// npm run bench: the gateway against a bare undici pass-through and the upstream itself, on
// loopback, in one run, interleaved round by round so that drift of the machine falls on all
// targets alike. BENCH_QUICK=1 for a short smoke run; BENCH_PROFILE=1 writes a CPU profile of the
// gateway's main thread over the measured rounds to bench/results/profiles/; BENCH_ONLY=small,4mib runs only those scenarios,
// BENCH_TARGETS=gateway only those targets, BENCH_SECONDS=10 measures longer (for profiling),
// BENCH_SERIAL_SECONDS=0.5 shortens the concurrency-1 run (a profile then shows the loaded one),
// BENCH_LOG_LEVEL=warn runs the gateway without its per-request log line (to see what it costs).
// The load generator (autocannon) runs in a process of its own (load-generator.js).
import { fork } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync, closeSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { performance } from 'node:perf_hooks';
import { median, quantile } from './measure.js';
import { coresUsed, treeCpuMs, treeMemory } from './proc.js';
import { loadImages } from './fixtures.js';
import { printReport } from './report.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const QUICK = process.env.BENCH_QUICK === '1';
const PROFILE = process.env.BENCH_PROFILE === '1';
const ONLY = process.env.BENCH_ONLY ? new Set(process.env.BENCH_ONLY.split(',')) : undefined;
const ONLY_TARGETS = process.env.BENCH_TARGETS ? new Set(process.env.BENCH_TARGETS.split(',')) : undefined;
const USAGE_COMPARE = process.env.BENCH_USAGE_COMPARE === '1';
/** Another build's dist/ (a copy made before a change), measured as the target `gateway-before`: an A/B in one interleaved run. */
const COMPARE_DIST = process.env.BENCH_COMPARE_DIST;
/** The gateway in this many processes sharing its port (gateway-cluster.js), measured as the target `gateway-cluster`. */
const CLUSTER_PROCESSES = process.env.BENCH_PROCESSES ? Number(process.env.BENCH_PROCESSES) : undefined;

const SETTINGS = {
  rounds: Number(process.env.BENCH_ROUNDS ?? (QUICK ? 1 : 3)),
  /** Seconds of each measurement. */
  seconds: Number(process.env.BENCH_SECONDS ?? (QUICK ? 1 : 4)),
  warmupSeconds: QUICK ? 0.3 : 2,
  /** Seconds of the latency measurement at concurrency 1, when not `seconds` (BENCH_SERIAL_SECONDS=0.5 leaves a profile to the loaded run). */
  serialSeconds: process.env.BENCH_SERIAL_SECONDS ? Number(process.env.BENCH_SERIAL_SECONDS) : undefined,
  /** Throughput is measured at this concurrency... */
  throughputConnections: Number(process.env.BENCH_CONNECTIONS ?? 32),
  /** ...and peak memory for the 4 MiB image also at this one. */
  memoryConnections: 16,
  /** The held scenario: this many clients, each waiting on a slow upstream reply, for this long. */
  heldConnections: 400,
  heldSeconds: Number(process.env.BENCH_HELD_SECONDS ?? (QUICK ? 12 : 30)),
};

/** The gateway runs with the Node flags `npm start` gives it (as the Dockerfile does); BENCH_GATEWAY_FLAGS overrides them. */
const GATEWAY_NODE_FLAGS = (process.env.BENCH_GATEWAY_FLAGS ?? startScriptFlags()).split(' ').filter(Boolean);

function startScriptFlags() {
  const start = JSON.parse(readFileSync(join(BENCH_DIR, '..', 'package.json'), 'utf8')).scripts.start;
  return start.split(' ').filter((word) => word.startsWith('--')).join(' ');
}

const UPSTREAM_KEY = 'sk-bench-upstream-0123456789abcdef';
const CLIENT_KEY = 'gk-bench-client-0123456789abcdef';
const UPSTREAM_PATH = '/v1/models/opanai/gpt-image-1/predictions';

/** Image scenarios: the prompt tells the fake upstream what to answer. */
const IMAGE_SCENARIOS = [
  { name: 'small', title: 'small image (b64, ~500 B)' },
  { name: '1mib', title: '1 MiB image (b64)' },
  { name: '4mib', title: '4 MiB image (b64)', memory: true },
  // The same reply, answered as base64 (`b64_json`): the image stored, and its base64 in the answer.
  { name: '4mib-b64json', upstream: '4mib', title: '4 MiB image, answered as b64_json', responseFormat: 'b64_json' },
  { name: 'url', title: 'URL result, 1 MiB download' },
];
const HELD_TITLE = 'held: 400 clients, upstream answers after 2 s with 1 MiB b64';

// ---------------------------------------------------------------------------------------------
// The servers, each in its own process.

const children = new Set();

function start(script, env, options = {}) {
  return new Promise((resolve, reject) => {
    const child = fork(join(BENCH_DIR, script), [], {
      env: { ...process.env, ...env },
      execArgv: options.execArgv ?? [],
      stdio: ['ignore', options.stdout ?? 'ignore', 'inherit', 'ipc'],
    });
    children.add(child);
    child.once('exit', (code) => {
      children.delete(child);
      reject(new Error(`${script} exited with code ${code} before it was ready`));
    });
    child.once('message', (message) => {
      if (message?.type !== 'ready') return reject(new Error(`${script}: unexpected message ${JSON.stringify(message)}`));
      const server = { name: script, child, pid: child.pid, url: `http://127.0.0.1:${message.port}`, exitCode: undefined };
      child.once('exit', (code, signal) => (server.exitCode = code ?? signal));
      resolve(server);
    });
  });
}

async function stop(server) {
  if (!children.has(server.child)) return;
  server.child.removeAllListeners('exit');
  const exited = new Promise((resolve) => server.child.once('exit', resolve));
  server.child.once('exit', () => children.delete(server.child));
  server.child.send({ type: 'close' });
  await Promise.race([exited, sleep(15_000)]);
  if (children.has(server.child)) server.child.kill('SIGKILL');
}

function killChildren() {
  for (const child of children) child.kill('SIGKILL');
}
process.on('exit', killChildren);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    killChildren();
    process.exit(130);
  });
}

/** The load generator's process; `load(options)` runs one measurement there (bench/measure.js). */
async function startLoadGenerator() {
  const child = fork(join(BENCH_DIR, 'load-generator.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(child);
  const pending = new Map();
  let nextId = 0;
  child.on('message', (message) => {
    const waiter = pending.get(message?.id);
    if (!waiter) return;
    pending.delete(message.id);
    if (message.error) waiter.reject(new Error(`load generator: ${message.error}`));
    else waiter.resolve(message.result);
  });
  child.once('exit', (code) => {
    children.delete(child);
    for (const waiter of pending.values()) waiter.reject(new Error(`the load generator exited (${code})`));
  });
  await new Promise((resolve, reject) => {
    child.once('message', (message) => (message?.type === 'ready' ? resolve() : reject(new Error('load generator: no ready message'))));
  });
  return {
    /** One measurement of a target (its request: url, method, headers, body, minBytes). */
    load({ url, method, headers, body, minBytes }, { connections, seconds, keepLatencies = false }) {
      const id = nextId++;
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        child.send({ type: 'measure', id, options: { url, method, headers, body, minBytes, connections, seconds, keepLatencies } });
      });
    },
    stop: () => child.kill('SIGTERM'),
  };
}

/**
 * Runs `measurement` while watching the process tree of `pid`: its CPU time over the wall time
 * (cores in use) and its peak RSS, summed over the tree.
 */
async function watched(pid, measurement) {
  treeMemory.reset(pid);
  const cpuBefore = treeCpuMs(pid);
  const startedAt = performance.now();
  const result = await measurement();
  const wallMs = performance.now() - startedAt;
  const cpuAfter = treeCpuMs(pid);
  return {
    result,
    cores: coresUsed(cpuBefore, cpuAfter, wallMs),
    cpuPerRequestMs: cpuBefore === null || cpuAfter === null || result.ok === 0 ? null : (cpuAfter - cpuBefore) / result.ok,
    peakRssMb: treeMemory.peakMb(pid),
  };
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  const { load, stop: stopLoadGenerator } = await startLoadGenerator();
  const loadAtStart = loadavg().map((l) => Math.round(l * 100) / 100);
  const images = await loadImages();
  const work = mkdtempSync(join(tmpdir(), 'gw-bench-'));
  const dataDir = join(work, 'data');
  mkdirSync(dataDir);
  const keysFile = join(work, 'keys.yaml');
  // Every limit on, with a ceiling the benchmark never reaches.
  writeFileSync(
    keysFile,
    [
      'keys:',
      '  - id: bench',
      `    key: ${CLIENT_KEY}`,
      '    team: bench',
      '    rpm: 1000000',
      '    images_per_day: 100000000',
      '    monthly_budget_usd: 100000000',
      '    models: ["gpt-image-*"]',
      '',
    ].join('\n'),
  );
  const gatewayLog = join(work, 'gateway.log');
  const logFd = openSync(gatewayLog, 'a');

  const upstream = await start('fake-upstream.js', { BENCH_UPSTREAM_KEY: UPSTREAM_KEY });
  const startPassthrough = () => start('passthrough.js', { BENCH_UPSTREAM_URL: upstream.url, BENCH_UPSTREAM_KEY: UPSTREAM_KEY });
  const profileDir = join(BENCH_DIR, 'results', 'profiles');
  if (PROFILE) mkdirSync(profileDir, { recursive: true });
  const startGateway = (options) =>
    start(
      options.script ?? 'gateway.js',
      {
        AIHUBMIX_API_KEY: UPSTREAM_KEY,
        AIHUBMIX_BASE_URL: upstream.url,
        GATEWAY_KEYS_FILE: keysFile,
        DATA_DIR: options.dataDir,
        LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'info',
        RATE_LIMIT_RPM: '1000000',
        // The held scenario's 400 slow renders all go upstream at once, as they do through the pass-through.
        UPSTREAM_MAX_CONCURRENCY: '512',
        UPSTREAM_RETRIES: '0',
        IMAGE_URL_SECRET: 'bench-url-secret-0123456789abcdefghijkl',
        PUBLIC_BASE_URL: 'http://127.0.0.1',
        ...options.env,
      },
      { stdout: options.stdout, execArgv: GATEWAY_NODE_FLAGS },
    );
  const passthrough = await startPassthrough();
  const gateway = await startGateway({ dataDir, stdout: logFd });
  // BENCH_USAGE_COMPARE=1: a second gateway whose answers do not wait for their usage record's
  // commit (BENCH_USAGE_QUEUED), the baseline for what durable usage costs (target gateway-queued).
  const queuedGateway = USAGE_COMPARE ? await startGateway({ dataDir: join(work, 'queued'), stdout: logFd, env: { BENCH_USAGE_QUEUED: '1' } }) : undefined;
  const gatewayBefore = COMPARE_DIST ? await startGateway({ dataDir: join(work, 'before'), stdout: logFd, env: { BENCH_GATEWAY_DIST: COMPARE_DIST } }) : undefined;
  const clusterGatewayOptions = { script: 'gateway-cluster.js', stdout: logFd, env: { BENCH_PROCESSES: String(CLUSTER_PROCESSES) } };
  const clusterGateway = CLUSTER_PROCESSES ? await startGateway({ ...clusterGatewayOptions, dataDir: join(work, 'cluster') }) : undefined;
  const imagesDir = join(dataDir, 'images');
  const staticServer = await start('static-server.js', { BENCH_STATIC_ROOT: imagesDir });

  // A stored image to serve: made through the gateway, so both servers read the very same file.
  const stored = await fetch(`${gateway.url}/v1/generate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-image-1', prompt: 'bench 1mib' }),
  }).then((res) => res.json());
  const storedUrl = new URL(stored.images?.[0]?.url ?? 'http://invalid/');
  if (!storedUrl.pathname.startsWith('/v1/images/')) throw new Error(`could not store the image to serve: ${JSON.stringify(stored)}`);
  const sha256 = stored.images[0].sha256;
  const servedDir = sha256.slice(0, 2);

  const upstreamBody = (scenario) => JSON.stringify({ input: { prompt: `bench ${scenario}` } });
  const json = { 'content-type': 'application/json' };
  /** A gateway target (the gateway, or another build or setup of it) for an image scenario. */
  const gatewayTarget = (server, s) => ({
    server,
    method: 'POST',
    url: `${server.url}/v1/generate`,
    headers: { ...json, authorization: `Bearer ${CLIENT_KEY}` },
    body: JSON.stringify({ model: 'gpt-image-1', prompt: `bench ${s.upstream ?? s.name}`, ...(s.responseFormat ? { response_format: s.responseFormat } : {}) }),
  });
  const scenarios = [
    ...IMAGE_SCENARIOS.map((s) => ({
      ...s,
      baseline: 'passthrough',
      targets: {
        upstream: { server: upstream, method: 'POST', url: upstream.url + UPSTREAM_PATH, headers: { ...json, authorization: `Bearer ${UPSTREAM_KEY}` }, body: upstreamBody(s.upstream ?? s.name) },
        passthrough: { server: passthrough, method: 'POST', url: passthrough.url + UPSTREAM_PATH, headers: json, body: upstreamBody(s.upstream ?? s.name) },
        gateway: gatewayTarget(gateway, s),
        ...(queuedGateway ? { 'gateway-queued': gatewayTarget(queuedGateway, s) } : {}),
        ...(clusterGateway ? { 'gateway-cluster': gatewayTarget(clusterGateway, s) } : {}),
        ...(gatewayBefore ? { 'gateway-before': gatewayTarget(gatewayBefore, s) } : {}),
      },
    })),
    {
      name: 'serve',
      title: 'serving a stored 1 MiB image',
      baseline: 'static',
      targets: {
        static: { server: staticServer, method: 'GET', url: `${staticServer.url}/${servedDir}/${sha256}.png`, minBytes: stored.images[0].bytes },
        gateway: { server: gateway, method: 'GET', url: `${gateway.url}${storedUrl.pathname}${storedUrl.search}`, minBytes: stored.images[0].bytes },
      },
    },
    {
      name: 'held',
      title: HELD_TITLE,
      baseline: 'passthrough',
      held: true,
      targets: {
        passthrough: { server: passthrough, method: 'POST', url: passthrough.url + UPSTREAM_PATH, headers: json, body: upstreamBody('held') },
        gateway: gatewayTarget(gateway, { name: 'held' }),
        ...(clusterGateway ? { 'gateway-cluster': gatewayTarget(clusterGateway, { name: 'held' }) } : {}),
      },
    },
  ]
    .filter((s) => !ONLY || ONLY.has(s.name))
    .map((s) => ({ ...s, targets: Object.fromEntries(Object.entries(s.targets).filter(([name]) => !ONLY_TARGETS || ONLY_TARGETS.has(name))) }));

  /** Images the gateway stored while measuring, all but the one served: disk use stays flat. */
  const clearStoredImages = () => {
    for (const entry of readdirSync(imagesDir)) {
      if (/^[0-9a-f]{2}$/.test(entry) && entry !== servedDir) rmSync(join(imagesDir, entry), { recursive: true, force: true });
    }
    if (clusterGateway) {
      const clusterImages = join(work, 'cluster', 'images');
      for (const entry of existsSync(clusterImages) ? readdirSync(clusterImages) : []) {
        if (/^[0-9a-f]{2}$/.test(entry)) rmSync(join(clusterImages, entry), { recursive: true, force: true });
      }
    }
  };

  const log = (line) => process.stdout.write(`${line}\n`);
  const elapsed = () => `${Math.round((Date.now() - started) / 1000)}s`.padStart(5);
  log(`${elapsed()} bench: ${SETTINGS.rounds} round(s) of ${scenarios.length} scenario(s), ${SETTINGS.seconds} s per measurement${QUICK ? ' (BENCH_QUICK)' : ''}`);

  // Warm-up: JIT, connection pools, the database's first pages. (The held scenario runs in fresh
  // processes, warmed up on their own.)
  for (const scenario of scenarios.filter((s) => !s.held)) {
    for (const target of Object.values(scenario.targets)) {
      await load(target, { connections: 8, seconds: SETTINGS.warmupSeconds });
    }
  }
  clearStoredImages();

  /**
   * The held scenario for one target, in a fresh process: 400 clients, each waiting ~2 s on the
   * upstream for a 1 MiB image. Its peak is that of this load, not what earlier scenarios left.
   */
  const measureHeld = async (name, target, round) => {
    const dir = join(work, `held-${round}`);
    const fresh =
      name === 'gateway'
        ? await startGateway({ dataDir: dir, stdout: logFd })
        : name === 'gateway-cluster'
          ? await startGateway({ ...clusterGatewayOptions, dataDir: dir })
          : await startPassthrough();
    try {
      const probe = { ...target, url: target.url.replace(target.server.url, fresh.url) };
      // JIT and pools on the same path (a 1 MiB image without the wait), then a pause for its last answers.
      await load({ ...probe, body: probe.body.replace('bench held', 'bench 1mib') }, { connections: 8, seconds: SETTINGS.warmupSeconds });
      await sleep(500);
      // The held run has a process of its own: with BENCH_PROFILE, so has its profile.
      const profiled = PROFILE && name === 'gateway';
      if (profiled) await ask(fresh, { type: 'profile-start' }, 'profile-started');
      const m = await watched(fresh.pid, () => load(probe, { connections: SETTINGS.heldConnections, seconds: SETTINGS.heldSeconds, keepLatencies: true }));
      if (fresh.exitCode !== undefined) throw new Error(`${name} exited (${fresh.exitCode}) during the held scenario`);
      if (profiled) {
        const path = join(profileDir, `gateway-held-${round + 1}-${new Date().toISOString().replace(/[:.]/g, '-')}.cpuprofile`);
        log(`profile of the gateway's main thread over held round ${round + 1}: ${(await ask(fresh, { type: 'profile-stop', path }, 'profile-written')).path}`);
      }
      // The requests cut off by the end of the run end before the process does (see the 4 MiB probe).
      await sleep(2500);
      return m;
    } finally {
      await stop(fresh);
      rmSync(dir, { recursive: true, force: true });
    }
  };

  /** Asks a server for something and waits for its answer of type `answer`. */
  const ask = (server, message, answer) =>
    new Promise((resolve) => {
      const listen = (reply) => {
        if (reply?.type !== answer) return;
        server.child.off('message', listen);
        resolve(reply);
      };
      server.child.on('message', listen);
      server.child.send(message);
    });
  // With BENCH_COMPARE_DIST the other build is profiled too: two profiles of one run to compare.
  const profiledGateways = [['gateway', gateway], ...(gatewayBefore ? [['gateway-before', gatewayBefore]] : [])];
  if (PROFILE) for (const [, server] of profiledGateways) await ask(server, { type: 'profile-start' }, 'profile-started');

  // results[scenario][target] = { rounds: [...], latencies: [...] }
  const results = {};
  for (let round = 0; round < SETTINGS.rounds; round++) {
    for (const scenario of scenarios) {
      const names = Object.keys(scenario.targets);
      // Alternate the order, so no target always runs first (or last) in a round.
      if (round % 2 === 1) names.reverse();
      for (const name of names) {
        const target = scenario.targets[name];
        const entry = ((results[scenario.name] ??= {})[name] ??= { rounds: [], latencies: [] });
        const pid = target.server.pid;

        for (const server of [upstream, passthrough, gateway, staticServer, ...(clusterGateway ? [clusterGateway] : []), ...(queuedGateway ? [queuedGateway] : []), ...(gatewayBefore ? [gatewayBefore] : [])]) {
          if (server.exitCode !== undefined) throw new Error(`${server.name} exited (${server.exitCode}) during the run`);
        }
        if (scenario.held) {
          const { result: held, cores, cpuPerRequestMs, peakRssMb } = await measureHeld(name, target, round);
          const sorted = [...held.latencies].sort((a, b) => a - b);
          entry.latencies.push(...held.latencies);
          entry.rounds.push({
            connections: held.connections,
            p50Ms: quantile(sorted, 0.5),
            p99Ms: quantile(sorted, 0.99),
            requestsPerSecond: held.requestsPerSecond,
            cores,
            cpuPerRequestMs,
            peakRssMb,
            errors: errorsOf(held),
            statuses: held.statuses,
          });
          log(
            `${elapsed()} round ${round + 1} ${scenario.name.padEnd(5)} ${name.padEnd(11)} c=${held.connections}: ${fmt(held.requestsPerSecond, 1)} req/s  ` +
              `p50 ${fmt(quantile(sorted, 0.5), 0)} ms  p99 ${fmt(quantile(sorted, 0.99), 0)} ms  ${fmt(cores, 2)} cores  peak ${peakRssMb} MB` +
              (errorsOf(held) ? `  errors ${errorsOf(held)} ${JSON.stringify(held.statuses)}` : ''),
          );
          continue;
        }
        const serial = await load(target, { connections: 1, seconds: SETTINGS.serialSeconds ?? SETTINGS.seconds, keepLatencies: true });
        const { result: loaded, cores, cpuPerRequestMs, peakRssMb: loadedPeakMb } = await watched(pid, () =>
          load(target, { connections: SETTINGS.throughputConnections, seconds: SETTINGS.seconds, keepLatencies: true }),
        );
        const loadedP50Ms = quantile([...loaded.latencies].sort((a, b) => a - b), 0.5);
        let inFlight;
        if (scenario.memory && name !== 'upstream') {
          // In a process of its own, fresh: its peak is that of this load, not what earlier scenarios left in the heap.
          await sleep(QUICK ? 100 : 300);
          const fresh =
            name === 'gateway'
              ? await startGateway({ dataDir: join(work, `memory-${round}`), stdout: logFd })
              : name === 'gateway-cluster'
                ? await startGateway({ ...clusterGatewayOptions, dataDir: join(work, `memory-${round}`) })
                : await startPassthrough();
          const probe = { ...target, url: target.url.replace(target.server.url, fresh.url) };
          await load(probe, { connections: SETTINGS.memoryConnections, seconds: SETTINGS.warmupSeconds });
          treeMemory.reset(fresh.pid);
          const m = await load(probe, { connections: SETTINGS.memoryConnections, seconds: SETTINGS.seconds });
          inFlight = { connections: m.connections, requestsPerSecond: m.requestsPerSecond, peakRssMb: treeMemory.peakMb(fresh.pid), errors: errorsOf(m) };
          // Requests cut off by the end of the run finish first: the gateway's close does not wait for
          // requests whose client has gone, and their usage records would come after the log closed.
          await sleep(1500);
          await stop(fresh);
          rmSync(join(work, `memory-${round}`), { recursive: true, force: true });
        }
        const sorted = [...serial.latencies].sort((a, b) => a - b);
        entry.latencies.push(...serial.latencies);
        entry.rounds.push({
          p50Ms: quantile(sorted, 0.5),
          p99Ms: quantile(sorted, 0.99),
          serialRequests: serial.ok,
          requestsPerSecond: loaded.requestsPerSecond,
          loadedP50Ms,
          cores,
          cpuPerRequestMs,
          peakRssMb: loadedPeakMb,
          errors: errorsOf(serial) + errorsOf(loaded) + (inFlight?.errors ?? 0),
          statuses: mergeCounts(serial.statuses, loaded.statuses),
          ...(inFlight ? { inFlight } : {}),
        });
        log(
          `${elapsed()} round ${round + 1} ${scenario.name.padEnd(5)} ${name.padEnd(11)} p50 ${fmt(quantile(sorted, 0.5), 3)} ms  p99 ${fmt(quantile(sorted, 0.99), 3)} ms  ` +
            `${fmt(loaded.requestsPerSecond, 0)} req/s  p50 ${fmt(loadedP50Ms, 3)} ms (c=${SETTINGS.throughputConnections})  ${fmt(cpuPerRequestMs, 3)} CPU ms/req  ${fmt(cores, 2)} cores  peak ${loadedPeakMb} MB` +
            (inFlight ? `  (c=${inFlight.connections}: peak ${inFlight.peakRssMb} MB)` : '') +
            (errorsOf(serial) + errorsOf(loaded) ? `  errors ${errorsOf(serial) + errorsOf(loaded)} ${JSON.stringify(mergeCounts(serial.statuses, loaded.statuses))}` : ''),
        );
        // Let the last answers of the loaded run finish before anything else is measured.
        await sleep(QUICK ? 100 : 300);
        if (name.startsWith('gateway')) clearStoredImages();
      }
    }
  }

  if (PROFILE) {
    for (const [name, server] of profiledGateways) {
      const { path } = await ask(server, { type: 'profile-stop', path: join(profileDir, `${name}-${new Date(started).toISOString().replace(/[:.]/g, '-')}.cpuprofile`) }, 'profile-written');
      log(`profile of ${name}'s main thread over the rounds: ${path}`);
    }
  }
  await sleep(1500);
  await stop(gateway);
  if (queuedGateway) await stop(queuedGateway);
  if (gatewayBefore) await stop(gatewayBefore);
  if (clusterGateway) await stop(clusterGateway);
  await Promise.all([stop(upstream), stop(passthrough), stop(staticServer)]);
  stopLoadGenerator();
  closeSync(logFd);
  const errorLines = readFileSync(gatewayLog, 'utf8')
    .split('\n')
    .filter((line) => /"level":(50|60)/.test(line));
  const gatewayErrorLines = errorLines.length;
  for (const line of errorLines.slice(0, 3)) log(`gateway error log line: ${line.slice(0, 400)}`);
  if (process.env.BENCH_KEEP_LOG) writeFileSync(process.env.BENCH_KEEP_LOG, readFileSync(gatewayLog));
  rmSync(work, { recursive: true, force: true });

  const summary = summarize(scenarios, results);
  const report = {
    date: new Date(started).toISOString(),
    durationSeconds: Math.round((Date.now() - started) / 1000),
    // Other work on the machine shows here: the run's own processes keep about 2 busy.
    loadAverage: { atStart: loadAtStart, atEnd: loadavg().map((l) => Math.round(l * 100) / 100) },
    machine: machine(),
    settings: { ...SETTINGS, gatewayNodeFlags: GATEWAY_NODE_FLAGS, quick: QUICK, profile: PROFILE, only: ONLY ? [...ONLY] : null, onlyTargets: ONLY_TARGETS ? [...ONLY_TARGETS] : null },
    imageBytes: Object.fromEntries(Object.entries(images).map(([k, v]) => [k, v.length])),
    gatewayErrorLogLines: gatewayErrorLines,
    scenarios: summary,
  };
  const { targets, text } = printReport(report);
  report.targets = targets;
  const resultsDir = join(BENCH_DIR, 'results');
  mkdirSync(resultsDir, { recursive: true });
  const body = `${JSON.stringify(report, null, 2)}\n`;
  const stamped = join(resultsDir, `${report.date.replace(/[:.]/g, '-')}.json`);
  writeFileSync(stamped, body);
  writeFileSync(join(resultsDir, 'latest.json'), body);
  log(text);
  log(`results: ${stamped} (and bench/results/latest.json); ${report.durationSeconds} s`);
}

const errorsOf = (m) => m.non2xx + m.socketErrors + m.timeouts + m.short + m.stalled;

function mergeCounts(...maps) {
  const out = {};
  for (const map of maps) for (const [k, v] of Object.entries(map)) out[k] = (out[k] ?? 0) + v;
  return out;
}

function fmt(value, digits) {
  return value === null || value === undefined ? '-' : value.toFixed(digits);
}

/** Latency percentiles over all rounds' answers; throughput as the median of the rounds; peaks as the max. */
function summarize(scenarios, results) {
  return scenarios.map((scenario) => ({
    name: scenario.name,
    title: scenario.title,
    baseline: scenario.baseline,
    ...(scenario.held ? { held: true, connections: SETTINGS.heldConnections } : {}),
    targets: Object.fromEntries(
      Object.keys(scenario.targets).map((name) => {
        const { rounds, latencies } = results[scenario.name][name];
        const sorted = latencies.sort((a, b) => a - b);
        const peaks = rounds.map((r) => r.peakRssMb).filter((v) => v !== null);
        const inFlight = rounds.map((r) => r.inFlight).filter(Boolean);
        return [
          name,
          {
            p50Ms: quantile(sorted, 0.5),
            p99Ms: quantile(sorted, 0.99),
            serialRequests: sorted.length,
            requestsPerSecond: median(rounds.map((r) => r.requestsPerSecond)),
            cores: median(rounds.map((r) => r.cores)),
            cpuPerRequestMs: median(rounds.map((r) => r.cpuPerRequestMs)),
            peakRssMb: peaks.length ? Math.max(...peaks) : null,
            errors: rounds.reduce((sum, r) => sum + r.errors, 0),
            ...(inFlight.length
              ? {
                  inFlight: {
                    connections: inFlight[0].connections,
                    peakRssMb: Math.max(...inFlight.map((r) => r.peakRssMb ?? 0)),
                    requestsPerSecond: median(inFlight.map((r) => r.requestsPerSecond)),
                  },
                }
              : {}),
            rounds,
          },
        ];
      }),
    ),
  }));
}

function machine() {
  const cpu = cpus();
  return {
    cpu: cpu[0]?.model ?? 'unknown',
    cores: cpu.length,
    memoryGb: Math.round(totalmem() / 1024 ** 3),
    os: `${process.platform} ${release()}`,
    node: process.version,
  };
}

main().catch((err) => {
  console.error(err);
  killChildren();
  process.exit(1);
});
