import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { UpstreamClient } from './upstream-client.js';

declare module 'fastify' {
  interface FastifyInstance {
    upstream: UpstreamClient;
  }
}

async function upstream(app: FastifyInstance): Promise<void> {
  const config = app.config;
  const upstream = new UpstreamClient({
    baseUrl: config.AIHUBMIX_BASE_URL,
    apiKeys: (config.AIHUBMIX_API_KEY ?? '').split(',').map((k) => k.trim()).filter(Boolean),
    maxConcurrency: config.UPSTREAM_MAX_CONCURRENCY,
    queueTimeoutMs: config.UPSTREAM_QUEUE_TIMEOUT_MS,
    retries: config.UPSTREAM_RETRIES,
    retryBaseMs: config.UPSTREAM_RETRY_BASE_MS,
    keyCooldownMs: config.UPSTREAM_KEY_COOLDOWN_MS,
    pollIntervalMs: config.TASK_POLL_INTERVAL_MS,
    maxReplyBytes: 512 * 1024 * 1024,
    maxInflightImageBytes: config.MAX_INFLIGHT_IMAGE_BYTES,
    maxDownloadBytes: 64 * 1024 * 1024,
    resolveHost: app.resolveHost,
  });
  app.decorate('upstream', upstream);
  app.addHook('onClose', async () => upstream.close());
}

/** The client of AiHubMix's image APIs. */
export const upstreamPlugin = fp(upstream, { name: 'upstream' });
