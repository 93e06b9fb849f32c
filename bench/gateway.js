// The gateway as it runs in production, built from dist/ with buildApp, every feature on
// (configured by bench/run.js through the environment); its log goes to stdout as usual.
// BENCH_USAGE_QUEUED=1 (the bench's own knob, read only here): usage records are queued without
// the answer waiting for their commit, the baseline for what durable usage costs.
// BENCH_GATEWAY_DIST (set by bench/run.js for BENCH_COMPARE_DIST): another build's dist/ to run.
import { pathToFileURL } from 'node:url';
import { reportReady } from './child-process.js';

const dist = process.env.BENCH_GATEWAY_DIST ? pathToFileURL(`${process.env.BENCH_GATEWAY_DIST}/`) : new URL('../dist/', import.meta.url);
const { buildApp } = await import(new URL('app.js', dist).href);
const { loadConfig } = await import(new URL('config.js', dist).href);

const app = await buildApp(loadConfig(process.env, { requireUpstreamKey: true }));
if (process.env.BENCH_USAGE_QUEUED === '1') {
  app.usageLog.record = async (record) => app.usageLog.add(record);
}
await app.listen({ port: 0, host: '127.0.0.1' });
reportReady(app.server.address().port, () => app.close());
