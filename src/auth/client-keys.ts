import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { GatewayError } from '../errors.js';

export interface Client {
  /** Stable name used in logs and usage, never the key. */
  id: string;
  team: string;
  admin: boolean;
}

const sha256 = (value: string) => createHash('sha256').update(value, 'utf8').digest();

/**
 * Client keys are held only as sha256 digests. Looking a key up by its digest, then comparing the
 * digests with timingSafeEqual, leaks nothing about a key through timing.
 */
export class ClientKeys {
  private readonly byDigest = new Map<string, { digest: Buffer; client: Client }>();

  add(key: string, client: Client): void {
    const digest = sha256(key);
    this.byDigest.set(digest.toString('hex'), { digest, client });
  }

  get size(): number {
    return this.byDigest.size;
  }

  find(key: string): Client | undefined {
    const digest = sha256(key);
    const entry = this.byDigest.get(digest.toString('hex'));
    if (!entry || !timingSafeEqual(entry.digest, digest)) return undefined;
    return entry.client;
  }
}

/** `Authorization: Bearer <key>` or `x-api-key: <key>`. */
export function presentedKey(request: FastifyRequest): string | undefined {
  const auth = request.headers.authorization;
  if (typeof auth === 'string') {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (m) return m[1];
  }
  const header = request.headers['x-api-key'];
  return typeof header === 'string' && header.length > 0 ? header : undefined;
}

export function authenticate(keys: ClientKeys, request: FastifyRequest): Client {
  const key = presentedKey(request);
  if (!key) throw new GatewayError('unauthorized', 'a client key is required: Authorization: Bearer <key> or x-api-key: <key>');
  const client = keys.find(key);
  if (!client) throw new GatewayError('unauthorized', 'the client key is not valid');
  return client;
}
