import type { BaseLogger } from 'pino';

/** What the services below the routes log with: pino's methods, so they need no Fastify types. */
export type Logger = Pick<BaseLogger, 'debug' | 'info' | 'warn' | 'error'>;
