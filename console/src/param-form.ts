/**
 * The playground's form, generated from a model's entry in GET /v1/models (its `input_schema`):
 * every field the catalogue declares becomes a control of the right kind, so a new catalogue entry
 * needs no console change. Pure: no DOM here (param-form-view.ts renders the descriptors), so it
 * runs in Node's tests.
 */
import { formatUsd } from './format.js';

export type FieldType = 'enum' | 'integer' | 'number' | 'boolean' | 'text' | 'size' | 'ratio' | 'json';
export type Scalar = string | number | boolean;

/** A field as GET /v1/models describes it. */
export interface FieldSchema {
  type: FieldType;
  allowed: string;
  values?: readonly Scalar[];
  minimum?: number;
  maximum?: number;
  max_length?: number;
  /** The request cannot be made without it (Ideogram's reframe needs a size). */
  required?: boolean;
}

export interface OperationSchema {
  prompt: { max_length: number };
  parameters: Record<string, FieldSchema>;
  options: Record<string, FieldSchema>;
  /** Edits: how many images the mode takes, and whether it takes a mask. */
  images?: { max: number };
  mask?: { required: boolean } | null;
}

export type Operation = 'generate' | 'edit';

/** A model as GET /v1/models lists it (the fields the playground reads). */
export interface ModelInfo {
  id: string;
  description?: string;
  operations: Operation[];
  edit_modes?: string[];
  max_n?: number;
  async?: boolean;
  price_per_image_usd?: number | null;
  /** A price per image that an option's value picks (Ideogram's rendering_speed). */
  price_by_option?: { option: string; default: string; per_image_usd: Record<string, number> };
  input_schema?: { generate?: OperationSchema; edit?: Record<string, OperationSchema> };
}

/** What the view draws for one field. */
export type Control = 'select' | 'combo' | 'number' | 'text' | 'textarea' | 'json';

export interface FieldDescriptor {
  /** Unique in the form: the parameter's name, or `options.<name>` for a model option. */
  key: string;
  name: string;
  group: 'parameters' | 'options';
  label: string;
  control: Control;
  /** How the entered text becomes the request's value. */
  valueType: 'string' | 'integer' | 'number' | 'boolean' | 'json';
  /** select: the choices (an empty choice, the model's default, comes first); combo: suggestions. */
  choices?: string[];
  min?: number;
  max?: number;
  step?: number | 'any';
  maxLength?: number;
  placeholder?: string;
  /** What the field allows, in words (shown under it, and in errors). */
  help: string;
  /** The model's default will not do: a value must be given (a select then starts at "Choose a …"). */
  required?: boolean;
}

const LABELS: Record<string, string> = {
  n: 'Number of images',
  aspect_ratio: 'Aspect ratio',
  negative_prompt: 'Negative prompt',
  output_format: 'Output format',
};

/** The order parameters are shown in; any other comes after, in the catalogue's order. */
const PARAMETER_ORDER = ['size', 'aspect_ratio', 'n', 'quality', 'style', 'seed', 'negative_prompt', 'output_format', 'background'];

/** `rendering_speed` → "Rendering speed". */
export function labelFor(name: string): string {
  if (Object.hasOwn(LABELS, name)) return LABELS[name]!;
  const words = name.replace(/[_-]+/g, ' ').trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** A required select's first, empty choice: "Choose a size…", "Choose an aspect ratio…". */
export function placeholderFor(field: FieldDescriptor): string {
  const what = field.label.toLowerCase();
  return `Choose ${/^[aeiou]/.test(what) ? 'an' : 'a'} ${what}…`;
}

/** The choices of a select, its empty first one (the default, or "Choose a …") left out. */
export function optionCount(field: FieldDescriptor): number {
  return (field.choices ?? []).filter((c) => c !== '').length;
}

/** What is shown under a field: what it allows; for a required one, that it is, and for a select how many options it has. */
export function hintFor(field: FieldDescriptor): string {
  if (!field.required) return field.help;
  return field.control === 'select' ? `Required: choose one of the ${optionCount(field)} options.` : `Required: ${field.help}`;
}

/** The modes a model's edits take, the one shown first first ("edit" where it exists: the mask editor's mode). */
export function editModes(model: ModelInfo): string[] {
  const modes = model.edit_modes ?? Object.keys(model.input_schema?.edit ?? {});
  return modes.includes('edit') ? ['edit', ...modes.filter((m) => m !== 'edit')] : [...modes];
}

/** The schema of one operation (and edit mode) of a model; undefined when the model does not offer it. */
export function operationSchema(model: ModelInfo, operation: Operation, mode?: string): OperationSchema | undefined {
  if (!model.operations.includes(operation)) return undefined;
  const schema = model.input_schema;
  if (operation === 'generate') return schema?.generate ?? { prompt: { max_length: 10000 }, parameters: {}, options: {} };
  const chosen = mode ?? editModes(model)[0];
  const edit = schema?.edit ?? {};
  if (chosen !== undefined && Object.hasOwn(edit, chosen)) return edit[chosen];
  // A gateway without input_schema: an edit of one image, no mask, no fields.
  return schema ? undefined : { prompt: { max_length: 10000 }, parameters: {}, options: {}, images: { max: 1 }, mask: null };
}

function describe(name: string, group: FieldDescriptor['group'], schema: FieldSchema): FieldDescriptor {
  const key = group === 'options' ? `options.${name}` : name;
  const base = { key, name, group, label: labelFor(name), help: schema.allowed, ...(schema.required ? { required: true } : {}) };
  const range = {
    ...(schema.minimum !== undefined ? { min: schema.minimum } : {}),
    ...(schema.maximum !== undefined ? { max: schema.maximum } : {}),
  };
  switch (schema.type) {
    case 'enum': {
      const values = schema.values ?? [];
      const valueType = values.every((v) => typeof v === 'number') ? (values.every((v) => Number.isInteger(v)) ? 'integer' : 'number') : values.every((v) => typeof v === 'boolean') ? 'boolean' : 'string';
      return { ...base, control: 'select', valueType, choices: ['', ...values.map(String)] };
    }
    case 'boolean':
      return { ...base, control: 'select', valueType: 'boolean', choices: ['', 'true', 'false'] };
    case 'integer':
      return { ...base, control: 'number', valueType: 'integer', step: 1, ...range };
    case 'number':
      return { ...base, control: 'number', valueType: 'number', step: 'any', ...range };
    case 'text': {
      const maxLength = schema.max_length !== undefined ? { maxLength: schema.max_length } : {};
      return { ...base, control: name === 'negative_prompt' || (schema.max_length ?? 0) > 200 ? 'textarea' : 'text', valueType: 'string', ...maxLength };
    }
    case 'size': {
      const presets = (schema.values ?? []).map(String);
      return { ...base, control: presets.length > 0 ? 'combo' : 'text', valueType: 'string', placeholder: 'e.g. 1024x1024', ...(presets.length > 0 ? { choices: presets } : {}) };
    }
    case 'ratio':
      return { ...base, control: 'text', valueType: 'string', placeholder: 'W:H, e.g. 16:9' };
    default:
      // A structured value (or a type this console does not know yet): JSON, checked by the gateway.
      return { ...base, control: 'json', valueType: 'json', placeholder: 'JSON' };
  }
}

/** The form's fields for a model's operation (and edit mode): its parameters, then its options. */
export function formFields(model: ModelInfo, operation: Operation, mode?: string): FieldDescriptor[] {
  const schema = operationSchema(model, operation, mode);
  if (!schema) return [];
  const rank = (name: string) => {
    const i = PARAMETER_ORDER.indexOf(name);
    return i === -1 ? PARAMETER_ORDER.length : i;
  };
  const parameters = Object.keys(schema.parameters).sort((a, b) => rank(a) - rank(b));
  return [
    ...parameters.map((name) => describe(name, 'parameters', schema.parameters[name]!)),
    ...Object.entries(schema.options).map(([name, s]) => describe(name, 'options', s)),
  ];
}

export interface FormValues {
  parameters: Record<string, unknown>;
  options: Record<string, unknown>;
  /** Fields whose text is not a value they take, each named with what it allows. */
  errors: Array<{ key: string; message: string }>;
}

/** The request's values from the form's texts (by field key); an empty text leaves the model's default. */
export function readValues(fields: readonly FieldDescriptor[], raw: Readonly<Record<string, string>>): FormValues {
  const out: FormValues = { parameters: {}, options: {}, errors: [] };
  for (const field of fields) {
    const text = (Object.hasOwn(raw, field.key) ? raw[field.key]! : '').trim();
    const fail = (message: string) => out.errors.push({ key: field.key, message: `${field.label} ${message}` });
    if (text === '') {
      // Left empty, a field takes the model's default; a required one has none.
      if (field.required) fail(field.control === 'select' ? `is required: choose one of the ${optionCount(field)} options.` : `is required: ${field.help}`);
      continue;
    }
    let value: unknown;
    switch (field.valueType) {
      case 'integer':
      case 'number': {
        const n = Number(text);
        const whole = field.valueType === 'integer';
        if (!Number.isFinite(n) || (whole && !Number.isInteger(n))) {
          fail(`must be ${whole ? 'a whole number' : 'a number'} (${field.help})`);
          continue;
        }
        if ((field.min !== undefined && n < field.min) || (field.max !== undefined && n > field.max)) {
          fail(`must be ${field.help}`);
          continue;
        }
        value = n;
        break;
      }
      case 'boolean':
        if (text !== 'true' && text !== 'false') {
          fail('must be true or false');
          continue;
        }
        value = text === 'true';
        break;
      case 'json':
        try {
          value = JSON.parse(text);
        } catch {
          fail(`must be JSON: ${field.help}`);
          continue;
        }
        break;
      default:
        if (field.maxLength !== undefined && text.length > field.maxLength) {
          fail(`must be at most ${field.maxLength} characters`);
          continue;
        }
        if (field.control === 'select' && field.choices && !field.choices.includes(text)) {
          fail(`must be ${field.help}`);
          continue;
        }
        value = text;
    }
    if (field.group === 'options') out.options[field.name] = value;
    else out.parameters[field.name] = value;
  }
  return out;
}

/**
 * The texts worth keeping when the form changes model, operation or mode: a value stays only where
 * the new form has the field and takes the value. The console can judge a choice, a number's range,
 * a text's length; a value it cannot judge (a free size, a ratio, JSON) stays only when the field's
 * rule is unchanged. Anything else is cleared, so a value the old model took (n=5) is never sent
 * to, nor refused by, a model that takes less.
 */
export function carryOver(previous: readonly FieldDescriptor[], next: readonly FieldDescriptor[], raw: Readonly<Record<string, string>>): Record<string, string> {
  const kept: Record<string, string> = {};
  for (const field of next) {
    const text = Object.hasOwn(raw, field.key) ? raw[field.key]! : '';
    if (text.trim() === '' || readValues([field], { [field.key]: text }).errors.length > 0) continue;
    const before = previous.find((f) => f.key === field.key);
    const sameRule = before !== undefined && before.help === field.help && before.valueType === field.valueType;
    if (sameRule || judgedInFull(field, text)) kept[field.key] = text;
  }
  return kept;
}

/** Whether readValues' verdict on `text` is the whole rule (a size, ratio or JSON value is judged by the gateway). */
function judgedInFull(field: FieldDescriptor, text: string): boolean {
  switch (field.control) {
    case 'select':
    case 'combo':
      return (field.choices ?? []).includes(text.trim());
    case 'number':
      return field.min !== undefined && field.max !== undefined;
    case 'text':
    case 'textarea':
      return field.valueType === 'string' && field.maxLength !== undefined;
    default:
      return false;
  }
}

/**
 * The form's texts for a request's parameters (a gallery image's, or a result's "Reuse settings"):
 * `parameters` holds the normalized fields and, in `options`, the model's options.
 */
export function rawFromParameters(fields: readonly FieldDescriptor[], parameters: Readonly<Record<string, unknown>> | null | undefined): Record<string, string> {
  const raw: Record<string, string> = {};
  if (!parameters) return raw;
  const options = typeof parameters.options === 'object' && parameters.options !== null ? (parameters.options as Record<string, unknown>) : {};
  for (const field of fields) {
    const source = field.group === 'options' ? options : parameters;
    if (!Object.hasOwn(source, field.name)) continue;
    const value = source[field.name];
    if (value === undefined || value === null) continue;
    raw[field.key] = field.valueType === 'json' ? JSON.stringify(value) : String(value);
  }
  return raw;
}

/** The JSON body of POST /v1/generate. */
export function generateBody(model: string, prompt: string, values: Pick<FormValues, 'parameters' | 'options'>, stream = true): Record<string, unknown> {
  return {
    model,
    prompt,
    ...values.parameters,
    ...(Object.keys(values.options).length > 0 ? { options: values.options } : {}),
    ...(stream ? { stream: true } : {}),
  };
}

/**
 * The text fields of a multipart POST /v1/edit (the images and mask are added as files): numbers
 * and booleans as their text, `options` as a JSON string, as the gateway reads multipart.
 */
export function editFields(model: string, prompt: string, values: Pick<FormValues, 'parameters' | 'options'>, mode?: string, stream = true): Array<[string, string]> {
  const fields: Array<[string, string]> = [
    ['model', model],
    ['prompt', prompt],
  ];
  if (mode) fields.push(['mode', mode]);
  for (const [name, value] of Object.entries(values.parameters)) fields.push([name, typeof value === 'string' ? value : JSON.stringify(value)]);
  if (Object.keys(values.options).length > 0) fields.push(['options', JSON.stringify(values.options)]);
  if (stream) fields.push(['stream', 'true']);
  return fields;
}

/** A request's settings, as "Reuse settings" passes them (and the gallery's images carry them). */
export interface ReuseSettings {
  model: string;
  prompt?: string | null;
  parameters?: Record<string, unknown> | null;
}

/** The settings to reuse from a request: its parameters (and options, and edit mode). */
export function settingsOf(model: string, prompt: string, values: Pick<FormValues, 'parameters' | 'options'>, mode?: string): ReuseSettings {
  return {
    model,
    prompt,
    parameters: {
      ...values.parameters,
      ...(Object.keys(values.options).length > 0 ? { options: values.options } : {}),
      ...(mode ? { mode } : {}),
    },
  };
}

/** What one image costs, for the model's hint: by option value where a value picks it. */
export function priceHint(model: Pick<ModelInfo, 'price_per_image_usd' | 'price_by_option'>): string {
  const byOption = model.price_by_option;
  if (byOption) {
    const each = Object.entries(byOption.per_image_usd).map(([value, usd]) => `${value} ${formatUsd(usd)}${value === byOption.default ? ' (default)' : ''}`);
    return `Per image by ${byOption.option}: ${each.join(', ')}.`;
  }
  return model.price_per_image_usd != null ? `${formatUsd(model.price_per_image_usd)} per image.` : '';
}
