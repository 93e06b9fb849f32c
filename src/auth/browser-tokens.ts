import type { FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { ModelCatalogue } from '../catalogue/catalogue.js';
import { GatewayError } from '../errors.js';
import { randomId } from '../ids.js';
import { migration, type Database, type Migration } from '../storage/database.js';
import { sha256Hex, type Client, type ClientKeys } from './client-keys.js';
import { boundedNumber, modelAllowed, modelList } from './key-policy.js';

const MIGRATIONS: Migration[] = [
  migration('browser-tokens-001', (t) => [
    `CREATE TABLE browser_tokens (
      id TEXT PRIMARY KEY,
      token_sha256 TEXT NOT NULL UNIQUE,
      parent_key_id TEXT NOT NULL,
      team TEXT NOT NULL,
      models_json TEXT,
      max_images INTEGER,
      max_requests INTEGER,
      expires_at ${t.bigint} NOT NULL,
      created_at ${t.bigint} NOT NULL
    )`,
    'CREATE INDEX browser_tokens_expiry ON browser_tokens (expires_at)',
  ]),
];

/** Every browser token starts with this, so a token is told from a key before any lookup. */
export const TOKEN_PREFIX = 'gkt_';
export const DEFAULT_TTL_SECONDS = 600;
export const MAX_TTL_SECONDS = 3600;
/** Rows of tokens expired this long ago are deleted (on the next mint): their usage records keep the id. */
const KEEP_EXPIRED_MS = 86_400_000;

/** POST /v1/tokens */
export const mintTokenSchema = z.strictObject({
  ttl_seconds: boundedNumber(1, MAX_TTL_SECONDS).optional(),
  models: modelList('model id or alias', 'model ids or aliases', 200, 1).optional(),
  max_images: boundedNumber(1, 1_000_000).optional(),
  max_requests: boundedNumber(1, 1_000_000).optional(),
});
export type MintTokenInput = z.infer<typeof mintTokenSchema>;

/**
 * The routes a browser token may call (method and route pattern): generate and edit in both forms,
 * the jobs it started, and the models. Everything else is refused, including routes added later.
 */
const TOKEN_ROUTES = new Set([
  'POST /v1/generate',
  'POST /v1/edit',
  'POST /v1/images/generations',
  'POST /v1/images/edits',
  'GET /v1/jobs/:id',
  'GET /v1/jobs/:id/events',
  'GET /v1/models',
  'GET /v1/models/:id',
]);

/** Throws 403 when a browser token calls a route it may not (an unmatched route goes on to its 404). */
export function checkTokenRoute(request: FastifyRequest): void {
  const route = request.routeOptions.url;
  if (route === undefined) return;
  const method = request.method === 'HEAD' ? 'GET' : request.method;
  if (TOKEN_ROUTES.has(`${method} ${route}`)) return;
  throw new GatewayError(
    'forbidden',
    `a browser token may not call ${request.method} ${route}: it may only generate, edit, follow the jobs it started and list models; use a client key`,
  );
}

interface TokenRow {
  id: string;
  parent_key_id: string;
  team: string;
  models_json: string | null;
  max_images: number | string | null;
  max_requests: number | string | null;
  expires_at: number | string;
}

/** A token that was real but can no longer be used (expired, parent revoked): not a guess, so not counted as a failed authentication. */
export class SpentToken extends GatewayError {}

/**
 * Browser tokens: short-lived credentials a client key mints for a browser (POST /v1/tokens).
 * Only their sha256 digests are stored, in the shared database, so any replica validates any
 * token. A token acts as its parent key, looked up live among the keys on every request: a
 * revoked parent (which reaches every replica through Redis, or the database poll) takes its
 * tokens with it at once.
 */
export class TokenStore {
  /** Rows by digest: they never change, so a replica reads each once (bounded; expired ones dropped on the way). */
  private readonly cache = new Map<string, TokenRow>();

  constructor(
    private readonly db: Database,
    private readonly keys: ClientKeys,
    private readonly catalogue: () => ModelCatalogue,
    private readonly now: () => number = Date.now,
  ) {}

  async migrate(): Promise<void> {
    await this.db.migrate(MIGRATIONS);
  }

  /** The models a token is limited to: catalogue ids or aliases (resolved to ids), each within the parent's allow-list. */
  private resolveModels(parent: Client, names: string[]): string[] {
    const ids: string[] = [];
    for (const [i, name] of names.entries()) {
      const model = this.catalogue().find(name);
      if (!model) {
        throw new GatewayError('invalid_request', `models[${i}]: "${name}" is not a model the gateway serves (an id or alias; GET /v1/models lists them)`, {
          details: [{ field: `models[${i}]`, message: `${name} is not a model id or alias` }],
        });
      }
      if (!modelAllowed(parent, model.id)) {
        throw new GatewayError('invalid_request', `models[${i}]: key ${parent.id} may not use model ${model.id}, so its tokens may not either`, {
          details: [{ field: `models[${i}]`, message: `${model.id} is not in the key’s allow-list`, allowed: parent.models }],
        });
      }
      if (!ids.includes(model.id)) ids.push(model.id);
    }
    return ids;
  }

  /** Makes a token for `parent`, stores only its digest, and returns the plaintext this one time. */
  async mint(parent: Client, input: MintTokenInput) {
    if (parent.token) throw new GatewayError('forbidden', 'a browser token may not mint tokens; use a client key');
    const models = input.models ? this.resolveModels(parent, input.models) : null;
    const now = this.now();
    const expiresAt = now + (input.ttl_seconds ?? DEFAULT_TTL_SECONDS) * 1000;
    const id = randomId('tok', 12);
    const token = `${TOKEN_PREFIX}${randomId(undefined, 32)}`;
    await this.db.run(
      `INSERT INTO browser_tokens (id, token_sha256, parent_key_id, team, models_json, max_images, max_requests, expires_at, created_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
      [id, sha256Hex(token), parent.id, parent.team, models ? JSON.stringify(models) : null, input.max_images ?? null, input.max_requests ?? null, expiresAt, now],
    );
    await this.db.run('DELETE FROM browser_tokens WHERE expires_at < $1', [now - KEEP_EXPIRED_MS]);
    return {
      id,
      token,
      expires_at: new Date(expiresAt).toISOString(),
      models,
      max_images: input.max_images ?? null,
      max_requests: input.max_requests ?? null,
    };
  }

  private async row(digest: string): Promise<TokenRow | undefined> {
    const cached = this.cache.get(digest);
    if (cached) return cached;
    const row = await this.db.get<TokenRow>(
      'SELECT id, parent_key_id, team, models_json, max_images, max_requests, expires_at FROM browser_tokens WHERE token_sha256 = $1',
      [digest],
    );
    if (row) {
      if (this.cache.size >= 10_000) {
        const now = this.now();
        for (const [k, r] of this.cache) if (Number(r.expires_at) <= now) this.cache.delete(k);
        if (this.cache.size >= 10_000) this.cache.clear();
      }
      this.cache.set(digest, row);
    }
    return row;
  }

  /** The caller a token stands for: its parent key's policy, narrowed to the token's models. */
  async authenticate(token: string): Promise<Client> {
    const row = await this.row(sha256Hex(token));
    if (!row) {
      // A configured client key may happen to start like a token.
      const key = this.keys.find(token);
      if (key) return key;
      throw new GatewayError('unauthorized', 'the browser token is not valid');
    }
    const expiresAt = Number(row.expires_at);
    if (this.now() >= expiresAt) {
      throw new SpentToken('unauthorized', `the browser token expired at ${new Date(expiresAt).toISOString()}; ask the backend for a new one`);
    }
    const parent = this.keys.findById(row.parent_key_id);
    if (!parent || parent.team !== row.team) throw new SpentToken('unauthorized', 'the browser token is no longer valid: the key that minted it was revoked');
    const models = row.models_json === null ? parent.models : (JSON.parse(row.models_json) as string[]).filter((id) => modelAllowed(parent, id));
    return {
      ...parent,
      // A token never carries the admin key's powers, even one the admin key minted.
      admin: false,
      ...(models ? { models } : {}),
      token: {
        id: row.id,
        expiresAt,
        maxImages: row.max_images === null ? null : Number(row.max_images),
        maxRequests: row.max_requests === null ? null : Number(row.max_requests),
      },
    };
  }
}
