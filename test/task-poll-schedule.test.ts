import { describe, expect, it } from 'vitest';
import {
  BACKOFF_FACTOR,
  DEADLINE_MARGIN_MS,
  MAX_POLL_DELAY_MS,
  PROMPT_PHASE_MS,
  nextPoll,
  type NextPoll,
  type PollTiming,
} from '../src/upstream/task-poll-schedule.js';

const INTERVAL = 500;

interface Poll {
  /** When the poll was sent, since submission. */
  sentAt: number;
  /** How long after the previous poll (or submission) it was sent. */
  delay: number;
  last: boolean;
}

/**
 * Runs the schedule as pollTask does on a simulated clock: every reply takes `roundTripMs`, and
 * nothing is ever ready. Stops after the last poll before the deadline, or at `untilMs`.
 */
function simulate(opts: { untilMs: number; roundTripMs?: number; deadlineMs?: number; retryAfterMs?: (poll: number) => number | undefined }): Poll[] {
  const roundTrip = opts.roundTripMs ?? 0;
  const polls: Poll[] = [];
  let now = 0;
  for (;;) {
    const previous = polls.at(-1);
    const timing: PollTiming = {
      sinceSubmitMs: now,
      sinceLastPollMs: previous ? now - previous.sentAt : undefined,
      previousDelayMs: previous?.delay,
      intervalMs: INTERVAL,
      msToDeadline: opts.deadlineMs === undefined ? undefined : opts.deadlineMs - now,
      retryAfterMs: previous ? opts.retryAfterMs?.(polls.length - 1) : undefined,
    };
    const next: NextPoll = nextPoll(timing);
    expect(next.waitMs).toBeGreaterThanOrEqual(0);
    const sentAt = now + next.waitMs;
    if (sentAt > opts.untilMs) return polls;
    polls.push({ sentAt, delay: sentAt - (previous?.sentAt ?? 0), last: next.last });
    if (next.last) return polls;
    now = sentAt + roundTrip;
  }
}

describe('the task poll schedule', () => {
  it('sends the first poll at most one interval after submission, counting the time already spent', () => {
    expect(nextPoll({ sinceSubmitMs: 0, intervalMs: INTERVAL })).toEqual({ waitMs: INTERVAL, last: false });
    expect(nextPoll({ sinceSubmitMs: 120, intervalMs: INTERVAL }).waitMs).toBe(INTERVAL - 120);
    // Submission (and noting the task id) took longer than the interval: poll at once.
    expect(nextPoll({ sinceSubmitMs: 900, intervalMs: INTERVAL }).waitMs).toBe(0);
  });

  it('polls every interval or sooner during the first 10 s, whatever the round trip', () => {
    for (const roundTripMs of [0, 30, 200, 700]) {
      const polls = simulate({ untilMs: PROMPT_PHASE_MS, roundTripMs });
      expect(polls[0]!.sentAt).toBeLessThanOrEqual(INTERVAL);
      for (const poll of polls) expect(poll.delay).toBeLessThanOrEqual(Math.max(INTERVAL, roundTripMs));
      // The round trip is not added to the interval: polls keep their pace.
      if (roundTripMs < INTERVAL) expect(polls.length).toBe(PROMPT_PHASE_MS / INTERVAL);
    }
  });

  it('then backs off 1.5x per poll up to 5 s, and stays there', () => {
    const polls = simulate({ untilMs: 120_000 });
    const late = polls.filter((p) => p.sentAt > PROMPT_PHASE_MS);
    expect(late.length).toBeGreaterThan(10);
    // The first delay after the prompt phase grows from the interval.
    expect(late[0]!.delay).toBe(INTERVAL * BACKOFF_FACTOR);
    for (let i = 1; i < late.length; i++) {
      expect(late[i]!.delay).toBe(Math.min(late[i - 1]!.delay * BACKOFF_FACTOR, MAX_POLL_DELAY_MS));
    }
    expect(Math.max(...polls.map((p) => p.delay))).toBe(MAX_POLL_DELAY_MS);
    expect(late.at(-1)!.delay).toBe(MAX_POLL_DELAY_MS);
  });

  it('never lets an interval configured above 5 s stretch the delay past it', () => {
    expect(nextPoll({ sinceSubmitMs: 0, intervalMs: 60_000 }).waitMs).toBe(MAX_POLL_DELAY_MS);
  });

  it('never waits past the deadline: the last poll goes out the margin before it', () => {
    for (const deadlineMs of [300, 1_000, 3_000, 10_100, 17_777, 60_000]) {
      for (const roundTripMs of [0, 40]) {
        const polls = simulate({ untilMs: Number.POSITIVE_INFINITY, deadlineMs, roundTripMs });
        const last = polls.at(-1)!;
        expect(last.last).toBe(true);
        expect(last.sentAt).toBe(deadlineMs - DEADLINE_MARGIN_MS);
        for (const poll of polls) expect(poll.sentAt).toBeLessThan(deadlineMs);
        // Only the very last poll is marked last.
        expect(polls.filter((p) => p.last)).toHaveLength(1);
      }
    }
  });

  it('polls at once, as the last poll, when less than the margin is left', () => {
    const timing = { sinceSubmitMs: 5_000, sinceLastPollMs: 10, previousDelayMs: INTERVAL, intervalMs: INTERVAL };
    expect(nextPoll({ ...timing, msToDeadline: DEADLINE_MARGIN_MS - 50 })).toEqual({ waitMs: 0, last: true });
    expect(nextPoll({ ...timing, msToDeadline: -30 })).toEqual({ waitMs: 0, last: true });
    // Enough time for the plain delay and the margin: an ordinary poll.
    expect(nextPoll({ ...timing, msToDeadline: 2_000 })).toEqual({ waitMs: INTERVAL - 10, last: false });
  });

  it('with no deadline, never marks a poll last', () => {
    const polls = simulate({ untilMs: 200_000 });
    expect(polls.some((p) => p.last)).toBe(false);
  });

  it('honours a Retry-After longer than the schedule', () => {
    const timing = { sinceSubmitMs: 2_000, sinceLastPollMs: 20, previousDelayMs: INTERVAL, intervalMs: INTERVAL };
    expect(nextPoll({ ...timing, retryAfterMs: 3_000 })).toEqual({ waitMs: 3_000, last: false });
    // Shorter than the schedule: the schedule's wait stands.
    expect(nextPoll({ ...timing, retryAfterMs: 100 })).toEqual({ waitMs: INTERVAL - 20, last: false });
    // Past the 5 s ceiling too: upstream asked for it.
    expect(nextPoll({ ...timing, sinceSubmitMs: 30_000, previousDelayMs: MAX_POLL_DELAY_MS, retryAfterMs: 8_000 }).waitMs).toBe(8_000);
  });

  it('clamps a Retry-After by the deadline rule', () => {
    const timing = { sinceSubmitMs: 2_000, sinceLastPollMs: 20, previousDelayMs: INTERVAL, intervalMs: INTERVAL };
    expect(nextPoll({ ...timing, retryAfterMs: 5_000, msToDeadline: 1_000 })).toEqual({ waitMs: 1_000 - DEADLINE_MARGIN_MS, last: true });
    expect(nextPoll({ ...timing, retryAfterMs: 5_000, msToDeadline: 100 })).toEqual({ waitMs: 0, last: true });
    // A Retry-After that still ends before the last moment is kept as it is.
    expect(nextPoll({ ...timing, retryAfterMs: 2_000, msToDeadline: 10_000 })).toEqual({ waitMs: 2_000, last: false });
  });

  it('holds to the deadline when Retry-After comes on every reply', () => {
    const polls = simulate({ untilMs: Number.POSITIVE_INFINITY, deadlineMs: 20_000, retryAfterMs: () => 3_000 });
    // Never sooner than asked; past the prompt phase the backoff may ask for longer still.
    for (let i = 1; i < polls.length - 1; i++) expect(polls[i]!.delay).toBeGreaterThanOrEqual(3_000);
    expect(polls[1]!.delay).toBe(3_000);
    expect(polls.at(-1)).toMatchObject({ sentAt: 20_000 - DEADLINE_MARGIN_MS, last: true });
  });

  it('does not let a far-off Retry-After date stall the task without a deadline', () => {
    const wait = nextPoll({ sinceSubmitMs: 2_000, sinceLastPollMs: 0, previousDelayMs: INTERVAL, intervalMs: INTERVAL, retryAfterMs: 86_400_000 }).waitMs;
    expect(wait).toBeGreaterThan(MAX_POLL_DELAY_MS);
    expect(wait).toBeLessThanOrEqual(60_000);
  });
});
