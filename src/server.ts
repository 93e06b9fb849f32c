// First: SIGHUP must not end the process while the rest loads.
import './hangup-guard.js';
import type { FastifyInstance } from 'fastify';
import { buildApp } from './app.js';
import { ConfigError, loadConfig, type Config } from './config.js';

/** A stop signal this soon after the first is the same stop delivered twice, not a second one. */
const REPEATED_SIGNAL_MS = 1000;

/** Listens, and on SIGTERM/SIGINT stops taking requests and lets the ones in flight finish. */
export async function serve(config: Config, opts: { onClose?: () => Promise<void> } = {}): Promise<FastifyInstance> {
  const app = await buildApp(config);
  if (opts.onClose) app.addHook('onClose', opts.onClose);
  await app.listen({ port: config.PORT, host: config.HOST });
  let stopSince: number | undefined;
  const shutdown = (signal: string) => {
    if (stopSince !== undefined) {
      // One stop often arrives twice at once: a terminal's Ctrl-C reaches npm and the gateway, and
      // npm passes its copy on; systemd signals every process of the unit. Only a later one counts.
      if (performance.now() - stopSince < REPEATED_SIGNAL_MS) {
        app.log.debug({ signal }, 'taken as the same stop (within a second of the first)');
        return;
      }
      // A second signal (Ctrl-C again) ends the wait: what was in flight is left as a kill would
      // leave it (jobs taken up after a restart as after a crash, usage records kept so far durable).
      app.log.warn({ signal }, 'stopped at once: a second signal came during the graceful stop');
      process.exit(1);
    }
    stopSince = performance.now();
    const since = Date.now();
    app.log.info({ signal }, `shutting down: requests and jobs in flight may finish; a second SIGTERM or SIGINT (Ctrl-C) a second from now stops at once`);
    app.close().then(
      () => {
        // The line an operator waits for before taking the machine away.
        app.log.info({ signal, ms: Date.now() - since }, 'stopped: the graceful stop is over');
        process.exit(0);
      },
      (err) => {
        app.log.error({ err }, 'error while closing');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  return app;
}

/** A start-up failure as one line an operator can act on, naming the variable to change. */
export function startupProblem(err: unknown, config?: Config): string | undefined {
  // One line whatever the message holds (a file's error, a YAML excerpt): a log line is an entry.
  if (err instanceof ConfigError) return err.message.replace(/\s*\n\s*/g, ' ').trim();
  const e = err as NodeJS.ErrnoException;
  if (config && e.syscall === 'listen' && e.code === 'EADDRINUSE') {
    return `cannot listen: port ${config.PORT} on ${config.HOST} is already in use; set PORT to a free port`;
  }
  // A HOST that is a name is looked up before listening.
  if (config && e.syscall === 'getaddrinfo' && (e as { hostname?: string }).hostname === config.HOST) {
    return `cannot listen: HOST ${config.HOST} is no address of this machine nor a name that resolves (${e.code}); set HOST to an address of this machine (0.0.0.0: every interface, 127.0.0.1: this machine only)`;
  }
  if (config && e.syscall === 'listen' && (e.code === 'EACCES' || e.code === 'EADDRNOTAVAIL')) {
    return `cannot listen on ${config.HOST}:${config.PORT} (${e.code}); check HOST and PORT`;
  }
  return undefined;
}

const isMain = process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].replace(/\\/g, '/').split('/').pop()!);

if (isMain) {
  let config: Config | undefined;
  try {
    config = loadConfig(process.env, { requireUpstreamKey: true });
    await serve(config);
  } catch (err) {
    const problem = startupProblem(err, config);
    if (problem === undefined) throw err;
    console.error(problem);
    process.exit(2);
  }
}
