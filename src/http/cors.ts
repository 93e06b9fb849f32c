import cors from '@fastify/cors';
import type { FastifyInstance } from 'fastify';
import { GatewayError } from '../errors.js';

/**
 * What a browser page may send: the credentials (a key or a browser token), the body's type, the
 * request's own headers, and W3C trace context (a page traced with OpenTelemetry continues its trace here).
 */
export const CORS_ALLOWED_HEADERS = ['Authorization', 'Content-Type', 'Idempotency-Key', 'X-Request-Id', 'X-Api-Key', 'traceparent', 'tracestate'] as const;

/** The answer's headers a page may read: its id, when to retry, the key's limits, whether an idempotent answer is a replay, and whether a client library may resend it. */
export const CORS_EXPOSED_HEADERS = [
  'x-request-id',
  'retry-after',
  'x-ratelimit-limit',
  'x-ratelimit-remaining',
  'x-ratelimit-reset',
  'x-ratelimit-images-limit',
  'x-ratelimit-images-remaining',
  'x-ratelimit-budget-limit-usd',
  'x-ratelimit-budget-remaining-usd',
  // A browser token's own max_images (POST /v1/tokens).
  'x-ratelimit-token-images-limit',
  'x-ratelimit-token-images-remaining',
  'idempotent-replayed',
  // `false` on a paid_image_lost answer: OpenAI's SDK (in a browser too) then does not resend it on its own.
  'x-should-retry',
] as const;

/** How long (seconds) a browser may keep a preflight's answer. */
export const CORS_MAX_AGE_SECONDS = 600;

/**
 * CORS for the exact origins of CORS_ORIGINS (none: not registered, no CORS headers at all). Added
 * before authentication, so a preflight (OPTIONS with Origin and Access-Control-Request-Method) from
 * a listed origin is answered 204 in its onRequest hook: no key needed, not counted by any limit.
 * An origin not listed gets no CORS headers, and its preflight goes on like any request (401 without
 * a key). No credentials (cookies): a browser sends its token in Authorization.
 */
export async function registerCors(app: FastifyInstance, origins: readonly string[]): Promise<void> {
  if (origins.length === 0) return;
  const listed = new Set(origins);
  // Refused in the gateway's error shape, where @fastify/cors would answer a bare text/plain 400.
  app.addHook('onRequest', async (request) => {
    const origin = request.headers.origin;
    if (request.method !== 'OPTIONS' || origin === undefined || !listed.has(origin) || request.headers['access-control-request-method'] !== undefined) return;
    throw new GatewayError('invalid_request', 'an OPTIONS request from a browser origin is a CORS preflight: it needs an Access-Control-Request-Method header (GET, POST or DELETE)', {
      details: [{ field: 'Access-Control-Request-Method', message: 'required in a preflight' }],
    });
  });
  await app.register(cors, {
    // A function, not the list: with a list, @fastify/cors would still answer an unlisted origin's preflight (without Allow-Origin).
    origin: (origin, callback) => callback(null, origin !== undefined && listed.has(origin)),
    methods: ['GET', 'POST', 'DELETE'],
    allowedHeaders: [...CORS_ALLOWED_HEADERS],
    exposedHeaders: [...CORS_EXPOSED_HEADERS],
    credentials: false,
    maxAge: CORS_MAX_AGE_SECONDS,
    strictPreflight: true,
    hideOptionsRoute: true,
  });
}
