import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, FormData, request, type Dispatcher } from 'undici';
import { GatewayError } from '../errors.js';
import { egressLookup, egressRefusal, egressRefusalOf, type HostResolver } from '../images/image-fetch.js';
import type { UpstreamRequest } from './upstream-request.js';
import { normalizeOutput, upstreamErrorCode, upstreamErrorMessage, type UpstreamImage } from './upstream-reply.js';
import { FairQueue, type QueueWaitObserver } from './fair-queue.js';
import { LONG_BASE64_BYTES, MalformedReply, ReplyBrokeOff, ReplyTooLarge, parseImageReply, type Base64SinkFactory } from './image-reply-parser.js';
import type { StagedImage } from '../images/image-library.js';
import { nextPoll } from './task-poll-schedule.js';
import { SpanKind, injectTraceHeaders, inSpan, spanEvent } from '../observability/tracing.js';

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

/** A short, non-reversible name for an upstream key, safe to store beside a task id. */
export function keyTag(key: string): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 16);
}

export interface UpstreamResult {
  images: UpstreamImage[];
  usage?: Record<string, unknown>;
  upstreamMs: number;
}

/** Retry-After in seconds, from a number of seconds or an HTTP date. */
export function parseRetryAfter(header: string | string[] | undefined): number | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return seconds >= 0 ? Math.ceil(seconds) : undefined;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

const KEY_PROBLEM = /balance|quota|insufficient|credit|invalid.*key|api key|余额|額度|잔액/i;

/** Upstream refused the key itself (invalid, or its balance is spent): the next key may do. */
class UpstreamKeyRefused extends GatewayError {
  constructor(message: string, extra: { upstreamStatus: number }) {
    super('upstream_error', message, extra);
  }
}

const MODERATION_HINT = /moderat|safety|content[_ ]policy|sensitive|nsfw|unsafe/i;

/** Things that look like keys are cut from upstream messages before they reach a client or a log. */
export function scrubSecrets(message: string, ...secrets: string[]): string {
  let out = message.replace(/\b(sk|gk)-[A-Za-z0-9_*.-]{4,}/g, '$1-***');
  for (const secret of secrets) if (secret) out = out.split(secret).join('***');
  return out.slice(0, 500);
}

/**
 * Talks to AiHubMix: adds the key in the family's header, caps concurrency per replica, polls async
 * tasks, and maps every upstream failure to the gateway's error codes.
 */
export class UpstreamClient {
  private readonly dispatcher: Agent;
  /** For result images: redirects are followed by hand, each hop checked. */
  private readonly downloads: Agent;
  private readonly resultHosts: Set<string>;
  private readonly slots: FairQueue;
  private readonly keys: Array<{ key: string; setAsideUntil: number }>;
  private nextKey = 0;
  /** Told how long each call waited for an upstream slot (the metrics set it: they are made after this client). */
  observeQueueWait: QueueWaitObserver | undefined;

  constructor(private readonly options: UpstreamClientOptions) {
    // Keep-alive pool to upstream: most of an exchange's overhead is connection setup otherwise.
    this.dispatcher = new Agent({ keepAliveTimeout: 30_000, connections: Math.max(8, options.maxConcurrency * 2) });
    // Result URLs come from upstream replies: the same egress policy as caller-given URLs (no private,
    // loopback or metadata addresses, checked on every connection), except the upstream's own host.
    this.resultHosts = new Set([new URL(options.baseUrl).hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1')]);
    this.downloads = new Agent({ keepAliveTimeout: 30_000, connect: { lookup: egressLookup(this.resultHosts, options.resolveHost) } });
    this.slots = new FairQueue(options.maxConcurrency, options.queueTimeoutMs, (seconds, outcome) => this.observeQueueWait?.(seconds, outcome));
    this.keys = options.apiKeys.map((key) => ({ key, setAsideUntil: 0 }));
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
    await this.downloads.close();
    await this.dispatcher.close();
  }

  /** The next key in rotation that upstream has not recently refused. */
  private pickKey(): string {
    const now = Date.now();
    for (let i = 0; i < this.keys.length; i++) {
      const candidate = this.keys[(this.nextKey + i) % this.keys.length]!;
      if (candidate.setAsideUntil <= now) {
        this.nextKey = (this.nextKey + i + 1) % this.keys.length;
        return candidate.key;
      }
    }
    throw new GatewayError('upstream_error', 'upstream has refused every configured upstream key recently (HTTP 401/403); an operator must check the keys and balance');
  }

  private setAside(key: string): void {
    const entry = this.keys.find((k) => k.key === key);
    if (entry) entry.setAsideUntil = Date.now() + this.options.keyCooldownMs;
  }

  private headers(auth: 'bearer' | 'api-key', key: string): Record<string, string> {
    return auth === 'api-key' ? { 'api-key': key } : { authorization: `Bearer ${key}` };
  }

  /** Sends one request and, for a task, polls it to the end; resolves with the images upstream made. */
  async generate(req: UpstreamRequest, signal: AbortSignal, hooks: TaskHooks = {}): Promise<UpstreamResult> {
    const started = performance.now();
    let key: string | undefined;
    let body: unknown;
    if (hooks.resumeTaskId) {
      body = { output: [{ taskId: hooks.resumeTaskId }] };
      key = hooks.resumeKeyTag ? this.keyByTag(hooks.resumeKeyTag) : undefined;
    } else {
      // The concurrency cap guards submissions; polling a task holds no slot, so long tasks do not starve the rest.
      await inSpan('upstream.queue_wait', { 'gateway.team': hooks.queueOwner ?? '', 'gateway.queue.waiting': this.slots.waiting }, () =>
        this.slots.acquire(hooks.queueOwner ?? '', signal),
      );
      try {
        await hooks.onSent?.();
        ({ body, key } = await this.submit(req, signal, hooks.stageImage));
      } finally {
        this.slots.release();
      }
    }
    const acceptedAt = this.now();
    const reply = normalizeOutput(body);
    if (!reply) throw new GatewayError('upstream_error', 'upstream reply carried no images', { upstreamStatus: 200 });
    if (reply.kind === 'task') {
      if (!hooks.resumeTaskId) await hooks.onTaskId?.(reply.taskId, keyTag(key!));
      // A task belongs to the account that submitted it: poll with the same key.
      const pollKey = key ?? this.pickKey();
      const images = await inSpan('upstream.task_poll', { 'gateway.upstream.task_id': reply.taskId, 'gateway.upstream.resumed': hooks.resumeTaskId !== undefined }, () =>
        this.pollTask(reply.taskId, pollKey, signal, hooks, acceptedAt),
      );
      return { images, upstreamMs: Math.round(performance.now() - started) };
    }
    if (reply.images.length === 0) {
      if (reply.unsafeCount > 0) {
        throw new GatewayError('content_rejected', 'upstream moderation withheld every image as unsafe', { upstreamStatus: 200 });
      }
      throw new GatewayError('upstream_error', 'upstream reply carried no images', { upstreamStatus: 200 });
    }
    return {
      images: reply.images,
      ...(reply.usage ? { usage: reply.usage } : {}),
      upstreamMs: Math.round(performance.now() - started),
    };
  }

  /** The configured key with this tag, if it is still configured. */
  private keyByTag(tag: string): string | undefined {
    return this.keys.find((k) => keyTag(k.key) === tag)?.key;
  }

  /**
   * Sends with retries, but only where no image can have been paid for: upstream refused the call
   * (429 throttling, 503 no channel) or refused the key (401/403, then the next key is tried).
   */
  private submit(req: UpstreamRequest, signal: AbortSignal, stageImage?: Base64SinkFactory<StagedImage>): Promise<{ body: unknown; key: string }> {
    const url = new URL(req.path, this.options.baseUrl);
    // One span per submission, its retries as events; named by what it is, the path as an attribute.
    return inSpan(
      'upstream.exchange',
      { 'http.request.method': 'POST', 'server.address': url.hostname, 'url.path': url.pathname },
      (span) =>
        this.submitWithRetries(req, signal, stageImage).then((sent) => {
          span?.setAttribute('http.response.status_code', 200);
          return sent;
        }),
      { kind: SpanKind.CLIENT },
    );
  }

  private async submitWithRetries(req: UpstreamRequest, signal: AbortSignal, stageImage?: Base64SinkFactory<StagedImage>): Promise<{ body: unknown; key: string }> {
    let refusals = 0;
    for (;;) {
      const key = this.pickKey();
      try {
        return { body: await this.exchange(req, key, signal, stageImage), key };
      } catch (err) {
        if (!(err instanceof GatewayError) || signal.aborted) throw err;
        const status = err.upstreamStatus;
        if (err instanceof UpstreamKeyRefused && this.keys.length > 1) {
          this.setAside(key);
          spanEvent('retry', { 'gateway.retry.reason': 'upstream refused the key; the next key is tried', 'http.response.status_code': status ?? 0 });
          continue;
        }
        if (status === 429 || status === 503) {
          if (refusals < this.options.retries) {
            refusals++;
            const backoff = this.options.retryBaseMs * 2 ** (refusals - 1);
            const wait = err.retryAfter !== undefined ? err.retryAfter * 1000 : backoff / 2 + Math.random() * backoff;
            spanEvent('retry', { 'gateway.retry.attempt': refusals, 'gateway.retry.wait_ms': Math.round(Math.min(wait, 30_000)), 'http.response.status_code': status });
            await this.wait(Math.min(wait, 30_000), signal);
            continue;
          }
          // Out of retries: the client still learns when to come back.
          if (err.retryAfter === undefined) {
            throw new GatewayError(err.code, err.message, { upstreamStatus: status, retryAfter: 5, details: err.details });
          }
        }
        throw err;
      }
    }
  }

  private async exchange(req: UpstreamRequest, key: string, signal: AbortSignal, stageImage?: Base64SinkFactory<StagedImage>): Promise<unknown> {
    const url = new URL(req.path, this.options.baseUrl);
    let body: string | FormData;
    const headers = injectTraceHeaders(this.headers(req.auth, key));
    if (req.body.kind === 'json') {
      body = JSON.stringify(req.body.value);
      headers['content-type'] = 'application/json';
    } else {
      const form = new FormData();
      for (const [name, value] of req.body.fields) form.append(name, value);
      for (const file of req.body.files) form.append(file.field, new Blob([file.bytes as Uint8Array<ArrayBuffer>], { type: file.mime }), file.filename);
      body = form;
    }
    const res = await this.call(url, { method: 'POST', headers, body, signal });
    // A reply too short to hold a long base64 string is parsed whole: cheaper than scanning it.
    const declared = Number(res.headers['content-length'] ?? Number.POSITIVE_INFINITY);
    if (stageImage && res.statusCode >= 200 && res.statusCode < 300 && declared >= LONG_BASE64_BYTES) {
      return this.readImageReply(res, signal, stageImage);
    }
    return this.readJson(res, signal);
  }

  /** A successful reply, its large base64 images streamed to `stageImage` (see image-reply-parser.ts). */
  private async readImageReply(res: Dispatcher.ResponseData, signal: AbortSignal, stageImage: Base64SinkFactory<StagedImage>): Promise<unknown> {
    const max = this.options.maxReplyBytes;
    const upstreamStatus = res.statusCode;
    if (Number(res.headers['content-length'] ?? 0) > max) {
      res.body.destroy();
      throw new GatewayError('upstream_error', `upstream reply is ${res.headers['content-length']} bytes, over the ${max} byte limit`, { upstreamStatus });
    }
    try {
      const parsed = await parseImageReply(res.body, stageImage, max);
      signal.throwIfAborted();
      return parsed;
    } catch (err) {
      if (err instanceof MalformedReply) throw new GatewayError('upstream_error', 'upstream answered with malformed JSON', { upstreamStatus });
      if (err instanceof ReplyTooLarge) throw new GatewayError('upstream_error', `upstream reply is over the ${max} byte limit`, { upstreamStatus });
      if (err instanceof ReplyBrokeOff) {
        if (signal.aborted) throw err.cause;
        throw new GatewayError('upstream_error', `the upstream reply broke off: ${err.message}`, { upstreamStatus, cause: err.cause });
      }
      throw err;
    }
  }

  private async call(url: URL, init: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: string | FormData; signal: AbortSignal }) {
    try {
      return await request(url, { ...init, dispatcher: this.dispatcher, headersTimeout: 0, bodyTimeout: 0 });
    } catch (err) {
      if (init.signal.aborted) throw err;
      // The cause (with the upstream address) goes to the log only.
      throw new GatewayError('upstream_error', 'could not reach upstream', { cause: err });
    }
  }

  private async readBody(res: Dispatcher.ResponseData, max: number): Promise<Buffer> {
    const declared = Number(res.headers['content-length'] ?? 0);
    if (declared > max) {
      res.body.destroy();
      throw new GatewayError('upstream_error', `upstream reply is ${declared} bytes, over the ${max} byte limit`, { upstreamStatus: res.statusCode });
    }
    const chunks: Buffer[] = [];
    let total = 0;
    try {
      for await (const chunk of res.body) {
        total += (chunk as Buffer).length;
        if (total > max) {
          res.body.destroy();
          throw new GatewayError('upstream_error', `upstream reply is over the ${max} byte limit`, { upstreamStatus: res.statusCode });
        }
        chunks.push(chunk as Buffer);
      }
    } catch (err) {
      // A reply that breaks off mid-body is upstream's fault (502), not the gateway's (500).
      if (err instanceof GatewayError) throw err;
      throw new GatewayError('upstream_error', 'the upstream reply broke off before its end', { upstreamStatus: res.statusCode, cause: err });
    }
    return Buffer.concat(chunks, total);
  }

  private async readJson(res: Dispatcher.ResponseData, signal: AbortSignal): Promise<unknown> {
    const raw = await this.readBody(res, this.options.maxReplyBytes);
    signal.throwIfAborted();
    let parsed: unknown;
    let malformed = false;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch {
      malformed = true;
    }
    const status = res.statusCode;
    if (status >= 200 && status < 300) {
      if (malformed) throw new GatewayError('upstream_error', 'upstream answered with malformed JSON', { upstreamStatus: status });
      return parsed;
    }
    throw this.failure(status, parsed, res.headers['retry-after']);
  }

  private failure(status: number, body: unknown, retryAfterHeader: string | string[] | undefined): GatewayError {
    const said = scrubSecrets(upstreamErrorMessage(body) ?? `HTTP ${status}`, ...this.options.apiKeys);
    const code = upstreamErrorCode(body) ?? '';
    const extra = { upstreamStatus: status };
    if (status === 401 || status === 403) {
      // The upstream refused the gateway's own credentials or balance: not the caller's fault.
      const message = `upstream refused the gateway's credentials (HTTP ${status}); an operator must check the upstream key and balance`;
      // 403 also means "this key may not use this model": only a bad key or a spent balance is the key's fault.
      return status === 401 || KEY_PROBLEM.test(said) ? new UpstreamKeyRefused(message, extra) : new GatewayError('upstream_error', message, extra);
    }
    const retryAfter = parseRetryAfter(retryAfterHeader);
    if (status === 429) {
      return new GatewayError('rate_limited', 'upstream is throttling requests; retry later', {
        ...extra,
        ...(retryAfter !== undefined ? { retryAfter } : {}),
      });
    }
    if (status === 503) {
      return new GatewayError('upstream_error', `upstream is unavailable for this model (HTTP 503): ${said}`, {
        ...extra,
        ...(retryAfter !== undefined ? { retryAfter } : {}),
      });
    }
    const moderation = MODERATION_HINT.test(code) || MODERATION_HINT.test(said);
    if (status === 422 && !(typeof body === 'object' && body !== null && Array.isArray((body as Record<string, unknown>).detail))) {
      return new GatewayError('content_rejected', `upstream moderation refused the request: ${said}`, extra);
    }
    if (status >= 400 && status < 500) {
      if (moderation) return new GatewayError('content_rejected', `upstream moderation refused the request: ${said}`, extra);
      return new GatewayError('invalid_request', `upstream refused the request: ${said}`, {
        ...extra,
        details: [{ message: said }],
      });
    }
    return new GatewayError('upstream_error', `upstream failed (HTTP ${status}): ${said}`, extra);
  }

  /**
   * Black Forest Labs-style task: Pending until Ready, Error or Moderated. Polled on the schedule of
   * task-poll-schedule.ts, from `acceptedAt` (when upstream accepted the task, or polling resumed).
   */
  private async pollTask(taskId: string, key: string, signal: AbortSignal, hooks: TaskHooks, acceptedAt: number): Promise<UpstreamImage[]> {
    const url = new URL(`/v1/tasks/${encodeURIComponent(taskId)}`, this.options.baseUrl);
    let lastPollAt: number | undefined;
    let previousDelayMs: number | undefined;
    let retryAfterMs: number | undefined;
    let lastBeforeDeadline = false;
    for (;;) {
      if (lastBeforeDeadline && hooks.deadline !== undefined) {
        // No later poll could be answered in time: wait for the caller's deadline to abort the call.
        await this.wait(Math.max(0, hooks.deadline - this.now()), signal);
        throw new GatewayError('upstream_timeout', 'the upstream task was not finished before the deadline');
      }
      const now = this.now();
      const next = nextPoll({
        sinceSubmitMs: now - acceptedAt,
        sinceLastPollMs: lastPollAt === undefined ? undefined : now - lastPollAt,
        previousDelayMs,
        intervalMs: this.options.pollIntervalMs,
        msToDeadline: hooks.deadline === undefined ? undefined : hooks.deadline - now,
        retryAfterMs,
      });
      await this.wait(next.waitMs, signal);
      const sentAt = this.now();
      previousDelayMs = sentAt - (lastPollAt ?? acceptedAt);
      lastPollAt = sentAt;
      lastBeforeDeadline = next.last;
      retryAfterMs = undefined;
      let body: Record<string, unknown> | null;
      try {
        const res = await this.call(url, { method: 'GET', headers: injectTraceHeaders(this.headers('bearer', key)), signal });
        // Any reply may say when to come back: a 200 Pending as well as a 429 or a 503.
        const retryAfter = parseRetryAfter(res.headers['retry-after']);
        if (retryAfter !== undefined) retryAfterMs = retryAfter * 1000;
        body = (await this.readJson(res, signal)) as Record<string, unknown> | null;
      } catch (err) {
        // The task is paid for: a passing fault while polling (5xx, throttling, a dropped connection,
        // a garbled reply) is waited out until the deadline, never turned into a failed job.
        if (signal.aborted) throw err;
        const status = err instanceof GatewayError ? err.upstreamStatus : undefined;
        spanEvent('poll', { 'http.response.status_code': status ?? 0, 'error.type': err instanceof GatewayError ? err.code : 'network' });
        if (status === undefined || status === 200 || status === 429 || status >= 500) continue;
        if (status === 404) body = { status: 'Task not found' };
        else throw err;
      }
      const status = typeof body?.status === 'string' ? body.status : '';
      spanEvent('poll', { 'gateway.upstream.task_status': status });
      if (status === 'Ready') {
        const result = body?.result as Record<string, unknown> | undefined;
        const sample = result?.sample;
        const urls = (Array.isArray(sample) ? sample : [sample]).filter((u): u is string => typeof u === 'string');
        if (urls.length === 0) throw new GatewayError('upstream_error', 'upstream task finished without an image', { upstreamStatus: 200 });
        return urls.map((u) => ({ url: u }));
      }
      if (/moderated/i.test(status)) {
        throw new GatewayError('content_rejected', `upstream moderation refused the request (${status})`, { upstreamStatus: 200 });
      }
      if (status === 'Error' || status === 'Failed' || /not found/i.test(status)) {
        const detail = upstreamErrorMessage(body) ?? (typeof body?.details === 'string' ? body.details : JSON.stringify(body?.details ?? ''));
        throw new GatewayError('upstream_error', `upstream task ended with ${status}: ${scrubSecrets(detail, ...this.options.apiKeys)}`, { upstreamStatus: 200 });
      }
      // Pending, Queued, Reasoning, Generating, ...: keep waiting.
      if (status) reportProgress(hooks.onProgress, status, body?.progress);
    }
  }

  /**
   * Fetches an upstream result URL at once, before it expires, handing the body to `consume` as it
   * arrives (capped at maxDownloadBytes) so a large image is never held whole in memory. A network
   * failure or a 5xx is retried briefly, so `consume` must start afresh on each call.
   */
  private fetchResult(url: URL, signal: AbortSignal): Promise<Dispatcher.ResponseData> {
    return followResult(url, signal, this.downloads, this.resultHosts, this.options.resolveHost);
  }

  download<T>(url: string, signal: AbortSignal, consume: (body: AsyncIterable<Uint8Array>) => Promise<T>): Promise<T> {
    return inSpan('upstream.download', {}, (span) => this.downloadOnce(url, signal, consume, span), { kind: SpanKind.CLIENT });
  }

  private async downloadOnce<T>(
    url: string,
    signal: AbortSignal,
    consume: (body: AsyncIterable<Uint8Array>) => Promise<T>,
    span: { setAttribute(key: string, value: string | number): unknown } | undefined,
  ): Promise<T> {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new GatewayError('upstream_error', 'upstream returned an image URL that is not a URL');
    }
    if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') {
      throw new GatewayError('upstream_error', 'upstream returned an image URL that is not http(s)');
    }
    const max = this.options.maxDownloadBytes;
    // The host only: a result URL's query may be a signature.
    span?.setAttribute('server.address', parsed.hostname);
    let lastError: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        if (attempt > 0) spanEvent('retry', { 'gateway.retry.attempt': attempt });
        const res = await this.fetchResult(parsed, signal);
        span?.setAttribute('http.response.status_code', res.statusCode);
        if (res.statusCode !== 200) {
          await res.body.dump();
          // Result URLs are short-lived (Flux: 10 minutes); a 403/404/410 there almost always means expired.
          const cause = [403, 404, 410].includes(res.statusCode) ? ': the upstream image URL has expired or is gone' : '';
          throw new GatewayError('upstream_error', `downloading the upstream image failed with HTTP ${res.statusCode}${cause}`, { upstreamStatus: res.statusCode });
        }
        const declared = Number(res.headers['content-length'] ?? 0);
        if (declared > max) {
          res.body.destroy();
          throw new GatewayError('upstream_error', `the upstream image is ${declared} bytes, over the ${max} byte limit`, { upstreamStatus: res.statusCode });
        }
        return await consume(capped(res.body, max, res.statusCode));
      } catch (err) {
        if (signal.aborted) throw err;
        lastError = err;
        // Only a dropped connection or a 5xx may heal; an expired URL, an over-size or non-image body will not.
        const retriable = !(err instanceof GatewayError) || (err.upstreamStatus !== undefined && err.upstreamStatus >= 500);
        // No pause after the last attempt: nothing follows it.
        if (!retriable || attempt === 2) break;
        await this.wait(200 * (attempt + 1), signal);
      }
    }
    if (lastError instanceof GatewayError) throw lastError;
    throw new GatewayError('upstream_error', `downloading the upstream image failed: ${(lastError as Error).message}`, { cause: lastError });
  }
}

/** Tells the caller how a pending task is doing; upstream's progress is passed on as given. */
function reportProgress(onProgress: TaskHooks['onProgress'], status: string, progress: unknown): void {
  if (!onProgress) return;
  try {
    onProgress(typeof progress === 'number' && Number.isFinite(progress) ? { status, progress } : { status });
  } catch {
    // An observer's fault must not fail a task already paid for.
  }
}

/** A result URL that redirects (a CDN): at most 3 hops, each one checked against the egress policy. */
async function followResult(
  url: URL,
  signal: AbortSignal,
  dispatcher: Dispatcher,
  allowedHosts: ReadonlySet<string>,
  resolveHost?: HostResolver,
): Promise<Dispatcher.ResponseData> {
  for (let hop = 0; ; hop++) {
    const refusal = await egressRefusal(url, allowedHosts, resolveHost);
    if (refusal) throw new GatewayError('upstream_error', `upstream returned an image URL the gateway does not fetch: ${refusal}`);
    let res: Dispatcher.ResponseData;
    try {
      res = await request(url, { method: 'GET', signal, dispatcher, headers: injectTraceHeaders({}) });
    } catch (err) {
      // Refused by the connection's own egress check (the name resolves elsewhere now): final, not retried.
      const refused = egressRefusalOf(err);
      if (refused) throw new GatewayError('upstream_error', `upstream returned an image URL the gateway does not fetch: ${refused}`, { cause: err });
      throw err;
    }
    const location = res.headers.location;
    if (res.statusCode >= 300 && res.statusCode < 400 && typeof location === 'string') {
      await res.body.dump();
      if (hop >= 3) throw new GatewayError('upstream_error', 'the upstream image URL redirects more than 3 times');
      url = new URL(location, url);
      continue;
    }
    return res;
  }
}

/** The body, failing once it passes `max` bytes (a missing or false Content-Length is not trusted). */
async function* capped(body: AsyncIterable<Uint8Array>, max: number, status: number): AsyncIterable<Uint8Array> {
  let total = 0;
  for await (const chunk of body) {
    total += chunk.length;
    if (total > max) throw new GatewayError('upstream_error', `the upstream image is over the ${max} byte limit`, { upstreamStatus: status });
    yield chunk;
  }
}
