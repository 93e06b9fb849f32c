import { declarationOf } from '../catalogue/catalogue-schema.js';
import type { FallbackTaken } from '../generation/fallbacks.js';
import type { PreparedGeneration } from '../generation/image-generation.js';

/**
 * A job's fallback chain as kept in its row (`chain_json`): it moves along the chain as models
 * fail, and a replica that takes the job over after a restart goes on from where it stood.
 */
export interface JobChain {
  /** The model the request asked for (the answer's `requested_model`). */
  requested: string;
  /** The models tried so far, in order; the last one is the job's model now. */
  tried: string[];
  fallbacks: FallbackTaken[];
  /** The models still to try, in order, each with its catalogue declaration when the job was created (null: the catalogue's at the time). */
  next: { model: string; declaration: unknown }[];
}

export function newJobChain(chain: PreparedGeneration[]): JobChain {
  return {
    requested: chain[0]!.model.id,
    tried: [chain[0]!.model.id],
    fallbacks: [],
    next: chain.slice(1).map((p) => ({ model: p.model.id, declaration: declarationOf(p.model) ?? null })),
  };
}

/** The chain once `reason` moved it from its current model to the next one. */
export function advancedChain(chain: JobChain, reason: string): JobChain {
  const [next, ...rest] = chain.next;
  if (!next) throw new Error('a job chain with no model left cannot advance');
  const from = chain.tried[chain.tried.length - 1]!;
  return { ...chain, tried: [...chain.tried, next.model], fallbacks: [...chain.fallbacks, { from, to: next.model, reason }], next: rest };
}

export function parseJobChain(json: string | null): JobChain | undefined {
  return json ? (JSON.parse(json) as JobChain) : undefined;
}
