import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { ImageGeneration } from './image-generation.js';

declare module 'fastify' {
  interface FastifyInstance {
    generation: ImageGeneration;
  }
}

async function imageGeneration(app: FastifyInstance): Promise<void> {
  const { catalogue, upstream, images, signer } = app;
  app.decorate('generation', new ImageGeneration({ catalogue, upstream, images, signer, retentionDays: app.config.IMAGE_RETENTION_DAYS, keepPrompts: app.config.IMAGE_KEEP_PROMPTS }));
}

/** A generation or an edit: checked, sent upstream, stored and answered in one shape. */
export const imageGenerationPlugin = fp(imageGeneration, { name: 'image-generation', dependencies: ['catalogue', 'upstream', 'images', 'url-signer'] });
