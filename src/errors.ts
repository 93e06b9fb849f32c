import type { z } from 'zod';

/**
 * Every failure the gateway reports is a GatewayError: thrown anywhere, rendered once by the
 * error handler in app.ts, so each route stays free of response-building try/catch.
 */
export type ErrorCode =
  | 'invalid_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'request_timeout'
  | 'model_retired'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'content_rejected'
  | 'rate_limited'
  | 'upstream_error'
  | 'upstream_timeout'
  | 'service_unavailable'
  | 'storage_full'
  | 'paid_image_lost'
  | 'internal_error';

const STATUS_OF: Record<ErrorCode, number> = {
  invalid_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  request_timeout: 408,
  model_retired: 410,
  payload_too_large: 413,
  unsupported_media_type: 415,
  content_rejected: 422,
  rate_limited: 429,
  upstream_error: 502,
  service_unavailable: 503,
  upstream_timeout: 504,
  storage_full: 507,
  // 503 when the database failed to keep the image; 504 when the deadline passed after upstream answered.
  paid_image_lost: 503,
  internal_error: 500,
};

export interface ErrorDetail {
  field?: string;
  message: string;
  allowed?: unknown;
}

export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: ErrorDetail[];
  /** Seconds, sent as Retry-After. */
  readonly retryAfter: number | undefined;
  /** What upstream answered, for logs and usage; never shown to the client verbatim. */
  readonly upstreamStatus: number | undefined;
  /** For a 429 from the client's own limits: which one (rpm, images_per_day, monthly_budget_usd). */
  readonly limit: string | undefined;
  /** Sent with the error: what a refusing limit tells of itself (x-ratelimit-images-*, ...), as on every other answer. */
  readonly headers: Record<string, string>;
  /**
   * A failure already known and reported once (a stored failure replayed, a stream ended by a stop):
   * logged as one warning line without a stack, whatever its status.
   */
  readonly expected: boolean;

  constructor(
    code: ErrorCode,
    message: string,
    extra: {
      details?: ErrorDetail[];
      retryAfter?: number;
      upstreamStatus?: number;
      limit?: string;
      headers?: Record<string, string>;
      expected?: boolean;
      cause?: unknown;
      /** Another status than the code's own: only paid_image_lost has two (503, 504). */
      status?: number;
    } = {},
  ) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.status = extra.status ?? STATUS_OF[code];
    this.details = extra.details ?? [];
    this.retryAfter = extra.retryAfter;
    this.upstreamStatus = extra.upstreamStatus;
    this.limit = extra.limit;
    this.headers = extra.headers ?? {};
    this.expected = extra.expected ?? false;
  }
}

/**
 * Sent with an answer that a client library must not send again on its own (OpenAI's SDKs retry any
 * 408, 409, 429 and 5xx unless this header says `false`, sleeping whatever Retry-After says).
 */
export const NO_AUTOMATIC_RETRY: Readonly<Record<string, string>> = { 'x-should-retry': 'false' };

/**
 * Whether an answer's own retry by a client library cannot help: a 409 meets the same conflict; a
 * browser token's cap holds until the token expires; any answer whose Retry-After is more than a
 * minute away (a key's images per day or monthly budget, an upstream that said to come back in an
 * hour) would hold the caller's request that long, and a Retry-After past 2^31 ms is read by
 * Node's timers as none; upstream refusing the gateway's own key or balance (401, 403) refuses it
 * again until an operator acts. The caller decides instead.
 */
export function retryCannotHelp(err: GatewayError): boolean {
  if (err.status === 409) return true;
  if (err.code === 'upstream_error' && (err.upstreamStatus === 401 || err.upstreamStatus === 403)) return true;
  if (err.status === 429 && err.limit?.startsWith('token_') === true) return true;
  return (err.retryAfter ?? 0) > 60;
}

/** The same failure, answered with more headers and/or marked expected (see GatewayError.expected). */
export function restated(err: GatewayError, extra: { headers?: Record<string, string>; expected?: boolean }): GatewayError {
  return new GatewayError(err.code, err.message, {
    status: err.status,
    details: err.details,
    ...(err.retryAfter !== undefined ? { retryAfter: err.retryAfter } : {}),
    ...(err.upstreamStatus !== undefined ? { upstreamStatus: err.upstreamStatus } : {}),
    ...(err.limit !== undefined ? { limit: err.limit } : {}),
    headers: { ...err.headers, ...extra.headers },
    expected: extra.expected ?? err.expected,
    ...(err.cause !== undefined ? { cause: err.cause } : {}),
  });
}

/** What a refused unknown field is told (src/request/option-hints.ts adds where a model option goes). */
export const NOT_A_FIELD = 'is not a field of this request';

/** A 400's message: each detail as `field: message`, within 1000 characters. */
export function detailsSummary(details: readonly ErrorDetail[]): string {
  return details.map((d) => `${d.field}: ${d.message}`).join('; ').slice(0, 1000);
}

/**
 * zod's complaints as a 400 naming each field and what it may be; an unknown field lists
 * `allowedFields`, exactly what the request takes. `messageOf` may say it better than zod does.
 */
export function zodRefusal(
  error: z.ZodError,
  allowedFields: readonly string[],
  options: { name?: (key: string) => string; messageOf?: (issue: z.core.$ZodIssue) => string } = {},
): GatewayError {
  const details: ErrorDetail[] = [];
  for (const issue of error.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) details.push({ field: fieldPath([...issue.path, key], options.name), message: NOT_A_FIELD, allowed: [...allowedFields] });
    } else {
      details.push({ field: fieldPath(issue.path, options.name) || '(body)', message: options.messageOf?.(issue) ?? issue.message });
    }
  }
  return new GatewayError('invalid_request', detailsSummary(details), { details });
}

/**
 * A `messageOf` for zodRefusal: a top-level field `body` lacks "is required" (zod would say
 * "Invalid input: expected string, received undefined"), followed by `required[field]` when given;
 * any other issue in the schema's own words. zod leaves issue.input out unless asked, so absence is
 * read from the body itself.
 */
export function absentAsRequired(body: object, required: Readonly<Record<string, string>> = {}): (issue: z.core.$ZodIssue) => string {
  return (issue) => {
    const field = issue.path.length === 1 ? String(issue.path[0]) : undefined;
    if (issue.code !== 'invalid_type' || field === undefined || Object.hasOwn(body, field)) return issue.message;
    const what = Object.hasOwn(required, field) ? required[field] : undefined;
    return what === undefined ? 'is required' : `is required: ${what}`;
  };
}

/** The most of a name a client made up (a field, an option, a query parameter, a path) quoted in errors and logs. */
export const QUOTED_NAME_MAX = 100;

/** A name a client made up as errors and logs quote it: its first 100 characters and "…" when longer. */
export function clipName(name: string, max = QUOTED_NAME_MAX): string {
  return name.length > max ? `${name.slice(0, max)}…` : name;
}

/** A field's path as the API names fields in errors: `options.style`, `image[0]`, `fallback_models[1]`. */
export function fieldPath(path: readonly PropertyKey[], name: (key: string) => string = clipName): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i === 0 ? '' : '.'}${name(String(p))}`)).join('');
}

/** A 400 that names the field and what it may be. */
export function invalidField(field: string, message: string, allowed?: unknown): GatewayError {
  const detail: ErrorDetail = allowed === undefined ? { field, message } : { field, message, allowed };
  return new GatewayError('invalid_request', `${field}: ${message}`, { details: [detail] });
}

export function errorBody(err: GatewayError, requestId: string) {
  return {
    error: {
      code: err.code,
      message: err.message,
      ...(err.details.length > 0 ? { details: err.details } : {}),
      request_id: requestId,
    },
  };
}
