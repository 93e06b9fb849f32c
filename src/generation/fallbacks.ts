import type { ImageRequest } from '../request/image-request.js';
import { UpstreamFailure } from '../upstream/upstream-failure.js';

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
