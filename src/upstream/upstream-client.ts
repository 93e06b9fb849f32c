import { setTimeout as sleep } from 'node:timers/promises';
import type { HostResolver } from '../images/image-fetch.js';
import type { UpstreamRequest } from './upstream-request.js';
import { normalizeOutput, type UpstreamImage } from './upstream-reply.js';
import { FairQueue, type QueueWaitObserver } from './fair-queue.js';
import { ReplyByteBudget } from './reply-byte-budget.js';
import type { Base64SinkFactory } from './image-reply-parser.js';
import type { StagedImage } from '../images/image-library.js';
import { inSpan } from '../observability/tracing.js';
import { UpstreamFailure } from './upstream-failure.js';
import { UpstreamKeyPool, keyTag } from './upstream-key-pool.js';
import { UpstreamExchange } from './upstream-exchange.js';
import { TaskPoller } from './task-poller.js';
import { ResultDownloader } from './result-downloader.js';

export { keyTag } from './upstream-key-pool.js';
export { parseRetryAfter, scrubSecrets } from './upstream-exchange.js';

export interface UpstreamClientOptions {
  baseUrl: string;
  /** One key, or several to rotate through. */
  apiKeys: string[];
  maxConcurrency: number;
  /** Longest wait for a free upstream slot before a 503. */
  queueTimeoutMs: number;
  /** How often a refused call (upstream 429/503) is tried again. */
  retries: number;
  /** First backoff before a retry; doubles per retry, with jitter, unless upstream sends Retry-After. */
  retryBaseMs: number;
  /** How long a key upstream refused (401/403: bad key, no balance) is set aside. */
  keyCooldownMs: number;
  /** Delay between task polls for the first 10 s after submission (see task-poll-schedule.ts). */
  pollIntervalMs: number;
  maxReplyBytes: number;
  /**
   * Bytes of successful upstream replies received at once (MAX_INFLIGHT_IMAGE_BYTES, see
   * reply-byte-budget.ts); past it, replies wait unread and new calls wait in the queue. Unset: no budget.
   */
  maxInflightImageBytes?: number;
  maxDownloadBytes: number;
  /** How result URLs' host names are resolved under the egress policy (the system resolver by default). */
  resolveHost?: HostResolver;
  /** The pauses: before a retried submission or result download, and between task polls; a test passes one that records the pause and returns at once. */
  wait?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** The clock for the task poll schedule and its deadline (epoch ms); default Date.now, a test passes one it moves in `wait`. */
  now?: () => number;
}

/** For jobs that must survive a restart: learn the task id at once, or pick up a known one. */
export interface TaskHooks {
  /**
   * Called once the request has an upstream slot, just before it is sent; a rejection stops it
   * unsent (a job checks here that it is still its replica's to send).
   */
  onSent?: () => Promise<void> | void;
  /**
   * Called `true` when upstream refused the request unbilled (429, 503) and it waits to be sent
   * again, `false` as it is sent again: a caller leaving meanwhile has nothing in upstream's hands.
   */
  onRetryWait?: (waiting: boolean) => void;
  /** Called as soon as upstream has accepted an asynchronous task, before polling it. */
  onTaskId?: (taskId: string, keyTag: string) => Promise<void>;
  /** Poll this task instead of submitting again: it was submitted (and paid for) before a restart. */
  resumeTaskId?: string;
  /** Whose call this is, for the fair queue (the team). */
  queueOwner?: string;
  /**
   * Where a large base64 image of the reply is written as it arrives (decoded, never held as a
   * string); the image then comes back as `staged`. Without it, replies are parsed whole.
   */
  stageImage?: Base64SinkFactory<StagedImage>;
  /** With resumeTaskId: the tag of the key that submitted the task (tasks belong to an account). */
  resumeKeyTag?: string;
  /**
   * When UPSTREAM_TIMEOUT_MS runs out for this exchange (epoch ms, as Date.now()). Task polls never
   * wait past it: the last one goes out just before it. Without it, polling goes on until aborted.
   */
  deadline?: number;
  /** Called after every poll whose answer is not final, with upstream's progress when it gives a number. */
  onProgress?: (progress: { status: string; progress?: number }) => void;
}

export interface UpstreamResult {
  images: UpstreamImage[];
  usage?: Record<string, unknown>;
  upstreamMs: number;
}

/**
 * Talks to AiHubMix: composes the key pool (upstream-key-pool.ts), one exchange with its retries
 * (upstream-exchange.ts), the task poller (task-poller.ts) and the result downloader
 * (result-downloader.ts) behind a per-replica concurrency cap. Every upstream fault is thrown as an
 * UpstreamFailure (upstream-failure.ts), turned into an HTTP answer only at the edge.
 */
export class UpstreamClient {
  private readonly slots: FairQueue;
  /** Bytes of upstream replies being received (MAX_INFLIGHT_IMAGE_BYTES); read by the metrics. */
  readonly replyBytes: ReplyByteBudget;
  private readonly keys: UpstreamKeyPool;
  private readonly exchange: UpstreamExchange;
  private readonly poller: TaskPoller;
  private readonly downloader: ResultDownloader;
  /** Told how long each call waited for an upstream slot (the metrics set it: they are made after this client). */
  observeQueueWait: QueueWaitObserver | undefined;
  /** Told how long each successful reply waited for room in the budget (set by the metrics, as above). */
  observeReplyWait: ((seconds: number, outcome: 'granted' | 'abandoned') => void) | undefined;

  constructor(private readonly options: UpstreamClientOptions) {
    const wait = (ms: number, signal: AbortSignal) => this.wait(ms, signal);
    this.replyBytes = new ReplyByteBudget(options.maxInflightImageBytes ?? Number.POSITIVE_INFINITY, (seconds, outcome) => this.observeReplyWait?.(seconds, outcome));
    this.slots = new FairQueue(options.maxConcurrency, options.queueTimeoutMs, (seconds, outcome) => this.observeQueueWait?.(seconds, outcome), this.replyBytes);
    this.replyBytes.onRoom(() => this.slots.wake());
    this.keys = new UpstreamKeyPool(options.apiKeys, options.keyCooldownMs);
    this.exchange = new UpstreamExchange(
      {
        baseUrl: options.baseUrl,
        retries: options.retries,
        retryBaseMs: options.retryBaseMs,
        maxReplyBytes: options.maxReplyBytes,
        maxConcurrency: options.maxConcurrency,
        replyBytes: this.replyBytes,
        wait,
      },
      this.keys,
    );
    this.poller = new TaskPoller(
      { baseUrl: options.baseUrl, pollIntervalMs: options.pollIntervalMs, wait, now: () => this.now(), secrets: () => this.keys.secrets },
      this.exchange,
    );
    this.downloader = new ResultDownloader({ baseUrl: options.baseUrl, maxDownloadBytes: options.maxDownloadBytes, resolveHost: options.resolveHost, wait });
  }

  private now(): number {
    return this.options.now ? this.options.now() : Date.now();
  }

  private wait(ms: number, signal: AbortSignal): Promise<void> {
    return this.options.wait ? this.options.wait(ms, signal) : sleep(ms, undefined, { signal });
  }

  get queueDepth(): number {
    return this.slots.waiting;
  }

  async close(): Promise<void> {
    await this.downloader.close();
    await this.exchange.close();
  }

  /** Sends one request and, for a task, polls it to the end; resolves with the images upstream made. */
  async generate(req: UpstreamRequest, signal: AbortSignal, hooks: TaskHooks = {}): Promise<UpstreamResult> {
    const progress = { sent: hooks.resumeTaskId !== undefined };
    try {
      return await this.exchangeAndPoll(req, signal, hooks, progress);
    } catch (err) {
      // Cut off by the caller's deadline (UPSTREAM_TIMEOUT_MS), not by the caller leaving: a timeout.
      // Told by the abort's reason where it is a timeout's: a timer may fire a little before the clock reads the deadline.
      const deadlinePassed = (signal.reason as { name?: unknown } | undefined)?.name === 'TimeoutError' || (hooks.deadline !== undefined && this.now() >= hooks.deadline);
      if (signal.aborted && !(err instanceof UpstreamFailure) && deadlinePassed) {
        throw new UpstreamFailure('timeout', 'no complete upstream answer before the deadline', {
          cause: err,
          ...(progress.sent ? {} : { mayHaveBilled: false }),
        });
      }
      throw err;
    }
  }

  private async exchangeAndPoll(req: UpstreamRequest, signal: AbortSignal, hooks: TaskHooks, progress: { sent: boolean }): Promise<UpstreamResult> {
    const started = performance.now();
    let key: string | undefined;
    let body: unknown;
    if (hooks.resumeTaskId) {
      body = { output: [{ taskId: hooks.resumeTaskId }] };
      key = hooks.resumeKeyTag ? this.keys.byTag(hooks.resumeKeyTag) : undefined;
    } else {
      // The concurrency cap guards submissions; polling a task holds no slot, so long tasks do not starve the rest.
      await inSpan('upstream.queue_wait', { 'gateway.team': hooks.queueOwner ?? '', 'gateway.queue.waiting': this.slots.waiting }, () =>
        this.slots.acquire(hooks.queueOwner ?? '', signal),
      );
      try {
        await hooks.onSent?.();
        progress.sent = true;
        // Refused unbilled (429, 503) and waiting to be sent again: a deadline passing then was not billed.
        const onRetryWait = (waiting: boolean) => {
          progress.sent = !waiting;
          hooks.onRetryWait?.(waiting);
        };
        ({ body, key } = await this.exchange.submit(req, signal, hooks.stageImage, onRetryWait));
      } finally {
        this.slots.release();
      }
    }
    const acceptedAt = this.now();
    const reply = normalizeOutput(body);
    if (!reply) throw new UpstreamFailure('malformed_reply', 'upstream reply carried no images', { upstreamStatus: 200 });
    if (reply.kind === 'task') {
      if (!hooks.resumeTaskId) await hooks.onTaskId?.(reply.taskId, keyTag(key!));
      // A task belongs to the account that submitted it: poll with the same key.
      const pollKey = key ?? this.keys.pick();
      const images = await inSpan('upstream.task_poll', { 'gateway.upstream.task_id': reply.taskId, 'gateway.upstream.resumed': hooks.resumeTaskId !== undefined }, () =>
        this.poller.poll(reply.taskId, pollKey, signal, hooks, acceptedAt, req.taskPollPath),
      );
      return { images, upstreamMs: Math.round(performance.now() - started) };
    }
    if (reply.images.length === 0) {
      if (reply.unsafeCount > 0) {
        throw new UpstreamFailure('moderated', 'upstream moderation withheld every image as unsafe', { upstreamStatus: 200, mayHaveBilled: true });
      }
      throw new UpstreamFailure('malformed_reply', 'upstream reply carried no images', { upstreamStatus: 200 });
    }
    return {
      images: reply.images,
      ...(reply.usage ? { usage: reply.usage } : {}),
      upstreamMs: Math.round(performance.now() - started),
    };
  }

  /**
   * Sends one request whose answer is not images (describe) under the same concurrency cap, key
   * rotation and retries as a generation; resolves with upstream's JSON reply as it is.
   */
  async send(req: UpstreamRequest, signal: AbortSignal, queueOwner = ''): Promise<{ body: unknown; upstreamMs: number }> {
    const started = performance.now();
    await inSpan('upstream.queue_wait', { 'gateway.team': queueOwner, 'gateway.queue.waiting': this.slots.waiting }, () => this.slots.acquire(queueOwner, signal));
    try {
      const { body } = await this.exchange.submit(req, signal);
      return { body, upstreamMs: Math.round(performance.now() - started) };
    } finally {
      this.slots.release();
    }
  }

  /** See ResultDownloader.download. */
  download<T>(url: string, signal: AbortSignal, consume: (body: AsyncIterable<Uint8Array>) => Promise<T>): Promise<T> {
    return this.downloader.download(url, signal, consume);
  }
}
