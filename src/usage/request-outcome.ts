/**
 * What one request did, filled in as it goes (route, pipeline, error handler) and read once it has
 * been answered: by the request log line, the usage log and the metrics.
 */
export interface RequestOutcome {
  operation?: 'generate' | 'edit';
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
  prompt?: string;
}

export function newOutcome(): RequestOutcome {
  return { imagesReturned: 0, bytesStored: 0, estimatedCostUsd: null };
}
