// PROTOTYPE (issue 19, phase 1): the gateway in BENCH_PROCESSES processes sharing one port through
// node:cluster. The primary forks the workers and reports the port they share; each worker builds
// the app from dist/ exactly as gateway.js does.
import cluster from 'node:cluster';
import { reportReady } from './child-process.js';

const count = Number(process.env.BENCH_PROCESSES ?? 2);

if (cluster.isPrimary) {
  const workers = [];
  const ports = [];
  await new Promise((resolve, reject) => {
    for (let i = 0; i < count; i++) {
      const worker = cluster.fork();
      workers.push(worker);
      worker.once('exit', (code) => reject(new Error(`worker exited (${code}) before it was ready`)));
      worker.once('message', (m) => {
        if (m?.type !== 'listening') return;
        ports.push(m.port);
        if (ports.length === count) resolve();
      });
    }
  });
  if (new Set(ports).size !== 1) throw new Error(`workers listen on different ports: ${ports}`);
  reportReady(ports[0], async () => {
    await Promise.all(
      workers.map(
        (w) =>
          new Promise((resolve) => {
            w.removeAllListeners('exit');
            w.once('exit', resolve);
            w.process.kill('SIGTERM');
          }),
      ),
    );
  });
} else {
  const { pathToFileURL } = await import('node:url');
  const dist = process.env.BENCH_GATEWAY_DIST ? pathToFileURL(`${process.env.BENCH_GATEWAY_DIST}/`) : new URL('../dist/', import.meta.url);
  const { buildApp } = await import(new URL('app.js', dist).href);
  const { loadConfig } = await import(new URL('config.js', dist).href);
  // BENCH_CLUSTER_SEPARATE_DATA=1 (looking into SQLite's locks only, not a valid setup): a DATA_DIR per worker.
  const env = process.env.BENCH_CLUSTER_SEPARATE_DATA === '1' ? { ...process.env, DATA_DIR: `${process.env.DATA_DIR}/w${cluster.worker.id}` } : process.env;
  const app = await buildApp(loadConfig(env, { requireUpstreamKey: true }));
  await app.listen({ port: 0, host: '127.0.0.1' });
  process.send({ type: 'listening', port: app.server.address().port });
  process.on('SIGTERM', () => {
    setTimeout(() => process.exit(0), 3000).unref();
    app.close().finally(() => process.exit(0));
  });
}
