import type { IncomingMessage } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../config.js';
import { GatewayError } from '../errors.js';
import { randomId } from '../ids.js';
import { migration, type Database, type Migration } from '../storage/database.js';
import { sha256Hex, type Client, type ClientKeys } from '../auth/client-keys.js';

const MIGRATIONS: Migration[] = [
  migration('console-sessions-001', (t) => [
    `CREATE TABLE console_sessions (
      id TEXT PRIMARY KEY,
      key_id TEXT NOT NULL,
      key_sha256 TEXT NOT NULL,
      created_at ${t.bigint} NOT NULL,
      expires_at ${t.bigint} NOT NULL
    )`,
    'CREATE INDEX console_sessions_expiry ON console_sessions (expires_at)',
    'CREATE INDEX console_sessions_key ON console_sessions (key_id)',
  ]),
];

/** The session cookie: HttpOnly, SameSite=Strict, Path=/console (never sent to /v1). */
export const SESSION_COOKIE = 'gw_console';
/** The console's own API; `/console/api/v1/...` is every public /v1 route, as the session's key. */
export const CONSOLE_API_PREFIX = '/console/api';
const CONSOLE_V1_PREFIX = `${CONSOLE_API_PREFIX}/v1/`;
/** 32 random bytes, base64url. */
const TOKEN_SHAPE = /^[A-Za-z0-9_-]{43}$/;

const VIA_CONSOLE = Symbol('gateway.viaConsole');

/**
 * Fastify's rewriteUrl: `/console/api/v1/...` is routed as `/v1/...` (so the session acts exactly as
 * its key: same routes, limits and usage), the request marked as come through the console so that
 * it is authenticated by the session cookie and checked against CSRF instead of by a key.
 */
export function rewriteConsoleUrl(req: IncomingMessage): string {
  const url = req.url ?? '/';
  if (!url.startsWith(CONSOLE_V1_PREFIX)) return url;
  (req as IncomingMessage & { [VIA_CONSOLE]?: true })[VIA_CONSOLE] = true;
  return url.slice(CONSOLE_API_PREFIX.length);
}

/** True for a /v1 call that came in as /console/api/v1/... (see rewriteConsoleUrl). */
export function viaConsole(request: FastifyRequest): boolean {
  return (request.raw as IncomingMessage & { [VIA_CONSOLE]?: true })[VIA_CONSOLE] === true;
}

/** The session token in the request's Cookie header, if one of the right shape is there. */
export function sessionCookie(request: FastifyRequest): string | undefined {
  const header = request.headers.cookie;
  if (typeof header !== 'string') return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0 || part.slice(0, eq).trim() !== SESSION_COOKIE) continue;
    const value = part.slice(eq + 1).trim();
    if (TOKEN_SHAPE.test(value)) return value;
  }
  return undefined;
}

/** True when the browser reached the gateway over HTTPS: PUBLIC_BASE_URL says so, or the request (X-Forwarded-Proto from a trusted proxy). */
export function overHttps(request: FastifyRequest, config: Config): boolean {
  return request.protocol === 'https' || config.PUBLIC_BASE_URL?.startsWith('https:') === true;
}

function cookie(request: FastifyRequest, config: Config, value: string, maxAgeSeconds: number): string {
  return [`${SESSION_COOKIE}=${value}`, 'Path=/console', `Max-Age=${maxAgeSeconds}`, 'HttpOnly', 'SameSite=Strict', ...(overHttps(request, config) ? ['Secure'] : [])].join('; ');
}

export function setSessionCookie(request: FastifyRequest, reply: FastifyReply, config: Config, token: string, ttlSeconds: number): void {
  reply.header('set-cookie', cookie(request, config, token, ttlSeconds));
}

export function clearSessionCookie(request: FastifyRequest, reply: FastifyReply, config: Config): void {
  reply.header('set-cookie', cookie(request, config, '', 0));
}

/** The origins the console is served from: PUBLIC_BASE_URL's, and the one the request came to. */
function ownOrigins(request: FastifyRequest, config: Config): string[] {
  const own = `${request.protocol}://${request.host}`;
  // As a browser writes an origin: lower case, without a default port.
  const origins = [URL.canParse(own) ? new URL(own).origin : own.toLowerCase()];
  if (config.PUBLIC_BASE_URL) origins.push(new URL(config.PUBLIC_BASE_URL).origin.toLowerCase());
  return origins;
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * CSRF: a state-changing console call (POST, PUT, PATCH, DELETE) must carry `X-Console-Request: 1`
 * (a header no cross-site form can set, and no cross-site fetch without a CORS preflight the
 * gateway never grants for /console) and an Origin (or, lacking one, a Referer) of the gateway's own.
 */
export function checkConsoleCsrf(request: FastifyRequest, config: Config): void {
  if (SAFE_METHODS.has(request.method)) return;
  if (request.headers['x-console-request'] !== '1') {
    throw new GatewayError('forbidden', `CSRF check failed: a ${request.method} to the console API must carry the header X-Console-Request: 1 (the console sends it)`);
  }
  let origin = typeof request.headers.origin === 'string' ? request.headers.origin : undefined;
  if (origin === undefined && typeof request.headers.referer === 'string' && URL.canParse(request.headers.referer)) origin = new URL(request.headers.referer).origin;
  const own = ownOrigins(request, config);
  if (origin === undefined || !own.includes(URL.canParse(origin) ? new URL(origin).origin : origin.toLowerCase())) {
    throw new GatewayError(
      'forbidden',
      `CSRF check failed: a ${request.method} to the console API must come from the console's own origin (${own.join(' or ')}); its Origin is ${origin ?? 'missing'}`,
    );
  }
}

interface SessionRow {
  key_id: string;
  key_sha256: string;
  expires_at: number | string;
}

/** A signed-in console: who it acts as, and until when. */
export interface ConsoleSession {
  client: Client;
  /** Unix ms. */
  expiresAt: number;
}

/**
 * Console sign-ins. The browser holds a random session token in an HttpOnly cookie; the database
 * holds only its sha256 digest, with the digest of the key it signed in with. Each request looks
 * that key up live among the keys: a revoked key (or one replaced in configuration) ends its
 * sessions at once, on every replica.
 */
export class ConsoleSessions {
  constructor(
    private readonly db: Database,
    private readonly keys: ClientKeys,
    /** Seconds (CONSOLE_SESSION_TTL). */
    readonly ttlSeconds: number,
    private readonly now: () => number = Date.now,
  ) {}

  async migrate(): Promise<void> {
    await this.db.migrate(MIGRATIONS);
  }

  /** Opens a session for the key `key` (its plaintext, presented once at sign-in); undefined when it is not a key. */
  async open(key: string): Promise<{ token: string; session: ConsoleSession } | undefined> {
    const client = this.keys.find(key);
    if (!client) return undefined;
    const now = this.now();
    const expiresAt = now + this.ttlSeconds * 1000;
    const token = randomId(undefined, 32);
    await this.db.run('INSERT INTO console_sessions (id, key_id, key_sha256, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)', [
      sha256Hex(token),
      client.id,
      sha256Hex(key),
      now,
      expiresAt,
    ]);
    await this.db.run('DELETE FROM console_sessions WHERE expires_at < $1', [now]);
    return { token, session: { client, expiresAt } };
  }

  /** The session of the request's cookie; 401 when there is none, it expired, or its key is no longer valid. */
  async authenticate(request: FastifyRequest): Promise<ConsoleSession> {
    const token = sessionCookie(request);
    if (token === undefined) throw new GatewayError('unauthorized', 'not signed in to the console: no session cookie; sign in with POST /console/api/session');
    const row = await this.db.get<SessionRow>('SELECT key_id, key_sha256, expires_at FROM console_sessions WHERE id = $1', [sha256Hex(token)]);
    if (!row) throw new GatewayError('unauthorized', 'the console session is not valid (signed out, or never opened); sign in again');
    const expiresAt = Number(row.expires_at);
    if (this.now() >= expiresAt) throw new GatewayError('unauthorized', `the console session expired at ${new Date(expiresAt).toISOString()}; sign in again`);
    const client = this.keys.findByDigest(row.key_sha256);
    if (!client || client.id !== row.key_id) throw new GatewayError('unauthorized', 'the console session ended: the key it signed in with was revoked');
    return { client, expiresAt };
  }

  /** Ends the request's session (sign-out), if it has one. */
  async close(request: FastifyRequest): Promise<void> {
    const token = sessionCookie(request);
    if (token !== undefined) await this.db.run('DELETE FROM console_sessions WHERE id = $1', [sha256Hex(token)]);
  }
}
