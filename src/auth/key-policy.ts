import { z } from 'zod';

/** A client key's policy: who it belongs to and what it may do. The key itself is never part of it. */
export interface KeyPolicy {
  id: string;
  team: string;
  rpm?: number;
  images_per_day?: number;
  monthly_budget_usd?: number;
  /** Allow-list of model ids, with `*` globs; absent = all models. */
  models?: string[];
  /** GATEWAY_KEYS_FILE: the fallback chain of a request that names none (model ids or aliases). */
  fallbacks?: string[];
  admin: boolean;
}

export type KeySource = 'env' | 'file' | 'api';

/** The shortest client key accepted from configuration (minted keys are longer): short keys can be guessed. */
export const MIN_CLIENT_KEY_LENGTH = 24;

/**
 * The team of GATEWAY_ADMIN_KEY's records, reserved: no other key may take it (in any case), or it
 * would share the admin key's jobs and usage. What a key may reach is decided by its admin flag.
 */
export const ADMIN_TEAM = 'admin';

export function isReservedTeam(team: string): boolean {
  return team.toLowerCase() === ADMIN_TEAM;
}

// Every field says what it takes in its own words, whatever is wrong with it (never zod's "Invalid input: ...").
const NAME = /^[\w.-]{1,64}$/;
export const NAME_WORDS = 'a string of 1-64 letters, digits, _ . or -';
const id = z.string({ error: `must be the key's id: ${NAME_WORDS}` }).regex(NAME, `must be the key's id: ${NAME_WORDS}`);
const team = z.string({ error: `must be the team's name: ${NAME_WORDS}` }).regex(NAME, `must be the team's name: ${NAME_WORDS}`);

/** A list of `min` to `max` model names (`one`, `many`: what each is, in words), each refusal saying what it takes. */
export function modelList(one: string, many: string, max: number, min = 0) {
  const list = `must be a list of ${min > 0 ? `${min} to ` : 'at most '}${max} ${many}`;
  const item = `must be a ${one}: a string of 1-200 characters`;
  return z.array(z.string({ error: item }).min(1, item).max(200, item), { error: list }).min(min, list).max(max, list);
}

/** A number field whose every refusal (wrong type, fraction, out of range) says what it allows, never zod's "Too small: ...". */
export function boundedNumber(min: number, max: number, integer = true) {
  const allowed = `must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max}`;
  const number = z.number({ error: allowed });
  // Each check stops the ones after it: 1e300 is neither an integer nor within the range, and is told once.
  return (integer ? number.int({ error: allowed, abort: true }) : number).min(min, { error: allowed, abort: true }).max(max, allowed);
}

export const policyFields = {
  team,
  rpm: boundedNumber(1, 1_000_000).optional(),
  images_per_day: boundedNumber(0, 100_000_000).optional(),
  monthly_budget_usd: boundedNumber(0, 100_000_000, false).optional(),
  models: modelList('model id or glob (gpt-image-*)', 'model ids or globs (gpt-image-*)', 200).optional(),
  admin: z.boolean({ error: 'must be true or false' }).optional(),
};

/** POST /v1/keys */
export const mintKeySchema = z.strictObject({ id: id.optional(), ...policyFields });

/** One entry of GATEWAY_KEYS_FILE. */
export const keysFileSchema = z.strictObject({
  keys: z.array(
    z
      .strictObject({
        id,
        key: z.string().min(1).optional(), // its length is checked with the entry's team named (loadKeysFile)
        key_sha256: z
          .string()
          .regex(/^[0-9a-f]{64}$/i, 'must be the hex sha256 of the key')
          .optional(),
        ...policyFields,
        fallbacks: z.array(z.string().min(1).max(200)).max(3, 'must name at most 3 models').optional(),
      })
      .refine((k) => (k.key === undefined) !== (k.key_sha256 === undefined), { message: 'give exactly one of key and key_sha256' }),
  ),
});

/** `gpt-image-*` matches `gpt-image-1`; a pattern without `*` must match exactly. */
export function modelAllowed(policy: Pick<KeyPolicy, 'models'>, modelId: string): boolean {
  if (!policy.models) return true;
  return policy.models.some((pattern) => patternRegex(pattern).test(modelId));
}

// Compiled once per pattern, not on every request; keys are few, patterns fewer.
const compiledPatterns = new Map<string, RegExp>();
function patternRegex(pattern: string): RegExp {
  let regex = compiledPatterns.get(pattern);
  if (!regex) {
    regex = new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
    if (compiledPatterns.size >= 10_000) compiledPatterns.clear();
    compiledPatterns.set(pattern, regex);
  }
  return regex;
}

/** Allow-list patterns that match no model the gateway serves: almost always a typo. */
export function patternsMatchingNothing(models: string[] | undefined, modelIds: readonly string[]): string[] {
  return (models ?? []).filter((pattern) => !modelIds.some((id) => modelAllowed({ models: [pattern] }, id)));
}
