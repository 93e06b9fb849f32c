import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { GatewayError, clipName } from '../errors.js';
import { checkConsoleCsrf, clearSessionCookie, sessionCookie, setSessionCookie } from './console-sessions.js';

/** Where `npm run build` puts the console (console/ compiled and copied); the same from src/console and dist/console. */
export const CONSOLE_DIST = fileURLToPath(new URL('../../dist/console/', import.meta.url));

/**
 * The files served under /console/: the page, its stylesheet, its compiled modules and the
 * vendored libraries. Nothing else in dist/console (the gateway's own compiled code sits there too).
 */
const SERVED = /^(?:index\.html|styles\.css|src\/[\w-]+\.js|vendor\/[\w.-]+\.(?:js|css))$/;

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
};

interface Cached {
  mtimeMs: number;
  size: number;
  etag: string;
  body: Buffer;
}

/** The key sent once at sign-in; never echoed (no schema error repeats it). */
function keyOf(body: unknown): string {
  const key = (body as { key?: unknown } | null)?.key;
  if (typeof body !== 'object' || body === null || Array.isArray(body) || Object.keys(body).some((k) => k !== 'key')) {
    throw new GatewayError('invalid_request', 'the body must be a JSON object {"key": "<a client key or the admin key>"} and nothing else', {
      details: [{ field: '(body)', message: 'must be {"key": string}' }],
    });
  }
  if (typeof key !== 'string' || key.length === 0 || key.length > 512) {
    throw new GatewayError('invalid_request', 'key: must be a client key or the admin key (a string of 1-512 characters)', {
      details: [{ field: 'key', message: 'must be a string of 1-512 characters' }],
    });
  }
  return key;
}

/**
 * The console: `/` and `/console` redirect to `/console/`, which serves the page; its files come
 * from dist/console with an ETag and `Cache-Control: no-cache` (always revalidated: a new build
 * shows at once). Sign-in (POST), the session (GET: `signed_in` true with who, or false with why)
 * and sign-out (DELETE) live at /console/api/session; the /v1 API is
 * served under /console/api/v1 (console-sessions.ts).
 */
async function consoleRoutes(app: FastifyInstance): Promise<void> {
  const cache = new Map<string, Cached>();

  async function sendFile(request: FastifyRequest, reply: FastifyReply, name: string) {
    if (!SERVED.test(name)) throw new GatewayError('not_found', `no console file ${clipName(name)}`);
    const path = join(CONSOLE_DIST, name);
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) {
      if (name === 'index.html') throw new GatewayError('service_unavailable', 'the console is not built: run npm run build (it writes dist/console)');
      throw new GatewayError('not_found', `no console file ${clipName(name)}`);
    }
    let file = cache.get(name);
    if (!file || file.mtimeMs !== info.mtimeMs || file.size !== info.size) {
      const body = await readFile(path);
      file = { mtimeMs: info.mtimeMs, size: info.size, body, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"` };
      cache.set(name, file);
    }
    reply.header('etag', file.etag).header('cache-control', 'no-cache').type(TYPES[extname(name)] ?? 'application/octet-stream');
    const match = request.headers['if-none-match'];
    if (typeof match === 'string' && match.split(',').some((m) => m.trim().replace(/^W\//, '') === file.etag)) return reply.status(304).send();
    return reply.send(file.body);
  }

  app.get('/', async (_request, reply) => reply.redirect('/console/', 302));
  app.get('/console', async (_request, reply) => reply.redirect('/console/', 302));
  app.get('/console/', async (request, reply) => sendFile(request, reply, 'index.html'));
  app.get('/console/*', async (request, reply) => sendFile(request, reply, (request.params as { '*': string })['*']));

  // Sign-in: the key is presented once; a wrong one counts as a failed authentication.
  app.post('/console/api/session', async (request, reply) => {
    checkConsoleCsrf(request, app.config);
    await app.authFailures.check(request.ip);
    const key = keyOf(request.body);
    const opened = await app.consoleSessions.open(key);
    if (!opened) {
      throw (await app.authFailures.failed(request.ip)) ?? new GatewayError('unauthorized', 'the key is not valid: sign in with a client key or the admin key');
    }
    // A sign-in over an open session (another key, say) ends that one: one browser, one session.
    await app.consoleSessions.close(request);
    request.log.info({ key_id: opened.session.client.id, team: opened.session.client.team }, 'console sign-in');
    setSessionCookie(request, reply, app.config, opened.token, app.consoleSessions.ttlSeconds);
    return reply.status(204).send();
  });

  // Whether the page is signed in: asked on every load, so "not signed in" is an answer (200), not an
  // error a browser would log; why not (expired, revoked, signed out) is said, and the cookie cleared.
  app.get('/console/api/session', async (request, reply) => {
    try {
      const { client, expiresAt } = await app.consoleSessions.authenticate(request);
      return { signed_in: true, key_id: client.id, team: client.team, admin: client.admin, expires_at: new Date(expiresAt).toISOString() };
    } catch (err) {
      if (!(err instanceof GatewayError) || err.code !== 'unauthorized') throw err;
      if (sessionCookie(request) !== undefined) clearSessionCookie(request, reply, app.config);
      return { signed_in: false, reason: err.message };
    }
  });

  app.delete('/console/api/session', async (request, reply) => {
    checkConsoleCsrf(request, app.config);
    await app.consoleSessions.close(request);
    clearSessionCookie(request, reply, app.config);
    return reply.status(204).send();
  });
}

export const consoleRoutesPlugin = fp(consoleRoutes, { name: 'console-routes', dependencies: ['client-keys'] });
