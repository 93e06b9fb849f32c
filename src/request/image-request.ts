import { z } from 'zod';
import { GatewayError, absentAsRequired, clipName, invalidField, zodRefusal } from '../errors.js';
import type { EditMode, ImageOperation, NormalizedParam } from '../catalogue/model-spec.js';
import { EDIT_MODES, NORMALIZED_PARAMS, STYLE_REFERENCES_FIELD } from '../catalogue/model-spec.js';
import { sniffImageType, type ImageMime } from '../images/image-bytes.js';

/** An image the caller sent, checked by its bytes. */
export interface InputImage {
  bytes: Buffer;
  mime: ImageMime;
  filename: string;
}

/** /v1/generate, /v1/edit and /v1/upscale after parsing, before the model's own rules are applied. */
export interface ImageRequest {
  operation: ImageOperation;
  model: string;
  /** '' when none was given: an upscale's prompt is optional, and an edit's route decides (Ideogram's reframe takes none). */
  prompt: string;
  params: Partial<Record<NormalizedParam, unknown>>;
  options: Record<string, unknown>;
  responseFormat: 'url' | 'b64_json';
  async: boolean;
  mode?: EditMode;
  images: InputImage[];
  /**
   * The client sent its images as a list (a JSON array, multipart `image[]` or several `image`
   * files), so errors name each `image[i]`, one alone included; absent: `image` when there is one.
   */
  imagesListed?: boolean;
  mask?: InputImage;
  /** Style reference images (`options.style_reference_images` in JSON, `style_reference_images` files in multipart). */
  styleReferences?: InputImage[];
  /** Where to POST the finished job (async requests). */
  callbackUrl?: string;
  /** Models to try, in order, when upstream cannot serve `model` (no channel, throttled, unavailable); [] = none, not even the defaults. */
  fallbackModels?: string[];
  /** Fall back also after a timeout once upstream took the request (it may have been billed). */
  fallbackOnTimeout?: boolean;
}

/** The most models `fallback_models` may name. */
export const MAX_FALLBACK_MODELS = 3;

/** Names a client makes up (models, fields, option keys) are echoed in errors and logs: keep them short. */
const NAME_MAX = 100;

// Every field says what it takes in its own words, whatever is wrong with it (never zod's "Invalid input: ...").
const text = (what = 'a string') => z.string({ error: `must be ${what}` });
const nonEmpty = (what = 'a non-empty string') => text(what).min(1, `must be ${what}`);
const oneOfValues = <T extends string>(values: readonly [T, ...T[]]) =>
  z.enum(values, { error: `must be one of ${values.map((v) => JSON.stringify(v)).join(', ')}` });
const integer = (what: string, min: number, max = Number.MAX_SAFE_INTEGER) =>
  // A value failing the integer check stops there: 1e308 was named twice (not an integer, over the max).
  z.number({ error: `must be ${what}` }).int({ error: `must be ${what}`, abort: true }).min(min, `must be ${what}`).max(max, `must be ${what}`);
const trueOrFalse = z.boolean({ error: 'must be true or false' });
/**
 * A prompt of whitespace alone (or zero-width characters) asks for nothing, yet upstream bills the
 * attempt or refuses it after the fact: it is no prompt, refused here as an empty one is.
 */
export function isBlankPrompt(value: string): boolean {
  return !/[^\s\u200B-\u200D\u2060]/.test(value);
}
/** What a prompt must be, in every refusal of an empty or blank one. */
export const PROMPT_ALLOWED = 'a non-empty string (whitespace alone is not a prompt)';
const promptText = text(PROMPT_ALLOWED).refine((v) => !isBlankPrompt(v), `must be ${PROMPT_ALLOWED}`);
const modelName = nonEmpty(`a model id (at most ${NAME_MAX} characters; GET /v1/models lists them)`).max(NAME_MAX, `must be at most ${NAME_MAX} characters`);

const commonFields = {
  model: modelName,
  prompt: promptText,
  // Judged by the model's own rule alone, whatever its type ("2", 1.5, 0): only that rule knows the
  // range to name ("must be an integer from 1 to 4 for imagen-..."), where a type check here could not.
  n: z.unknown(),
  size: nonEmpty("a non-empty string: WIDTHxHEIGHT or a size the model names (its input_schema lists them)"),
  aspect_ratio: text('written W:H, for example "16:9"').regex(/^\d+:\d+$/, 'must be written W:H, for example "16:9"'),
  // Judged by the model's own rule, which lists its qualities: one list for every model would offer
  // values the model then refuses, and would refuse a quality an operator's catalogue declares.
  quality: nonEmpty("a non-empty string: a quality the model names (its input_schema lists them)"),
  seed: integer('an integer from 0 to 2147483647', 0, 2147483647),
  negative_prompt: text(),
  style: nonEmpty(),
  output_format: oneOfValues(['png', 'jpeg', 'webp']),
  background: nonEmpty(),
  response_format: oneOfValues(['url', 'b64_json']),
  options: z.record(
    z.string().min(1, 'an option name must not be empty').max(NAME_MAX, `an option name must be at most ${NAME_MAX} characters`),
    z.unknown(),
    { error: "must be a JSON object of the model's options (its input_schema lists them)" },
  ),
  async: trueOrFalse,
  fallback_models: z
    .array(modelName, { error: 'must be a list of model ids' })
    .max(MAX_FALLBACK_MODELS, `must name at most ${MAX_FALLBACK_MODELS} models`)
    .refine((list) => new Set(list).size === list.length, 'must not name a model twice'),
  fallback_on_timeout: trueOrFalse,
  callback_url: text('an http(s) URL')
    .max(2000, 'must be an http(s) URL of at most 2000 characters')
    .refine((v) => /^https?:$/.test(URL.canParse(v) ? new URL(v).protocol : ''), 'must be an http(s) URL'),
};

/** Taken off the body by the route before parsing (`"stream": true`), so listed among the fields it takes. */
const STREAM = 'stream';
const editMode = oneOfValues(EDIT_MODES as [EditMode, ...EditMode[]]);

const generateSchema = z
  .strictObject(commonFields)
  .partial()
  .required({ model: true, prompt: true });

const DATA_URL = /^data:[\w.+-]+\/[\w.+-]+;base64,/;
const HTTP_URL = /^https?:\/\//i;
/** A data URL, or an http(s) URL that the route fetches under the egress policy (src/images/image-fetch.ts). */
const imageRef = z.string().refine((v) => DATA_URL.test(v) || HTTP_URL.test(v), {
  message: 'must be a data URL (data:image/png;base64,...) or an http(s) URL',
});

/** How errors name a request's i-th input image: as the client sent it, `image[i]` from a list (one alone included), else `image`. */
export function imageFieldOf(request: Pick<ImageRequest, 'images' | 'imagesListed'>, i: number): string {
  return request.imagesListed === true || request.images.length > 1 ? `image[${i}]` : 'image';
}

/** The most images a JSON edit may list before its model is known (no model takes more). */
const MAX_EDIT_IMAGES = 16;

const editJsonSchema = z
  .strictObject({
    ...commonFields,
    mode: editMode,
    // 16: the most images any model takes; the model's own limit is checked before anything is fetched.
    image: z.union([imageRef, z.array(imageRef).min(1, 'must list at least one image').max(MAX_EDIT_IMAGES)], {
      error: `must be a data URL (data:image/png;base64,...) or an http(s) URL, or an array of 1 to ${MAX_EDIT_IMAGES} of them (the model's input_schema says how many it takes)`,
    }),
    mask: imageRef,
    // An edit's route decides whether it needs a prompt (checkAgainstRoute): Ideogram's reframe takes none.
    prompt: text(),
  })
  .partial()
  .required({ model: true, image: true });

type GenerateBody = z.infer<typeof generateSchema>;

/** zod's complaints, turned into a 400 that names each field and what it may be; `allowedFields`: exactly what the route takes. */
function refuse(error: z.ZodError, allowedFields: string[], body: object): GatewayError {
  return zodRefusal(error, allowedFields, { name: clipName, messageOf: absentAsRequired(body) });
}

function pickParams(body: Partial<Record<NormalizedParam, unknown>>): Partial<Record<NormalizedParam, unknown>> {
  const params: Partial<Record<NormalizedParam, unknown>> = {};
  for (const name of NORMALIZED_PARAMS) {
    if (body[name] !== undefined) params[name] = body[name];
  }
  return params;
}

/** A callback is the end of an async job; on a synchronous request it would silently never happen. */
function callbackFor(body: { callback_url?: string; async?: boolean }): string | undefined {
  if (body.callback_url && body.async !== true) throw invalidField('callback_url', 'needs "async": true: only an asynchronous job calls back');
  return body.callback_url;
}

function fromBody(
  operation: ImageOperation,
  body: Omit<GenerateBody, 'prompt'> & { prompt?: string | undefined },
  extra: { mode?: EditMode; images?: InputImage[]; imagesListed?: boolean; mask?: InputImage },
): ImageRequest {
  return {
    operation,
    model: body.model,
    prompt: body.prompt ?? '',
    params: pickParams(body),
    options: body.options ?? {},
    responseFormat: body.response_format ?? 'url',
    async: body.async ?? false,
    ...(body.callback_url ? { callbackUrl: callbackFor(body) } : {}),
    // [] is kept: it turns off the default chain (the model's or the key's `fallbacks`) for this request.
    ...(body.fallback_models ? { fallbackModels: body.fallback_models } : {}),
    ...(body.fallback_on_timeout ? { fallbackOnTimeout: true } : {}),
    ...(extra.mode ? { mode: extra.mode } : {}),
    images: extra.images ?? [],
    ...(extra.imagesListed ? { imagesListed: true } : {}),
    ...(extra.mask ? { mask: extra.mask } : {}),
  };
}

export function parseGenerateBody(raw: unknown): ImageRequest {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw invalidField('(body)', 'must be a JSON object');
  }
  const parsed = generateSchema.safeParse(raw);
  if (!parsed.success) throw refuse(parsed.error, [...Object.keys(commonFields), STREAM], raw);
  return fromBody('generate', parsed.data, {});
}

export function inputImage(bytes: Buffer, field: string, filename: string): InputImage {
  if (bytes.length === 0) throw invalidField(field, 'is empty');
  const mime = sniffImageType(bytes);
  if (!mime) {
    throw new GatewayError('unsupported_media_type', `${field}: is not a PNG, JPEG or WebP image`, {
      details: [{ field, message: 'is not a PNG, JPEG or WebP image', allowed: ['image/png', 'image/jpeg', 'image/webp'] }],
    });
  }
  return { bytes, mime, filename };
}

/**
 * Base64 as data URLs carry it (standard or URL-safe alphabet, padding, line breaks). Node's decoder
 * skips any other character, so a truncated or placeholder value (`iVBORw0KGgo...`) would decode to
 * the first bytes of a PNG and reach upstream as an image.
 */
const BASE64_BODY = /^[A-Za-z0-9+/_\-\s]*={0,2}$/;

function decodeDataUrl(value: string, field: string, maxBytes: number): InputImage {
  const comma = value.indexOf(',');
  const base64 = value.slice(comma + 1);
  // 4 base64 characters carry 3 bytes; refuse before decoding anything too large.
  if (Math.floor((base64.length * 3) / 4) > maxBytes + 3) {
    throw new GatewayError('payload_too_large', `${field}: image is larger than ${maxBytes} bytes`, {
      details: [{ field, message: `must be at most ${maxBytes} bytes` }],
    });
  }
  if (!BASE64_BODY.test(base64.trimEnd())) {
    throw invalidField(field, 'is not valid base64: a data URL carries the whole image, data:image/png;base64,<base64 of the file>');
  }
  return inputImage(Buffer.from(base64, 'base64'), field, field.replace(/\W/g, '_'));
}

/** An input image given as an http(s) URL in a JSON edit, named by its field (`image`, `image[1]`, `mask`). */
export interface ImageUrlRef {
  field: string;
  url: string;
}

function validEditJson(raw: unknown) {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw invalidField('(body)', 'must be a JSON object');
  }
  const parsed = editJsonSchema.safeParse(raw);
  if (!parsed.success) throw refuse(parsed.error, [...Object.keys(commonFields), 'mode', 'image', 'mask', STREAM], raw);
  const { image, mask, mode, ...rest } = parsed.data;
  // Named as sent: an array's items are image[i], a one-item array's too (as zod names them above).
  const listed = Array.isArray(image);
  const images = (listed ? image : [image]).map((value, i) => ({ field: listed ? `image[${i}]` : 'image', value }));
  return { rest, mode, images, listed, mask: mask === undefined ? undefined : { field: 'mask', value: mask } };
}

/** The bytes of an image not read yet (a URL to fetch, an upload on disk): a real image is never empty. */
const PENDING = Buffer.alloc(0);

/** An image the request names but whose bytes are read only once the request is admitted. */
export function pendingImage(mime: ImageMime, filename: string): InputImage {
  return { bytes: PENDING, mime, filename };
}

export function isPending(image: InputImage): boolean {
  return image.bytes.length === 0;
}

/** A JSON edit, its URL images still pending: the model, the allow-list and the limits are checked before any is fetched. */
export interface ParsedEditJson {
  request: ImageRequest;
  /** The images given as http(s) URLs, by field (`image`, `image[1]`, `mask`). */
  urls: ImageUrlRef[];
}

/** Data URLs are decoded here; URL images are left pending for `withFetched`. */
export function parseEditJson(raw: unknown, maxImageBytes: number): ParsedEditJson {
  const { rest, mode, images, listed, mask } = validEditJson(raw);
  const urls: ImageUrlRef[] = [];
  const toImage = ({ field, value }: { field: string; value: string }): InputImage => {
    if (!HTTP_URL.test(value)) return decodeDataUrl(value, field, maxImageBytes);
    urls.push({ field, url: value });
    return pendingImage('image/png', field.replace(/\W/g, '_'));
  };
  const request = fromBody('edit', rest, {
    images: images.map(toImage),
    imagesListed: listed,
    ...(mode ? { mode } : {}),
    ...(mask ? { mask: toImage(mask) } : {}),
  });
  return { request, urls };
}

/** The request with its pending images replaced by those `fetched`, by field (`image`, `image[1]`, `mask`). */
export function withFetched(request: ImageRequest, fetched: ReadonlyMap<string, InputImage>): ImageRequest {
  const pick = (image: InputImage, field: string) => (isPending(image) ? (fetched.get(field) ?? image) : image);
  return {
    ...request,
    images: request.images.map((image, i) => pick(image, imageFieldOf(request, i))),
    ...(request.mask ? { mask: pick(request.mask, 'mask') } : {}),
    ...(request.styleReferences
      ? { styleReferences: request.styleReferences.map((image, i) => pick(image, `options.${STYLE_REFERENCES_FIELD}[${i}]`)) }
      : {}),
  };
}

function parseJsonList(value: string): unknown {
  try {
    return JSON.parse(value) as unknown;
  } catch {
    throw invalidField('fallback_models', 'must be a JSON array of model ids or a comma-separated list');
  }
}

const INTEGER_FIELDS = new Set(['n', 'seed', 'resemblance', 'detail']);

/** A multipart `options` field: a JSON object as a string, with no "__proto__" key. */
function parseOptionsField(value: string): unknown {
  let prototypeKey = false;
  let parsed: unknown;
  try {
    // JSON.parse keeps "__proto__" as an own key; anything copying the object later might not.
    parsed = JSON.parse(value, (key, v: unknown) => {
      if (key === '__proto__') prototypeKey = true;
      return v;
    });
  } catch {
    throw invalidField('options', 'must be a JSON object (as a string in multipart)');
  }
  if (prototypeKey) throw invalidField('options', 'must not contain a "__proto__" key');
  return parsed;
}

/** Multipart text fields arrive as strings; turn them into the JSON body's types, then validate the same way. */
export function parseEditMultipart(
  fields: Map<string, string>,
  images: InputImage[],
  mask: InputImage | undefined,
  styleReferences: InputImage[] = [],
  /** The files came as a list (`image[]`, or `image` more than once): errors name each image[i]. */
  imagesListed = false,
): ImageRequest {
  // No prototype: a field named after one of Object.prototype's properties is just an unknown field.
  const body: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
  for (const [name, value] of fields) {
    if (INTEGER_FIELDS.has(name) && /^-?\d+$/.test(value)) body[name] = Number(value);
    else if ((name === 'async' || name === 'fallback_on_timeout') && (value === 'true' || value === 'false')) body[name] = value === 'true';
    // A JSON array (as a string) or a comma-separated list.
    else if (name === 'fallback_models') body[name] = value.trim().startsWith('[') ? parseJsonList(value) : value.split(',').map((v) => v.trim()).filter(Boolean);
    else if (name === 'options') body[name] = parseOptionsField(value);
    else body[name] = value;
  }
  const schema = z
    .strictObject({ ...commonFields, mode: editMode, prompt: text() })
    .partial()
    .required({ model: true });
  const parsed = schema.safeParse(body);
  if (!parsed.success) throw refuse(parsed.error, [...Object.keys(commonFields), 'mode', STREAM, 'image (file)', 'mask (file)', `${STYLE_REFERENCES_FIELD} (file)`], body);
  if (images.length === 0) throw invalidField('image', 'at least one image file is required');
  const { mode, ...rest } = parsed.data;
  if (styleReferences.length > 0 && rest.options && Object.hasOwn(rest.options, STYLE_REFERENCES_FIELD)) {
    throw invalidField(`options.${STYLE_REFERENCES_FIELD}`, `give style reference images either as files named ${STYLE_REFERENCES_FIELD} or in options, not both`);
  }
  const request = fromBody('edit', rest, { images, imagesListed, ...(mode ? { mode } : {}), ...(mask ? { mask } : {}) });
  return styleReferences.length > 0 ? { ...request, styleReferences } : request;
}

/** The most style reference images a request may name before its model is known; the model's own limit is checked later. */
const MAX_STYLE_REFERENCES = 16;

/**
 * A JSON request's `options.style_reference_images` taken off its options into `styleReferences`:
 * data URLs are decoded here, URLs are left pending (named `options.style_reference_images[i]`)
 * for `withFetched`, which fetches them under the egress policy once the request is admitted.
 */
export function takeStyleReferences(request: ImageRequest, maxImageBytes: number): { request: ImageRequest; urls: ImageUrlRef[] } {
  if (!Object.hasOwn(request.options, STYLE_REFERENCES_FIELD)) return { request, urls: [] };
  const field = `options.${STYLE_REFERENCES_FIELD}`;
  const { [STYLE_REFERENCES_FIELD]: value, ...options } = request.options;
  const parsed = z.array(imageRef).min(1).max(MAX_STYLE_REFERENCES).safeParse(value);
  if (!parsed.success) {
    // The model's own limit (ideogram-v3: 10) is checked once the model is known; naming 16 here would mislead.
    throw invalidField(
      field,
      'must be an array of at least one image, each a data URL (data:image/png;base64,...) or an http(s) URL; the model\'s input_schema style_references.max says how many it takes',
    );
  }
  const urls: ImageUrlRef[] = [];
  const styleReferences = parsed.data.map((ref, i) => {
    const name = `${field}[${i}]`;
    if (!HTTP_URL.test(ref)) return decodeDataUrl(ref, name, maxImageBytes);
    urls.push({ field: name, url: ref });
    return pendingImage('image/png', `style-reference-${i + 1}`);
  });
  return { request: { ...request, options, styleReferences }, urls };
}

// ---------------------------------------------------------------- upscale and describe

/**
 * POST /v1/upscale: one image, an optional prompt, and the fields the upscale model declares
 * (resemblance, detail, n, seed, options). Ranges are the catalogue's rules, checked by the
 * pipeline; here only the types. No fallbacks: one model upscales.
 */
const upscaleFields = {
  model: commonFields.model,
  prompt: commonFields.prompt,
  n: commonFields.n,
  seed: commonFields.seed,
  // Judged by the model's own rules alone (intRange 1-100 for ideogram-upscale), which name the range.
  resemblance: z.unknown(),
  detail: z.unknown(),
  response_format: commonFields.response_format,
  options: commonFields.options,
  async: commonFields.async,
  callback_url: commonFields.callback_url,
};
const upscaleSchema = z.strictObject(upscaleFields).partial().required({ model: true });
type UpscaleBody = z.infer<typeof upscaleSchema>;

function upscaleRequest(body: UpscaleBody, image: InputImage): ImageRequest {
  return fromBody('upscale', body, { images: [image] });
}

/** Upscale and describe take one image: a list says so, as a multipart request with two files does, not "expected string". */
function refuseImageList(body: object): void {
  const image: unknown = (body as Record<string, unknown>).image;
  if (Array.isArray(image)) throw invalidField('image', `takes one image (a data URL or an http(s) URL), not a list; got ${image.length}`);
}

/** A JSON upscale: `image` a data URL (decoded here) or an http(s) URL (left pending for `withFetched`). */
export function parseUpscaleJson(raw: unknown, maxImageBytes: number): ParsedEditJson {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalidField('(body)', 'must be a JSON object');
  refuseImageList(raw);
  const schema = upscaleSchema.extend({ image: imageRef }).required({ image: true });
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw refuse(parsed.error, [...Object.keys(upscaleFields), 'image', STREAM], raw);
  const { image, ...rest } = parsed.data;
  const urls: ImageUrlRef[] = [];
  let input: InputImage;
  if (HTTP_URL.test(image)) {
    urls.push({ field: 'image', url: image });
    input = pendingImage('image/png', 'image');
  } else input = decodeDataUrl(image, 'image', maxImageBytes);
  return { request: upscaleRequest(rest, input), urls };
}

/** Multipart text fields in the JSON body's types; files were read by readEditParts. */
function multipartBody(fields: Map<string, string>): Record<string, unknown> {
  const body: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
  for (const [name, value] of fields) {
    if (INTEGER_FIELDS.has(name) && /^-?\d+$/.test(value)) body[name] = Number(value);
    else if (name === 'async' && (value === 'true' || value === 'false')) body[name] = value === 'true';
    else if (name === 'options') body[name] = parseOptionsField(value);
    else body[name] = value;
  }
  return body;
}

/** The one image an upscale or describe takes, from a multipart body's files (read with `oneImage`: no mask). */
function oneImage(images: InputImage[]): InputImage {
  if (images.length === 0) throw invalidField('image', 'one image file is required');
  if (images.length > 1) throw invalidField('image', `takes one image; got ${images.length}`);
  return images[0]!;
}

export function parseUpscaleMultipart(fields: Map<string, string>, images: InputImage[]): ImageRequest {
  const body = multipartBody(fields);
  const parsed = upscaleSchema.safeParse(body);
  if (!parsed.success) throw refuse(parsed.error, [...Object.keys(upscaleFields), STREAM, 'image (file)'], body);
  return upscaleRequest(parsed.data, oneImage(images));
}

/** POST /v1/describe after parsing: the model, its options, one image. */
export interface DescribeRequest {
  model: string;
  options: Record<string, unknown>;
  image: InputImage;
}

const describeFields = { model: commonFields.model, options: commonFields.options };
const describeSchema = z.strictObject(describeFields).partial().required({ model: true });

/** A JSON describe: `image` a data URL (decoded here) or an http(s) URL (to fetch once admitted). */
export function parseDescribeJson(raw: unknown, maxImageBytes: number): { request: DescribeRequest; url?: string } {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalidField('(body)', 'must be a JSON object');
  refuseImageList(raw);
  const parsed = describeSchema.extend({ image: imageRef }).required({ image: true }).safeParse(raw);
  if (!parsed.success) throw refuse(parsed.error, [...Object.keys(describeFields), 'image'], raw);
  const { image, model, options } = parsed.data;
  const base = { model, options: options ?? {} };
  if (HTTP_URL.test(image)) return { request: { ...base, image: pendingImage('image/png', 'image') }, url: image };
  return { request: { ...base, image: decodeDataUrl(image, 'image', maxImageBytes) } };
}

export function parseDescribeMultipart(fields: Map<string, string>, images: InputImage[]): DescribeRequest {
  const body = multipartBody(fields);
  const parsed = describeSchema.safeParse(body);
  if (!parsed.success) throw refuse(parsed.error, [...Object.keys(describeFields), 'image (file)'], body);
  return { model: parsed.data.model, options: parsed.data.options ?? {}, image: oneImage(images) };
}
