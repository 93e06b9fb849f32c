import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { isApiCall } from '../usage/usage-routes.js';
import { authenticate, type Client } from './client-keys.js';
import { KeyStore } from './key-store.js';

declare module 'fastify' {
  interface FastifyInstance {
    keyStore: KeyStore;
  }
  interface FastifyRequest {
    client?: Client;
  }
}

async function clientKeys(app: FastifyInstance): Promise<void> {
  const keyStore = new KeyStore(app.config, app.db, app.redis, app.log, app.catalogue.models.map((m) => m.id));
  if (keyStore.keys.size === 0) {
    app.log.warn(
      'no client keys configured: every /v1 request will be refused. Set GATEWAY_API_KEYS (team:key pairs), GATEWAY_KEYS_FILE, or GATEWAY_ADMIN_KEY to mint keys through POST /v1/keys',
    );
  }
  app.decorate('keyStore', keyStore);
  app.addHook('onReady', async () => keyStore.start());
  app.addHook('onClose', async () => keyStore.close());
  app.addHook('onRequest', async (request) => {
    if (isApiCall(request)) request.client = authenticate(keyStore.keys, request);
  });
}

/** The client keys (configured, and minted into the database), and who each API call comes from. */
export const clientKeysPlugin = fp(clientKeys, { name: 'client-keys', dependencies: ['database', 'redis', 'catalogue'] });
