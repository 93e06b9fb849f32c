import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { loadCatalogue } from './catalogue-schema.js';
import type { ModelSpec } from './model-spec.js';

/** The catalogue file shipped with the gateway, next to this module (src/ under tests, dist/ once built). */
export const BUILTIN_CATALOGUE_FILE = new URL('./models.yaml', import.meta.url);

/** The built-in catalogue's plain data, as parsed from its file. */
export function builtinCatalogueData(): unknown {
  return parse(readFileSync(BUILTIN_CATALOGUE_FILE, 'utf8'));
}

/** The built-in models, validated; a file that does not validate stops the start with the entry and the reason. */
export function loadBuiltinCatalogue(): ModelSpec[] {
  return loadCatalogue(builtinCatalogueData());
}
