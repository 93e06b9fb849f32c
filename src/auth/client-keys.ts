import { hash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { GatewayError } from '../errors.js';
import type { KeyPolicy, KeySource } from './key-policy.js';

/** The caller, as the gateway knows it after authentication: a policy, never the key. */
export interface Client extends KeyPolicy {
  source: KeySource;
  /**
   * Set when the caller presented a browser token (POST /v1/tokens) rather than a key: the policy
   * is then its parent key's (id, team, limits), narrowed to the token's models.
   */
  token?: TokenGrant;
}

/** What a browser token adds to its parent key's policy; never the token itself. */
export interface TokenGrant {
  id: string;
  /** Unix ms. */
  expiresAt: number;
  maxImages: number | null;
  maxRequests: number | null;
}

export const sha256Hex = (value: string) => hash('sha256', value, 'hex');

/**
 * Client keys are held only as sha256 digests. Looking a key up by its digest, then comparing the
 * digests with timingSafeEqual, leaks nothing about a key through timing.
 */
export class ClientKeys {
  private readonly byDigest = new Map<string, { digest: Buffer; client: Client }>();

  add(key: string, client: Client): void {
    this.addDigest(sha256Hex(key), client);
  }

  addDigest(hex: string, client: Client): void {
    const digest = Buffer.from(hex.toLowerCase(), 'hex');
    const existing = this.byDigest.get(digest.toString('hex'));
    if (existing && existing.client.id !== client.id) {
      throw new Error(`client keys ${existing.client.id} and ${client.id} are the same key`);
    }
    this.byDigest.set(digest.toString('hex'), { digest, client });
  }

  /** Removes every key with this id (a revoked key stops working at once). */
  removeId(id: string): void {
    for (const [hex, entry] of this.byDigest) if (entry.client.id === id) this.byDigest.delete(hex);
  }

  /** Drops the keys of one source, so a reload of that source can add them back. */
  removeSource(source: KeySource): void {
    for (const [hex, entry] of this.byDigest) if (entry.client.source === source) this.byDigest.delete(hex);
  }

  get size(): number {
    return this.byDigest.size;
  }

  list(): Client[] {
    return [...this.byDigest.values()].map((e) => e.client);
  }

  findById(id: string): Client | undefined {
    for (const entry of this.byDigest.values()) if (entry.client.id === id) return entry.client;
    return undefined;
  }

  /** The client whose key has this sha256 digest (hex), if it is still a key: a console session holds the digest, never the key. */
  findByDigest(hex: string): Client | undefined {
    return this.byDigest.get(hex.toLowerCase())?.client;
  }

  find(key: string): Client | undefined {
    const digest = hash('sha256', key, 'buffer');
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
  if (!key) {
    // A key sent without its scheme (`Authorization: gk-...`) is the common slip: said so, the header never echoed.
    const unread = typeof request.headers.authorization === 'string' && request.headers.authorization.trim() !== '';
    throw new GatewayError(
      'unauthorized',
      unread
        ? 'the Authorization header must be "Bearer <key>" (the word Bearer, a space, then the key); or send the key alone in x-api-key'
        : 'a client key is required: Authorization: Bearer <key> or x-api-key: <key>',
    );
  }
  const client = keys.find(key);
  if (!client) throw new GatewayError('unauthorized', 'the client key is not valid');
  return client;
}
