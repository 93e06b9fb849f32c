import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { ModelCatalogue } from './catalogue.js';
import type { ModelSpec } from './model-spec.js';
import { MODELS } from './models.js';

declare module 'fastify' {
  interface FastifyInstance {
    catalogue: ModelCatalogue;
  }
}

export interface CatalogueOptions {
  /** The models served; the built-in catalogue (models.yaml) by default. */
  models?: readonly ModelSpec[];
}

async function catalogue(app: FastifyInstance, options: CatalogueOptions): Promise<void> {
  app.decorate('catalogue', new ModelCatalogue(options.models ?? MODELS, app.config.PRICE_OVERRIDES));
}

/** The models served, with PRICE_OVERRIDES applied. */
export const cataloguePlugin = fp(catalogue, { name: 'catalogue' });
