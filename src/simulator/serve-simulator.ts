import { randomBytes } from 'node:crypto';
import { startUpstreamSimulator } from './upstream-simulator.js';

/**
 * `npm run simulator`: the upstream simulator alone, for gateways started with `npm start` (several
 * replicas included). Each `npm run demo` has a simulator of its own, in its own memory: replicas
 * sharing a database need one upstream, or a job one replica sent cannot be carried on by another
 * (the other's simulator never saw its task).
 */
function setting(name: string, fallback: string): string {
  const value = process.env[name]?.trim();
  return value ? value : fallback;
}

const portText = setting('SIMULATOR_PORT', '8090');
const port = Number(portText);
if (!/^\d+$/.test(portText) || port > 65535) {
  console.error(`SIMULATOR_PORT must be a port number (0 to 65535; 0: any free one), not ${JSON.stringify(portText)}`);
  process.exit(2);
}
const host = setting('SIMULATOR_HOST', '127.0.0.1');
// A key of the operator's choosing, so replicas started before a restart of the simulator keep working.
const apiKey = setting('SIMULATOR_KEY', `sim-${randomBytes(12).toString('hex')}`);

try {
  // As the demo's: async tasks take a few seconds, and each prompt gets an image of its own.
  const simulator = await startUpstreamSimulator({ port, host, apiKey, taskReadyAfterMs: 4000, distinctImages: true });
  console.log(`Upstream simulator at ${simulator.url} (no real upstream: nothing is paid for)
Start every gateway replica against it:
  AIHUBMIX_BASE_URL=${simulator.url} AIHUBMIX_API_KEY=${apiKey} npm start
Its tasks and result URLs live in this process's memory: they are gone when it stops.`);
  const stop = () => void simulator.close().then(() => process.exit(0));
  // It has nothing to reload: a closed terminal (SIGHUP) stops it too, freeing its port.
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.once(signal, stop);
} catch (err) {
  const e = err as NodeJS.ErrnoException;
  if (e.syscall === 'listen' || e.syscall === 'getaddrinfo') {
    console.error(`the simulator cannot listen on ${host}:${port} (${e.code}); set SIMULATOR_PORT (and SIMULATOR_HOST) to a free port of this machine`);
    process.exit(2);
  }
  throw err;
}
