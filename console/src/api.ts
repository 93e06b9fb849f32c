/**
 * The console's access to the gateway: same origin only, authenticated by the session cookie
 * (HttpOnly: scripts never see it), never by a key. Every public /v1 route is served under
 * /console/api/v1 with the session's key.
 */

/** Who the session acts as (GET /console/api/session). */
export interface Session {
  key_id: string;
  team: string;
  admin: boolean;
  expires_at?: string;
}

/** What every page's render() gets. */
export interface ConsoleContext {
  /** fetch for the console API: `api('/v1/models')` calls /console/api/v1/models with the CSRF header and the cookie. */
  api: (path: string, init?: RequestInit) => Promise<Response>;
  session: Session;
  /** Goes to a page (`'#/playground'`), handing it `state` (as ctx.state): `{ reuse: {...} }`, `{ editImage: {...} }`. */
  navigate(hash: string, state?: unknown): void;
  /** What the page that navigated here handed over, if anything. */
  state?: unknown;
}

/** Where the console API lives. */
export const API_BASE = '/console/api';

/**
 * The URL of a console API path: `apiUrl('/v1/jobs/j1/events')` is `/console/api/v1/jobs/j1/events`
 * (for an EventSource, a download link). Takes what the API answers as it is: a path (`status_url`),
 * a path already under /console/api, or an absolute URL of this origin.
 */
export function apiUrl(path: string): string {
  if (/^https?:\/\//i.test(path)) {
    const url = new URL(path);
    if (url.origin !== location.origin) throw new Error(`the console calls only its own origin, not ${url.origin}`);
    path = url.pathname + url.search;
  }
  return path.startsWith(`${API_BASE}/`) ? path : `${API_BASE}${path.startsWith('/') ? '' : '/'}${path}`;
}

/** Called when the console API answers 401 (the session expired, was signed out, or its key revoked). */
let onUnauthorized: (() => void) | undefined;
export function whenUnauthorized(handler: () => void): void {
  onUnauthorized = handler;
}

/**
 * fetch for the console API: same origin, the cookie, and `X-Console-Request: 1` (state-changing
 * calls without it are refused as cross-site). A 401 ends the session in the page too.
 */
export async function api(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  headers.set('X-Console-Request', '1');
  const res = await fetch(apiUrl(path), { ...init, headers, credentials: 'same-origin' });
  if (res.status === 401 && !path.startsWith('/session')) onUnauthorized?.();
  return res;
}

/** The current session, or why there is none (signed out, expired, its key revoked). */
export async function currentSession(): Promise<{ session?: Session; reason?: string }> {
  const res = await api('/session');
  if (!res.ok) return { reason: await errorMessage(res) };
  const body = (await res.json()) as ({ signed_in: true } & Session) | { signed_in: false; reason?: string };
  if (!body.signed_in) return { reason: body.reason };
  const { signed_in: _, ...session } = body;
  return { session };
}

/** Signs in with a key, which goes to the gateway once and is kept nowhere. Answers the Response (204 on success). */
export function signIn(key: string): Promise<Response> {
  return api('/session', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ key }) });
}

export function signOut(): Promise<Response> {
  return api('/session', { method: 'DELETE' });
}

/** The error message of a gateway answer (`{"error": {"message"}}`), or a fallback. */
export async function errorMessage(res: Response, fallback = `The gateway answered ${res.status}.`): Promise<string> {
  try {
    const body = (await res.json()) as { error?: { message?: string } };
    return body.error?.message ?? fallback;
  } catch {
    return fallback;
  }
}
