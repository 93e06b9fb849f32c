import type { FastifyInstance } from 'fastify';
import secureJson from 'secure-json-parse';
import { GatewayError } from '../errors.js';
import { refuseNulInJson } from './nul-characters.js';
import { decodeUtf8, notUtf8Body } from './utf8-text.js';

/** secure-json-parse's words for a key it refuses; any other failure is JSON.parse's own. */
const PROTOTYPE_KEY = 'Object contains forbidden prototype property';

function bodyRefused(message: string): GatewayError {
  return new GatewayError('invalid_request', `the body ${message}`, { details: [{ field: '(body)', message }] });
}

/**
 * A JSON body, parsed as Fastify's own parser does ("__proto__", and "constructor" with a
 * "prototype", refused). That parser answers a syntax error and a refused key in the same words and
 * never says where the syntax broke; here each says what it is, a syntax error with V8's position.
 */
export function parseJsonBody(bytes: Buffer): unknown {
  if (bytes.length === 0) throw bodyRefused('is empty: send a JSON object');
  // JSON is UTF-8: bytes that are not are refused, not read as U+FFFD and sent on (src/http/utf8-text.ts).
  const text = decodeUtf8(bytes);
  if (text === undefined) throw notUtf8Body(bytes);
  let value: unknown;
  try {
    value = secureJson.parse(text, undefined, { protoAction: 'error', constructorAction: 'error' });
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    if (reason === PROTOTYPE_KEY) throw bodyRefused('holds a "__proto__" key, or a "constructor" with a "prototype": the gateway refuses them');
    // V8 quotes the body around the fault (`Unexpected token 'g', "{"key":gk-0123"... is not valid
    // JSON`): a key or a prompt would reach the answer and the log. Only its words and position are kept.
    throw bodyRefused(`is not valid JSON: ${reason.replace(/, (?:\.\.\.)?".*$/s, '').slice(0, 200)}`);
  }
  refuseNulInJson(text, value);
  return value;
}

/**
 * Every route's application/json bodies, within the route's own body limit (Fastify's, as before).
 * Fastify's text/plain parser goes: no route reads text, and a body of any type but JSON or
 * multipart is refused with 415 (src/http/body-types.ts).
 */
export function parseJsonBodies(app: FastifyInstance): void {
  app.removeContentTypeParser(['application/json', 'text/plain']);
  // As bytes: Fastify's string decoding would turn bytes that are not UTF-8 into U+FFFD unseen.
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => {
    try {
      done(null, parseJsonBody(body as Buffer));
    } catch (err) {
      done(err as Error, undefined);
    }
  });
}
