// What one large image costs the gateway's main thread, apart from the rest of the process: for
// the scenarios named (BENCH_ONLY, default 4mib-b64json; `small` for a small image), N requests one after another (BENCH_N,
// default 40), reporting the p50 latency and the CPU time per request of the main thread alone
// (/proc/<pid>/task/<pid>/stat) and of the whole process (worker threads, libuv, GC helpers). The
// main thread's time is what bounds throughput; it varies far less with the machine's load than
// latency does. Usage: node bench/image-work-cost.js [checkout] (default: this one; its dist/ is
// run, so `npm run build` there first). WORKERS in the environment reaches the gateway.
import { fork } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';

const HERE = dirname(fileURLToPath(import.meta.url));
const checkout = resolve(process.argv[2] ?? join(HERE, '..'));
const N = Number(process.env.BENCH_N ?? 40);
const UPSTREAM_KEY = 'sk-bench-upstream-0123456789abcdef';
const CLIENT_KEY = 'gk-bench-client-0123456789abcdef';
const SCENARIOS = {
  // A small image (kept in its database row): what a request costs beside its image work.
  small: { prompt: 'bench small' },
  '4mib-b64json': { prompt: 'bench 4mib', response_format: 'b64_json' },
  '4mib': { prompt: 'bench 4mib', response_format: 'url' },
  '1mib': { prompt: 'bench 1mib', response_format: 'url' },
};

const children = [];
process.on('exit', () => children.forEach((child) => child.kill('SIGKILL')));

function start(script, env) {
  return new Promise((resolvePort, reject) => {
    const child = fork(join(HERE, script), [], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    children.push(child);
    child.once('exit', (code) => reject(new Error(`${script} exited (${code})`)));
    child.once('message', (m) => resolvePort({ pid: child.pid, url: `http://127.0.0.1:${m.port}` }));
  });
}

const ticksMs = (stat) => {
  const f = stat.split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
};
const cpu = (pid) => ({ main: ticksMs(readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8')), all: ticksMs(readFileSync(`/proc/${pid}/stat`, 'utf8')) });

const work = mkdtempSync(join(tmpdir(), 'gw-cost-'));
const keysFile = join(work, 'keys.yaml');
writeFileSync(keysFile, `keys:\n  - id: bench\n    key: ${CLIENT_KEY}\n    team: bench\n`);
const upstream = await start('fake-upstream.js', { BENCH_UPSTREAM_KEY: UPSTREAM_KEY });
// The gateway from the checkout's own bench/gateway.js (and so its dist/).
const gatewayScript = join(checkout, 'bench', 'gateway.js');
const gateway = await new Promise((resolvePort, reject) => {
  const child = fork(gatewayScript, [], {
    env: { ...process.env, AIHUBMIX_API_KEY: UPSTREAM_KEY, AIHUBMIX_BASE_URL: upstream.url, GATEWAY_KEYS_FILE: keysFile, DATA_DIR: join(work, 'data'), LOG_LEVEL: 'warn', UPSTREAM_RETRIES: '0', RATE_LIMIT_RPM: '1000000', IMAGE_URL_SECRET: 'bench-url-secret-0123456789abcdefghijkl', PUBLIC_BASE_URL: 'http://127.0.0.1' },
    // BENCH_PROFILE=1: a CPU profile of the gateway's threads in bench/results/profiles/ (read with profile-summary.js).
    execArgv: ['--max-semi-space-size=16', ...(process.env.BENCH_PROFILE === '1' ? ['--cpu-prof', `--cpu-prof-dir=${join(HERE, 'results', 'profiles')}`] : [])],
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  children.push(child);
  child.once('exit', (code) => reject(new Error(`gateway exited (${code})`)));
  child.once('message', (m) => resolvePort({ pid: child.pid, url: `http://127.0.0.1:${m.port}` }));
});

const passthrough = await start('passthrough.js', { BENCH_UPSTREAM_URL: upstream.url, BENCH_UPSTREAM_KEY: UPSTREAM_KEY });

async function once(target, scenario) {
  const started = performance.now();
  const { statusCode, body } = target === 'gateway'
    ? await request(`${gateway.url}/v1/generate`, { method: 'POST', headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ model: 'gpt-image-1', ...scenario }) })
    : await request(`${passthrough.url}/v1/models/opanai/gpt-image-1/predictions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ input: { prompt: scenario.prompt } }) });
  let bytes = 0;
  for await (const chunk of body) bytes += chunk.length;
  if (statusCode !== 200) throw new Error(`${target}: ${statusCode}`);
  return { ms: performance.now() - started, bytes };
}

const p50 = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const name of (process.env.BENCH_ONLY ?? '4mib-b64json').split(',')) {
  const scenario = SCENARIOS[name];
  for (let i = 0; i < 5; i++) await once('gateway', scenario);
  const times = { gateway: [], passthrough: [] };
  const before = cpu(gateway.pid);
  // Interleaved, so the machine's drift falls on both.
  for (let i = 0; i < N; i++) {
    times.gateway.push((await once('gateway', scenario)).ms);
    times.passthrough.push((await once('passthrough', scenario)).ms);
  }
  const after = cpu(gateway.pid);
  const line = {
    scenario: name,
    checkout,
    WORKERS: process.env.WORKERS ?? '(default)',
    passthroughP50Ms: +p50(times.passthrough).toFixed(3),
    gatewayP50Ms: +p50(times.gateway).toFixed(3),
    ratio: +(p50(times.gateway) / p50(times.passthrough)).toFixed(2),
    mainThreadCpuMsPerRequest: +((after.main - before.main) / N).toFixed(3),
    processCpuMsPerRequest: +((after.all - before.all) / N).toFixed(3),
  };
  console.log(JSON.stringify(line));
}
// The gateway ends on its own (a profile is written at exit); the others are killed.
const gatewayChild = children[1];
gatewayChild.removeAllListeners('exit');
const exited = new Promise((done) => gatewayChild.once('exit', done));
gatewayChild.send({ type: 'close' });
await Promise.race([exited, new Promise((done) => setTimeout(done, 15_000))]);
for (const child of children) child.kill('SIGKILL');
rmSync(work, { recursive: true, force: true });
process.exit(0);
