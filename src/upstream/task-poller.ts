import { upstreamErrorMessage, type UpstreamImage } from './upstream-reply.js';
import { nextPoll } from './task-poll-schedule.js';
import { injectTraceHeaders, spanEvent } from '../observability/tracing.js';
import { UpstreamFailure, toGatewayError } from './upstream-failure.js';
import { parseRetryAfter, scrubSecrets, type UpstreamExchange } from './upstream-exchange.js';

export interface TaskPollerOptions {
  baseUrl: string;
  /** Delay between task polls for the first 10 s after submission (see task-poll-schedule.ts). */
  pollIntervalMs: number;
  wait: (ms: number, signal: AbortSignal) => Promise<void>;
  now: () => number;
  /** The upstream keys, cut from anything upstream says. */
  secrets: () => string[];
}

export interface PollHooks {
  /** When UPSTREAM_TIMEOUT_MS runs out (epoch ms): the last poll goes out just before it. */
  deadline?: number;
  onProgress?: (progress: { status: string; progress?: number }) => void;
}

/**
 * Black Forest Labs-style task: Pending until Ready, Error or Moderated. Polled on the schedule of
 * task-poll-schedule.ts. The task is accepted (and may be paid for): every failure here says so.
 */
export class TaskPoller {
  constructor(
    private readonly options: TaskPollerOptions,
    private readonly exchange: UpstreamExchange,
  ) {}

  /**
   * Polls from `acceptedAt` (when upstream accepted the task, or polling resumed) to its end, at the
   * route's poll path (catalogue data, `{task_id}` standing for the id).
   */
  async poll(taskId: string, key: string, signal: AbortSignal, hooks: PollHooks, acceptedAt: number, pollPath = '/v1/tasks/{task_id}'): Promise<UpstreamImage[]> {
    const { wait, now: clock } = this.options;
    const url = new URL(pollPath.replace('{task_id}', encodeURIComponent(taskId)), this.options.baseUrl);
    let lastPollAt: number | undefined;
    let previousDelayMs: number | undefined;
    let retryAfterMs: number | undefined;
    let lastBeforeDeadline = false;
    for (;;) {
      if (lastBeforeDeadline && hooks.deadline !== undefined) {
        // No later poll could be answered in time: wait for the caller's deadline to abort the call.
        await wait(Math.max(0, hooks.deadline - clock()), signal);
        throw new UpstreamFailure('timeout', 'the upstream task was not finished before the deadline');
      }
      const now = clock();
      const next = nextPoll({
        sinceSubmitMs: now - acceptedAt,
        sinceLastPollMs: lastPollAt === undefined ? undefined : now - lastPollAt,
        previousDelayMs,
        intervalMs: this.options.pollIntervalMs,
        msToDeadline: hooks.deadline === undefined ? undefined : hooks.deadline - now,
        retryAfterMs,
      });
      await wait(next.waitMs, signal);
      const sentAt = clock();
      previousDelayMs = sentAt - (lastPollAt ?? acceptedAt);
      lastPollAt = sentAt;
      lastBeforeDeadline = next.last;
      retryAfterMs = undefined;
      let body: Record<string, unknown> | null;
      try {
        const res = await this.exchange.call(url, { method: 'GET', headers: injectTraceHeaders(this.exchange.headers('bearer', key)), signal });
        // Any reply may say when to come back: a 200 Pending as well as a 429 or a 503.
        const retryAfter = parseRetryAfter(res.headers['retry-after']);
        if (retryAfter !== undefined) retryAfterMs = retryAfter * 1000;
        body = (await this.exchange.readJson(res, signal)) as Record<string, unknown> | null;
      } catch (err) {
        // The task is paid for: a passing fault while polling (5xx, throttling, a dropped connection,
        // a garbled reply) is waited out until the deadline, never turned into a failed job.
        if (signal.aborted) throw err;
        const failure = err instanceof UpstreamFailure ? err : undefined;
        const status = failure?.upstreamStatus;
        spanEvent('poll', { 'http.response.status_code': status ?? 0, 'error.type': failure ? toGatewayError(failure).code : 'network' });
        if (status === undefined || status === 200 || status === 429 || status >= 500) continue;
        if (status === 404) body = { status: 'Task not found' };
        else throw failure!.with({ mayHaveBilled: true, otherModelMayServe: false });
      }
      const status = typeof body?.status === 'string' ? body.status : '';
      spanEvent('poll', { 'gateway.upstream.task_status': status });
      if (status === 'Ready') {
        const result = body?.result as Record<string, unknown> | undefined;
        const sample = result?.sample;
        const urls = (Array.isArray(sample) ? sample : [sample]).filter((u): u is string => typeof u === 'string');
        if (urls.length === 0) throw new UpstreamFailure('malformed_reply', 'upstream task finished without an image', { upstreamStatus: 200 });
        return urls.map((u) => ({ url: u }));
      }
      if (/moderated/i.test(status)) {
        throw new UpstreamFailure('moderated', `upstream moderation refused the request (${status})`, { upstreamStatus: 200, mayHaveBilled: true });
      }
      if (status === 'Error' || status === 'Failed' || /not found/i.test(status)) {
        const detail = scrubSecrets(upstreamErrorMessage(body) ?? (typeof body?.details === 'string' ? body.details : JSON.stringify(body?.details ?? '')), ...this.options.secrets());
        throw new UpstreamFailure('task_failed', `upstream task ended with ${status}: ${detail}`, { upstreamStatus: 200, detail });
      }
      // Pending, Queued, Reasoning, Generating, ...: keep waiting.
      if (status) reportProgress(hooks.onProgress, status, body?.progress);
    }
  }
}

/** Tells the caller how a pending task is doing; upstream's progress is passed on as given. */
function reportProgress(onProgress: PollHooks['onProgress'], status: string, progress: unknown): void {
  if (!onProgress) return;
  try {
    onProgress(typeof progress === 'number' && Number.isFinite(progress) ? { status, progress } : { status });
  } catch {
    // An observer's fault must not fail a task already paid for.
  }
}
