import type { ParamRule } from './param-rule.js';

/** The fields of /v1/generate, /v1/edit and /v1/upscale that mean the same thing for every model. */
export const NORMALIZED_PARAMS = [
  'n',
  'size',
  'aspect_ratio',
  'quality',
  'seed',
  'negative_prompt',
  'style',
  'output_format',
  'background',
  // Upscale's (Ideogram): how closely the result keeps the source, and how much detail it adds.
  'resemblance',
  'detail',
] as const;
export type NormalizedParam = (typeof NORMALIZED_PARAMS)[number];

export type Operation = 'generate' | 'edit' | 'upscale' | 'describe';
/** The operations that make images, through the generation pipeline (describe answers text). */
export type ImageOperation = Exclude<Operation, 'describe'>;
export type EditMode = 'edit' | 'remix' | 'replace_background' | 'reframe';
export const EDIT_MODES: readonly EditMode[] = ['edit', 'remix', 'replace_background', 'reframe'];

/**
 * How a request is written to upstream:
 * - predictions: JSON `{"input":{...}}` to /v1/models/<vendor>/<model>/predictions, Bearer
 * - openai-json: OpenAI Images JSON at the top level, Bearer
 * - openai-multipart: OpenAI Images multipart (edits), Bearer
 * - ideogram-multipart / ideogram-json: Ideogram native (the route's `auth` names its key header)
 */
export type UpstreamFamily = 'predictions' | 'openai-json' | 'openai-multipart' | 'ideogram-multipart' | 'ideogram-json';

/** Where a normalized or option value goes upstream: a dotted path, and how it is written. */
export interface FieldMapping {
  rule: ParamRule;
  /**
   * Dotted path relative to the body root (predictions: relative to `input`). Defaults to the field's own name.
   * Several paths: `write` splits the value into as many parts, written in order (a size as `width` and `height`).
   */
  to?: string | readonly string[];
  write?: (value: unknown) => unknown;
  /** The route cannot be called without it (Ideogram's reframe `resolution`). */
  required?: boolean;
}

export interface ImageInput {
  /** Upstream field for the image(s): a file field name for multipart, a dotted path for JSON. */
  to: string;
  /** file: multipart file; data-url: `data:image/png;base64,...`; base64: bare base64. */
  encoding: 'file' | 'data-url' | 'base64';
  max: number;
  /** The largest one image may be, in bytes (the vendor's per-image limit); absent: MAX_UPLOAD_BYTES alone. */
  maxBytes?: number;
  /**
   * JSON: write one image as a string (`single`), always an array (`array`), or each image in its own
   * field (`numbered`: the first at `to`, the k-th at `to_k`, Black Forest Labs' `input_image`, `input_image_2`, ...).
   * Multipart with several files: `repeatedFileField` is the repeated field name.
   */
  shape?: 'single' | 'array' | 'numbered';
  repeatedFileField?: string;
}

/**
 * Style reference images (Ideogram 3.0): files upstream, taken as `style_reference_images` files in
 * a multipart edit or as `options.style_reference_images` (data URLs or URLs) in JSON.
 */
export interface StyleReferenceInput {
  /** The upstream file field, repeated once per image. */
  to: string;
  max: number;
  /** The largest one image may be (the vendor's per-image limit). */
  maxBytes: number;
  /** The most all the request's images together may be, style references included (the vendor's request limit). */
  maxTotalBytes?: number;
}

/** The model recorded (usage, metrics) for a request naming no model of the catalogue: no model may take this name. */
export const UNKNOWN_MODEL = 'unknown';

/** The option under which a JSON request gives its style reference images, and the multipart file field. */
export const STYLE_REFERENCES_FIELD = 'style_reference_images';

export interface MaskInput {
  to: string;
  /** Which pixels mean "change here" upstream; the gateway takes OpenAI's (transparent). */
  convention: 'transparent' | 'black';
  required: boolean;
}

/**
 * What a model costs: per image (`byOption` picks the price from an option's value, Ideogram's
 * rendering speed), or per million upstream tokens (gpt-image), known only once the reply reports its usage.
 * A token price may say how many output tokens one image takes by quality (`outputTokensPerImage`),
 * so that a budget can reserve the most a request may cost before the call.
 */
export type Price =
  | { perImageUsd: number }
  | { byOption: string; defaultValue: string; perImageUsd: Record<string, number> }
  | { perMillionTokensUsd: TokenPrices; outputTokensPerImage?: OutputTokensPerImage };

/** Output tokens one image takes, by the request's `quality` (the route's largest size). */
export type OutputTokensPerImage = Record<string, number>;

export interface TokenPrices {
  textInput: number;
  imageInput: number;
  imageOutput: number;
}

/** With every `when` value given, `field` (when given) must be one of `oneOf`; `reason` says why in the 400. */
export interface ParamConstraint {
  when: Partial<Record<NormalizedParam, string | number | boolean>>;
  field: NormalizedParam;
  oneOf: Array<string | number | boolean>;
  reason: string;
}

export interface UpstreamRoute {
  family: UpstreamFamily;
  path: string;
  /** The header the upstream key travels in: `Authorization: Bearer` or Ideogram's `Api-Key`. */
  auth: 'bearer' | 'api-key';
  /** The reply is a task to poll, at `taskPollPath` with `{task_id}` replaced. */
  async?: boolean;
  taskPollPath?: string;
  /** Absent: the route takes no prompt (Ideogram's reframe); a request with one is refused. */
  prompt?: { to: string; maxLength: number };
  params: Partial<Record<NormalizedParam, FieldMapping>>;
  /** Normalized fields the route refuses with a reason of its own (Ideogram 3.0's edit keeps the image's shape). */
  refused?: Partial<Record<NormalizedParam, string>>;
  /** Values of one field that other fields' values rule out, checked before upstream. */
  constraints?: ParamConstraint[];
  /** Model-specific upstream parameters accepted in `options`, by their upstream names. */
  options: Record<string, FieldMapping>;
  /** Values always sent (the model name for OpenAI-compatible calls, for example). */
  fixed?: Record<string, unknown>;
  images?: ImageInput;
  mask?: MaskInput;
  styleReferences?: StyleReferenceInput;
  price?: Price;
}

/**
 * How a describe request is written upstream: one image file and the route's options, nothing else.
 * No price: the upstream documents publish none for describe, so its cost is unknown (null), never 0.
 */
export interface DescribeRoute {
  family: 'ideogram-multipart';
  path: string;
  auth: 'bearer' | 'api-key';
  options: Record<string, FieldMapping>;
  images: ImageInput;
}

export interface ModelSpec {
  id: string;
  aliases: string[];
  /** A sentence for GET /v1/models and the docs. */
  description: string;
  generate?: UpstreamRoute;
  edit?: Partial<Record<EditMode, UpstreamRoute>>;
  /** One image made larger (POST /v1/upscale); the prompt is optional. */
  upscale?: UpstreamRoute;
  /** One image in, text descriptions out (POST /v1/describe): nothing is made or stored. */
  describe?: DescribeRoute;
  /** The edit mode used without a mask when the caller names none (the model's image-to-image). */
  imageToImageMode?: EditMode;
  /** Retired by the operator (CATALOGUE_FILE): requests get 410 model_retired naming the replacement. */
  retired?: { replacement: string };
  /** The models to fall back to, in order, when upstream cannot serve this one (CATALOGUE_FILE). */
  fallbacks?: string[];
}
