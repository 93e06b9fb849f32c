import type { ImageRequest } from '../request/image-request.js';
import { GatewayError, NO_AUTOMATIC_RETRY, restated } from '../errors.js';
import { UpstreamFailure } from '../upstream/upstream-failure.js';
import { PaidImageLost } from './image-generation.js';

/** One fallback taken: upstream could not serve `from` (`reason`: the failure kind), so `to` was tried next. */
export interface FallbackTaken {
  from: string;
  to: string;
  reason: string;
}

/**
 * Whether a failure of one model of a fallback chain lets the next model try: never one that may
 * have been billed, nor one about the request itself, and a timeout only with fallback_on_timeout.
 * Direct requests and jobs both ask here.
 */
export function fallbackAllowed(err: unknown, request: ImageRequest): err is UpstreamFailure {
  if (!(err instanceof UpstreamFailure)) return false;
  if (err.kind === 'timeout') return request.fallbackOnTimeout === true;
  return err.otherModelMayServe && !err.mayHaveBilled;
}

/**
 * A chain's last failure, once a model it left may have billed (a timeout fallen back from): told
 * so whatever it is (an upstream refusal, a wait for an upstream slot that ran out ...), so that
 * no client library resends it on its own and an Idempotency-Key keeps it.
 */
export function billedToo(failure: unknown): unknown {
  if (failure instanceof UpstreamFailure) return failure.mayHaveBilled ? failure : failure.with({ mayHaveBilled: true });
  if (failure instanceof GatewayError && !(failure instanceof PaidImageLost) && failure.headers['x-should-retry'] !== 'false') return restated(failure, { headers: NO_AUTOMATIC_RETRY });
  return failure;
}
