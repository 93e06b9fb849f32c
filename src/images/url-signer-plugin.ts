import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { Config } from '../config.js';
import { UrlSigner } from './url-signer.js';

declare module 'fastify' {
  interface FastifyInstance {
    signer: UrlSigner;
  }
}

/** The URL-signing secret: IMAGE_URL_SECRET, else one kept in DATA_DIR so URLs outlive a restart. */
function signingSecret(config: Config): Buffer {
  if (config.IMAGE_URL_SECRET) return Buffer.from(config.IMAGE_URL_SECRET, 'utf8');
  const path = join(config.DATA_DIR, 'url-signing.key');
  if (existsSync(path)) return Buffer.from(readFileSync(path, 'utf8').trim(), 'base64');
  const secret = randomBytes(32);
  writeFileSync(path, secret.toString('base64'), { mode: 0o600, flag: 'wx' });
  return secret;
}

async function urlSigner(app: FastifyInstance): Promise<void> {
  const { IMAGE_URL_SECRET, DATABASE_URL, REDIS_URL } = app.config;
  // Shared PostgreSQL or Redis means several replicas: a key generated here is this replica's alone.
  if (!IMAGE_URL_SECRET && (DATABASE_URL || REDIS_URL)) {
    app.log.warn(
      `IMAGE_URL_SECRET is not set, so image URLs are signed with the key in ${join(app.config.DATA_DIR, 'url-signing.key')}: a replica without that same file answers them 403; set the same IMAGE_URL_SECRET (32+ characters, e.g. openssl rand -hex 32) on every replica`,
    );
  }
  app.decorate('signer', new UrlSigner(signingSecret(app.config)));
}

/** Signs and checks the capability URLs of stored images. */
export const urlSignerPlugin = fp(urlSigner, { name: 'url-signer' });
