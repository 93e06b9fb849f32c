/**
 * What a parameter may be, as data: a rule checks a value and can describe what it allows,
 * so the same declaration drives validation, error messages, GET /v1/models and the docs.
 */
export interface ParamRule {
  /** Human-readable description of what is allowed, used in 400s and the docs. */
  readonly allowed: string;
  /** Values that can be listed (enums, presets); absent for open ranges. */
  readonly values?: readonly (string | number | boolean)[];
  /** Bounds of a numeric rule. */
  readonly range?: { min: number; max: number };
  /**
   * What kind of value it is, for forms built from GET /v1/models (the console's playground):
   * absent for rules that take a structured value (written as JSON).
   */
  readonly kind?: 'enum' | 'integer' | 'number' | 'boolean' | 'text' | 'size' | 'ratio';
  /** The longest string a text rule takes. */
  readonly maxLength?: number;
  /** undefined when the value is acceptable, otherwise why not. */
  check(value: unknown): string | undefined;
}

export function oneOf<T extends string | number | boolean>(values: readonly T[]): ParamRule {
  return {
    allowed: `one of ${values.map((v) => JSON.stringify(v)).join(', ')}`,
    kind: 'enum',
    values,
    check: (v) => ((values as readonly unknown[]).includes(v) ? undefined : `must be one of ${values.map((x) => JSON.stringify(x)).join(', ')}`),
  };
}

export function intRange(min: number, max: number): ParamRule {
  const allowed = min === max ? `the integer ${min}` : `an integer from ${min} to ${max}`;
  return {
    allowed,
    kind: 'integer',
    range: { min, max },
    check: (v) => (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max ? undefined : `must be ${allowed}`),
  };
}

export function numberRange(min: number, max: number): ParamRule {
  const allowed = `a number from ${min} to ${max}`;
  return {
    allowed,
    kind: 'number',
    range: { min, max },
    check: (v) => (typeof v === 'number' && Number.isFinite(v) && v >= min && v <= max ? undefined : `must be ${allowed}`),
  };
}

export const bool: ParamRule = {
  allowed: 'true or false',
  kind: 'boolean',
  check: (v) => (typeof v === 'boolean' ? undefined : 'must be true or false'),
};

export function text(maxLength: number): ParamRule {
  const allowed = `a string of at most ${maxLength} characters`;
  return {
    allowed,
    kind: 'text',
    maxLength,
    check: (v) => (typeof v === 'string' && v.length <= maxLength ? undefined : `must be ${allowed}`),
  };
}

export function arrayOf(description: string, minItems: number, maxItems: number): ParamRule {
  const allowed = `${description} (${minItems} to ${maxItems} items)`;
  return {
    allowed,
    check: (v) => (Array.isArray(v) && v.length >= minItems && v.length <= maxItems ? undefined : `must be ${allowed}`),
  };
}

export interface Dimensions {
  width: number;
  height: number;
}

export function parseDimensions(value: string): Dimensions | undefined {
  const m = /^(\d{2,5})x(\d{2,5})$/.exec(value);
  if (!m) return undefined;
  return { width: Number(m[1]), height: Number(m[2]) };
}

export interface PixelSizeLimits {
  /** Each side at least / at most. */
  minSide: number;
  maxSide: number;
  multipleOf?: number;
  maxPixels?: number;
  /** Long side over short side, at most. */
  maxRatio?: number;
  /** Named sizes the model also takes ("auto", "1K", ...). */
  presets?: readonly string[];
}

/** Sizes written WIDTHxHEIGHT within limits, plus named presets. */
export function pixelSize(limits: PixelSizeLimits): ParamRule {
  const parts = [`WIDTHxHEIGHT with each side ${limits.minSide}..${limits.maxSide}`];
  if (limits.multipleOf) parts.push(`multiples of ${limits.multipleOf}`);
  if (limits.maxPixels) parts.push(`at most ${limits.maxPixels} pixels`);
  if (limits.maxRatio) parts.push(`aspect ratio within 1:${limits.maxRatio}..${limits.maxRatio}:1`);
  const presets = limits.presets ?? [];
  const allowed = (presets.length ? `${presets.map((p) => JSON.stringify(p)).join(', ')} or ` : '') + parts.join(', ');
  return {
    allowed,
    kind: 'size',
    ...(presets.length ? { values: presets } : {}),
    check(v) {
      if (typeof v !== 'string') return `must be ${allowed}`;
      if (presets.includes(v)) return undefined;
      const d = parseDimensions(v);
      if (!d) return `must be ${allowed}`;
      const { width, height } = d;
      const ok =
        width >= limits.minSide &&
        width <= limits.maxSide &&
        height >= limits.minSide &&
        height <= limits.maxSide &&
        (!limits.multipleOf || (width % limits.multipleOf === 0 && height % limits.multipleOf === 0)) &&
        (!limits.maxPixels || width * height <= limits.maxPixels) &&
        (!limits.maxRatio || Math.max(width, height) / Math.min(width, height) <= limits.maxRatio);
      return ok ? undefined : `must be ${allowed}`;
    },
  };
}

/** Aspect ratios written W:H whose value lies within [1:maxRatio .. maxRatio:1] given as W/H bounds. */
export function ratioRange(minWOverH: number, maxWOverH: number, describe: string): ParamRule {
  const allowed = `W:H with whole numbers, ${describe}`;
  return {
    allowed,
    kind: 'ratio',
    check(v) {
      if (typeof v !== 'string') return `must be ${allowed}`;
      const m = /^(\d{1,3}):(\d{1,3})$/.exec(v);
      if (!m) return `must be ${allowed}`;
      const w = Number(m[1]);
      const h = Number(m[2]);
      if (w === 0 || h === 0) return `must be ${allowed}`;
      const r = w / h;
      return r >= minWOverH - 1e-9 && r <= maxWOverH + 1e-9 ? undefined : `must be ${allowed}`;
    },
  };
}
