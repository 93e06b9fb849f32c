/**
 * The catalogue file's schema (src/catalogue/models.yaml, validated at start) and the loader that
 * turns its plain data into the ModelSpecs routing, validation, pricing and GET /v1/models read.
 */
import { z } from 'zod';
import type { DescribeRoute, EditMode, FieldMapping, ModelSpec, NormalizedParam, OutputTokensPerImage, ParamConstraint, Price, UpstreamRoute } from './model-spec.js';
import { EDIT_MODES, NORMALIZED_PARAMS, UNKNOWN_MODEL } from './model-spec.js';
import { paramDescriptorSchema, ruleFromDescriptor } from './param-descriptors.js';
import { SPLITTING_TRANSFORMS, TRANSFORM_NAMES, TRANSFORMS, type TransformName } from './transforms.js';

const usd = z.number().nonnegative('a price is a number of USD, 0 or more').finite();

/**
 * The most a price may say (docs/catalogue.md): far above any real one, low enough that a cost
 * (price x images, or x tokens) stays a number to add up and compare with a budget. 1e308 per image
 * loaded, and then n=2 cost Infinity: a null estimated_cost_usd, "has spent $NaN".
 */
export const MAX_PRICE_PER_IMAGE_USD = 1000;
export const MAX_PRICE_PER_MILLION_TOKENS_USD = 100_000;
/** Why a price over its bound is refused, for the catalogue, CATALOGUE_FILE and PRICE_OVERRIDES alike. */
export const perImageBound = `a price per image is at most ${MAX_PRICE_PER_IMAGE_USD} USD`;
export const perMillionTokensBound = `a price per million tokens is at most ${MAX_PRICE_PER_MILLION_TOKENS_USD} USD`;
/** A size limit in bytes (the vendor's per-image or per-request limit). */
const byteLimit = z.number().int().positive();

const mappingSchema = z
  .strictObject({
    rule: paramDescriptorSchema,
    /** Dotted upstream path; defaults to the field's own name (predictions: inside `input`). A list: one path per part of a splitting transform. */
    to: z.union([z.string().min(1), z.array(z.string().min(1)).min(2)]).optional(),
    /** A named transform applied to the value before it is written. */
    transform: z.enum(TRANSFORM_NAMES as [TransformName, ...TransformName[]], { error: `unknown transform; known: ${TRANSFORM_NAMES.join(', ')}` }).optional(),
    /** The route cannot be called without this field: a request lacking it is a 400 listing what is allowed. */
    required: z.literal(true).optional(),
  })
  .superRefine((m, ctx) => {
    // A list of paths and a splitting transform go together, part for path.
    const parts = m.transform ? SPLITTING_TRANSFORMS[m.transform] : undefined;
    const paths = Array.isArray(m.to) ? m.to.length : undefined;
    if (parts !== paths) {
      const message =
        parts === undefined
          ? `a list of paths needs a transform that splits the value (${Object.keys(SPLITTING_TRANSFORMS).join(', ')})`
          : `transform ${m.transform} splits the value into ${parts} parts: "to" must list ${parts} paths`;
      ctx.addIssue({ code: 'custom', message, path: ['to'] });
    }
  });

/**
 * Output tokens one image takes by quality (`{low: 408, high: 6240}`): what a budget reserves before
 * the call for a token-priced route. Checked by hand, not by zod's record: inside the price's
 * union, a failed type check would only say "a price is ...", and an operator needs the reason.
 */
export const outputTokensPerImageSchema = z
  .unknown()
  .superRefine((value, ctx) => {
    if (!value || typeof value !== 'object' || Array.isArray(value)) {
      ctx.addIssue({ code: 'custom', message: 'output_tokens_per_image is {<quality>: tokens}, e.g. {low: 408, medium: 1584, high: 6240}' });
      return;
    }
    const entries = Object.entries(value);
    if (entries.length === 0) ctx.addIssue({ code: 'custom', message: 'output_tokens_per_image names at least one quality' });
    for (const [quality, tokens] of entries) {
      if (typeof tokens !== 'number' || !Number.isSafeInteger(tokens) || tokens <= 0) {
        ctx.addIssue({ code: 'custom', message: `output tokens per image are a whole number above 0, not ${JSON.stringify(tokens)}`, path: [quality] });
      }
    }
  })
  .transform((value) => value as OutputTokensPerImage);

const tokenPriceSchema = z.strictObject({
  per_million_tokens_usd: z.strictObject({ text_input: usd, image_input: usd, image_output: usd }),
  output_tokens_per_image: outputTokensPerImageSchema.optional(),
});

const priceSchema = z.union([
  z.strictObject({ per_image_usd: usd }),
  z.strictObject({ by_option: z.string().min(1), default: z.string().min(1), per_image_usd: z.record(z.string(), usd) }),
  tokenPriceSchema,
], { error: 'a price is {per_image_usd}, {by_option, default, per_image_usd: {value: usd}} or {per_million_tokens_usd: {text_input, image_input, image_output}, output_tokens_per_image?: {quality: tokens}}' }).superRefine((price, ctx) => {
  // Bounded here, after the union, so the refusal names the field and the bound (a union's own error would not).
  const over = (value: number, max: number, bound: string, path: string[]) => {
    if (value > max) ctx.addIssue({ code: 'custom', message: `${bound}, got ${value}`, path });
  };
  if ('per_million_tokens_usd' in price) {
    for (const [field, value] of Object.entries(price.per_million_tokens_usd)) over(value, MAX_PRICE_PER_MILLION_TOKENS_USD, perMillionTokensBound, ['per_million_tokens_usd', field]);
  } else if (typeof price.per_image_usd === 'number') {
    over(price.per_image_usd, MAX_PRICE_PER_IMAGE_USD, perImageBound, ['per_image_usd']);
  } else {
    for (const [option, value] of Object.entries(price.per_image_usd)) over(value, MAX_PRICE_PER_IMAGE_USD, perImageBound, ['per_image_usd', option]);
  }
});

const scalar = z.union([z.string(), z.number(), z.boolean()]);

const constraintSchema = z.strictObject({
  /** The request's values that bring the constraint in: all of them given, as listed. */
  when: z.partialRecord(z.enum(NORMALIZED_PARAMS), scalar).refine((w) => Object.keys(w).length > 0, 'name at least one field'),
  /** The field constrained, and the values it may then have (given or not: absent, the model's default holds). */
  field: z.enum(NORMALIZED_PARAMS),
  one_of: z.array(scalar).min(1),
  /** Why, in the 400: what a user needs to know to fix the request. */
  reason: z.string().min(1),
});

const routeSchema = z.strictObject({
  family: z.enum(['predictions', 'openai-json', 'openai-multipart', 'ideogram-multipart', 'ideogram-json']),
  path: z.string().startsWith('/', 'an upstream path starts with /'),
  /** The header the upstream key travels in: `Authorization: Bearer` or `Api-Key`. */
  auth: z.enum(['bearer', 'api-key']).default('bearer'),
  /** Present when the reply is a task to poll; `{task_id}` is replaced by its id. */
  task: z.strictObject({ poll_path: z.string().startsWith('/').includes('{task_id}') }).optional(),
  /** Absent: the route takes no prompt, and a request with one is refused. */
  prompt: z.strictObject({ to: z.string().min(1), max_length: z.number().int().positive() }).optional(),
  params: z.partialRecord(z.enum(NORMALIZED_PARAMS), mappingSchema).default({}),
  /** Normalized fields the route refuses, each with the reason the 400 gives (not merely "not supported"). */
  refused: z.partialRecord(z.enum(NORMALIZED_PARAMS), z.string().min(1)).optional(),
  /** Values of one field another field's value rules out (a transparent background is no JPEG): a 400 before upstream. */
  constraints: z.array(constraintSchema).optional(),
  options: z.record(z.string(), mappingSchema).default({}),
  fixed: z.record(z.string(), z.unknown()).optional(),
  images: z
    .strictObject({
      to: z.string().min(1),
      encoding: z.enum(['file', 'data-url', 'base64']),
      max: z.number().int().positive(),
      /** The largest one image may be, in bytes (the vendor's per-image limit); absent: MAX_UPLOAD_BYTES alone. */
      max_bytes: byteLimit.optional(),
      shape: z.enum(['single', 'array', 'numbered']).optional(),
      repeated_file_field: z.string().min(1).optional(),
    })
    .optional(),
  mask: z.strictObject({ to: z.string().min(1), convention: z.enum(['transparent', 'black']), required: z.boolean() }).optional(),
  /** Style reference images, sent as the repeated file field `to` (multipart routes only). */
  style_references: z
    .strictObject({ to: z.string().min(1), max: z.number().int().positive(), max_bytes: byteLimit, max_total_bytes: byteLimit.optional() })
    .optional(),
  price: priceSchema.optional(),
  /** Free text for whoever reads the catalogue: where a source was not followed, and why. */
  note: z.string().optional(),
}).refine((r) => !r.style_references || r.family.endsWith('-multipart'), {
  message: 'style_references are sent as files: the route must be multipart',
  path: ['style_references'],
}).superRefine((r, ctx) => {
  // A constraint on a field the route does not take could never apply: most likely a typo.
  for (const [i, c] of (r.constraints ?? []).entries()) {
    // Each value must be one its field takes: a typo would never apply, or refuse every value.
    const values: Array<[string, unknown]> = [...Object.entries(c.when), ...c.one_of.map((v): [string, unknown] => [c.field, v])];
    for (const [name, value] of values) {
      const mapping = Object.hasOwn(r.params, name) ? r.params[name as NormalizedParam] : undefined;
      if (!mapping) {
        ctx.addIssue({ code: 'custom', message: `"${name}" is not a parameter of this route`, path: ['constraints', i] });
        continue;
      }
      let refusal: string | undefined;
      try {
        refusal = ruleFromDescriptor(mapping.rule).check(value);
      } catch {
        continue; // A malformed rule has its own issue already.
      }
      if (refusal !== undefined) ctx.addIssue({ code: 'custom', message: `${name} ${JSON.stringify(value)} is not a value the route takes (${refusal})`, path: ['constraints', i] });
    }
  }
  // A quality the route does not take would never be asked for: most likely a typo.
  const byQuality = r.price && 'output_tokens_per_image' in r.price ? r.price.output_tokens_per_image : undefined;
  const qualities = (r.params.quality?.rule as { oneOf?: unknown[] } | undefined)?.oneOf;
  // A malformed table has its own issue already.
  if (!byQuality || typeof byQuality !== 'object' || Array.isArray(byQuality) || !Array.isArray(qualities)) return;
  for (const quality of Object.keys(byQuality)) {
    if (!qualities.includes(quality)) {
      ctx.addIssue({ code: 'custom', message: `"${quality}" is not a quality this route takes (${qualities.join(', ')})`, path: ['price', 'output_tokens_per_image', quality] });
    }
  }
});

/** A describe route: one image file in, text out; options only (no prompt, no parameters, no price). */
const describeRouteSchema = z.strictObject({
  family: z.literal('ideogram-multipart'),
  path: z.string().startsWith('/', 'an upstream path starts with /'),
  auth: z.enum(['bearer', 'api-key']).default('bearer'),
  options: z.record(z.string(), mappingSchema).default({}),
  images: z.strictObject({ to: z.string().min(1), encoding: z.literal('file'), max: z.literal(1), max_bytes: byteLimit.optional() }),
});

const modelSchema = z
  .strictObject({
    id: z.string().min(1),
    aliases: z.array(z.string().min(1)).default([]),
    description: z.string().default(''),
    generate: routeSchema.optional(),
    edit: z.partialRecord(z.enum(EDIT_MODES as [EditMode, ...EditMode[]]), routeSchema).optional(),
    /** POST /v1/upscale: one image in (images.max 1), the prompt optional. */
    upscale: routeSchema.optional(),
    /** POST /v1/describe: one image in, text descriptions out. */
    describe: describeRouteSchema.optional(),
    image_to_image_mode: z.enum(EDIT_MODES as [EditMode, ...EditMode[]]).optional(),
    /** Retired (CATALOGUE_FILE): requests get 410 model_retired naming `replacement`. */
    retired: z.literal(true).optional(),
    replacement: z.string().min(1).optional(),
    /** The models to fall back to, in order (CATALOGUE_FILE). */
    fallbacks: z.array(z.string().min(1)).optional(),
  })
  .refine((m) => m.generate !== undefined || Object.keys(m.edit ?? {}).length > 0 || m.upscale !== undefined || m.describe !== undefined, {
    message: 'a model needs a generate, edit, upscale or describe route',
  });

export const catalogueFileSchema = z.strictObject({ models: z.array(modelSchema) });
export type CatalogueFile = z.input<typeof catalogueFileSchema>;
type RouteData = z.output<typeof routeSchema>;
type MappingData = z.output<typeof mappingSchema>;
type DescribeRouteData = z.output<typeof describeRouteSchema>;

function toMapping(m: MappingData): FieldMapping {
  return {
    rule: ruleFromDescriptor(m.rule),
    ...(m.to !== undefined ? { to: m.to } : {}),
    ...(m.transform !== undefined ? { write: TRANSFORMS[m.transform] } : {}),
    ...(m.required ? { required: true } : {}),
  };
}

function toPrice(p: NonNullable<RouteData['price']>): Price {
  if ('per_million_tokens_usd' in p) {
    const t = p.per_million_tokens_usd;
    return {
      perMillionTokensUsd: { textInput: t.text_input, imageInput: t.image_input, imageOutput: t.image_output },
      ...(p.output_tokens_per_image ? { outputTokensPerImage: p.output_tokens_per_image } : {}),
    };
  }
  if ('by_option' in p) return { byOption: p.by_option, defaultValue: p.default, perImageUsd: p.per_image_usd };
  return { perImageUsd: p.per_image_usd };
}

function toRoute(r: RouteData): UpstreamRoute {
  const params: UpstreamRoute['params'] = {};
  for (const [name, m] of Object.entries(r.params) as Array<[NormalizedParam, MappingData | undefined]>) if (m) params[name] = toMapping(m);
  const options: UpstreamRoute['options'] = {};
  for (const [name, m] of Object.entries(r.options)) options[name] = toMapping(m);
  return {
    family: r.family,
    path: r.path,
    auth: r.auth,
    ...(r.task ? { async: true, taskPollPath: r.task.poll_path } : {}),
    ...(r.prompt ? { prompt: { to: r.prompt.to, maxLength: r.prompt.max_length } } : {}),
    params,
    ...(r.refused ? { refused: r.refused } : {}),
    ...(r.constraints
      ? { constraints: r.constraints.map((c) => ({ when: c.when as ParamConstraint['when'], field: c.field, oneOf: c.one_of, reason: c.reason })) }
      : {}),
    options,
    ...(r.fixed ? { fixed: r.fixed } : {}),
    ...(r.images
      ? {
          images: {
            to: r.images.to,
            encoding: r.images.encoding,
            max: r.images.max,
            ...(r.images.max_bytes ? { maxBytes: r.images.max_bytes } : {}),
            ...(r.images.shape ? { shape: r.images.shape } : {}),
            ...(r.images.repeated_file_field ? { repeatedFileField: r.images.repeated_file_field } : {}),
          },
        }
      : {}),
    ...(r.mask ? { mask: r.mask } : {}),
    ...(r.style_references
      ? {
          styleReferences: {
            to: r.style_references.to,
            max: r.style_references.max,
            maxBytes: r.style_references.max_bytes,
            ...(r.style_references.max_total_bytes ? { maxTotalBytes: r.style_references.max_total_bytes } : {}),
          },
        }
      : {}),
    ...(r.price ? { price: toPrice(r.price) } : {}),
  };
}

function toDescribeRoute(r: DescribeRouteData): DescribeRoute {
  const options: DescribeRoute['options'] = {};
  for (const [name, m] of Object.entries(r.options)) options[name] = toMapping(m);
  return { family: r.family, path: r.path, auth: r.auth, options, images: { to: r.images.to, encoding: 'file', max: 1, ...(r.images.max_bytes ? { maxBytes: r.images.max_bytes } : {}) } };
}

/** Where an issue is, named by the model's id when the path reaches one. */
function describeIssue(data: unknown, issue: z.core.$ZodIssue): string {
  const path = issue.path.map(String);
  let where = path.join('.') || '(the file)';
  if (path[0] === 'models' && path[1] !== undefined) {
    const entry = (data as { models?: unknown[] }).models?.[Number(path[1])] as { id?: unknown } | undefined;
    const name = typeof entry?.id === 'string' ? `model "${entry.id}"` : `models[${path[1]}]`;
    where = path.length > 2 ? `${name}: ${path.slice(2).join('.')}` : name;
  }
  return `${where}: ${issue.message}`;
}

/**
 * Each model's data entry (as declared, overlay applied), so a job can keep the declaration it
 * started with and rebuild its model on resume, whatever the catalogue has become by then.
 */
const DECLARATIONS = new WeakMap<ModelSpec, Record<string, unknown>>();

/** The model's data entry (plain JSON) without what ties it to the rest of the catalogue (fallbacks, retirement); undefined for a model not loaded from data. */
export function declarationOf(model: ModelSpec): Record<string, unknown> | undefined {
  return DECLARATIONS.get(model);
}

/** Keeps `declaration` as `model`'s (a copy of a model, PRICE_OVERRIDES applied, keeps its declaration so). */
export function setDeclaration(model: ModelSpec, declaration: Record<string, unknown>): void {
  DECLARATIONS.set(model, declaration);
}

/** The model a kept declaration describes (declarationOf's answer); throws a CatalogueError when it no longer validates. */
export function modelFromDeclaration(declaration: unknown): ModelSpec {
  return loadCatalogue({ models: [declaration] })[0]!;
}

/** Thrown when catalogue data does not validate; the message names the entry and the reason. */
export class CatalogueError extends Error {}

/**
 * Validates plain catalogue data (parsed YAML or JSON) and builds the models it declares.
 * Throws a CatalogueError naming the first offending entries and why.
 */
export function loadCatalogue(data: unknown): ModelSpec[] {
  const parsed = catalogueFileSchema.safeParse(data);
  if (!parsed.success) {
    const lines = parsed.error.issues.slice(0, 5).map((issue) => describeIssue(data, issue));
    throw new CatalogueError(`catalogue: ${lines.join('; ')}`);
  }
  const seen = new Map<string, string>();
  const models = parsed.data.models.map((m, i): ModelSpec => {
    for (const name of [m.id, ...m.aliases]) {
      // Usage records and metrics say `unknown` for a request naming no model of the catalogue.
      if (name === UNKNOWN_MODEL) throw new CatalogueError(`catalogue: model "${m.id}": the name ${UNKNOWN_MODEL} is reserved (usage and metrics use it for requests naming no model of the catalogue)`);
      const other = seen.get(name);
      if (other !== undefined && other !== m.id) throw new CatalogueError(`catalogue: model "${m.id}": the name ${name} is already model "${other}"'s`);
      seen.set(name, m.id);
    }
    const edit: Partial<Record<EditMode, UpstreamRoute>> = {};
    for (const [mode, route] of Object.entries(m.edit ?? {}) as Array<[EditMode, RouteData | undefined]>) {
      if (route) {
        if (!route.images) throw new CatalogueError(`catalogue: model "${m.id}": edit.${mode}: an edit route needs images`);
        edit[mode] = toRoute(route);
      }
    }
    if (m.upscale && m.upscale.images?.max !== 1) {
      throw new CatalogueError(`catalogue: model "${m.id}": upscale: an upscale route takes one image (images.max: 1)`);
    }
    if (m.image_to_image_mode && !edit[m.image_to_image_mode]) {
      throw new CatalogueError(`catalogue: model "${m.id}": image_to_image_mode: "${m.image_to_image_mode}" is not one of its edit modes`);
    }
    const model: ModelSpec = {
      id: m.id,
      aliases: m.aliases,
      description: m.description,
      ...(m.generate ? { generate: toRoute(m.generate) } : {}),
      ...(Object.keys(edit).length > 0 ? { edit } : {}),
      ...(m.upscale ? { upscale: toRoute(m.upscale) } : {}),
      ...(m.describe ? { describe: toDescribeRoute(m.describe) } : {}),
      ...(m.image_to_image_mode ? { imageToImageMode: m.image_to_image_mode } : {}),
      ...(m.retired ? { retired: { replacement: m.replacement ?? '' } } : {}),
      ...(m.fallbacks ? { fallbacks: m.fallbacks } : {}),
    };
    const { fallbacks: _f, retired: _r, replacement: _p, ...declaration } = structuredClone((data as { models: Record<string, unknown>[] }).models[i]!);
    DECLARATIONS.set(model, declaration);
    return model;
  });
  // A replacement or fallback must be a model served (by id or alias), and not itself retired.
  for (const m of models) {
    for (const [what, names] of [['replacement', m.retired ? [m.retired.replacement] : []], ['fallbacks', m.fallbacks ?? []]] as const) {
      for (const name of names) {
        const target = models.find((o) => o.id === name || o.aliases.includes(name));
        if (!target) throw new CatalogueError(`catalogue: model "${m.id}": ${what}: "${name}" is not a model of the catalogue`);
        if (target.retired) throw new CatalogueError(`catalogue: model "${m.id}": ${what}: "${name}" is retired itself`);
        if (target === m) throw new CatalogueError(`catalogue: model "${m.id}": ${what}: names the model itself`);
      }
    }
  }
  return models;
}
