import { GatewayError, invalidField } from '../errors.js';
import type { EditMode, FieldMapping, ImageInput, ImageOperation, ModelSpec, Operation, Price, StyleReferenceInput, UpstreamRoute } from './model-spec.js';
import type { ParamRule } from './param-rule.js';
import { EDIT_MODES, STYLE_REFERENCES_FIELD } from './model-spec.js';
import { MODELS } from './models.js';
import { declarationOf, setDeclaration } from './catalogue-schema.js';

/** The same model with every route priced per image; how PRICE_OVERRIDES applies. */
function withPricePerImage(model: ModelSpec, perImageUsd: number): ModelSpec {
  const priced = (route: UpstreamRoute): UpstreamRoute => ({ ...route, price: { perImageUsd } });
  const edit = model.edit
    ? Object.fromEntries(Object.entries(model.edit).map(([mode, route]) => [mode, priced(route)]))
    : undefined;
  // Describe makes no image: a price per image does not apply to it.
  const copy: ModelSpec = {
    ...model,
    ...(model.generate ? { generate: priced(model.generate) } : {}),
    ...(edit ? { edit } : {}),
    ...(model.upscale ? { upscale: priced(model.upscale) } : {}),
  };
  const declaration = declarationOf(model);
  if (declaration) {
    const kept = structuredClone(declaration);
    const routes = [kept.generate, kept.upscale, ...Object.values((kept.edit as Record<string, unknown> | undefined) ?? {})];
    for (const route of routes) if (route && typeof route === 'object') (route as Record<string, unknown>).price = { per_image_usd: perImageUsd };
    setDeclaration(copy, kept);
  }
  return copy;
}

/** One catalogue's lookup tables, replaced as a whole on reload. */
interface CatalogueState {
  readonly models: readonly ModelSpec[];
  readonly byName: ReadonlyMap<string, ModelSpec>;
}

function buildState(models: readonly ModelSpec[], priceOverrides: Readonly<Record<string, number>>): CatalogueState {
  const overrideById = new Map<string, number>();
  for (const [name, perImageUsd] of Object.entries(priceOverrides)) {
    const model = models.find((m) => m.id === name || m.aliases.includes(name));
    if (!model) throw new Error(`catalogue: PRICE_OVERRIDES names "${name}", which is not a catalogue model id or alias`);
    if (!model.generate && !model.edit && !model.upscale) throw new Error(`catalogue: PRICE_OVERRIDES names "${name}", which only describes: it makes no image to price`);
    overrideById.set(model.id, perImageUsd);
  }
  const priced = models.map((m) => (overrideById.has(m.id) ? withPricePerImage(m, overrideById.get(m.id)!) : m));
  const byName = new Map<string, ModelSpec>();
  for (const model of priced) {
    for (const name of [model.id, ...model.aliases]) {
      const existing = byName.get(name);
      if (existing && existing !== model) throw new Error(`catalogue: ${name} names both ${existing.id} and ${model.id}`);
      byName.set(name, model);
    }
  }
  return { models: priced, byName };
}

/**
 * Looks models up by id or alias and answers what each one offers. The models can be replaced
 * (CATALOGUE_FILE reloads): `replace` swaps them all at once, and every reader sees either the
 * old catalogue or the new one, never a mix.
 */
export class ModelCatalogue {
  private state: CatalogueState;

  /** `priceOverrides`: USD per image by model id or alias, replacing the catalogue's price for every operation. */
  constructor(
    models: readonly ModelSpec[] = MODELS,
    private readonly priceOverrides: Readonly<Record<string, number>> = {},
  ) {
    this.state = buildState(models, priceOverrides);
  }

  get models(): readonly ModelSpec[] {
    return this.state.models;
  }

  /** Serves `models` from now on; throws (and keeps the current ones) when they do not hold together with PRICE_OVERRIDES. */
  replace(models: readonly ModelSpec[]): void {
    this.state = buildState(models, this.priceOverrides);
  }

  find(name: string): ModelSpec | undefined {
    return this.state.byName.get(name);
  }

  /** The model a request names; an unknown name is a 400, a retired model a 410 naming its replacement. */
  resolve(name: string): ModelSpec {
    const model = this.find(name);
    if (!model) {
      throw invalidField('model', `"${name}" is not a model this gateway serves; GET /v1/models lists them`);
    }
    if (model.retired) throw retiredModel(model.id, model.retired.replacement);
    return model;
  }
}

/**
 * The 410 of a retired model, naming its replacement; `notIn`: the list the asking key (or browser
 * token) may use leaves that replacement out, so the answer says so rather than send it to a 403 next.
 */
export function retiredModel(modelId: string, replacement: string, notIn?: string): GatewayError {
  if (notIn !== undefined) {
    return new GatewayError('model_retired', `${modelId} is retired; its replacement ${replacement} is not in ${notIn}`, {
      details: [{ field: 'model', message: `retired; replacement: ${replacement}, which this key may not use`, allowed: [] }],
    });
  }
  return new GatewayError('model_retired', `${modelId} is retired; use ${replacement} instead`, {
    details: [{ field: 'model', message: `retired; replacement: ${replacement}`, allowed: [replacement] }],
  });
}

export function operationsOf(model: ModelSpec): Operation[] {
  const ops: Operation[] = [];
  if (model.generate) ops.push('generate');
  if (model.edit && Object.keys(model.edit).length > 0) ops.push('edit');
  if (model.upscale) ops.push('upscale');
  if (model.describe) ops.push('describe');
  return ops;
}

/** Where a model's operations are asked for, for the 400 of a request sent to the wrong one. */
export function endpointsOf(model: ModelSpec): string {
  return operationsOf(model)
    .map((op) => `POST /v1/${op}`)
    .join(' or ');
}

export function editModesOf(model: ModelSpec): EditMode[] {
  return EDIT_MODES.filter((mode) => model.edit?.[mode] !== undefined);
}

/** The route for an operation; for edits, `mode` or the model's default (edit with a mask, else image-to-image). */
export function routeFor(model: ModelSpec, operation: ImageOperation, mode: EditMode | undefined, hasMask: boolean): { route: UpstreamRoute; mode?: EditMode } {
  if (operation === 'generate') {
    if (!model.generate) {
      throw invalidField('model', `${model.id} does not generate from text; use ${endpointsOf(model)}`, operationsOf(model));
    }
    return { route: model.generate };
  }
  if (operation === 'upscale') {
    if (!model.upscale) throw invalidField('model', `${model.id} does not upscale images; use ${endpointsOf(model)}`, operationsOf(model));
    return { route: model.upscale };
  }
  const modes = editModesOf(model);
  if (modes.length === 0) {
    throw invalidField('model', `${model.id} does not edit images; use ${endpointsOf(model)}`, operationsOf(model));
  }
  const chosen: EditMode = mode ?? (hasMask && modes.includes('edit') ? 'edit' : (model.imageToImageMode ?? 'edit'));
  // A client's mode is looked up as the model's own property only: "constructor" is no mode.
  const route = model.edit && Object.hasOwn(model.edit, chosen) ? model.edit[chosen] : undefined;
  if (!route) throw invalidField('mode', `${model.id} does not support mode "${chosen}"`, modes);
  return { route, mode: chosen };
}

export function maxImagesOf(route: UpstreamRoute | undefined): number {
  return route?.params.n?.rule.range?.max ?? 1;
}

/** What Seedream makes for a group (`sequential_image_generation: "auto"`) without `max_images`, and the most it takes. */
export const SEQUENTIAL_MAX_IMAGES = 15;

/**
 * How many images a request may make, which limits and budgets count before it runs: its `n`
 * (1 when not given), or for a Seedream group (`options.sequential_image_generation: "auto"`) its
 * `options.sequential_image_generation_options.max_images`, 15 when not given (upstream's default).
 * The reservation settles to the images really made.
 */
export function imagesAskedOf(request: { params: Record<string, unknown>; options?: Record<string, unknown> }): number {
  return imagesAsked(request).count;
}

/** The field whose value set a Seedream group's count: its max_images, as errors name fields. */
export const GROUP_MAX_IMAGES_FIELD = 'options.sequential_image_generation_options.max_images';
/** The field that set a Seedream group's count when max_images was not given (up to SEQUENTIAL_MAX_IMAGES). */
export const GROUP_FIELD = 'options.sequential_image_generation';

/**
 * imagesAskedOf's count with the field that set it, as errors name fields (a refusing limit names
 * it): `n`; for a Seedream group its max_images (GROUP_MAX_IMAGES_FIELD), or, without one,
 * `options.sequential_image_generation` itself (GROUP_FIELD: "auto" may make up to 15).
 */
export function imagesAsked(request: { params: Record<string, unknown>; options?: Record<string, unknown> }): { count: number; field: string } {
  // n is judged by the model's rule after this count is taken: one that is no whole number ("2", 1.5, 1e308) counts as 1.
  const n = Number.isSafeInteger(request.params.n) ? (request.params.n as number) : 1;
  const options = request.options ?? {};
  if (!Object.hasOwn(options, 'sequential_image_generation') || options.sequential_image_generation !== 'auto') return { count: n, field: 'n' };
  const group = Object.hasOwn(options, 'sequential_image_generation_options') ? options.sequential_image_generation_options : undefined;
  const maxImages = group && typeof group === 'object' && Object.hasOwn(group, 'max_images') ? (group as Record<string, unknown>).max_images : undefined;
  const given = typeof maxImages === 'number' && Number.isInteger(maxImages) && maxImages >= 1;
  const asked = given ? Math.min(maxImages, SEQUENTIAL_MAX_IMAGES) : SEQUENTIAL_MAX_IMAGES;
  if (n > asked) return { count: n, field: 'n' };
  return { count: asked, field: given ? GROUP_MAX_IMAGES_FIELD : GROUP_FIELD };
}

/** Whether any of a model's image routes (generate, an edit mode, upscale) has a price: what a budgeted key may use. */
export function hasKnownPrice(model: ModelSpec): boolean {
  return [model.generate, ...Object.values(model.edit ?? {}), model.upscale].some((route) => route?.price !== undefined);
}

/** The price of one image, where it does not depend on the reply; null for unknown and token prices. */
export function pricePerImage(price: Price | undefined, options: Record<string, unknown> = {}): number | null {
  if (!price || 'perMillionTokensUsd' in price) return null;
  if ('byOption' in price) {
    const chosen = Object.hasOwn(options, price.byOption) ? options[price.byOption] : undefined;
    const key = typeof chosen === 'string' ? chosen : price.defaultValue;
    return Object.hasOwn(price.perImageUsd, key) ? (price.perImageUsd[key] ?? null) : null;
  }
  return price.perImageUsd;
}

const count = (value: unknown): number | undefined => (typeof value === 'number' && Number.isFinite(value) && value >= 0 ? value : undefined);

/**
 * The estimated cost of one answer in USD, rounded to a millionth: images times the per-image
 * price, or the reply's token usage times the token prices. Null when the price, or the usage a
 * token price needs, is unknown: an unknown price is never 0.
 */
export function estimateCostUsd(
  price: Price | undefined,
  answer: { images: number; options?: Record<string, unknown>; upstreamTokens?: Record<string, unknown> | undefined },
): number | null {
  let usd: number;
  if (price && 'perMillionTokensUsd' in price) {
    const usage = answer.upstreamTokens ?? {};
    const input = count(usage.input_tokens);
    const output = count(usage.output_tokens);
    if (input === undefined || output === undefined) return null;
    // OpenAI splits input into text and image tokens; without the split, all of it is priced as text.
    const details = (usage.input_tokens_details ?? {}) as Record<string, unknown>;
    const imageInput = count(details.image_tokens) ?? 0;
    const textInput = count(details.text_tokens) ?? input - imageInput;
    const p = price.perMillionTokensUsd;
    usd = (textInput * p.textInput + imageInput * p.imageInput + output * p.imageOutput) / 1e6;
  } else {
    const unit = pricePerImage(price, answer.options);
    if (unit === null) return null;
    usd = unit * answer.images;
  }
  return Math.round(usd * 1e6) / 1e6;
}

/**
 * The most input tokens one input image of an edit (each `image`, and the mask) may take at a
 * token-priced model (gpt-image), as a budget reserves them before the call. Two parts:
 * - the image itself: OpenAI tiles an input image in 512-px squares after scaling it to at most
 *   512 px on its short side and 2048 px on its long one, so at most 4 tiles at 129 tokens and 65
 *   more (the figures gpt-image-1's edits report: 194 tokens for one tile, 323 for two);
 * - `input_fidelity: high` (gpt-image-2 always works so) adds up to 6,240 tokens per image (OpenAI's
 *   figure for a portrait or landscape image at gpt-image-1; a square one adds 4,160).
 * An upper bound, not an estimate: settlement counts the image tokens the reply reports.
 */
export const INPUT_IMAGE_TILE_TOKENS_MAX = 65 + 4 * 129;
export const INPUT_IMAGE_HIGH_FIDELITY_TOKENS_MAX = 6_240;

/** The input images an edit sends (its images and its mask), which a token price bills as image input. */
export function inputImagesOf(request: { images: readonly unknown[]; mask?: unknown }): number {
  return request.images.length + (request.mask !== undefined ? 1 : 0);
}

/**
 * The most a request may cost, in USD rounded to a millionth, known before the call: what a budget
 * reserves. Per image: images times the price. By tokens, where the price says how many output
 * tokens an image takes: images times those of the request's quality (the most of any quality for
 * `auto`, none or one the table does not name), plus the prompt as text input, its UTF-8 bytes
 * standing for its tokens (a token is at least a byte), plus each input image of an edit at the
 * most it may take (INPUT_IMAGE_TILE_TOKENS_MAX, and INPUT_IMAGE_HIGH_FIDELITY_TOKENS_MAX unless the
 * request sets `input_fidelity: low`) at `image_input`. Null when the price, or a token price's
 * table, is unknown.
 */
export function maxCostUsd(
  price: Price | undefined,
  request: { images: number; prompt: string; params: Record<string, unknown>; options?: Record<string, unknown>; inputImages?: number },
): number | null {
  if (price && 'perMillionTokensUsd' in price) {
    const byQuality = price.outputTokensPerImage;
    if (!byQuality || Object.keys(byQuality).length === 0) return null;
    const quality = request.params.quality;
    const outputTokens =
      typeof quality === 'string' && Object.hasOwn(byQuality, quality) ? byQuality[quality]! : Math.max(...Object.values(byQuality));
    const promptTokens = Buffer.byteLength(request.prompt, 'utf8');
    // Only an explicit `low` is known to add nothing for fidelity: other models may default to high.
    const perInputImage = INPUT_IMAGE_TILE_TOKENS_MAX + (request.options?.input_fidelity === 'low' ? 0 : INPUT_IMAGE_HIGH_FIDELITY_TOKENS_MAX);
    const inputImageTokens = (request.inputImages ?? 0) * perInputImage;
    const p = price.perMillionTokensUsd;
    // Tokens times USD per million tokens is millionths of a dollar.
    return Math.round(request.images * outputTokens * p.imageOutput + promptTokens * p.textInput + inputImageTokens * p.imageInput) / 1e6;
  }
  const unit = pricePerImage(price, request.options);
  return unit === null ? null : Math.round(unit * request.images * 1e6) / 1e6;
}

/** One field of a model's input schema in GET /v1/models: what a form needs to offer it. */
export interface FieldSchema {
  type: 'enum' | 'integer' | 'number' | 'boolean' | 'text' | 'size' | 'ratio' | 'json';
  allowed: string;
  values?: readonly (string | number | boolean)[];
  minimum?: number;
  maximum?: number;
  max_length?: number;
  /** The route cannot be called without it. */
  required?: boolean;
}

function fieldSchema(rule: ParamRule): FieldSchema {
  return {
    type: rule.kind ?? 'json',
    allowed: rule.allowed,
    ...(rule.values ? { values: rule.values } : {}),
    ...(rule.range ? { minimum: rule.range.min, maximum: rule.range.max } : {}),
    ...(rule.maxLength !== undefined ? { max_length: rule.maxLength } : {}),
  };
}

/** What one route takes: its prompt, normalized parameters and options, and for edits its images and mask. */
function routeSchema(route: UpstreamRoute, withImages: boolean) {
  const fields = (mappings: Record<string, FieldMapping | undefined>) =>
    Object.fromEntries(Object.entries(mappings).flatMap(([name, m]) => (m ? [[name, { ...fieldSchema(m.rule), ...(m.required ? { required: true } : {}) }]] : [])));
  const styleReferences = route.styleReferences;
  return {
    // max_length 0: the route takes no prompt (Ideogram's reframe).
    prompt: { max_length: route.prompt?.maxLength ?? 0 },
    parameters: fields(route.params),
    options: {
      ...fields(route.options),
      ...(styleReferences ? { [STYLE_REFERENCES_FIELD]: { type: 'json' as const, allowed: styleReferencesAllowed(styleReferences) } } : {}),
    },
    ...(styleReferences ? { style_references: { max: styleReferences.max, max_bytes: styleReferences.maxBytes } } : {}),
    ...(withImages ? { images: imagesSchema(route.images), mask: route.mask ? { required: route.mask.required } : null } : {}),
    ...(route.constraints ? { constraints: route.constraints.map((c) => ({ when: c.when, field: c.field, one_of: c.oneOf, reason: c.reason })) } : {}),
  };
}

/** What a describe route takes: its options and one image. */
function describeSchema(model: ModelSpec) {
  const route = model.describe!;
  return {
    options: Object.fromEntries(Object.entries(route.options).map(([name, m]) => [name, fieldSchema(m.rule)])),
    images: imagesSchema(route.images),
  };
}

/** How many input images a route takes, and how large each may be when its vendor says. */
function imagesSchema(images: ImageInput | undefined) {
  return { max: images?.max ?? 1, ...(images?.maxBytes !== undefined ? { max_bytes: images.maxBytes } : {}) };
}

/** What `options.style_reference_images` takes, in 400s and GET /v1/models. */
export function styleReferencesAllowed(input: StyleReferenceInput): string {
  return `an array of 1 to ${input.max} images (data URLs or http(s) URLs; in a multipart edit, files named ${STYLE_REFERENCES_FIELD}), each PNG, JPEG or WebP of at most ${input.maxBytes} bytes`;
}

/** The public description of a model for GET /v1/models. */
export function describeModel(model: ModelSpec) {
  const primary = model.generate ?? model.edit?.[model.imageToImageMode ?? 'edit'] ?? Object.values(model.edit ?? {})[0] ?? model.upscale;
  if (!primary && !model.describe) throw new GatewayError('internal_error', `catalogue: ${model.id} has no route`);
  if (!primary) {
    // Describe alone: text out, no image made, no parameters; no published price.
    const options: Record<string, string> = {};
    for (const [name, mapping] of Object.entries(model.describe!.options)) options[name] = mapping.rule.allowed;
    return {
      id: model.id,
      aliases: model.aliases,
      description: model.description,
      ...(model.retired ? { retired: true, replacement: model.retired.replacement } : {}),
      operations: operationsOf(model),
      max_n: 0,
      parameters: {},
      options,
      async: false,
      input_schema: { describe: describeSchema(model) },
      price_per_image_usd: null,
    };
  }
  const sizeRule = primary.params.size?.rule;
  const ratioRule = primary.params.aspect_ratio?.rule;
  const editModes = editModesOf(model);
  const parameters: Record<string, string> = {};
  for (const [name, mapping] of Object.entries(primary.params)) parameters[name] = mapping.rule.allowed;
  const options: Record<string, string> = {};
  for (const [name, mapping] of Object.entries(primary.options)) options[name] = mapping.rule.allowed;
  if (primary.styleReferences) options[STYLE_REFERENCES_FIELD] = styleReferencesAllowed(primary.styleReferences);
  return {
    id: model.id,
    aliases: model.aliases,
    description: model.description,
    ...(model.retired ? { retired: true, replacement: model.retired.replacement } : {}),
    operations: operationsOf(model),
    ...(editModes.length > 0 ? { edit_modes: editModes } : {}),
    max_n: maxImagesOf(primary),
    // A rule of ranges (WIDTHxHEIGHT within bounds) has no list: an empty one would read as "none allowed".
    ...(sizeRule ? { ...(sizeRule.values ? { sizes: sizeRule.values } : {}), size_rule: sizeRule.allowed } : {}),
    ...(ratioRule ? { ...(ratioRule.values ? { aspect_ratios: ratioRule.values } : {}), aspect_ratio_rule: ratioRule.allowed } : {}),
    parameters,
    options,
    async: primary.async === true,
    // Per operation (and edit mode), every field with its type and allowed values: enough to build a form.
    input_schema: {
      ...(model.generate ? { generate: routeSchema(model.generate, false) } : {}),
      ...(editModes.length > 0
        ? { edit: Object.fromEntries(editModes.map((mode) => [mode, routeSchema(model.edit![mode]!, true)])) }
        : {}),
      ...(model.upscale ? { upscale: routeSchema(model.upscale, true) } : {}),
      ...(model.describe ? { describe: describeSchema(model) } : {}),
    },
    price_per_image_usd: pricePerImage(primary.price),
    // A price that an option's value picks (Ideogram's rendering_speed): each value's, and which is the default.
    ...(primary.price && 'byOption' in primary.price
      ? { price_by_option: { option: primary.price.byOption, default: primary.price.defaultValue, per_image_usd: { ...primary.price.perImageUsd } } }
      : {}),
    ...(primary.price && 'perMillionTokensUsd' in primary.price
      ? {
          price_per_million_tokens_usd: {
            text_input: primary.price.perMillionTokensUsd.textInput,
            image_input: primary.price.perMillionTokensUsd.imageInput,
            image_output: primary.price.perMillionTokensUsd.imageOutput,
          },
          ...(primary.price.outputTokensPerImage ? { output_tokens_per_image: primary.price.outputTokensPerImage } : {}),
        }
      : {}),
  };
}
