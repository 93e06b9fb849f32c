import { Agent, request, type Dispatcher } from 'undici';
import { GatewayError } from '../errors.js';
import { egressLookup, egressRefusal, egressRefusalOf, type HostResolver } from '../images/image-fetch.js';
import { SpanKind, injectTraceHeaders, inSpan, spanEvent } from '../observability/tracing.js';
import { UpstreamFailure } from './upstream-failure.js';

export interface ResultDownloaderOptions {
  baseUrl: string;
  maxDownloadBytes: number;
  /** How result URLs' host names are resolved under the egress policy (the system resolver by default). */
  resolveHost?: HostResolver;
  wait: (ms: number, signal: AbortSignal) => Promise<void>;
}

/**
 * Fetches the result images upstream names by URL, under the egress policy, capped and briefly
 * retried. Every failure of its own is an UpstreamFailure `download_failed` (the image is made and
 * paid for by then).
 */
export class ResultDownloader {
  /** For result images: redirects are followed by hand, each hop checked. */
  private readonly downloads: Agent;
  private readonly resultHosts: Set<string>;

  constructor(private readonly options: ResultDownloaderOptions) {
    // Result URLs come from upstream replies: the same egress policy as caller-given URLs (no private,
    // loopback or metadata addresses, checked on every connection), except the upstream's own host.
    this.resultHosts = new Set([new URL(options.baseUrl).hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1')]);
    this.downloads = new Agent({ keepAliveTimeout: 30_000, connect: { lookup: egressLookup(this.resultHosts, options.resolveHost) } });
  }

  close(): Promise<void> {
    return this.downloads.close();
  }

  /**
   * Fetches an upstream result URL at once, before it expires, handing the body to `consume` as it
   * arrives (capped at maxDownloadBytes) so a large image is never held whole in memory. A network
   * failure or a 5xx is retried briefly, so `consume` must start afresh on each call.
   */
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
      throw new UpstreamFailure('download_failed', 'upstream returned an image URL that is not a URL');
    }
    if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') {
      throw new UpstreamFailure('download_failed', 'upstream returned an image URL that is not http(s)');
    }
    const max = this.options.maxDownloadBytes;
    // The host only: a result URL's query may be a signature.
    span?.setAttribute('server.address', parsed.hostname);
    let lastError: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        if (attempt > 0) spanEvent('retry', { 'gateway.retry.attempt': attempt });
        const res = await followResult(parsed, signal, this.downloads, this.resultHosts, this.options.resolveHost);
        span?.setAttribute('http.response.status_code', res.statusCode);
        if (res.statusCode !== 200) {
          await res.body.dump();
          // Result URLs are short-lived (Flux: 10 minutes); a 403/404/410 there almost always means expired.
          const cause = [403, 404, 410].includes(res.statusCode) ? ': the upstream image URL has expired or is gone' : '';
          throw new UpstreamFailure('download_failed', `downloading the upstream image failed with HTTP ${res.statusCode}${cause}`, { upstreamStatus: res.statusCode });
        }
        const declared = Number(res.headers['content-length'] ?? 0);
        if (declared > max) {
          res.body.destroy();
          throw new UpstreamFailure('download_failed', `the upstream image is ${declared} bytes, over the ${max} byte limit`, { upstreamStatus: res.statusCode });
        }
        return await consume(capped(res.body, max, res.statusCode));
      } catch (err) {
        if (signal.aborted) throw err;
        lastError = err;
        // Only a dropped connection or a 5xx may heal; an expired URL, an over-size or non-image body will not.
        const known = err instanceof UpstreamFailure || err instanceof GatewayError;
        const retriable = !known || (err.upstreamStatus !== undefined && err.upstreamStatus >= 500);
        // No pause after the last attempt: nothing follows it.
        if (!retriable || attempt === 2) break;
        await this.options.wait(200 * (attempt + 1), signal);
      }
    }
    if (lastError instanceof UpstreamFailure || lastError instanceof GatewayError) throw lastError;
    throw new UpstreamFailure('download_failed', `downloading the upstream image failed: ${(lastError as Error).message}`, { cause: lastError });
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
    if (refusal) throw new UpstreamFailure('download_failed', `upstream returned an image URL the gateway does not fetch: ${refusal}`);
    let res: Dispatcher.ResponseData;
    try {
      res = await request(url, { method: 'GET', signal, dispatcher, headers: injectTraceHeaders({}) });
    } catch (err) {
      // Refused by the connection's own egress check (the name resolves elsewhere now): final, not retried.
      const refused = egressRefusalOf(err);
      if (refused) throw new UpstreamFailure('download_failed', `upstream returned an image URL the gateway does not fetch: ${refused}`, { cause: err });
      throw err;
    }
    const location = res.headers.location;
    if (res.statusCode >= 300 && res.statusCode < 400 && typeof location === 'string') {
      await res.body.dump();
      if (hop >= 3) throw new UpstreamFailure('download_failed', 'the upstream image URL redirects more than 3 times');
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
    if (total > max) throw new UpstreamFailure('download_failed', `the upstream image is over the ${max} byte limit`, { upstreamStatus: status });
    yield chunk;
  }
}
