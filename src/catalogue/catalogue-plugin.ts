import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { ModelCatalogue } from './catalogue.js';
import { MODELS } from './models.js';

declare module 'fastify' {
  interface FastifyInstance {
    catalogue: ModelCatalogue;
  }
}

async function catalogue(app: FastifyInstance): Promise<void> {
  app.decorate('catalogue', new ModelCatalogue(MODELS, app.config.PRICE_OVERRIDES));
}

/** The models served, with PRICE_OVERRIDES applied. */
export const cataloguePlugin = fp(catalogue, { name: 'catalogue' });
