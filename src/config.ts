import { z } from 'zod';

const positiveInt = (name: string, fallback: number) =>
  z
    .string()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v.trim() === '') return fallback;
      const n = Number(v);
      if (!Number.isInteger(n) || n <= 0) {
        ctx.addIssue({ code: 'custom', message: `${name} must be a positive integer, got "${v}"` });
        return z.NEVER;
      }
      return n;
    });

const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));

const urlString = (name: string) =>
  optionalString.refine((v) => v === undefined || URL.canParse(v), { message: `${name} must be an absolute URL` });

export interface ClientKeyConfig {
  id: string;
  team: string;
  key: string;
}

function parseClientKeys(value: string | undefined, ctx: z.RefinementCtx): ClientKeyConfig[] {
  if (!value) return [];
  const keys: ClientKeyConfig[] = [];
  const perTeam = new Map<string, number>();
  for (const pair of value.split(',').map((p) => p.trim()).filter(Boolean)) {
    const colon = pair.indexOf(':');
    const team = pair.slice(0, colon).trim();
    const key = pair.slice(colon + 1).trim();
    if (colon <= 0 || !/^[\w.-]+$/.test(team) || key.length < 8) {
      // Never echo the value: it holds secrets.
      ctx.addIssue({ code: 'custom', message: `GATEWAY_API_KEYS entry ${keys.length + 1} must be team:key with a key of at least 8 characters` });
      return [];
    }
    const count = (perTeam.get(team) ?? 0) + 1;
    perTeam.set(team, count);
    keys.push({ id: count === 1 ? team : `${team}-${count}`, team, key });
  }
  return keys;
}

const envSchema = z.object({
  PORT: positiveInt('PORT', 8080),
  HOST: optionalString.transform((v) => v ?? '0.0.0.0'),
  AIHUBMIX_API_KEY: optionalString,
  AIHUBMIX_BASE_URL: urlString('AIHUBMIX_BASE_URL').transform((v) => v ?? 'https://aihubmix.com'),
  GATEWAY_API_KEYS: z.string().optional().transform((v, ctx) => parseClientKeys(v, ctx)),
  GATEWAY_KEYS_FILE: optionalString,
  GATEWAY_ADMIN_KEY: optionalString.refine((v) => v === undefined || v.length >= 16, {
    message: 'GATEWAY_ADMIN_KEY must be at least 16 characters',
  }),
  DATA_DIR: optionalString.transform((v) => v ?? './data'),
  PUBLIC_BASE_URL: urlString('PUBLIC_BASE_URL'),
  UPSTREAM_TIMEOUT_MS: positiveInt('UPSTREAM_TIMEOUT_MS', 180_000),
  RATE_LIMIT_RPM: positiveInt('RATE_LIMIT_RPM', 60),
  IMAGE_RETENTION_DAYS: positiveInt('IMAGE_RETENTION_DAYS', 7),
  UPSTREAM_MAX_CONCURRENCY: positiveInt('UPSTREAM_MAX_CONCURRENCY', 16),
  REDIS_URL: urlString('REDIS_URL'),
  DATABASE_URL: urlString('DATABASE_URL'),
  LOG_LEVEL: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], {
      message: 'LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent',
    })
    .optional()
    .transform((v) => v ?? 'info'),
  // Additions to the contract's variables:
  IMAGE_URL_SECRET: optionalString.refine((v) => v === undefined || v.length >= 32, {
    message: 'IMAGE_URL_SECRET must be at least 32 characters',
  }),
  MAX_UPLOAD_BYTES: positiveInt('MAX_UPLOAD_BYTES', 25 * 1024 * 1024),
  TASK_POLL_INTERVAL_MS: positiveInt('TASK_POLL_INTERVAL_MS', 1000),
  LOG_PROMPTS: z
    .enum(['0', '1', 'true', 'false', ''], { message: 'LOG_PROMPTS must be 1 or 0' })
    .optional()
    .transform((v) => v === '1' || v === 'true'),
});

export type Config = z.output<typeof envSchema>;

export class ConfigError extends Error {}

/** Reads the environment once at start; a wrong value stops the start with a message naming the variable. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, opts: { requireUpstreamKey?: boolean } = {}): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => {
      const variable = i.path.join('.');
      return i.message.includes(variable) ? i.message : `${variable}: ${i.message}`;
    });
    throw new ConfigError(`invalid configuration:\n  ${lines.join('\n  ')}`);
  }
  const config = parsed.data;
  if (opts.requireUpstreamKey && !config.AIHUBMIX_API_KEY) {
    throw new ConfigError('invalid configuration:\n  AIHUBMIX_API_KEY is required (the upstream key; it never leaves the server)');
  }
  return config;
}
