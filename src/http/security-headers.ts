import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';

/**
 * Headers every answer carries. A browser must not guess a type other than the one sent (an image
 * or JSON read as HTML); API answers are never kept by a cache, shared or not (they carry keys'
 * usage, jobs, image URLs); HTML pages run no script but their own and are never framed.
 */
export const SECURITY_HEADERS = { 'x-content-type-options': 'nosniff' } as const;

/** The policy of an HTML page without inline code of its own. */
const DEFAULT_HTML_CSP = "default-src 'none'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/**
 * The console's policy (its page, modules, styles and API answers): its own files only, no inline
 * script or style, no eval; images also as data: and blob: URLs (previews, painted masks), and from
 * PUBLIC_BASE_URL's origin when it is another (the image URLs point there); never framed.
 */
export function consoleCsp(publicBaseUrl?: string): string {
  const base = publicBaseUrl ? new URL(publicBaseUrl).origin : undefined;
  const also = base ? ` ${base}` : '';
  return [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    `img-src 'self' data: blob:${also}`,
    `connect-src 'self'${also}`,
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
  ].join('; ');
}

/** True for /console and everything under it, judged on the URL the client sent (before /console/api/v1 is routed as /v1). */
function consolePath(request: FastifyRequest): boolean {
  const url = request.originalUrl;
  return url === '/console' || url.startsWith('/console/') || url.startsWith('/console?');
}

const sha256 = (text: string) => `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;

/**
 * The headers of one HTML page: a Content-Security-Policy allowing its own inline `<style>` and
 * `<script>` elements by their hashes (never 'unsafe-inline'), nothing from elsewhere, and no framing.
 */
export function htmlPageHeaders(html: string): Record<string, string> {
  const inline = (tag: string) => [...html.matchAll(new RegExp(`<${tag}(?:\\s[^>]*)?>([\\s\\S]*?)</${tag}>`, 'gi'))].filter((m) => !/\ssrc=/i.test(m[0].slice(0, m[0].indexOf('>')))).map((m) => sha256(m[1]!));
  const styles = inline('style');
  const scripts = inline('script');
  const policy = [
    "default-src 'none'",
    ...(styles.length ? [`style-src ${[...new Set(styles)].join(' ')}`] : []),
    ...(scripts.length ? [`script-src ${[...new Set(scripts)].join(' ')}`] : []),
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
  return { 'content-security-policy': policy, 'x-frame-options': 'DENY' };
}

/**
 * Adds the headers to every answer that goes through Fastify (errors and 404s included): a route's
 * own Cache-Control (image files) and Content-Security-Policy (the docs page) are kept; everything
 * under /console gets the console's policy (consoleCsp). Answers
 * Node writes before any route (a malformed request, a late one) carry them too (connections.ts).
 */
export function securityHeaders(app: FastifyInstance): void {
  const consolePolicy = consoleCsp(app.config.PUBLIC_BASE_URL);
  app.addHook('onSend', (request, reply, payload, done) => {
    reply.header('x-content-type-options', SECURITY_HEADERS['x-content-type-options']);
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store');
    if (consolePath(request)) {
      reply.header('content-security-policy', consolePolicy);
      reply.header('x-frame-options', 'DENY');
      reply.header('referrer-policy', 'same-origin');
      reply.header('cross-origin-opener-policy', 'same-origin');
    }
    if (/^text\/html\b/i.test(String(reply.getHeader('content-type') ?? ''))) {
      if (!reply.hasHeader('content-security-policy')) reply.header('content-security-policy', DEFAULT_HTML_CSP);
      reply.header('x-frame-options', 'DENY');
    }
    done(null, payload);
  });
}
