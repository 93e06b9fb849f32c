import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { isApiCall } from '../usage/usage-routes.js';
import { GatewayError } from '../errors.js';
import { AuthFailures } from './auth-failures.js';
import { authenticate, presentedKey, type Client } from './client-keys.js';
import { KeyStore } from './key-store.js';
import { SpentToken, TOKEN_PREFIX, TokenStore, checkTokenRoute } from './browser-tokens.js';
import { ConsoleSessions, checkConsoleCsrf, viaConsole } from '../console/console-sessions.js';

declare module 'fastify' {
  interface FastifyInstance {
    keyStore: KeyStore;
    /** Browser tokens (POST /v1/tokens): minted by client keys, acting as them within narrower bounds. */
    tokens: TokenStore;
    /** Console sign-ins (src/console): a session cookie standing for a key, on /console/api only. */
    consoleSessions: ConsoleSessions;
    /** Failed authentications per client address (AUTH_FAILURES_PER_MINUTE); console sign-ins count too. */
    authFailures: AuthFailures;
  }
  interface FastifyRequest {
    client?: Client;
  }
}

export interface ClientKeysOptions {
  /** How often each replica checks the database for minted or revoked keys; 1 s unless set (tests). */
  pollIntervalMs?: number;
  /** The clock browser tokens and console sessions expire by (Date.now unless set: tests). */
  now?: () => number;
}

async function clientKeys(app: FastifyInstance, options: ClientKeysOptions): Promise<void> {
  const keyStore = new KeyStore(app.config, app.db, app.redis, app.log, app.catalogue.models.map((m) => m.id), options.pollIntervalMs);
  if (app.config.GATEWAY_KEYS_FILE) keyStore.checkFallbacks((name) => app.catalogue.find(name), app.config.GATEWAY_KEYS_FILE);
  if (keyStore.keys.size === 0) {
    app.log.warn(
      'no client keys configured: every /v1 request will be refused. Set GATEWAY_API_KEYS (team:key pairs), GATEWAY_KEYS_FILE, or GATEWAY_ADMIN_KEY to mint keys through POST /v1/keys',
    );
  }
  app.decorate('keyStore', keyStore);
  const tokens = new TokenStore(app.db, keyStore.keys, () => app.catalogue, options.now);
  await tokens.migrate();
  app.decorate('tokens', tokens);
  const sessions = new ConsoleSessions(app.db, keyStore.keys, app.config.CONSOLE_SESSION_TTL, options.now);
  await sessions.migrate();
  app.decorate('consoleSessions', sessions);
  app.addHook('onReady', async () => keyStore.start());
  app.addHook('onClose', async () => keyStore.close());
  // Failed authentications are limited per client address: past the limit the key is not even looked at.
  const failures = new AuthFailures(app.redis, app.log, app.config.AUTH_FAILURES_PER_MINUTE);
  app.decorate('authFailures', failures);
  app.addHook('onRequest', async (request) => {
    if (!isApiCall(request)) return;
    await failures.check(request.ip);
    // /console/api/v1/...: the console's session cookie stands for its key (never a key or token
    // presented with it); the cookie is looked at nowhere else.
    if (viaConsole(request)) {
      checkConsoleCsrf(request, app.config);
      request.client = (await sessions.authenticate(request)).client;
      return;
    }
    try {
      const presented = presentedKey(request);
      request.client = presented?.startsWith(TOKEN_PREFIX) ? await tokens.authenticate(presented) : authenticate(keyStore.keys, request);
    } catch (err) {
      // A wrong key is a guess; a missing one is not (a browser, a misconfigured client), nor is a token that was real (expired), and is only refused.
      if (err instanceof GatewayError && !(err instanceof SpentToken) && presentedKey(request) !== undefined) throw (await failures.failed(request.ip)) ?? err;
      throw err;
    }
    if (request.client.token) checkTokenRoute(request);
  });
}

/** The client keys (configured, and minted into the database), and who each API call comes from. */
export const clientKeysPlugin = fp(clientKeys, { name: 'client-keys', dependencies: ['database', 'redis', 'catalogue'] });
