import { existsSync, readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { loadCatalogue } from './catalogue-schema.js';
import type { ModelSpec } from './model-spec.js';

/** The catalogue file shipped with the gateway, next to this module (src/ under tests, dist/ once built). */
export const BUILTIN_CATALOGUE_FILE = new URL('./models.yaml', import.meta.url);

/** The same data as JSON, written by the build (scripts/copy-catalogue.mjs): absent under src/. */
const BUILTIN_CATALOGUE_JSON = new URL('./models.json', import.meta.url);

/** The built-in catalogue's plain data, as parsed from its file. */
export function builtinCatalogueData(): unknown {
  // The built gateway reads the JSON: parsing the YAML held resident memory for good (bench/README.md, seventh pass).
  if (existsSync(BUILTIN_CATALOGUE_JSON)) return JSON.parse(readFileSync(BUILTIN_CATALOGUE_JSON, 'utf8'));
  return parse(readFileSync(BUILTIN_CATALOGUE_FILE, 'utf8'));
}

/** The built-in models, validated; a file that does not validate stops the start with the entry and the reason. */
export function loadBuiltinCatalogue(): ModelSpec[] {
  return loadCatalogue(builtinCatalogueData());
}
