import { GatewayError, NO_AUTOMATIC_RETRY, type ErrorCode } from '../errors.js';

/**
 * Every way a call to upstream can fail, in upstream's terms: what happened, whether upstream may
 * have charged for it, and whether another model could answer the same request instead. The
 * upstream client throws only these; the HTTP answer is chosen once, at the edge (toGatewayError).
 */
export type UpstreamFailureKind =
  /** Upstream has no channel (provider) for this model right now (a 5xx saying so). */
  | 'no_channel'
  /** Upstream is throttling (429), after the retries. */
  | 'throttled'
  /** Upstream said it is unavailable (503), after the retries. */
  | 'unavailable'
  /** Upstream failed with another 5xx: it may have worked on (and charged for) the request. */
  | 'server_error'
  /** No complete answer before the deadline, after upstream took the request. */
  | 'timeout'
  /** Upstream refused the request itself as invalid (a 4xx): no model will take it as it is. */
  | 'rejected_input'
  /** Upstream's moderation refused the prompt or withheld the images. */
  | 'moderated'
  /** Upstream refused the gateway's credentials or balance (401/403), or every key is set aside. */
  | 'auth'
  /** A reply that is not what the API promises (not JSON, no images, a task finished without one). */
  | 'malformed_reply'
  /** A reply over the size the gateway reads. */
  | 'reply_too_large'
  /** The connection dropped after the request was sent, or the reply broke off. */
  | 'connection_lost'
  /** No connection to upstream could be made: nothing was sent. */
  | 'connection_refused'
  /** An asynchronous task upstream accepted ended in an error. */
  | 'task_failed'
  /** The result image could not be fetched (expired URL, over the cap, refused by the egress policy, ...). */
  | 'download_failed';

export interface UpstreamFailureTraits {
  /** Whether upstream may have charged for the call (it reached upstream and may have made images). */
  mayHaveBilled: boolean;
  /** Whether the same request may be tried on another model (nothing about the request itself is wrong). */
  otherModelMayServe: boolean;
}

/** The defaults per kind; a failure may say otherwise (a moderation after an accepted task may be billed). */
export const FAILURE_TRAITS: Readonly<Record<UpstreamFailureKind, UpstreamFailureTraits>> = {
  no_channel: { mayHaveBilled: false, otherModelMayServe: true },
  throttled: { mayHaveBilled: false, otherModelMayServe: true },
  unavailable: { mayHaveBilled: false, otherModelMayServe: true },
  server_error: { mayHaveBilled: true, otherModelMayServe: false },
  timeout: { mayHaveBilled: true, otherModelMayServe: false },
  rejected_input: { mayHaveBilled: false, otherModelMayServe: false },
  moderated: { mayHaveBilled: false, otherModelMayServe: false },
  auth: { mayHaveBilled: false, otherModelMayServe: false },
  malformed_reply: { mayHaveBilled: true, otherModelMayServe: false },
  reply_too_large: { mayHaveBilled: true, otherModelMayServe: false },
  connection_lost: { mayHaveBilled: true, otherModelMayServe: false },
  connection_refused: { mayHaveBilled: false, otherModelMayServe: true },
  task_failed: { mayHaveBilled: true, otherModelMayServe: false },
  download_failed: { mayHaveBilled: true, otherModelMayServe: false },
};

export const FAILURE_KINDS = Object.keys(FAILURE_TRAITS) as UpstreamFailureKind[];

export interface UpstreamFailureExtra {
  /** What upstream answered (its HTTP status), when it answered. */
  upstreamStatus?: number;
  /** When upstream said to come back, in seconds. */
  retryAfterSeconds?: number;
  /** Upstream's own words (secrets scrubbed), when it gave any. */
  detail?: string;
  /** Overrides the kind's default (FAILURE_TRAITS). */
  mayHaveBilled?: boolean;
  otherModelMayServe?: boolean;
  /** The key upstream refused was at fault (invalid, no balance): the next key may do. Only with `auth`. */
  keyRefused?: boolean;
  cause?: unknown;
}

export class UpstreamFailure extends Error {
  readonly kind: UpstreamFailureKind;
  readonly mayHaveBilled: boolean;
  readonly otherModelMayServe: boolean;
  readonly upstreamStatus: number | undefined;
  readonly retryAfterSeconds: number | undefined;
  readonly detail: string | undefined;
  readonly keyRefused: boolean;

  /** `message`: what the client is told (no secrets, no upstream address). */
  constructor(kind: UpstreamFailureKind, message: string, extra: UpstreamFailureExtra = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'UpstreamFailure';
    this.kind = kind;
    this.mayHaveBilled = extra.mayHaveBilled ?? FAILURE_TRAITS[kind].mayHaveBilled;
    this.otherModelMayServe = extra.otherModelMayServe ?? FAILURE_TRAITS[kind].otherModelMayServe;
    this.upstreamStatus = extra.upstreamStatus;
    this.retryAfterSeconds = extra.retryAfterSeconds;
    this.detail = extra.detail;
    this.keyRefused = extra.keyRefused ?? false;
  }

  /** The same failure with other fields (e.g. billed: it came after upstream accepted a task). */
  with(extra: UpstreamFailureExtra, message = this.message): UpstreamFailure {
    return new UpstreamFailure(this.kind, message, {
      upstreamStatus: this.upstreamStatus,
      retryAfterSeconds: this.retryAfterSeconds,
      detail: this.detail,
      mayHaveBilled: this.mayHaveBilled,
      otherModelMayServe: this.otherModelMayServe,
      keyRefused: this.keyRefused,
      cause: this.cause,
      ...extra,
    });
  }
}

/** The gateway error code (and so the HTTP status) each kind is answered with. */
export const EDGE_CODE: Readonly<Record<UpstreamFailureKind, ErrorCode>> = {
  no_channel: 'upstream_error',
  throttled: 'rate_limited',
  unavailable: 'upstream_error',
  server_error: 'upstream_error',
  timeout: 'upstream_timeout',
  rejected_input: 'invalid_request',
  moderated: 'content_rejected',
  auth: 'upstream_error',
  malformed_reply: 'upstream_error',
  reply_too_large: 'upstream_error',
  connection_lost: 'upstream_error',
  connection_refused: 'upstream_error',
  task_failed: 'upstream_error',
  download_failed: 'upstream_error',
};

/**
 * The one place an upstream failure becomes an HTTP answer. The GatewayError keeps the upstream
 * status (for the usage record and metrics) and the cause (for the log).
 */
export function toGatewayError(failure: UpstreamFailure): GatewayError {
  const details = failure.kind === 'rejected_input' && failure.detail !== undefined ? [{ message: failure.detail }] : undefined;
  return new GatewayError(EDGE_CODE[failure.kind], failure.message, {
    ...(failure.upstreamStatus !== undefined ? { upstreamStatus: failure.upstreamStatus } : {}),
    ...(failure.retryAfterSeconds !== undefined ? { retryAfter: failure.retryAfterSeconds } : {}),
    ...(details ? { details } : {}),
    // A call upstream may have billed: a client library resending it on its own would pay again.
    ...(failure.mayHaveBilled ? { headers: { ...NO_AUTOMATIC_RETRY } } : {}),
    ...(failure.cause !== undefined ? { cause: failure.cause } : {}),
  });
}
