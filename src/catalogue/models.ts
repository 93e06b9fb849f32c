/**
 * The model catalogue: every image model the upstream documents name, declared once as data in
 * models.yaml (validated at start). Routing, validation, GET /v1/models, pricing and the docs all
 * read from this list.
 */
import { loadBuiltinCatalogue } from './builtin-catalogue.js';
import type { ModelSpec } from './model-spec.js';

export const MODELS: readonly ModelSpec[] = loadBuiltinCatalogue();
