/**
 * When to poll an asynchronous upstream task next. Pure, so the schedule is tested without timers.
 *
 * Most tasks finish within seconds: they are polled every `intervalMs` for the first 10 s, so one is
 * answered soon after it is ready; then the polls back off 1.5x per poll up to 5 s, so a long render
 * does not cost a poll every half second. A wait never runs past the deadline: the last poll goes
 * out `DEADLINE_MARGIN_MS` before it, so its answer can still arrive in time.
 */

/** How long after submission a task is polled at the plain interval. */
export const PROMPT_PHASE_MS = 10_000;
/** Growth of the delay per poll after the prompt phase. */
export const BACKOFF_FACTOR = 1.5;
/** The longest delay between two polls the schedule makes by itself (Retry-After may ask for more). */
export const MAX_POLL_DELAY_MS = 5_000;
/** The last poll goes out this long before the deadline, so its reply can arrive before it. */
export const DEADLINE_MARGIN_MS = 200;
/** A Retry-After longer than this is taken as this: a bogus date must not stall a paid task. */
export const MAX_RETRY_AFTER_MS = 60_000;

export interface PollTiming {
  /** Since upstream accepted the task (or since polling resumed after a restart). */
  sinceSubmitMs: number;
  /** Since the previous poll was sent; absent before the first poll. */
  sinceLastPollMs?: number | undefined;
  /** How long after the poll before it (or after submission) the previous poll was sent; absent before the first poll. */
  previousDelayMs?: number | undefined;
  /** TASK_POLL_INTERVAL_MS: the delay between polls during the prompt phase. */
  intervalMs: number;
  /** Time left before the exchange's deadline (may be negative); absent: no deadline. */
  msToDeadline?: number | undefined;
  /** Retry-After of the previous poll's reply, in ms. */
  retryAfterMs?: number | undefined;
}

export interface NextPoll {
  /** How long to wait from now before the next poll. */
  waitMs: number;
  /** This is the last poll before the deadline: if its answer is not final, nothing more can be learned in time. */
  last: boolean;
}

export function nextPoll(timing: PollTiming): NextPoll {
  const interval = Math.min(Math.max(0, timing.intervalMs), MAX_POLL_DELAY_MS);
  // Delays run from one poll's sending to the next, so a slow reply does not stretch the schedule.
  const delay =
    timing.previousDelayMs === undefined || timing.sinceSubmitMs < PROMPT_PHASE_MS
      ? interval
      : Math.min(Math.max(timing.previousDelayMs, interval) * BACKOFF_FACTOR, MAX_POLL_DELAY_MS);
  let waitMs = Math.max(0, delay - (timing.sinceLastPollMs ?? timing.sinceSubmitMs));
  if (timing.retryAfterMs !== undefined && timing.retryAfterMs > waitMs) {
    waitMs = Math.min(timing.retryAfterMs, MAX_RETRY_AFTER_MS);
  }
  if (timing.msToDeadline === undefined) return { waitMs, last: false };
  const lastCall = timing.msToDeadline - DEADLINE_MARGIN_MS;
  if (waitMs < lastCall) return { waitMs, last: false };
  // Less time left than the margin: poll at once; a late answer beats none.
  return { waitMs: Math.max(0, lastCall), last: true };
}
