import { isIP } from 'node:net';
import { z } from 'zod';
import { MIN_CLIENT_KEY_LENGTH } from './auth/key-policy.js';
import { CatalogueError, MAX_PRICE_PER_IMAGE_USD, perImageBound } from './catalogue/catalogue-schema.js';
import { loadEffectiveCatalogue } from './catalogue/catalogue-file.js';
import { MODELS } from './catalogue/models.js';

/** An integer variable within [min, max]; empty or absent gives the fallback (undefined: "not set"). */
function integer<F extends number | undefined>(name: string, fallback: F, min = 1, max = Number.MAX_SAFE_INTEGER) {
  return z
    .string()
    .optional()
    .transform((v, ctx): number | F => {
      if (v === undefined || v.trim() === '') return fallback;
      // Decimal digits only: Number() would also take 0x10 and 1e3.
      const n = /^\s*-?\d+\s*$/.test(v) ? Number(v) : NaN;
      if (!Number.isSafeInteger(n) || n < min || n > max) {
        const range = max === Number.MAX_SAFE_INTEGER ? (min === 1 ? 'a positive integer' : `an integer of at least ${min}`) : `an integer from ${min} to ${max}`;
        ctx.addIssue({ code: 'custom', message: `${name} must be ${range}, got "${v}"` });
        return z.NEVER;
      }
      return n;
    });
}

/**
 * A duration: seconds ("3600"), or a number with a unit: "90s", "30m", "12h", "7d". Answers seconds
 * (at least 60, at most 30 days).
 */
function duration(name: string, fallbackSeconds: number, minSeconds = 60, maxSeconds = 30 * 86_400) {
  return z
    .string()
    .optional()
    .transform((v, ctx): number => {
      if (v === undefined || v.trim() === '') return fallbackSeconds;
      const m = /^(\d+)\s*(s|m|h|d)?$/i.exec(v.trim());
      const seconds = m ? Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86_400 }[(m[2] ?? 's').toLowerCase() as 's' | 'm' | 'h' | 'd'] : NaN;
      if (!Number.isSafeInteger(seconds) || seconds < minSeconds || seconds > maxSeconds) {
        ctx.addIssue({
          code: 'custom',
          message: `${name} must be a duration from ${minSeconds} s to ${maxSeconds / 86_400} days: seconds (43200) or a number with s, m, h or d (30m, 12h), got "${v}"`,
        });
        return z.NEVER;
      }
      return seconds;
    });
}

const positiveInt = (name: string, fallback: number) => integer(name, fallback);

/**
 * The longest delay Node's timers take (2^31-1 ms, about 24.8 days): setTimeout/setInterval given more
 * fire after 1 ms instead (TimeoutOverflowWarning), so a longer timeout would time out at once and a
 * longer interval would run in a tight loop.
 */
export const MAX_TIMER_MS = 2_147_483_647;

/** A time in milliseconds that ends up in a timer: at least `min`, at most MAX_TIMER_MS. */
function milliseconds<F extends number | undefined>(name: string, fallback: F, min = 1) {
  return z
    .string()
    .optional()
    .transform((v, ctx): number | F => {
      if (v === undefined || v.trim() === '') return fallback;
      const n = /^\s*\d+\s*$/.test(v) ? Number(v) : NaN;
      if (!Number.isSafeInteger(n) || n < min || n > MAX_TIMER_MS) {
        const least = min === 1 ? 'a positive integer of milliseconds' : `an integer of milliseconds, at least ${min}`;
        ctx.addIssue({ code: 'custom', message: `${name} must be ${least}, at most ${MAX_TIMER_MS} ms (about 24.8 days), got "${v}"` });
        return z.NEVER;
      }
      return n;
    });
}

/** The longest IMAGE_RETENTION_DAYS: 100 years (expiry dates must stay within what a Date holds). */
export const MAX_RETENTION_DAYS = 36_500;

/** A TCP port: refused here, naming the variable, rather than by listen() with a stack trace. */
const port = <F extends number | undefined>(name: string, fallback: F, min = 1) => integer(name, fallback, min, 65_535);

/** More image threads than this is a typo, not a machine. */
const MAX_WORKERS = 256;

const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));

/** A URL as written in a message, its user and password (if any) left out. */
const shownUrl = (v: string) => v.replace(/\/\/[^/@]*@/, '//...@');

/**
 * A URL the gateway calls or hands out: http or https with a host. `URL.canParse` alone takes
 * "localhost:18900" (scheme "localhost:"), "ftp://..." or "javascript:...", which then fail on every request.
 */
const httpUrl = (name: string, example: string, opts: { noQuery?: boolean } = {}) =>
  optionalString.superRefine((v, ctx) => {
    if (v === undefined) return;
    const url = URL.canParse(v) ? new URL(v) : undefined;
    let why = '';
    if (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
      why = /^[\w.-]+:\d+(\/|$)/.test(v) ? ' (the scheme is missing: http:// or https://)' : url !== undefined ? ` (not ${url.protocol}//)` : '';
    } else if (url.hostname === '') {
      why = ' (no host)';
    } else if (opts.noQuery && (url.search !== '' || url.hash !== '' || v.includes('?') || v.includes('#'))) {
      why = ' (no query or fragment: it is the front of every image URL)';
    } else {
      return;
    }
    ctx.addIssue({ code: 'custom', message: `${name} must be an http(s) URL such as ${example}${why}, got "${shownUrl(v)}"` });
  });

/** A positive integer without a default: absent means "no limit". */
const optionalPositiveInt = (name: string) => integer(name, undefined);

/** Host names, lower case, as a URL writes them (IPv6 without brackets). */
const hostList = (name: string) =>
  z
    .string()
    .optional()
    .transform((v, ctx) => {
      const hosts = (v ?? '').split(',').map((h) => h.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1')).filter(Boolean);
      const bad = hosts.find((h) => !/^[a-z0-9.:_-]+$/.test(h));
      if (bad !== undefined) {
        ctx.addIssue({ code: 'custom', message: `${name} must be comma-separated host names (no scheme, port or path), got "${bad}"` });
        return z.NEVER;
      }
      return hosts;
    });

/**
 * CORS_ORIGINS: the exact origins (scheme://host[:port], as a browser sends them in Origin) whose
 * pages may call the API. Never `*`: any page on the web could then spend a token it got hold of.
 */
function parseCorsOrigins(value: string | undefined, ctx: z.RefinementCtx): string[] {
  const entries = (value ?? '').split(',').map((e) => e.trim()).filter(Boolean);
  for (const entry of entries) {
    const shape = 'a comma-separated list of exact origins, scheme://host[:port] (https://app.example.com), as a browser sends them';
    if (entry === '*' || entry.includes('*')) {
      ctx.addIssue({ code: 'custom', message: `CORS_ORIGINS: "${entry}" is not allowed (no wildcards); give ${shape}` });
      return z.NEVER;
    }
    const url = URL.canParse(entry) ? new URL(entry) : undefined;
    if (url === undefined || (url.protocol !== 'https:' && url.protocol !== 'http:') || url.origin !== entry) {
      const hint = url !== undefined && (url.protocol === 'https:' || url.protocol === 'http:') ? ` (did you mean "${url.origin}"?)` : '';
      ctx.addIssue({ code: 'custom', message: `CORS_ORIGINS: "${entry}" is not an exact origin${hint}; give ${shape}` });
      return z.NEVER;
    }
  }
  return [...new Set(entries)];
}

const TRACES_SAMPLERS = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'];
const TRACES_SAMPLERS_LIST = TRACES_SAMPLERS.join(', ');

/** OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL: OTLP over HTTP, protobuf or JSON; gRPC is refused by name. */
const otlpProtocol = (name: string) =>
  optionalString.refine((v) => v === undefined || v === 'http/protobuf' || v === 'http/json', {
    message: `${name} must be http/protobuf (the default) or http/json; grpc is not supported: point the gateway at the collector's OTLP/HTTP port (4318) instead`,
  });

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
    if (colon <= 0 || !/^[\w.-]+$/.test(team) || key.length === 0) {
      // Never echo the value: it holds secrets.
      ctx.addIssue({ code: 'custom', message: `GATEWAY_API_KEYS entry ${keys.length + 1} must be team:key with a key of at least ${MIN_CLIENT_KEY_LENGTH} characters` });
      return [];
    }
    if (key.length < MIN_CLIENT_KEY_LENGTH) {
      // The team names the entry; the key itself is never echoed.
      ctx.addIssue({ code: 'custom', message: `GATEWAY_API_KEYS: the key of team ${team} (entry ${keys.length + 1}) is shorter than ${MIN_CLIENT_KEY_LENGTH} characters; use a long random key (openssl rand -hex 16)` });
      return [];
    }
    // One key for two entries: a request with it could not be told apart. Named by entry and team, never shown.
    const same = keys.findIndex((k) => k.key === key);
    if (same !== -1) {
      ctx.addIssue({ code: 'custom', message: `GATEWAY_API_KEYS: entries ${same + 1} (team ${keys[same]!.team}) and ${keys.length + 1} (team ${team}) hold the same key; give each entry a key of its own` });
      return [];
    }
    const count = (perTeam.get(team) ?? 0) + 1;
    perTeam.set(team, count);
    keys.push({ id: count === 1 ? team : `${team}-${count}`, team, key });
  }
  return keys;
}

const NAMED_PROXY_RANGES = ['loopback', 'linklocal', 'uniquelocal'];
const TRUST_PROXY_CHOICES =
  'give the number of proxies in front of the gateway (1 for one nginx or ingress), or their addresses/CIDRs, comma-separated (10.0.0.0/8,127.0.0.1; also loopback, linklocal, uniquelocal), or 0 for none';

/**
 * TRUST_PROXY: whose X-Forwarded-* headers to believe. A hop count or the proxies' addresses, never
 * "everyone": trusting every hop lets any client set its own address (and dodge the limits kept per address).
 */
function parseTrustProxy(value: string | undefined, ctx: z.RefinementCtx): false | number | string[] {
  const v = (value ?? '').trim();
  if (v === '' || v === '0' || v.toLowerCase() === 'false') return false;
  if (/^\d+$/.test(v)) {
    const hops = Number(v);
    if (hops <= 100) return hops;
    ctx.addIssue({ code: 'custom', message: `TRUST_PROXY: ${v} hops is not a plausible number of proxies; ${TRUST_PROXY_CHOICES}` });
    return z.NEVER;
  }
  if (v.toLowerCase() === 'true' || v === '*') {
    ctx.addIssue({ code: 'custom', message: `TRUST_PROXY=${v} would trust every hop, so any client could choose its own address and origin; ${TRUST_PROXY_CHOICES}` });
    return z.NEVER;
  }
  const entries = v.split(',').map((e) => e.trim()).filter(Boolean);
  let span4 = 0n; // addresses covered, IPv4 and IPv6 (overlaps counted twice)
  let span6 = 0n;
  for (const entry of entries) {
    if (NAMED_PROXY_RANGES.includes(entry)) continue;
    const [address, bits, extra] = entry.split('/');
    const family = isIP(address ?? '');
    const maxBits = family === 6 ? 128 : 32;
    const bitsOk = bits === undefined || (/^\d+$/.test(bits) && Number(bits) >= 1 && Number(bits) <= maxBits);
    if (family === 0 || !bitsOk || extra !== undefined) {
      const why = family !== 0 && bits !== undefined && Number(bits) === 0 ? ' (a /0 range is every address)' : '';
      ctx.addIssue({ code: 'custom', message: `TRUST_PROXY: "${entry}" is not an address, CIDR or named range${why}; ${TRUST_PROXY_CHOICES}` });
      return z.NEVER;
    }
    // A few very wide ranges together cover every address (0.0.0.0/1,128.0.0.0/1) as /0 does: no
    // proxy network is wider than a /8 (fd00::/8, the unique-local addresses in use, for IPv6).
    const minBits = 8;
    if (bits !== undefined && Number(bits) < minBits) {
      ctx.addIssue({ code: 'custom', message: `TRUST_PROXY: "${entry}" is wider than a /${minBits}, far more than the proxies in front of the gateway (such ranges together can cover every address); ${TRUST_PROXY_CHOICES}` });
      return z.NEVER;
    }
    const size = 2n ** BigInt(maxBits - Number(bits ?? maxBits));
    if (family === 6) span6 += size;
    else span4 += size;
  }
  // Many /8s together still span much of the address space: a quarter of it is refused too.
  if (span4 >= 2n ** 30n || span6 >= 2n ** 126n) {
    ctx.addIssue({ code: 'custom', message: `TRUST_PROXY: the ranges together span a quarter or more of all ${span4 >= 2n ** 30n ? 'IPv4' : 'IPv6'} addresses, far more than the proxies in front of the gateway; ${TRUST_PROXY_CHOICES}` });
    return z.NEVER;
  }
  return entries;
}

/** PRICE_OVERRIDES: `{"model id or alias": USD per image}`, replacing the catalogue's price for those models. */
function parsePriceOverrides(value: string | undefined, ctx: z.RefinementCtx): Record<string, number> {
  if (value === undefined || value.trim() === '') return {};
  const shape = 'PRICE_OVERRIDES must be a JSON object of model id to USD per image, e.g. {"gpt-image-2": 0.05}';
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    ctx.addIssue({ code: 'custom', message: `${shape}; it is not valid JSON` });
    return {};
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    ctx.addIssue({ code: 'custom', message: shape });
    return {};
  }
  // The names are checked in loadConfig, against the catalogue CATALOGUE_FILE makes.
  for (const [model, price] of Object.entries(parsed)) {
    if (typeof price !== 'number' || !Number.isFinite(price) || price < 0) {
      ctx.addIssue({ code: 'custom', message: `PRICE_OVERRIDES: the price of "${model}" must be a number of USD, 0 or more` });
    } else if (price > MAX_PRICE_PER_IMAGE_USD) {
      ctx.addIssue({ code: 'custom', message: `PRICE_OVERRIDES: the price of "${model}": ${perImageBound}, got ${price}` });
    }
  }
  return parsed as Record<string, number>;
}

const envSchema = z.object({
  PORT: port('PORT', 8080),
  HOST: optionalString.transform((v) => v ?? '0.0.0.0'),
  AIHUBMIX_API_KEY: optionalString,
  AIHUBMIX_BASE_URL: httpUrl('AIHUBMIX_BASE_URL', 'https://aihubmix.com').transform((v) => v ?? 'https://aihubmix.com'),
  GATEWAY_API_KEYS: z.string().optional().transform((v, ctx) => parseClientKeys(v, ctx)),
  GATEWAY_KEYS_FILE: optionalString,
  GATEWAY_ADMIN_KEY: optionalString.refine((v) => v === undefined || v.length >= MIN_CLIENT_KEY_LENGTH, {
    message: `GATEWAY_ADMIN_KEY (team admin) must be at least ${MIN_CLIENT_KEY_LENGTH} characters`,
  }),
  DATA_DIR: optionalString.transform((v) => v ?? './data'),
  PUBLIC_BASE_URL: httpUrl('PUBLIC_BASE_URL', 'https://images.example.com', { noQuery: true }),
  UPSTREAM_TIMEOUT_MS: milliseconds('UPSTREAM_TIMEOUT_MS', 180_000),
  RATE_LIMIT_RPM: positiveInt('RATE_LIMIT_RPM', 60),
  // Reads (job status and events, models, usage) per minute per key; unset: 10 x the key's rpm.
  RATE_LIMIT_READ_RPM: optionalPositiveInt('RATE_LIMIT_READ_RPM'),
  IMAGE_RETENTION_DAYS: integer('IMAGE_RETENTION_DAYS', 7, 1, MAX_RETENTION_DAYS),
  UPSTREAM_MAX_CONCURRENCY: positiveInt('UPSTREAM_MAX_CONCURRENCY', 16),
  REDIS_URL: optionalString
    .refine((v) => v === undefined || (URL.canParse(v) && /^rediss?:\/\//.test(v)), {
      message: 'REDIS_URL must be a redis:// (or rediss://) URL such as redis://cache:6379',
    })
    .superRefine((v, ctx) => {
      // ioredis reads the path as a database number and, given anything else, quietly uses database 0.
      const path = v !== undefined && /^rediss?:\/\//.test(v) && URL.canParse(v) ? new URL(v).pathname : '';
      if (!/^\/?(\d+)?$/.test(path)) {
        ctx.addIssue({ code: 'custom', message: `REDIS_URL: the path must be a database number (redis://host:6379/2) or nothing, got "${path}"` });
      }
    }),
  DATABASE_URL: optionalString.refine((v) => v === undefined || (URL.canParse(v) && /^postgres(ql)?:\/\//.test(v)), {
    message: 'DATABASE_URL must be a postgres:// (or postgresql://) URL such as postgres://gateway:password@db:5432/gateway',
  }),
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
  // The whole of one multipart request (files, fields and framing), and the cap of a JSON edit's body.
  MAX_REQUEST_BYTES: positiveInt('MAX_REQUEST_BYTES', 64 * 1024 * 1024),
  TASK_POLL_INTERVAL_MS: milliseconds('TASK_POLL_INTERVAL_MS', 500),
  // The longest silence in an event stream before a `: keepalive` comment (proxies cut silent connections).
  STREAM_KEEPALIVE_MS: milliseconds('STREAM_KEEPALIVE_MS', 10_000),
  // The image store: S3-compatible object storage when S3_BUCKET is set, else files under DATA_DIR.
  S3_BUCKET: optionalString,
  S3_ENDPOINT: httpUrl('S3_ENDPOINT', 'http://minio:9000'),
  S3_REGION: optionalString.transform((v) => v ?? 'us-east-1'),
  S3_FORCE_PATH_STYLE: z
    .enum(['0', '1', 'true', 'false', ''], { message: 'S3_FORCE_PATH_STYLE must be 1 or 0' })
    .optional()
    .transform((v) => v === '1' || v === 'true'),
  AWS_ACCESS_KEY_ID: optionalString,
  AWS_SECRET_ACCESS_KEY: optionalString,
  IMAGE_STORE_MAX_BYTES: optionalPositiveInt('IMAGE_STORE_MAX_BYTES'),
  // Images up to this size are kept in their database row instead of the store; 0: every image in the store.
  IMAGE_INLINE_MAX_BYTES: integer('IMAGE_INLINE_MAX_BYTES', 16 * 1024, 0, 1024 * 1024),
  // Worker threads for the image work of large images (decoding, hashing, encoding); 0: all on the main
  // thread. 0 by default: measured (docs/workers.md), the threads cost more CPU than they take off the main thread.
  WORKERS: integer('WORKERS', 0, 0, MAX_WORKERS),
  RETENTION_SWEEP_INTERVAL_MS: milliseconds('RETENTION_SWEEP_INTERVAL_MS', 10 * 60 * 1000),
  // Below this free space in DATA_DIR new generations are refused (507); unset: the smaller of 1 GiB and 5 % of the disk; 0: off.
  STORAGE_MIN_FREE_BYTES: integer('STORAGE_MIN_FREE_BYTES', undefined, 0),
  ALLOWED_IMAGE_HOSTS: hostList('ALLOWED_IMAGE_HOSTS'),
  ALLOWED_CALLBACK_HOSTS: hostList('ALLOWED_CALLBACK_HOSTS'),
  UPSTREAM_QUEUE_TIMEOUT_MS: milliseconds('UPSTREAM_QUEUE_TIMEOUT_MS', 30_000),
  // Bytes of upstream image replies received at once per replica; past it, new calls wait in the upstream queue (docs/held-load.md).
  // At least 1 MiB: a smaller figure is almost surely meant in MiB, and would receive one render at a time.
  MAX_INFLIGHT_IMAGE_BYTES: integer('MAX_INFLIGHT_IMAGE_BYTES', 32 * 1024 * 1024, 1024 * 1024),
  UPSTREAM_RETRIES: integer('UPSTREAM_RETRIES', 2, 0, 10),
  UPSTREAM_RETRY_BASE_MS: milliseconds('UPSTREAM_RETRY_BASE_MS', 500),
  UPSTREAM_KEY_COOLDOWN_MS: milliseconds('UPSTREAM_KEY_COOLDOWN_MS', 300_000),
  JOB_LEASE_MS: milliseconds('JOB_LEASE_MS', 30_000),
  JOB_SHUTDOWN_GRACE_MS: milliseconds('JOB_SHUTDOWN_GRACE_MS', 25_000),
  CALLBACK_SECRET: optionalString.refine((v) => v === undefined || v.length >= 32, {
    message: 'CALLBACK_SECRET must be at least 32 characters',
  }),
  // Behind a reverse proxy (nginx, an ingress): trust its X-Forwarded-* headers for the client address and origin.
  // A hop count (1: the one proxy in front) or the proxies' addresses/CIDRs; never every hop.
  TRUST_PROXY: z.string().optional().transform((v, ctx) => parseTrustProxy(v, ctx)),
  // Failed authentications (wrong keys) per client address and minute; past it: 429 before the key is looked at.
  AUTH_FAILURES_PER_MINUTE: positiveInt('AUTH_FAILURES_PER_MINUTE', 20),
  LOG_PROMPTS: z
    .enum(['0', '1', 'true', 'false', ''], { message: 'LOG_PROMPTS must be 1 or 0' })
    .optional()
    .transform((v) => v === '1' || v === 'true'),
  // How long a console sign-in lasts (seconds once parsed): "12h", "30m", or seconds.
  CONSOLE_SESSION_TTL: duration('CONSOLE_SESSION_TTL', 12 * 3600),
  // Keep each stored image's prompt and parameters with its gallery entry (GET /v1/images); 0 keeps neither.
  IMAGE_KEEP_PROMPTS: z
    .enum(['0', '1', 'true', 'false', ''], { message: 'IMAGE_KEEP_PROMPTS must be 1 or 0' })
    .optional()
    .transform((v) => v !== '0' && v !== 'false'),
  PRICE_OVERRIDES: z.string().optional().transform((v, ctx) => parsePriceOverrides(v, ctx)),
  // An operator's YAML overlay of the built-in model catalogue (src/catalogue/catalogue-file.ts); reloaded on change and SIGHUP.
  CATALOGUE_FILE: optionalString,
  // Connection hygiene (src/http/connections.ts): the whole request, body included, must arrive within
  // REQUEST_TIMEOUT_MS (else 408), its headers within HEADERS_TIMEOUT_MS (default: the smaller of 30 s and it).
  REQUEST_TIMEOUT_MS: milliseconds('REQUEST_TIMEOUT_MS', 120_000),
  HEADERS_TIMEOUT_MS: milliseconds('HEADERS_TIMEOUT_MS', undefined),
  // Above the 60 s idle timeout of common load balancers, so the gateway is not the one to close first.
  KEEP_ALIVE_TIMEOUT_MS: milliseconds('KEEP_ALIVE_TIMEOUT_MS', 72_000),
  // An idle socket is cut after this; never one whose request is being worked on (a long render, a stream).
  CONNECTION_TIMEOUT_MS: milliseconds('CONNECTION_TIMEOUT_MS', 60_000),
  MAX_CONNECTIONS: positiveInt('MAX_CONNECTIONS', 1024),
  // /metrics: a bearer token, and/or a listener of its own (then /metrics is not served on PORT).
  METRICS_TOKEN: optionalString.refine((v) => v === undefined || v.length >= 32, {
    message: 'METRICS_TOKEN must be at least 32 characters',
  }),
  // Browser pages on these exact origins may call the API (CORS); unset: no CORS headers at all.
  CORS_ORIGINS: z.string().optional().transform((v, ctx) => parseCorsOrigins(v, ctx)),
  // 0: any free port (tests).
  METRICS_PORT: port('METRICS_PORT', undefined, 0),
  METRICS_HOST: optionalString.transform((v) => v ?? '127.0.0.1'),
  // OpenTelemetry traces (src/observability/tracing.ts), by the standard variables. No endpoint: the SDK is not loaded.
  OTEL_SDK_DISABLED: optionalString.transform((v) => v?.toLowerCase() === 'true'),
  OTEL_TRACES_EXPORTER: optionalString.refine((v) => v === undefined || v === 'otlp' || v === 'none', {
    message: 'OTEL_TRACES_EXPORTER must be otlp or none (traces go out over OTLP/HTTP)',
  }),
  OTEL_EXPORTER_OTLP_ENDPOINT: httpUrl('OTEL_EXPORTER_OTLP_ENDPOINT', 'http://collector:4318'),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: httpUrl('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'http://collector:4318/v1/traces'),
  OTEL_EXPORTER_OTLP_PROTOCOL: otlpProtocol('OTEL_EXPORTER_OTLP_PROTOCOL'),
  OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: otlpProtocol('OTEL_EXPORTER_OTLP_TRACES_PROTOCOL'),
  OTEL_EXPORTER_OTLP_HEADERS: optionalString,
  OTEL_EXPORTER_OTLP_TRACES_HEADERS: optionalString,
  OTEL_SERVICE_NAME: optionalString,
  OTEL_RESOURCE_ATTRIBUTES: optionalString,
  OTEL_TRACES_SAMPLER: optionalString.refine((v) => v === undefined || TRACES_SAMPLERS.includes(v), {
    message: `OTEL_TRACES_SAMPLER must be one of ${TRACES_SAMPLERS_LIST}`,
  }),
  OTEL_TRACES_SAMPLER_ARG: optionalString.refine((v) => v === undefined || (Number.isFinite(Number(v)) && Number(v) >= 0 && Number(v) <= 1), {
    message: 'OTEL_TRACES_SAMPLER_ARG must be a sampling ratio from 0 to 1',
  }),
  OTEL_BSP_SCHEDULE_DELAY: milliseconds('OTEL_BSP_SCHEDULE_DELAY', undefined),
  OTEL_BSP_MAX_QUEUE_SIZE: optionalPositiveInt('OTEL_BSP_MAX_QUEUE_SIZE'),
  OTEL_BSP_MAX_EXPORT_BATCH_SIZE: optionalPositiveInt('OTEL_BSP_MAX_EXPORT_BATCH_SIZE'),
  OTEL_BSP_EXPORT_TIMEOUT: milliseconds('OTEL_BSP_EXPORT_TIMEOUT', undefined),
});

export type Config = z.output<typeof envSchema>;

/** Every variable the gateway reads (docs/configuration.md documents each). */
export const CONFIG_VARIABLES = Object.keys(envSchema.shape) as ReadonlyArray<keyof Config>;

export class ConfigError extends Error {}

/**
 * The start stopped by bad settings: one line, `invalid configuration: ` and each problem (naming
 * its variable and what it takes), `; ` between them. An operator reads it in a log where a line is
 * an entry; a problem's own line breaks (a YAML parser's excerpt) are folded into it.
 */
export function invalidConfiguration(problems: readonly string[]): ConfigError {
  return new ConfigError(`invalid configuration: ${problems.map((p) => p.replace(/\s*\n\s*/g, ' ').trim()).join('; ')}`);
}

/**
 * Client keys printed in openapi.yaml's examples: public, so never accepted as a real key (a test
 * checks that every `gk-` example there is listed). The docker/ examples say replace-me / change-me.
 */
export const PUBLIC_EXAMPLE_KEYS: readonly string[] = ['gk-3q9VbX2mKp7LwT4sN8yR1cZ6'];

/** True for a key copied from the project's own examples. */
export function isPublicExampleKey(key: string): boolean {
  return PUBLIC_EXAMPLE_KEYS.includes(key) || /replace-me|change-me/i.test(key);
}

/** Reads the environment once at start; a wrong value stops the start with a message naming the variable. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, opts: { requireUpstreamKey?: boolean } = {}): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    // One problem per variable: the first its checks found (REDIS_URL=nope is not an absolute URL, nor a redis:// one).
    const byVariable = new Map<string, string>();
    for (const issue of parsed.error.issues) {
      const variable = issue.path.join('.');
      if (!byVariable.has(variable)) byVariable.set(variable, issue.message.includes(variable) ? issue.message : `${variable}: ${issue.message}`);
    }
    throw invalidConfiguration([...byVariable.values()]);
  }
  const config = parsed.data;
  // Every problem found below in one line, so that one start shows all there is to fix.
  const problems: string[] = [];
  // The catalogue served: the built-in one with CATALOGUE_FILE applied; PRICE_OVERRIDES must name its models.
  let models = MODELS;
  if (config.CATALOGUE_FILE !== undefined) {
    try {
      models = loadEffectiveCatalogue(config.CATALOGUE_FILE);
    } catch (err) {
      if (!(err instanceof CatalogueError)) throw err;
      problems.push(err.message);
    }
  }
  const known = new Set(models.flatMap((m) => [m.id, ...m.aliases]));
  const unknownPrices = Object.keys(config.PRICE_OVERRIDES).filter((name) => !known.has(name));
  // Not checked once a problem is found (CATALOGUE_FILE refused): a name it would have added would be reported too.
  if (problems.length === 0) problems.push(...unknownPrices.map((name) => `PRICE_OVERRIDES names "${name}", which is not a catalogue model id or alias`));
  // Named by variable and team, never by the key itself.
  const examples = [
    ...config.GATEWAY_API_KEYS.filter((k) => PUBLIC_EXAMPLE_KEYS.includes(k.key)).map((k) => `GATEWAY_API_KEYS (team ${k.team})`),
    ...(config.GATEWAY_ADMIN_KEY !== undefined && PUBLIC_EXAMPLE_KEYS.includes(config.GATEWAY_ADMIN_KEY) ? ['GATEWAY_ADMIN_KEY'] : []),
  ];
  if (examples.length > 0) {
    problems.push(`${examples.join(', ')} ${examples.length === 1 ? 'holds' : 'hold'} the example key printed in openapi.yaml, which is public; set a key of your own`);
  }
  // The admin key given to a team too would make that team's key an admin's (or the admin a team).
  const adminAsClient = config.GATEWAY_API_KEYS.findIndex((k) => k.key === config.GATEWAY_ADMIN_KEY);
  if (adminAsClient !== -1) {
    const team = config.GATEWAY_API_KEYS[adminAsClient]!.team;
    problems.push(`GATEWAY_ADMIN_KEY and GATEWAY_API_KEYS (team ${team}, entry ${adminAsClient + 1}) hold the same key; the admin key must be a key of its own`);
  }
  if (opts.requireUpstreamKey) {
    // The example secrets in docker/ are public: a gateway started with them could be forged against.
    // `sk-...` is the upstream key's placeholder in docker/env.example and the README.
    const placeholders = Object.entries(env)
      .filter(([name, value]) => name in envSchema.shape && typeof value === 'string' && /replace-me|change-me|^sk-\.\.\.$/i.test(value))
      .map(([name]) => name);
    if (placeholders.length > 0) {
      problems.push(`${placeholders.join(', ')} still ${placeholders.length === 1 ? 'holds' : 'hold'} the example value (replace-me / change-me / sk-...); set real secrets`);
    }
  }
  // Half a credential pair is a typo, not a request for the SDK's default credential chain.
  if (config.S3_BUCKET && (config.AWS_ACCESS_KEY_ID === undefined) !== (config.AWS_SECRET_ACCESS_KEY === undefined)) {
    problems.push('AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together');
  }
  if (!config.S3_BUCKET && (config.S3_ENDPOINT || config.S3_FORCE_PATH_STYLE)) {
    problems.push('S3_BUCKET is required when S3_ENDPOINT or S3_FORCE_PATH_STYLE is set');
  }
  // In production the origin of image URLs is the operator's, never a client's Host header.
  if (env.NODE_ENV === 'production' && !config.PUBLIC_BASE_URL) {
    problems.push('PUBLIC_BASE_URL is required when NODE_ENV=production: the origin clients reach the gateway at (https://images.example.com), used in returned image URLs instead of the request\'s Host header');
  }
  if (config.HEADERS_TIMEOUT_MS !== undefined && config.HEADERS_TIMEOUT_MS > config.REQUEST_TIMEOUT_MS) {
    problems.push(`HEADERS_TIMEOUT_MS (${config.HEADERS_TIMEOUT_MS}) must not be more than REQUEST_TIMEOUT_MS (${config.REQUEST_TIMEOUT_MS})`);
  }
  if (config.METRICS_PORT !== undefined && config.METRICS_PORT !== 0 && config.METRICS_PORT === config.PORT) {
    problems.push(`METRICS_PORT must differ from PORT (${config.PORT}): it is a listener of its own`);
  }
  if (config.MAX_REQUEST_BYTES < config.MAX_UPLOAD_BYTES) {
    problems.push(`MAX_REQUEST_BYTES (${config.MAX_REQUEST_BYTES}) must be at least MAX_UPLOAD_BYTES (${config.MAX_UPLOAD_BYTES}): one upload must fit in a request`);
  }
  // Commas alone (`,`) give no key either.
  if (opts.requireUpstreamKey && !config.AIHUBMIX_API_KEY?.split(',').some((key) => key.trim() !== '')) {
    problems.push('AIHUBMIX_API_KEY is required (the upstream key; it never leaves the server)');
  }
  if (problems.length > 0) throw invalidConfiguration(problems);
  return config;
}
