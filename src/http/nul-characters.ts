import type { FastifyInstance } from 'fastify';
import { clipName, invalidField } from '../errors.js';

/**
 * The NUL character (U+0000) in a client's text: PostgreSQL cannot store it in a text column (it
 * fails the statement, which answered 500), SQLite keeps it, and no prompt, id or name needs it. It is
 * refused at the edge, on every database alike, naming the field.
 */
const NUL = '\u0000';
const MESSAGE = 'must not contain the NUL character (U+0000)';

/** The first field of a parsed JSON value holding NUL (in a value or a key), as the gateway names fields; undefined when none. */
export function nulField(value: unknown, path = ''): string | undefined {
  if (typeof value === 'string') return value.includes(NUL) ? path || '(body)' : undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = nulField(value[i], `${path}[${i}]`);
      if (found !== undefined) return found;
    }
    return undefined;
  }
  if (value !== null && typeof value === 'object') {
    for (const [key, inner] of Object.entries(value)) {
      const name = path ? `${path}.${key}` : key;
      if (key.includes(NUL)) return clipName(name.replaceAll(NUL, '\\u0000'));
      const found = nulField(inner, name);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

/**
 * Refuses a parsed JSON body with NUL in it. `text` is the body as sent: JSON can only carry NUL
 * escaped, so a body without the escape is passed without a walk.
 */
export function refuseNulInJson(text: string, value: unknown): void {
  if (!text.includes('\\u0000')) return;
  const field = nulField(value);
  if (field !== undefined) throw invalidField(field, MESSAGE);
}

/** Refuses a multipart field (its name or value) holding NUL. */
export function refuseNulInField(name: string, value: string): void {
  if (name.includes(NUL)) throw invalidField(clipName(name.replaceAll(NUL, '\\u0000')), MESSAGE);
  if (value.includes(NUL)) throw invalidField(name, MESSAGE);
}

/** Path parameters and query values holding NUL are refused before any handler reads them. */
export function refuseNulInUrls(app: FastifyInstance): void {
  app.addHook('preValidation', (request, _reply, done) => {
    // Cheap for the common case: a URL without "%00" (or a raw NUL, which Node refuses) has none.
    if (!request.url.includes('%00')) return done();
    const field = nulField(request.params) ?? nulField(request.query);
    done(field === undefined ? undefined : invalidField(field, MESSAGE));
  });
}
