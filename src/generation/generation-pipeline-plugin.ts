import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { GenerationPipeline } from './generation-pipeline.js';
import { ImageDescription } from './image-description.js';
import { refuseIfDatabaseUnreachable } from '../storage/database-plugin.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** Every generate and edit runs through it: checks, limits, direct or as a job, events. */
    pipeline: GenerationPipeline;
    /** POST /v1/describe: an image in, text out, nothing stored. */
    description: ImageDescription;
  }
}

async function generationPipeline(app: FastifyInstance): Promise<void> {
  const { catalogue, generation, limits, jobs, config } = app;
  app.decorate(
    'pipeline',
    new GenerationPipeline({
      catalogue,
      generation,
      limits,
      jobs,
      upstreamTimeoutMs: config.UPSTREAM_TIMEOUT_MS,
      defaultRpm: config.RATE_LIMIT_RPM,
      keepPrompts: config.LOG_PROMPTS,
      storage: app.storagePressure,
      database: { refuseIfUnreachable: () => refuseIfDatabaseUnreachable(app.db) },
      callbackRefusal: app.jobCallbacks.callbackRefusal,
      ...(config.PUBLIC_BASE_URL ? { publicBaseUrl: config.PUBLIC_BASE_URL } : {}),
    }),
  );
  app.decorate('description', new ImageDescription({ catalogue, upstream: app.upstream, limits, upstreamTimeoutMs: config.UPSTREAM_TIMEOUT_MS }));
}

export const generationPipelinePlugin = fp(generationPipeline, {
  name: 'generation-pipeline',
  dependencies: ['database', 'catalogue', 'image-generation', 'limits', 'jobs', 'job-callbacks', 'upstream'],
});
