import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { ImageWorkers } from './image-workers.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** The image work's threads (WORKERS): decoding, hashing and encoding of large images. */
    imageWorkers: ImageWorkers;
  }
}

export interface WorkersPluginOptions {
  /** The pool to use instead of one of WORKERS threads (a test gives one whose worker crashes on demand). */
  workers?: ImageWorkers | undefined;
}

async function workers(app: FastifyInstance, options: WorkersPluginOptions): Promise<void> {
  const pool = options.workers ?? new ImageWorkers(app.config.WORKERS);
  app.decorate('imageWorkers', pool);
  // Registered before the images plugin: closes after it, once no request or job has work left for a thread.
  app.addHook('onClose', async () => pool.close());
}

/** The worker threads of the image work (src/workers/image-workers.ts). */
export const workersPlugin = fp(workers, { name: 'workers' });
