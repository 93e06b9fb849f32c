import { GatewayError, invalidField } from '../errors.js';
import type { EditMode, ModelSpec, Operation, Price, UpstreamRoute } from './model-spec.js';
import { EDIT_MODES } from './model-spec.js';
import { MODELS } from './models.js';

/** Looks models up by id or alias and answers what each one offers. */
export class ModelCatalogue {
  private readonly byName = new Map<string, ModelSpec>();

  constructor(readonly models: readonly ModelSpec[] = MODELS) {
    for (const model of models) {
      for (const name of [model.id, ...model.aliases]) {
        const existing = this.byName.get(name);
        if (existing && existing !== model) throw new Error(`catalogue: ${name} names both ${existing.id} and ${model.id}`);
        this.byName.set(name, model);
      }
    }
  }

  find(name: string): ModelSpec | undefined {
    return this.byName.get(name);
  }

  resolve(name: string): ModelSpec {
    const model = this.find(name);
    if (!model) {
      throw invalidField('model', `"${name}" is not a model this gateway serves; GET /v1/models lists them`);
    }
    return model;
  }
}

export function operationsOf(model: ModelSpec): Operation[] {
  const ops: Operation[] = [];
  if (model.generate) ops.push('generate');
  if (model.edit && Object.keys(model.edit).length > 0) ops.push('edit');
  return ops;
}

export function editModesOf(model: ModelSpec): EditMode[] {
  return EDIT_MODES.filter((mode) => model.edit?.[mode] !== undefined);
}

/** The route for an operation; for edits, `mode` or the model's default (edit with a mask, else image-to-image). */
export function routeFor(model: ModelSpec, operation: Operation, mode: EditMode | undefined, hasMask: boolean): { route: UpstreamRoute; mode?: EditMode } {
  if (operation === 'generate') {
    if (!model.generate) {
      throw invalidField('model', `${model.id} does not generate from text; use POST /v1/edit`, operationsOf(model));
    }
    return { route: model.generate };
  }
  const modes = editModesOf(model);
  if (modes.length === 0) {
    throw invalidField('model', `${model.id} does not edit images; use POST /v1/generate`, operationsOf(model));
  }
  const chosen: EditMode = mode ?? (hasMask && modes.includes('edit') ? 'edit' : (model.imageToImageMode ?? 'edit'));
  const route = model.edit?.[chosen];
  if (!route) throw invalidField('mode', `${model.id} does not support mode "${chosen}"`, modes);
  return { route, mode: chosen };
}

export function maxImagesOf(route: UpstreamRoute | undefined): number {
  return route?.params.n?.rule.range?.max ?? 1;
}

export function pricePerImage(price: Price | undefined, options: Record<string, unknown> = {}): number | null {
  if (!price) return null;
  if ('byOption' in price) {
    const chosen = options[price.byOption];
    const key = typeof chosen === 'string' ? chosen : price.defaultValue;
    return price.perImageUsd[key] ?? null;
  }
  return price.perImageUsd;
}

/** The public description of a model for GET /v1/models. */
export function describeModel(model: ModelSpec) {
  const primary = model.generate ?? model.edit?.[model.imageToImageMode ?? 'edit'] ?? Object.values(model.edit ?? {})[0];
  if (!primary) throw new GatewayError('internal_error', `catalogue: ${model.id} has no route`);
  const sizeRule = primary.params.size?.rule;
  const ratioRule = primary.params.aspect_ratio?.rule;
  const editModes = editModesOf(model);
  const parameters: Record<string, string> = {};
  for (const [name, mapping] of Object.entries(primary.params)) parameters[name] = mapping.rule.allowed;
  const options: Record<string, string> = {};
  for (const [name, mapping] of Object.entries(primary.options)) options[name] = mapping.rule.allowed;
  return {
    id: model.id,
    aliases: model.aliases,
    description: model.description,
    operations: operationsOf(model),
    ...(editModes.length > 0 ? { edit_modes: editModes } : {}),
    max_n: maxImagesOf(primary),
    ...(sizeRule ? { sizes: sizeRule.values ?? [], size_rule: sizeRule.allowed } : {}),
    ...(ratioRule ? { aspect_ratios: ratioRule.values ?? [], aspect_ratio_rule: ratioRule.allowed } : {}),
    parameters,
    options,
    async: primary.async === true,
    price_per_image_usd: pricePerImage(primary.price),
  };
}
