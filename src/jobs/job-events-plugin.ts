import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { JobEventBus } from './job-events.js';

declare module 'fastify' {
  interface FastifyInstance {
    jobEvents: JobEventBus;
  }
}

async function jobEvents(app: FastifyInstance): Promise<void> {
  const jobEvents = new JobEventBus(`gw_${randomBytes(6).toString('hex')}`, app.log, app.redis);
  app.decorate('jobEvents', jobEvents);
  app.addHook('onReady', async () => jobEvents.start());
  app.addHook('onClose', async () => jobEvents.close());
}

/** Job notices to their followers, on this replica and, through Redis, on the others. */
export const jobEventsPlugin = fp(jobEvents, { name: 'job-events', dependencies: ['redis'] });
