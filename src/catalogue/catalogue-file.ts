/**
 * CATALOGUE_FILE: an operator's YAML overlay merged over the built-in catalogue data (models.yaml)
 * before it is validated. Each entry of `models:` is one of:
 * - `{id, from, upstream_model, ...}`: a copy of model `from` whose upstream name is replaced by
 *   `upstream_model` in every route's path and `model` field;
 * - `{id, retired: true, replacement}`: requests get 410 model_retired naming the replacement;
 * - `{id, disabled: true}`: the model is no longer served (as unknown);
 * - `{id, price_per_image_usd | price_per_million_tokens_usd | output_tokens_per_image | description | aliases | fallbacks}`
 *   on an existing model: those are overridden;
 * - a full declaration (the shape of models.yaml's entries) of a new model.
 */
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { parse } from 'yaml';
import { z } from 'zod';
import { builtinCatalogueData } from './builtin-catalogue.js';
import { CatalogueError, MAX_PRICE_PER_IMAGE_USD, MAX_PRICE_PER_MILLION_TOKENS_USD, loadCatalogue, outputTokensPerImageSchema, perImageBound, perMillionTokensBound } from './catalogue-schema.js';
import type { ModelSpec } from './model-spec.js';

const usd = z.number().nonnegative('a price is a number of USD, 0 or more').finite();
const perImageUsd = usd.max(MAX_PRICE_PER_IMAGE_USD, perImageBound);
const perMillionTokensUsd = usd.max(MAX_PRICE_PER_MILLION_TOKENS_USD, perMillionTokensBound);

/** The keys an overlay entry may carry besides a full declaration's. */
const overlayEntrySchema = z.looseObject({
  id: z.string({ error: 'every entry needs an id (a string)' }).min(1, 'every entry needs an id'),
  from: z.string().min(1).optional(),
  upstream_model: z.string().min(1).regex(/^[^/?#\s]+$/, 'upstream_model is one name, without / ? # or spaces').optional(),
  retired: z.literal(true, { error: (issue) => `must be true, or left out (got ${JSON.stringify(issue.input)})` }).optional(),
  replacement: z.string().min(1).optional(),
  disabled: z.literal(true, { error: (issue) => `must be true, or left out (got ${JSON.stringify(issue.input)})` }).optional(),
  price_per_image_usd: perImageUsd.optional(),
  price_per_million_tokens_usd: z.strictObject({ text_input: perMillionTokensUsd, image_input: perMillionTokensUsd, image_output: perMillionTokensUsd }).optional(),
  /** Output tokens per image by quality, for the model's token-priced routes: what a budget reserves before the call. */
  output_tokens_per_image: outputTokensPerImageSchema.optional(),
  description: z.string().optional(),
  aliases: z.array(z.string().min(1)).optional(),
  fallbacks: z.array(z.string().min(1)).optional(),
});
const overlaySchema = z.strictObject({ models: z.array(overlayEntrySchema) }, { error: 'the file is {models: [...]}' });

type Data = Record<string, unknown>;
const OVERLAY_KEYS = ['from', 'upstream_model', 'disabled', 'price_per_image_usd', 'price_per_million_tokens_usd', 'output_tokens_per_image'];
const ROUTE_KEYS = ['generate', 'edit', 'upscale', 'describe', 'image_to_image_mode'];
const ENTRY_KEYS = Object.keys(overlayEntrySchema.shape);

const clone = <T>(value: T): T => structuredClone(value);

/** Every route of a model's data: its generate route, each edit mode's, its upscale and describe routes. */
function routesOf(model: Data): Data[] {
  const routes: Data[] = [];
  if (model.generate && typeof model.generate === 'object') routes.push(model.generate as Data);
  if (model.edit && typeof model.edit === 'object') for (const r of Object.values(model.edit as Data)) if (r && typeof r === 'object') routes.push(r as Data);
  for (const key of ['upscale', 'describe']) if (model[key] && typeof model[key] === 'object') routes.push(model[key] as Data);
  return routes;
}

/** Replaces every string `model` field at any depth of `fixed` whose value is one of `old`; answers how many. */
function replaceModelFields(node: unknown, replace: (name: string) => string | undefined): number {
  if (!node || typeof node !== 'object') return 0;
  let n = 0;
  for (const [key, value] of Object.entries(node as Data)) {
    if (key === 'model' && typeof value === 'string') {
      const next = replace(value);
      if (next !== undefined) {
        (node as Data)[key] = next;
        n++;
      }
    } else n += replaceModelFields(value, replace);
  }
  return n;
}

/**
 * A copy of `from` served under `id`, whose upstream name is `upstreamModel`: in every route the
 * path segment naming the old model (the predictions path's `/v1/models/<vendor>/<name>/`, or a
 * segment equal to the model's id) and every `model` field of its fixed values are replaced.
 */
function derive(from: Data, id: string, upstreamModel: string): Data {
  const copy = clone(from);
  copy.id = id;
  copy.aliases = [];
  for (const [i, route] of routesOf(copy).entries()) {
    let replaced = 0;
    const olds = new Set<string>([String(from.id)]);
    const fixedModel = (route.fixed as Data | undefined)?.model ?? ((route.fixed as Data | undefined)?.image_request as Data | undefined)?.model;
    if (typeof fixedModel === 'string') olds.add(fixedModel);
    if (typeof route.path === 'string') {
      const segments = route.path.split('/');
      const predictions = /^\/v1\/models\/[^/]+\/([^/]+)\/predictions$/.exec(route.path);
      if (predictions?.[1]) olds.add(predictions[1]);
      const next = segments.map((s) => (olds.has(s) ? upstreamModel : s));
      replaced += next.filter((s, j) => s !== segments[j]).length;
      route.path = next.join('/');
    }
    replaced += replaceModelFields(route.fixed, (name) => (olds.has(name) ? upstreamModel : undefined));
    if (replaced === 0) throw new Error(`from: route ${i + 1} of "${String(from.id)}" names no upstream model to replace (${String(route.path)})`);
  }
  return copy;
}

/** Sets the price of every route that makes images (a describe makes none: it has no price). */
function setPrice(model: Data, price: Data): void {
  const priced = routesOf(model).filter((route) => route !== model.describe);
  if (priced.length === 0) throw new CatalogueError(`model "${String(model.id)}": a model that only describes makes no image and takes no price`);
  for (const route of priced) {
    // New token prices keep the route's output tokens per image: without them a budget would reserve nothing up front.
    const kept = (route.price as Data | undefined)?.output_tokens_per_image;
    route.price = clone(price);
    if (kept !== undefined && 'per_million_tokens_usd' in price) (route.price as Data).output_tokens_per_image = clone(kept);
  }
}

/** Sets the output tokens per image of every token-priced route of a model. */
function setOutputTokensPerImage(model: Data, byQuality: Record<string, number>): void {
  const byTokens = routesOf(model).filter((route) => route.price && typeof route.price === 'object' && 'per_million_tokens_usd' in (route.price as Data));
  if (byTokens.length === 0) throw new CatalogueError(`model "${String(model.id)}": output_tokens_per_image: the model has no route priced by tokens (per_million_tokens_usd)`);
  for (const route of byTokens) (route.price as Data).output_tokens_per_image = clone(byQuality);
}

/**
 * The built-in catalogue data with the overlay applied (plain data, to be validated by loadCatalogue).
 * Throws a CatalogueError naming the entry and the reason.
 */
export function mergeOverlay(builtin: unknown, overlay: unknown): { models: Data[] } {
  const parsed = overlaySchema.safeParse(overlay ?? { models: [] });
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const path = issue.path.map(String);
    let where = path.join('.') || '(the file)';
    if (path[0] === 'models' && path[1] !== undefined) {
      const entry = (overlay as { models?: unknown[] }).models?.[Number(path[1])] as { id?: unknown } | undefined;
      where = `${typeof entry?.id === 'string' ? `model "${entry.id}"` : `models[${path[1]}]`}${path.length > 2 ? `: ${path.slice(2).join('.')}` : ''}`;
    }
    throw new CatalogueError(`${where}: ${issue.message}`);
  }
  const models = clone((builtin as { models: Data[] }).models);
  const index = (name: string) => models.findIndex((m) => m.id === name || (Array.isArray(m.aliases) && m.aliases.includes(name)));
  for (const entry of parsed.data.models) {
    const fail = (reason: string): never => {
      throw new CatalogueError(`model "${entry.id}": ${reason}`);
    };
    const at = index(entry.id);
    if (!ROUTE_KEYS.some((k) => k in entry)) {
      // Not a full declaration: a typo (price_per_image) must not be dropped in silence.
      const unknown = Object.keys(entry).filter((k) => !ENTRY_KEYS.includes(k));
      if (unknown.length > 0) fail(`unknown field ${unknown.join(', ')}; an entry takes ${ENTRY_KEYS.join(', ')} (or is a full declaration with generate/edit)`);
    }
    if (entry.disabled) {
      if (at < 0) fail('disabled names no model of the catalogue');
      models.splice(at, 1);
      continue;
    }
    let model: Data;
    if (entry.from !== undefined) {
      // A copy takes its routes from `from`: routes given beside it would be dropped in silence.
      const extra = Object.keys(entry).filter((k) => !ENTRY_KEYS.includes(k));
      if (extra.length > 0) fail(`${extra.join(', ')} cannot go with from (the copy takes every route and option of "${entry.from}"); declare the model in full without from, or drop ${extra.length === 1 ? 'it' : 'them'}`);
      if (at >= 0) fail(`from: the id is already a model; give the new model an id of its own`);
      if (entry.upstream_model === undefined) fail('from needs upstream_model (the name upstream serves it under)');
      const source = models.find((m) => m.id === entry.from || (Array.isArray(m.aliases) && m.aliases.includes(entry.from)));
      if (!source) fail(`from: "${entry.from}" is not a model of the catalogue`);
      try {
        model = derive(source!, entry.id, entry.upstream_model!);
      } catch (err) {
        return fail((err as Error).message);
      }
      models.push(model);
    } else if (entry.upstream_model !== undefined) {
      return fail('upstream_model goes with from (the model to copy)');
    } else if (ROUTE_KEYS.some((k) => k in entry)) {
      // A full declaration: a new model, or one replacing the built-in of that id.
      model = Object.fromEntries(Object.entries(entry).filter(([k]) => !OVERLAY_KEYS.includes(k)));
      if (at >= 0) models[at] = model;
      else models.push(model);
    } else {
      if (at < 0) fail(entry.retired ? 'retired names no model of the catalogue' : 'names no model of the catalogue; a new model needs from + upstream_model, or a full declaration');
      model = models[at]!;
    }
    if (entry.description !== undefined) model.description = entry.description;
    if (entry.aliases !== undefined) model.aliases = entry.aliases;
    if (entry.fallbacks !== undefined) model.fallbacks = entry.fallbacks;
    if (entry.price_per_image_usd !== undefined) setPrice(model, { per_image_usd: entry.price_per_image_usd });
    if (entry.price_per_million_tokens_usd !== undefined) setPrice(model, { per_million_tokens_usd: entry.price_per_million_tokens_usd });
    if (entry.output_tokens_per_image !== undefined) setOutputTokensPerImage(model, entry.output_tokens_per_image);
    if (entry.retired) {
      if (entry.replacement === undefined) fail('retired needs a replacement (the model clients should move to)');
      model.retired = true;
      model.replacement = entry.replacement;
    } else if (entry.replacement !== undefined) fail('replacement goes with retired: true');
  }
  return { models };
}

/** The catalogue served with CATALOGUE_FILE `path` applied; throws a CatalogueError naming CATALOGUE_FILE, the entry and the reason. */
export function loadEffectiveCatalogue(path: string | undefined): ModelSpec[] {
  if (path === undefined) return loadCatalogue(builtinCatalogueData());
  const prefix = `CATALOGUE_FILE ${path}`;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // A relative path is read from the working directory, which is not always the one expected.
    const where = isAbsolute(path) ? '' : ` (${resolve(path)}: relative paths are read from the working directory)`;
    if (code === 'ENOENT') throw new CatalogueError(`${prefix}: the file does not exist${where}`);
    if (code === 'EISDIR') throw new CatalogueError(`${prefix}: is a directory; give the path of the YAML file`);
    throw new CatalogueError(`${prefix}: cannot be read: ${(err as Error).message}`);
  }
  let overlay: unknown;
  try {
    overlay = parse(text);
  } catch (err) {
    throw new CatalogueError(`${prefix}: cannot be read as YAML: ${(err as Error).message.split('\n')[0]!.replace(/:\s*$/, '')}`);
  }
  try {
    return loadCatalogue(mergeOverlay(builtinCatalogueData(), overlay));
  } catch (err) {
    if (!(err instanceof CatalogueError)) throw err;
    throw new CatalogueError(`${prefix}: ${err.message.replace(/^catalogue: /, '')}`);
  }
}
