import type { FastifyInstance } from 'fastify';
import { buildApp } from './app.js';
import { ConfigError, loadConfig, type Config } from './config.js';

/** Listens, and on SIGTERM/SIGINT stops taking requests and lets the ones in flight finish. */
export async function serve(config: Config, opts: { onClose?: () => Promise<void> } = {}): Promise<FastifyInstance> {
  const app = await buildApp(config);
  if (opts.onClose) app.addHook('onClose', opts.onClose);
  await app.listen({ port: config.PORT, host: config.HOST });
  let closing = false;
  const shutdown = (signal: string) => {
    if (closing) return;
    closing = true;
    app.log.info({ signal }, 'shutting down');
    app.close().then(
      () => process.exit(0),
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

const isMain = process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].replace(/\\/g, '/').split('/').pop()!);

if (isMain) {
  try {
    await serve(loadConfig(process.env, { requireUpstreamKey: true }));
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      process.exit(2);
    }
    throw err;
  }
}
