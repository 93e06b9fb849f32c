import type { FastifyInstance, FastifyRequest } from 'fastify';
import { GatewayError } from '../errors.js';

/** The body types a route reads: JSON (src/http/json-body.ts) and multipart (@fastify/multipart, read by the route). */
export type BodyType = 'application/json' | 'multipart/form-data';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The body types the route reads, in the order its refusal names them; application/json alone when not given. */
    bodyTypes?: readonly BodyType[];
  }
}

const JSON_ONLY: readonly BodyType[] = ['application/json'];
/** The methods whose routes read a body; a DELETE's body is no part of its request, and is left to Fastify. */
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH']);

/** The body types `request`'s route reads. */
export function bodyTypesOf(request: FastifyRequest): readonly BodyType[] {
  return request.routeOptions.config?.bodyTypes ?? JSON_ONLY;
}

/** Whether `request` carries a body (a Content-Type, or a length or chunked encoding), as Fastify decides whether to parse one. */
function carriesBody(request: FastifyRequest): boolean {
  const { headers } = request;
  return headers['content-type'] !== undefined || headers['transfer-encoding'] !== undefined || (headers['content-length'] !== undefined && headers['content-length'] !== '0');
}

/**
 * 415 for a body the route does not read, naming the route, the type sent and the types it reads;
 * also what a route answers when it needs a body and was sent none.
 */
export function wrongBodyType(request: FastifyRequest): GatewayError {
  const allowed = [...bodyTypesOf(request)];
  const route = `${request.method} ${request.routeOptions.url ?? request.url.split('?', 1)[0]}`;
  const takes = allowed.join(' or ');
  const header = request.headers['content-type'];
  const sent = typeof header === 'string' ? header.split(';', 1)[0]!.trim().slice(0, 100) : '';
  if (sent === '') {
    return new GatewayError('unsupported_media_type', `the request has no Content-Type: ${route} takes ${takes}`, {
      details: [{ field: 'Content-Type', message: `is missing; send ${takes}`, allowed }],
    });
  }
  return new GatewayError('unsupported_media_type', `the body's Content-Type (${sent}) is not one ${route} reads: send ${takes}`, {
    details: [{ field: 'Content-Type', message: `is ${sent}; send ${takes}`, allowed }],
  });
}

/**
 * Every route that reads a body refuses any other type with 415 before the body is read (after
 * authentication, before the rate limit): Fastify's text/plain parser is removed (json-body.ts), and
 * a multipart body to a JSON route is refused here rather than reaching it as no body at all.
 */
export function refuseOtherBodyTypes(app: FastifyInstance): void {
  app.addHook('preParsing', async (request, _reply, payload) => {
    // A request for no route is answered 404 whatever its body.
    if (request.is404) return payload;
    // An empty DELETE body with a Content-Type (browsers' fetch(url, {method: 'DELETE', body: ''})) is no body: Fastify would otherwise try to parse it.
    const length = request.headers['content-length'];
    if (!BODY_METHODS.has(request.method) && (length === undefined || length === '0') && request.headers['transfer-encoding'] === undefined) {
      delete request.headers['content-type'];
    }
    if (!BODY_METHODS.has(request.method) || !carriesBody(request)) return payload;
    const header = request.headers['content-type'];
    const type = typeof header === 'string' ? header.split(';', 1)[0]!.trim().toLowerCase() : '';
    if (!(bodyTypesOf(request) as readonly string[]).includes(type)) throw wrongBodyType(request);
    return payload;
  });
}
