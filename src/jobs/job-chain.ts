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
  /**
   * For each step of `fallbacks`, whether the model left may have billed (a timeout once upstream
   * held the request): then so may the job, however its last model fails. A step without an entry
   * (a row kept before this was, or a step taken by a replica of that version) counts as billed
   * when it left a timeout: see `leftMayHaveBilled`.
   */
  stepsMayHaveBilled?: boolean[];
  /**
   * The params of the job's model now, once the chain has moved on: each model has its own (the
   * OpenAI façade translates `size` per model), and the row's request holds the first model's.
   * Absent in rows kept before params were: the request's are used.
   */
  params?: Record<string, unknown>;
  /**
   * The models still to try, in order, each with its catalogue declaration when the job was created
   * (null: the catalogue's at the time) and the params prepared for it (absent in older rows).
   */
  next: { model: string; declaration: unknown; params?: Record<string, unknown> }[];
}

export function newJobChain(chain: PreparedGeneration[]): JobChain {
  return {
    requested: chain[0]!.model.id,
    tried: [chain[0]!.model.id],
    fallbacks: [],
    next: chain.slice(1).map((p) => ({ model: p.model.id, declaration: declarationOf(p.model) ?? null, params: p.request.params })),
  };
}

/** The chain once `reason` moved it from its current model to the next one (which may have billed, or not). */
export function advancedChain(chain: JobChain, reason: string, mayHaveBilled: boolean): JobChain {
  const [next, ...rest] = chain.next;
  if (!next) throw new Error('a job chain with no model left cannot advance');
  const from = chain.tried[chain.tried.length - 1]!;
  const { params: _previous, ...kept } = chain;
  return {
    ...kept,
    tried: [...chain.tried, next.model],
    fallbacks: [...chain.fallbacks, { from, to: next.model, reason }],
    stepsMayHaveBilled: [...chain.fallbacks.map((step, i) => stepMayHaveBilled(chain, step, i)), mayHaveBilled],
    ...(next.params !== undefined ? { params: next.params } : {}),
    next: rest,
  };
}

export function parseJobChain(json: string | null): JobChain | undefined {
  return json ? (JSON.parse(json) as JobChain) : undefined;
}

function stepMayHaveBilled(chain: JobChain, step: FallbackTaken, i: number): boolean {
  return chain.stepsMayHaveBilled?.[i] ?? step.reason === 'timeout';
}

/** Whether a model the chain has left may have billed. */
export function leftMayHaveBilled(chain: JobChain): boolean {
  return chain.fallbacks.some((step, i) => stepMayHaveBilled(chain, step, i));
}
