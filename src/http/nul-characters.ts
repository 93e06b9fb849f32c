import type { FastifyInstance } from 'fastify';
import { clipName, invalidField } from '../errors.js';

/**
 * The NUL character (U+0000) in a client's text: PostgreSQL cannot store it in a text column (it
 * fails the statement, which answered 500), SQLite keeps it, and no prompt, id or name needs it. It is
 * refused at the edge, on every database alike, naming the field.
 */
const NUL = '\u0000';
const MESSAGE = 'must not contain the NUL character (U+0000)';

/**
 * The first field of a parsed JSON value holding `char` in its value or its name (`inName`), as the
 * gateway names fields (the name is the client's: cut by clipName where it is quoted). A walk with
 * its own stack: a body may nest deeper than the call stack goes.
 */
export function fieldHolding(root: unknown, char: string): { field: string; inName: boolean } | undefined {
  const pending: Array<{ value: unknown; path: string }> = [{ value: root, path: '' }];
  while (pending.length > 0) {
    const { value, path } = pending.pop()!;
    if (typeof value === 'string') {
      if (value.includes(char)) return { field: path || '(body)', inName: false };
    } else if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) pending.push({ value: value[i], path: `${path}[${i}]` });
    } else if (value !== null && typeof value === 'object') {
      const entries = Object.entries(value);
      for (const [key] of entries) {
        if (key.includes(char)) return { field: path ? `${path}.${key}` : key, inName: true };
      }
      for (let i = entries.length - 1; i >= 0; i--) {
        const [key, inner] = entries[i]!;
        pending.push({ value: inner, path: path ? `${path}.${key}` : key });
      }
    }
  }
  return undefined;
}

/** The first field of a parsed JSON value holding NUL (in a value or a key), cut by clipName, NUL written \u0000; undefined when none. */
export function nulField(root: unknown): string | undefined {
  const found = fieldHolding(root, NUL);
  return found && clipName(found.field.replaceAll(NUL, '\\u0000'));
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
