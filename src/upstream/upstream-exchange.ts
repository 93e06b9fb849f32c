import { Agent, FormData, request, type Dispatcher } from 'undici';
import type { UpstreamRequest } from './upstream-request.js';
import { upstreamErrorCode, upstreamErrorMessage } from './upstream-reply.js';
import { LONG_BASE64_BYTES, MalformedReply, ReplyBrokeOff, ReplyTooLarge, parseImageReply, type Base64SinkFactory } from './image-reply-parser.js';
import type { StagedImage } from '../images/image-library.js';
import { SpanKind, injectTraceHeaders, inSpan, spanEvent } from '../observability/tracing.js';
import { UpstreamFailure } from './upstream-failure.js';
import type { UpstreamKeyPool } from './upstream-key-pool.js';
import type { ReplyByteBudget, ReplyReservation } from './reply-byte-budget.js';

/** Retry-After in seconds, from a number of seconds or an HTTP date. */
export function parseRetryAfter(header: string | string[] | undefined): number | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return seconds >= 0 ? Math.ceil(seconds) : undefined;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

/** Things that look like keys are cut from upstream messages before they reach a client or a log. */
export function scrubSecrets(message: string, ...secrets: string[]): string {
  let out = message.replace(/\b(sk|gk)-[A-Za-z0-9_*.-]{4,}/g, '$1-***');
  for (const secret of secrets) if (secret) out = out.split(secret).join('***');
  return out.slice(0, 500);
}

const KEY_PROBLEM = /balance|quota|insufficient|credit|invalid.*key|api key|余额|額度|잔액/i;
const MODERATION_HINT = /moderat|safety|content[_ ]policy|sensitive|nsfw|unsafe/i;
/** How AiHubMix (new-api) says it has no provider for a model: "当前分组 default 下对于模型 x 无可用渠道". */
const NO_CHANNEL = /无可用渠道|no available channel|no channel available|model_not_found|distributor/i;
/**
 * What undici buffers of a reply before it pauses the socket. A reply waiting for room in the
 * in-flight image bytes budget holds this much plus a socket read (~64 KiB): with undici's 64 KiB
 * default, 400 waiting replies held ~100 MB, with 16 KiB half that; reading is no slower (each
 * socket read is one piece either way).
 */
const UNREAD_REPLY_BYTES = 16 * 1024;
/** Connection errors that mean nothing reached upstream. */
const NOT_CONNECTED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT']);

function connectionErrorCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && NOT_CONNECTED.has(code)) return code;
    const nested = (e as { errors?: unknown }).errors;
    if (Array.isArray(nested) && nested.some((n) => NOT_CONNECTED.has((n as { code?: string })?.code ?? ''))) return 'ECONNREFUSED';
  }
  return undefined;
}

export interface UpstreamExchangeOptions {
  baseUrl: string;
  retries: number;
  retryBaseMs: number;
  maxReplyBytes: number;
  maxConcurrency: number;
  /** What a successful reply takes while it is received (MAX_INFLIGHT_IMAGE_BYTES); none when unset. */
  replyBytes?: ReplyByteBudget;
  wait: (ms: number, signal: AbortSignal) => Promise<void>;
}

/**
 * One exchange with upstream: a request sent with the family's auth header, its reply read (large
 * base64 images staged as they stream in) and every failure classified as an UpstreamFailure.
 * Submissions are retried only where no image can have been paid for.
 */
export class UpstreamExchange {
  private readonly dispatcher: Agent;

  constructor(
    private readonly options: UpstreamExchangeOptions,
    private readonly keys: UpstreamKeyPool,
  ) {
    // Keep-alive pool to upstream: most of an exchange's overhead is connection setup otherwise.
    this.dispatcher = new Agent({ keepAliveTimeout: 30_000, connections: Math.max(8, options.maxConcurrency * 2) });
  }

  close(): Promise<void> {
    return this.dispatcher.close();
  }

  headers(auth: 'bearer' | 'api-key', key: string): Record<string, string> {
    return auth === 'api-key' ? { 'api-key': key } : { authorization: `Bearer ${key}` };
  }

  /**
   * Sends with retries, but only where no image can have been paid for: upstream refused the call
   * (429 throttling, 503 no channel) or refused the key (401/403, then the next key is tried).
   */
  submit(
    req: UpstreamRequest,
    signal: AbortSignal,
    stageImage?: Base64SinkFactory<StagedImage>,
    /** Told `true` when upstream refused an attempt unbilled (429, 503) and the next waits, `false` when it is sent. */
    onRetryWait?: (waiting: boolean) => void,
  ): Promise<{ body: unknown; key: string }> {
    const url = new URL(req.path, this.options.baseUrl);
    // One span per submission, its retries as events; named by what it is, the path as an attribute.
    return inSpan(
      'upstream.exchange',
      { 'http.request.method': 'POST', 'server.address': url.hostname, 'url.path': url.pathname },
      (span) =>
        this.submitWithRetries(req, signal, stageImage, onRetryWait).then((sent) => {
          span?.setAttribute('http.response.status_code', 200);
          return sent;
        }),
      { kind: SpanKind.CLIENT },
    );
  }

  private async submitWithRetries(
    req: UpstreamRequest,
    signal: AbortSignal,
    stageImage?: Base64SinkFactory<StagedImage>,
    onRetryWait?: (waiting: boolean) => void,
  ): Promise<{ body: unknown; key: string }> {
    let refusals = 0;
    for (;;) {
      const key = this.keys.pick();
      try {
        return { body: await this.send(req, key, signal, stageImage), key };
      } catch (err) {
        if (!(err instanceof UpstreamFailure) || signal.aborted) throw err;
        const status = err.upstreamStatus;
        if (err.keyRefused && this.keys.size > 1) {
          this.keys.setAside(key);
          spanEvent('retry', { 'gateway.retry.reason': 'upstream refused the key; the next key is tried', 'http.response.status_code': status ?? 0 });
          continue;
        }
        if (status === 429 || status === 503) {
          if (refusals < this.options.retries) {
            refusals++;
            const backoff = this.options.retryBaseMs * 2 ** (refusals - 1);
            const wait = err.retryAfterSeconds !== undefined ? err.retryAfterSeconds * 1000 : backoff / 2 + Math.random() * backoff;
            spanEvent('retry', { 'gateway.retry.attempt': refusals, 'gateway.retry.wait_ms': Math.round(Math.min(wait, 30_000)), 'http.response.status_code': status });
            // Nothing of this request is in upstream's hands while it waits (it refused it unbilled).
            onRetryWait?.(true);
            await this.options.wait(Math.min(wait, 30_000), signal);
            onRetryWait?.(false);
            continue;
          }
          // Out of retries: the client still learns when to come back.
          if (err.retryAfterSeconds === undefined) throw err.with({ retryAfterSeconds: 5 });
        }
        throw err;
      }
    }
  }

  private async send(req: UpstreamRequest, key: string, signal: AbortSignal, stageImage?: Base64SinkFactory<StagedImage>): Promise<unknown> {
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
    const declared = Number(res.headers['content-length'] ?? Number.POSITIVE_INFINITY);
    const succeeded = res.statusCode >= 200 && res.statusCode < 300;
    // An answer that is not an image (a refusal, an error) is small and read at once.
    if (!succeeded || !this.options.replyBytes) return this.readReply(res, signal, declared, stageImage);
    // A reply streamed to staging holds its images' decoded bytes, 3 for every 4 characters of
    // base64 (its staging's write buffers), and what the parser keeps as it is (the JSON around
    // them, a short or escaped string) whole. A reply read whole, or whose sinks keep the text (a
    // `b64_json` answer), holds all of it.
    const streamed = stageImage !== undefined && !stageImage.keepsText && declared >= LONG_BASE64_BYTES;
    const decoded = (bytes: number) => Math.ceil((bytes * 3) / 4);
    const held = streamed ? decoded : (bytes: number) => bytes;
    let reservation: ReplyReservation;
    try {
      // Past the budget the body stays unread (the socket paused) until a reply before it is done.
      reservation = await this.options.replyBytes.reserve(Number.isFinite(declared) ? held(Math.min(declared, this.options.maxReplyBytes)) : 0, signal);
    } catch (err) {
      res.body.destroy();
      throw err;
    }
    try {
      // A reply of unknown length takes its bytes as they arrive.
      const onBytes = Number.isFinite(declared) ? undefined : (bytes: number) => reservation.grow(held(bytes));
      // What was counted at 3 in 4 but is kept whole takes the rest.
      const onKept = streamed ? (bytes: number) => reservation.grow(bytes - decoded(bytes)) : undefined;
      return await this.readReply(res, signal, declared, stageImage, onBytes, onKept);
    } finally {
      reservation.release();
    }
  }

  private readReply(
    res: Dispatcher.ResponseData,
    signal: AbortSignal,
    declared: number,
    stageImage?: Base64SinkFactory<StagedImage>,
    onBytes?: (bytes: number) => void,
    onKept?: (bytes: number) => void,
  ): Promise<unknown> {
    // A reply too short to hold a long base64 string is parsed whole: cheaper than scanning it.
    if (stageImage && res.statusCode >= 200 && res.statusCode < 300 && declared >= LONG_BASE64_BYTES) {
      return this.readImageReply(res, signal, declared, stageImage, onBytes, onKept);
    }
    return this.readJson(res, signal, onBytes);
  }

  /** A successful reply, its large base64 images streamed to `stageImage` (see image-reply-parser.ts). */
  private async readImageReply(
    res: Dispatcher.ResponseData,
    signal: AbortSignal,
    /** Its Content-Length; Infinity when it has none. */
    declared: number,
    stageImage: Base64SinkFactory<StagedImage>,
    onBytes?: (bytes: number) => void,
    onKept?: (bytes: number) => void,
  ): Promise<unknown> {
    const max = this.options.maxReplyBytes;
    const upstreamStatus = res.statusCode;
    if (Number.isFinite(declared) && declared > max) {
      res.body.destroy();
      throw new UpstreamFailure('reply_too_large', `upstream reply is ${declared} bytes, over the ${max} byte limit`, { upstreamStatus });
    }
    try {
      // A declared length bounds each image in the reply: staging sizes its last buffer from it.
      const newSink = Number.isFinite(declared) ? () => stageImage(Math.floor((declared * 3) / 4)) : stageImage;
      const parsed = await parseImageReply(onBytes ? counted(res.body, onBytes) : res.body, newSink, max, onKept);
      signal.throwIfAborted();
      return parsed;
    } catch (err) {
      if (err instanceof MalformedReply) throw new UpstreamFailure('malformed_reply', 'upstream answered with malformed JSON', { upstreamStatus });
      if (err instanceof ReplyTooLarge) throw new UpstreamFailure('reply_too_large', `upstream reply is over the ${max} byte limit`, { upstreamStatus });
      if (err instanceof ReplyBrokeOff) {
        if (signal.aborted) throw err.cause;
        throw new UpstreamFailure('connection_lost', `the upstream reply broke off: ${err.message}`, { upstreamStatus, cause: err.cause });
      }
      throw err;
    }
  }

  /** One HTTP request to upstream; a connection that fails is classified (refused: nothing was sent). */
  async call(url: URL, init: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: string | FormData; signal: AbortSignal }) {
    try {
      return await request(url, { ...init, dispatcher: this.dispatcher, headersTimeout: 0, bodyTimeout: 0, highWaterMark: UNREAD_REPLY_BYTES });
    } catch (err) {
      if (init.signal.aborted) throw err;
      // The cause (with the upstream address) goes to the log only.
      const kind = connectionErrorCode(err) !== undefined ? 'connection_refused' : 'connection_lost';
      throw new UpstreamFailure(kind, 'could not reach upstream', { cause: err });
    }
  }

  private async readBody(res: Dispatcher.ResponseData, max: number, onBytes?: (bytes: number) => void): Promise<Buffer> {
    const declared = Number(res.headers['content-length'] ?? 0);
    if (declared > max) {
      res.body.destroy();
      throw new UpstreamFailure('reply_too_large', `upstream reply is ${declared} bytes, over the ${max} byte limit`, { upstreamStatus: res.statusCode });
    }
    const chunks: Buffer[] = [];
    let total = 0;
    try {
      for await (const chunk of res.body) {
        total += (chunk as Buffer).length;
        onBytes?.((chunk as Buffer).length);
        if (total > max) {
          res.body.destroy();
          throw new UpstreamFailure('reply_too_large', `upstream reply is over the ${max} byte limit`, { upstreamStatus: res.statusCode });
        }
        chunks.push(chunk as Buffer);
      }
    } catch (err) {
      // A reply that breaks off mid-body is upstream's fault (502), not the gateway's (500).
      if (err instanceof UpstreamFailure) throw err;
      throw new UpstreamFailure('connection_lost', 'the upstream reply broke off before its end', { upstreamStatus: res.statusCode, cause: err });
    }
    return Buffer.concat(chunks, total);
  }

  /** A whole JSON reply; a non-2xx is thrown as its failure. `onBytes` is told of each piece as it arrives. */
  async readJson(res: Dispatcher.ResponseData, signal: AbortSignal, onBytes?: (bytes: number) => void): Promise<unknown> {
    const raw = await this.readBody(res, this.options.maxReplyBytes, onBytes);
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
      if (malformed) throw new UpstreamFailure('malformed_reply', 'upstream answered with malformed JSON', { upstreamStatus: status });
      return parsed;
    }
    throw this.failure(status, parsed, res.headers['retry-after']);
  }

  /** What a non-2xx answer means. */
  failure(status: number, body: unknown, retryAfterHeader: string | string[] | undefined): UpstreamFailure {
    const said = scrubSecrets(upstreamErrorMessage(body) ?? `HTTP ${status}`, ...this.keys.secrets);
    const code = upstreamErrorCode(body) ?? '';
    const extra = { upstreamStatus: status, detail: said };
    if (status === 401 || status === 403) {
      // The upstream refused the gateway's own credentials or balance: not the caller's fault.
      const message = `upstream refused the gateway's credentials (HTTP ${status}); an operator must check the upstream key and balance`;
      // 403 also means "this key may not use this model": only a bad key or a spent balance is the key's fault.
      return new UpstreamFailure('auth', message, { ...extra, keyRefused: status === 401 || KEY_PROBLEM.test(said) });
    }
    const retryAfter = parseRetryAfter(retryAfterHeader);
    const retry = retryAfter !== undefined ? { retryAfterSeconds: retryAfter } : {};
    const noChannel = NO_CHANNEL.test(said) || NO_CHANNEL.test(code);
    if (status === 429) return new UpstreamFailure('throttled', 'upstream is throttling requests; retry later', { ...extra, ...retry });
    if (status === 503) {
      return new UpstreamFailure(noChannel ? 'no_channel' : 'unavailable', `upstream is unavailable for this model (HTTP 503): ${said}`, { ...extra, ...retry });
    }
    const moderation = MODERATION_HINT.test(code) || MODERATION_HINT.test(said);
    if (status === 422 && !(typeof body === 'object' && body !== null && Array.isArray((body as Record<string, unknown>).detail))) {
      return new UpstreamFailure('moderated', `upstream moderation refused the request: ${said}`, extra);
    }
    if (status >= 400 && status < 500) {
      if (moderation) return new UpstreamFailure('moderated', `upstream moderation refused the request: ${said}`, extra);
      // Worded so: the console tells the provider's refusal from the gateway's own by it (console/src/failure.ts).
      return new UpstreamFailure('rejected_input', `upstream refused the request: ${said}`, extra);
    }
    return new UpstreamFailure(status >= 500 && noChannel ? 'no_channel' : 'server_error', `upstream failed (HTTP ${status}): ${said}`, extra);
  }
}

/** `body`, each piece counted by `onBytes` as it passes. */
async function* counted(body: AsyncIterable<Uint8Array>, onBytes: (bytes: number) => void): AsyncIterable<Uint8Array> {
  for await (const chunk of body) {
    onBytes(chunk.length);
    yield chunk;
  }
}
