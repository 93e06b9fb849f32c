/**
 * Parameter rules as data: each descriptor in the catalogue file (`{ intRange: { min: 1, max: 4 } }`)
 * names one rule builder of param-rule.ts and its arguments, checked by a zod schema.
 */
import { z } from 'zod';
import { arrayOf, bool, intRange, numberRange, oneOf, pixelSize, ratioRange, text, type ParamRule } from './param-rule.js';

const scalar = z.union([z.string(), z.number(), z.boolean()]);
const int = z.number().int();
const minMax = (n: z.ZodNumber) =>
  z.strictObject({ min: n, max: n }).refine((r) => r.min <= r.max, { message: 'min must not exceed max' });
const ratio = z
  .string()
  .regex(/^\d{1,3}:\d{1,3}$/, 'must be a ratio W:H')
  .refine((r) => r.split(':').every((side) => Number(side) > 0), 'must have no zero side');
const ratioValue = (r: string) => {
  const [w, h] = r.split(':').map(Number);
  return w! / h!;
};

/** A descriptor: an object with exactly one key, a descriptor name, whose value are its arguments. */
export type ParamDescriptor = Record<string, unknown>;
export type DescriptorName = 'oneOf' | 'intRange' | 'numberRange' | 'bool' | 'text' | 'arrayOf' | 'pixelSize' | 'ratioRange' | 'object';

interface Descriptor {
  args: z.ZodType;
  build: (args: never) => ParamRule;
}

/** Each descriptor: the schema of its arguments, and how the rule is built from them. */
const DESCRIPTORS: Record<DescriptorName, Descriptor> = {
  oneOf: { args: z.array(scalar).min(1), build: (values: (string | number | boolean)[]) => oneOf(values) },
  intRange: { args: minMax(int), build: (a: { min: number; max: number }) => intRange(a.min, a.max) },
  numberRange: { args: minMax(z.number()), build: (a: { min: number; max: number }) => numberRange(a.min, a.max) },
  bool: { args: z.literal(true), build: () => bool },
  text: { args: z.strictObject({ maxLength: int.positive() }), build: (a: { maxLength: number }) => text(a.maxLength) },
  arrayOf: {
    args: z.strictObject({ description: z.string().min(1), minItems: int.nonnegative(), maxItems: int.positive() }),
    build: (a: { description: string; minItems: number; maxItems: number }) => arrayOf(a.description, a.minItems, a.maxItems),
  },
  pixelSize: {
    args: z.strictObject({
      minSide: int.positive(),
      maxSide: int.positive(),
      multipleOf: int.positive().optional(),
      maxPixels: int.positive().optional(),
      maxRatio: z.number().positive().optional(),
      presets: z.array(z.string()).optional(),
    }),
    build: (a: Parameters<typeof pixelSize>[0]) => pixelSize(a),
  },
  ratioRange: {
    args: z.strictObject({ min: ratio, max: ratio, describe: z.string().optional() }),
    build: (a: { min: string; max: string; describe?: string | undefined }) =>
      ratioRange(ratioValue(a.min), ratioValue(a.max), a.describe ?? `from ${a.min} to ${a.max}`),
  },
  /** An object whose listed keys are optional, each with its own rule; no other key. */
  object: {
    args: z.lazy((): z.ZodType => z.record(z.string(), paramDescriptorSchema)),
    build: (fields: Record<string, ParamDescriptor>) => objectRule(fields),
  },
};

export const DESCRIPTOR_NAMES = Object.keys(DESCRIPTORS) as DescriptorName[];

export const paramDescriptorSchema: z.ZodType<ParamDescriptor> = z.record(z.string(), z.unknown()).superRefine((value, ctx) => {
  const keys = Object.keys(value);
  if (keys.length !== 1) {
    ctx.addIssue({ code: 'custom', message: `a rule names exactly one descriptor (${DESCRIPTOR_NAMES.join(', ')}); got ${keys.length ? keys.join(', ') : 'none'}` });
    return;
  }
  const name = keys[0]!;
  if (!Object.hasOwn(DESCRIPTORS, name)) {
    ctx.addIssue({ code: 'custom', message: `unknown descriptor "${name}"; known: ${DESCRIPTOR_NAMES.join(', ')}`, path: [name] });
    return;
  }
  const parsed = DESCRIPTORS[name as DescriptorName].args.safeParse(value[name]);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) ctx.addIssue({ code: 'custom', message: issue.message, path: [name, ...issue.path] as PropertyKey[] });
  }
}) as z.ZodType<ParamDescriptor>;

function objectRule(fields: Record<string, ParamDescriptor>): ParamRule {
  const rules = Object.entries(fields).map(([key, d]) => [key, ruleFromDescriptor(d)] as const);
  const allowed = `an object {${rules.map(([key, rule]) => `${JSON.stringify(key)}: ${rule.allowed}`).join(', ')}}`;
  return {
    allowed,
    check(v) {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return `must be ${allowed}`;
      const record = v as Record<string, unknown>;
      const ok =
        Object.keys(record).every((k) => Object.hasOwn(fields, k)) &&
        rules.every(([key, rule]) => record[key] == null || rule.check(record[key]) === undefined);
      return ok ? undefined : `must be ${allowed}`;
    },
  };
}

/** The rule a (validated) descriptor declares. */
export function ruleFromDescriptor(descriptor: ParamDescriptor): ParamRule {
  const [name, args] = Object.entries(descriptor)[0] as [DescriptorName, unknown];
  const entry = DESCRIPTORS[name];
  return entry.build(entry.args.parse(args) as never);
}
