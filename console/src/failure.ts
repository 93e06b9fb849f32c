/**
 * What a failed generation's card says: a headline a person can read, then the problems the
 * gateway named (each field and what it allows). Free of the DOM, so it runs (and is tested) in Node.
 */

/** A gateway error as its JSON body gives it (`{"error": {...}}`), or what the page knows of a failure. */
export interface Failure {
  /** The HTTP status; absent when the gateway was not reached. */
  status?: number;
  /** The gateway's error code (`invalid_request`, ...); `network` when the gateway was not reached. */
  code?: string;
  message: string;
  details?: Array<{ field?: string; message: string; allowed?: unknown }>;
}

const HEADLINES: Record<string, string> = {
  network: 'The gateway could not be reached',
  invalid_request: 'The gateway refused these settings',
  unauthorized: 'The session has ended',
  forbidden: 'This key may not do that',
  not_found: 'Not found',
  request_timeout: 'The upload was too slow',
  model_retired: 'This model is retired',
  payload_too_large: 'The upload is too large',
  unsupported_media_type: 'That file type is not taken',
  content_rejected: 'The provider refused the prompt or image',
  rate_limited: 'Too many requests for now',
  upstream_error: "The model's provider failed",
  service_unavailable: 'The gateway cannot serve this right now',
  upstream_timeout: 'The model took too long',
  storage_full: "The gateway's storage is full",
  // Unlike the other failures it was paid for: the headline says so before the message does.
  paid_image_lost: 'The image was made and charged for, but lost',
};

/** How the gateway words a 400 that upstream gave (src/upstream/upstream-exchange.ts): the settings passed its own checks. */
const UPSTREAM_REFUSAL = 'upstream refused the request';

/** The card's headline: from the error's code, else a general one. */
export function failureHeadline(failure: Failure): string {
  if (failure.code === 'invalid_request' && failure.message.startsWith(UPSTREAM_REFUSAL)) return "The model's provider refused these settings";
  return (failure.code !== undefined && Object.hasOwn(HEADLINES, failure.code) ? HEADLINES[failure.code] : undefined) ?? 'The generation failed';
}

/** The most listed values an "allowed" line names before "…". */
const ALLOWED_SHOWN = 12;

/**
 * The problems, one line each: `size: must be WIDTHxHEIGHT …`, with what is allowed where the
 * gateway lists it; without details, the error's message.
 */
export function problemLines(failure: Failure): string[] {
  const details = failure.details ?? [];
  if (details.length === 0) return [failure.message];
  return details.map((d) => {
    const line = d.field ? `${d.field}: ${d.message}` : d.message;
    if (Array.isArray(d.allowed) && d.allowed.length > 0) {
      const shown = d.allowed.slice(0, ALLOWED_SHOWN).map(String).join(', ');
      return `${line} (allowed: ${shown}${d.allowed.length > ALLOWED_SHOWN ? ', …' : ''})`;
    }
    // Most messages already say what is allowed ("must be …"): not twice.
    return typeof d.allowed === 'string' && d.allowed !== '' && !d.message.includes(d.allowed) ? `${line} (allowed: ${d.allowed})` : line;
  });
}

/** A failure from a gateway answer's JSON body (`{"error": {...}}`, or the error object itself, as a `failed` event carries it). */
export function failureOf(body: unknown, status?: number): Failure {
  const outer = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
  const error = typeof outer.error === 'object' && outer.error !== null ? (outer.error as Record<string, unknown>) : outer;
  const message = typeof error.message === 'string' && error.message !== '' ? error.message : status !== undefined ? `The gateway answered ${status}.` : 'The request failed.';
  return {
    ...(status !== undefined ? { status } : {}),
    ...(typeof error.code === 'string' ? { code: error.code } : {}),
    message,
    ...(Array.isArray(error.details) ? { details: error.details as Failure['details'] } : {}),
  };
}
