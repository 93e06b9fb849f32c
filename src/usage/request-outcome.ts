import type { Operation } from '../catalogue/model-spec.js';

/**
 * What one request did, filled in as it goes (route, pipeline, error handler) and read once it has
 * been answered: by the request log line, the usage log and the metrics.
 */
export interface RequestOutcome {
  /** performance.now() when the request arrived. */
  startedAt: number;
  /** Its log line, metrics and usage record have been written (once, whether answered or abandoned). */
  recorded?: boolean;
  /** Its usage record has been made (committed before the answer, or queued for an abandoned request). */
  usageRecorded?: boolean;
  /** Answered with an event stream, which commits the usage record itself before its final events. */
  streaming?: boolean;
  /** The status it is recorded with when not the HTTP status: a stream that failed after its 200 headers. */
  status?: number;
  operation?: Operation;
  model?: string;
  /** Images asked for (n, default 1). */
  imagesRequested?: number;
  imagesReturned: number;
  bytesStored: number;
  estimatedCostUsd: number | null;
  upstreamStatus?: number;
  upstreamMs?: number;
  upstreamTokens?: Record<string, unknown>;
  errorCode?: string;
  /**
   * How upstream failed, when it did (src/upstream/upstream-failure.ts: no_channel, throttled, ...):
   * for what follows a failure (a fallback), not for the usage record.
   */
  failureKind?: string;
  /**
   * Which of the client's own limits refused the request with 429 (e.g. `rpm`, `images_per_day`,
   * `monthly_budget_usd`): set by whatever enforces the limit; labels the limit-refusal metric.
   */
  limitReason?: string;
  /** With fallback_models: the models tried, in order, the last one the one that served (or failed last). */
  modelsTried?: string[];
  /** Each fallback taken: from one model to the next, and why (the failure kind). */
  fallbacks?: { from: string; to: string; reason: string }[];
  /**
   * The job this request started (async, or synchronous with an Idempotency-Key): its outcome
   * completes the request's usage record when the request did not answer with it (202, or its client left).
   */
  jobId?: string;
  /** Its job was finished by another replica, which wrote a record standing for it: this one replaces it (UsageRecord.replacesStandIn). */
  replacesStandIn?: boolean;
  /** Only with LOG_PROMPTS=1. */
  prompt?: string;
}

export function newOutcome(): RequestOutcome {
  return { startedAt: performance.now(), imagesReturned: 0, bytesStored: 0, estimatedCostUsd: null };
}
