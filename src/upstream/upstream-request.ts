import { GatewayError, clipName, invalidField } from '../errors.js';
import type { DescribeRoute, FieldMapping, ModelSpec, NormalizedParam, UpstreamRoute } from '../catalogue/model-spec.js';
import { STYLE_REFERENCES_FIELD } from '../catalogue/model-spec.js';
import { styleReferencesAllowed } from '../catalogue/catalogue.js';
import { PROMPT_ALLOWED, imageFieldOf, isBlankPrompt, type DescribeRequest, type ImageRequest, type InputImage } from '../request/image-request.js';
import { toBlackMeansChangeMask } from '../images/mask.js';

export interface UpstreamFile {
  field: string;
  filename: string;
  mime: string;
  bytes: Buffer;
}

/** What the gateway sends upstream for one request; the key is added only when it is sent. */
export interface UpstreamRequest {
  path: string;
  auth: 'bearer' | 'api-key';
  body:
    | { kind: 'json'; value: Record<string, unknown> }
    | { kind: 'multipart'; fields: Array<[string, string]>; files: UpstreamFile[] };
  async: boolean;
  /** Where a task is polled, `{task_id}` standing for its id (the catalogue route's task shape). */
  taskPollPath?: string;
}

function setPath(target: Record<string, unknown>, dotted: string, value: unknown): void {
  const keys = dotted.split('.');
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[keys[keys.length - 1]!] = value;
}

/** A mapping by a name the client chose (an option, a parameter): the route's own, never one inherited from Object.prototype. */
function ownMapping(mappings: Readonly<Record<string, FieldMapping | undefined>>, name: string): FieldMapping | undefined {
  return Object.hasOwn(mappings, name) ? mappings[name] : undefined;
}

/**
 * A value checked against the model's own rule for it (the catalogue's): refused in the rule's
 * words followed by the model whose rule it is, "size: must be one of ... for gpt-image-1", as
 * every catalogue-driven value refusal reads (n, size, aspect_ratio, quality, style, options.*).
 */
function check(field: string, mapping: FieldMapping, value: unknown, model: ModelSpec): void {
  const problem = mapping.rule.check(value);
  if (problem) throw invalidField(field, `${problem} for ${model.id}`, mapping.rule.values ?? mapping.rule.allowed);
}

/**
 * Why a parameter is refused; a shape asked in the form the model does not take names the one it
 * does. Otherwise the message names the parameters the model does take, so the field list in the
 * detail's `allowed` (["n"] for Imagen's size) reads as what it is, not as the field's values.
 */
function unsupportedParamMessage(model: ModelSpec, route: UpstreamRoute, name: NormalizedParam, inMode: string): string {
  if (name === 'n') return `${model.id} makes one image per request; n must be the integer 1, or left out`;
  const size = route.params.size;
  if (name === 'aspect_ratio' && size) return `is not supported by ${model.id}, which takes an explicit size: give size, ${size.rule.allowed}`;
  const ratio = route.params.aspect_ratio;
  if (name === 'size' && ratio) return `is not supported by ${model.id}, which takes its shape as aspect_ratio: give aspect_ratio, ${ratio.rule.allowed}`;
  const taken = Object.keys(route.params);
  const takes =
    taken.length === 0 ? 'it takes none of the optional parameters' : taken.length === 1 ? `the only parameter it takes is ${taken[0]}` : `the parameters it takes are ${taken.join(', ')}`;
  return `is not supported by ${model.id}${inMode}, which takes no ${name}: ${takes}`;
}

/**
 * Applies the model's own rules to a parsed request: every field must be one the model takes,
 * with a value it allows. Nothing is dropped or clamped: a mismatch is a 400 before any upstream call.
 */
export function checkAgainstRoute(model: ModelSpec, route: UpstreamRoute, req: ImageRequest): void {
  const inMode = req.mode ? ` in mode ${req.mode}` : '';
  if (!route.prompt) {
    if (req.prompt !== '') throw invalidField('prompt', `${model.id}${inMode} takes no prompt: leave it out`);
  } else if (req.prompt === '') {
    // An upscale's prompt is optional (POST /v1/upscale); every other route with a prompt needs one.
    if (req.operation !== 'upscale') throw invalidField('prompt', `is required: ${PROMPT_ALLOWED}`);
  } else if (isBlankPrompt(req.prompt)) {
    // Whitespace alone would go upstream and be paid for: no prompt, as "" is (an edit's prompt reaches here unchecked).
    throw invalidField('prompt', req.operation === 'upscale' ? `must be ${PROMPT_ALLOWED}, or left out` : `is required: ${PROMPT_ALLOWED}`);
  } else if (req.prompt.length > route.prompt.maxLength) {
    throw invalidField('prompt', `is ${req.prompt.length} characters; ${model.id} takes at most ${route.prompt.maxLength}`);
  }
  const supported = Object.keys(route.params);
  for (const [name, value] of Object.entries(req.params) as Array<[NormalizedParam, unknown]>) {
    const mapping = ownMapping(route.params, name);
    if (!mapping) {
      if (name === 'n' && value === 1) continue;
      const refused = route.refused && Object.hasOwn(route.refused, name) ? route.refused[name] : undefined;
      throw invalidField(name, refused ? `is not taken by ${model.id}${inMode}: ${refused}` : unsupportedParamMessage(model, route, name, inMode), supported);
    }
    check(name, mapping, value, model);
  }
  for (const [name, mapping] of Object.entries(route.params) as Array<[NormalizedParam, FieldMapping]>) {
    if (mapping.required && req.params[name] === undefined) {
      throw invalidField(name, `is required by ${model.id}${inMode}; one of ${mapping.rule.allowed.replace(/^one of /, '')}`, mapping.rule.values ?? mapping.rule.allowed);
    }
  }
  for (const c of route.constraints ?? []) {
    const given = req.params[c.field];
    const applies = Object.entries(c.when).every(([name, value]) => req.params[name as NormalizedParam] === value);
    if (applies && given !== undefined && !c.oneOf.includes(given as string | number | boolean)) {
      const when = Object.entries(c.when).map(([name, value]) => `${name} ${String(value)}`).join(' and ');
      throw invalidField(c.field, `must be one of ${c.oneOf.join(', ')} with ${when} on ${model.id}${inMode}: ${c.reason}`, c.oneOf);
    }
  }
  const optionNames = [...Object.keys(route.options), ...(route.styleReferences ? [STYLE_REFERENCES_FIELD] : [])];
  for (const [name, value] of Object.entries(req.options)) {
    const mapping = ownMapping(route.options, name);
    if (!mapping) {
      // Still in options: the entry point did not take the images off (the OpenAI-compatible ones do not).
      if (name === STYLE_REFERENCES_FIELD && route.styleReferences) {
        throw invalidField(`options.${clipName(name)}`, 'style reference images are taken by POST /v1/generate and POST /v1/edit, not by the OpenAI-compatible endpoints');
      }
      throw invalidField(`options.${clipName(name)}`, `is not an option of ${model.id}${inMode}`, optionNames);
    }
    check(`options.${name}`, mapping, value, model);
  }
  checkStyleReferences(model, route, req, inMode, optionNames);
  if (req.operation === 'edit' || req.operation === 'upscale') {
    const images = route.images;
    if (!images) throw new GatewayError('internal_error', `catalogue: ${model.id} ${req.operation} route takes no image`);
    if (req.images.length > images.max) {
      throw invalidField('image', `${model.id} takes at most ${images.max} image${images.max === 1 ? '' : 's'}; got ${req.images.length}`);
    }
    checkImageBytes(model, req.images, images.maxBytes, (i) => imageFieldOf(req, i), 'input image');
    if (req.mask && !route.mask) {
      throw invalidField('mask', `${model.id}${req.mode ? ` in mode ${req.mode}` : ''} takes no mask`);
    }
    if (!req.mask && route.mask?.required) {
      throw invalidField('mask', `${model.id} in mode ${req.mode ?? 'edit'} needs a mask (transparent pixels = the area to change)`);
    }
  }
}

/**
 * Each image within the model's per-image limit (the vendor's): a 413 naming the image's field and
 * the limit. Images not read yet count 0 here; the check runs again once they are.
 */
function checkImageBytes(model: ModelSpec, images: readonly InputImage[], maxBytes: number | undefined, fieldOf: (i: number) => string, what: string): void {
  if (maxBytes === undefined) return;
  images.forEach((image, i) => {
    if (image.bytes.length <= maxBytes) return;
    const field = fieldOf(i);
    throw new GatewayError('payload_too_large', `${field}: the image is ${image.bytes.length} bytes; ${model.id} takes at most ${maxBytes} per ${what}`, {
      details: [{ field, message: `must be at most ${maxBytes} bytes` }],
    });
  });
}

/** Style reference images: only where the route takes them, at most its count, each within its size (once read). */
function checkStyleReferences(model: ModelSpec, route: UpstreamRoute, req: ImageRequest, inMode: string, optionNames: string[]): void {
  const given = req.styleReferences ?? [];
  if (given.length === 0) return;
  const field = `options.${STYLE_REFERENCES_FIELD}`;
  const spec = route.styleReferences;
  if (!spec) throw invalidField(field, `is not an option of ${model.id}${inMode}`, optionNames);
  if (given.length > spec.max) {
    throw invalidField(field, `${model.id}${inMode} takes at most ${spec.max} style reference images; got ${given.length}`, styleReferencesAllowed(spec));
  }
  checkImageBytes(model, given, spec.maxBytes, (i) => `${field}[${i}]`, 'style reference image');
  // Images not read yet count 0 here; the check runs again once they are.
  const total = [...req.images, ...(req.mask ? [req.mask] : []), ...given].reduce((sum, image) => sum + image.bytes.length, 0);
  if (spec.maxTotalBytes !== undefined && total > spec.maxTotalBytes) {
    throw new GatewayError('payload_too_large', `${field}: the request's images come to ${total} bytes; ${model.id} takes at most ${spec.maxTotalBytes} for all of them together`, {
      details: [{ field, message: `all images together must be at most ${spec.maxTotalBytes} bytes` }],
    });
  }
}

function encodeImage(image: InputImage, encoding: 'data-url' | 'base64'): string {
  const base64 = image.bytes.toString('base64');
  return encoding === 'data-url' ? `data:${image.mime};base64,${base64}` : base64;
}

function fileName(image: InputImage, fallback: string): string {
  const ext = image.mime === 'image/jpeg' ? 'jpg' : image.mime.slice('image/'.length);
  return /^[\w.-]{1,100}$/.test(image.filename) ? image.filename : `${fallback}.${ext}`;
}

/** Writes one value where its mapping says; a mapping with several paths takes its transform's parts, in order. */
function writeMapped(tree: Record<string, unknown>, name: string, mapping: FieldMapping, value: unknown): void {
  const written = mapping.write ? mapping.write(value) : value;
  const to = mapping.to ?? name;
  if (typeof to === 'string') return setPath(tree, to, written);
  const parts = written as unknown[];
  to.forEach((path, i) => setPath(tree, path, parts[i]));
}

/** A deep copy of plain JSON (the catalogue's fixed fields); structuredClone cost ~7 µs a request. */
function copyJson<T>(value: T): T {
  if (Array.isArray(value)) return value.map(copyJson) as T;
  if (value === null || typeof value !== 'object') return value;
  const copy: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) copy[key] = copyJson(item);
  return copy as T;
}

/** Writes the normalized request in the upstream's own terms, as the catalogue declares. */
export async function toUpstreamRequest(route: UpstreamRoute, req: ImageRequest): Promise<UpstreamRequest> {
  const tree: Record<string, unknown> = copyJson(route.fixed ?? {});
  // No prompt: a route that takes none (Ideogram's reframe), or an upscale given none (its prompt is optional).
  if (route.prompt && req.prompt !== '') setPath(tree, route.prompt.to, req.prompt);
  for (const [name, value] of Object.entries(req.params) as Array<[NormalizedParam, unknown]>) {
    const mapping = ownMapping(route.params, name);
    if (!mapping) continue; // only n = 1 on a one-image model, which upstream does not take
    writeMapped(tree, name, mapping, value);
  }
  for (const [name, value] of Object.entries(req.options)) {
    const mapping = ownMapping(route.options, name);
    if (!mapping) throw invalidField(`options.${clipName(name)}`, 'is not an option of this model', Object.keys(route.options));
    writeMapped(tree, name, mapping, value);
  }

  const files: UpstreamFile[] = [];
  if ((req.operation === 'edit' || req.operation === 'upscale') && route.images) {
    const spec = route.images;
    if (spec.encoding === 'file') {
      const field = req.images.length > 1 && spec.repeatedFileField ? spec.repeatedFileField : spec.to;
      req.images.forEach((image, i) => {
        files.push({ field, filename: fileName(image, `image-${i + 1}`), mime: image.mime, bytes: image.bytes });
      });
    } else {
      const encoded = req.images.map((image) => encodeImage(image, spec.encoding as 'data-url' | 'base64'));
      if (spec.shape === 'numbered') encoded.forEach((image, i) => setPath(tree, i === 0 ? spec.to : `${spec.to}_${i + 1}`, image));
      else setPath(tree, spec.to, spec.shape === 'single' ? encoded[0] : encoded);
    }
    if (req.mask && route.mask) {
      // OpenAI too refuses a mask that is not a PNG with transparency the image's size; the conversion
      // checks exactly that, so it runs for both conventions and nothing bad reaches upstream.
      const converted = await toBlackMeansChangeMask(req.mask, req.images[0]!);
      const mask = route.mask.convention === 'black' ? converted : req.mask;
      files.push({ field: route.mask.to, filename: 'mask.png', mime: mask.mime, bytes: mask.bytes });
    }
  }

  if (route.styleReferences && req.styleReferences) {
    const to = route.styleReferences.to;
    req.styleReferences.forEach((image, i) => {
      files.push({ field: to, filename: fileName(image, `style-reference-${i + 1}`), mime: image.mime, bytes: image.bytes });
    });
  }

  const { auth } = route;
  const async = route.async === true;
  const task = route.taskPollPath ? { taskPollPath: route.taskPollPath } : {};
  switch (route.family) {
    case 'predictions':
      return { path: route.path, auth, async, ...task, body: { kind: 'json', value: { input: tree } } };
    case 'openai-json':
    case 'ideogram-json':
      return { path: route.path, auth, async, ...task, body: { kind: 'json', value: tree } };
    case 'openai-multipart':
    case 'ideogram-multipart': {
      const fields: Array<[string, string]> = Object.entries(tree).map(([k, v]) => [
        k,
        typeof v === 'string' ? v : typeof v === 'object' ? JSON.stringify(v) : String(v),
      ]);
      return { path: route.path, auth, async, ...task, body: { kind: 'multipart', fields, files } };
    }
  }
}

/** A describe request against its model's route: options it declares, with values it allows, and one image within its size (once read). */
export function checkDescribe(model: ModelSpec, route: DescribeRoute, req: DescribeRequest): void {
  const optionNames = Object.keys(route.options);
  for (const [name, value] of Object.entries(req.options)) {
    const mapping = ownMapping(route.options, name);
    if (!mapping) throw invalidField(`options.${clipName(name)}`, `is not an option of ${model.id}`, optionNames);
    check(`options.${name}`, mapping, value, model);
  }
  checkImageBytes(model, [req.image], route.images.maxBytes, () => 'image', 'input image');
}

/** A describe request in upstream terms: multipart, the image as the route's file field, each option a text field. */
export function toDescribeRequest(route: DescribeRoute, req: DescribeRequest): UpstreamRequest {
  const tree: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(req.options)) {
    const mapping = ownMapping(route.options, name);
    if (!mapping) throw invalidField(`options.${clipName(name)}`, 'is not an option of this model', Object.keys(route.options));
    writeMapped(tree, name, mapping, value);
  }
  const fields: Array<[string, string]> = Object.entries(tree).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]);
  const file: UpstreamFile = { field: route.images.to, filename: fileName(req.image, 'image-1'), mime: req.image.mime, bytes: req.image.bytes };
  return { path: route.path, auth: route.auth, async: false, body: { kind: 'multipart', fields, files: [file] } };
}
