import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { GatewayError, clipName, errorBody } from '../errors.js';
import { newOutcome } from '../usage/request-outcome.js';
import { SECURITY_HEADERS } from './security-headers.js';
import { CORS_EXPOSED_HEADERS } from './cors.js';

/**
 * How long a path parameter (a job id, an image name, a model id) may be before the router stops
 * matching it: above what Node takes as a request line (16 KiB of headers by default), so every path
 * that reaches the gateway reaches its route, which authenticates it and answers an id that long as
 * it answers any unknown one (`404 not_found` "no job …", quoting it cut by clipName). Fastify's
 * default, 100, answered a longer one with its own 414 body, before authentication.
 */
export const MAX_PARAM_LENGTH = 64 * 1024;

declare module 'fastify' {
  interface FastifyInstance {
    /** Writes the log line, metrics and usage record of an answer the router gave before any hook ran (see frameworkErrors), once it is sent. */
    recordUnroutedAnswer?(request: FastifyRequest, reply: FastifyReply): void;
  }
}

/**
 * The router's own refusals (Fastify's `frameworkErrors`), answered in the contract's error shape
 * instead of Fastify's: a path parameter that is not valid percent-encoding (`/v1/jobs/%zz`) is a
 * `400 invalid_request` naming the path, cut by clipName. They come before any hook, so the answer
 * sets the headers every answer carries itself and is recorded like any other.
 */
export function answerFrameworkError(error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const path = clipName(request.url.split('?', 1)[0]!);
  let gw: GatewayError;
  switch (error.code) {
    case 'FST_ERR_BAD_URL': {
      const message = 'is not a valid URL path: "%" must start a percent-encoded byte of UTF-8 ("%2F", "%C3%A9")';
      gw = new GatewayError('invalid_request', `the path ${path} ${message}`, { details: [{ field: '(path)', message }] });
      break;
    }
    case 'FST_ERR_MAX_PARAM_LENGTH':
      // Past MAX_PARAM_LENGTH (a request built in-process; Node refuses such a request line first): nothing has an id that long.
      gw = new GatewayError('not_found', `no route ${request.method} ${path}: a path segment is over ${MAX_PARAM_LENGTH} characters`);
      break;
    default:
      gw = new GatewayError('internal_error', 'internal error', { cause: error });
  }
  request.outcome = newOutcome();
  request.server.noteFailure?.(request, gw);
  request.server.recordUnroutedAnswer?.(request, reply);
  // As every answer does, this one leaves once its usage record is committed.
  const usageCommitted = request.server.commitUsage?.(request, gw.status) ?? Promise.resolve();
  // No hook ran, so neither did CORS: a listed origin gets its headers here, to read this answer.
  const origin = request.headers.origin;
  if (origin !== undefined && request.server.config.CORS_ORIGINS.includes(origin)) {
    reply.header('access-control-allow-origin', origin).header('vary', 'Origin').header('access-control-expose-headers', CORS_EXPOSED_HEADERS.join(', '));
  }
  void usageCommitted.catch(() => {}).finally(() => reply
    .status(gw.status)
    .header('x-request-id', request.id)
    .headers(SECURITY_HEADERS)
    .header('cache-control', 'no-store')
    .header('content-type', 'application/json; charset=utf-8')
    .send(JSON.stringify(errorBody(gw, request.id))));
}
