import { migration, type Database, type Migration, type SqlValue } from '../storage/database.js';
import type { KeyPolicy } from './key-policy.js';

export const KEY_MIGRATIONS: Migration[] = [
  migration('client-keys-001', (t) => [
    `CREATE TABLE client_keys (
      id TEXT PRIMARY KEY,
      key_sha256 TEXT NOT NULL UNIQUE,
      policy_json TEXT NOT NULL,
      created_at ${t.bigint} NOT NULL,
      revoked_at ${t.bigint}
    )`,
  ]),
  // The team out of the policy, so keys can be listed by team in SQL.
  {
    id: 'client-keys-002-team',
    sqlite: ['ALTER TABLE client_keys ADD COLUMN team TEXT', "UPDATE client_keys SET team = json_extract(policy_json, '$.team')", 'CREATE INDEX client_keys_by_team ON client_keys (team, id)'],
    postgres: ['ALTER TABLE client_keys ADD COLUMN team TEXT', "UPDATE client_keys SET team = policy_json::json->>'team'", 'CREATE INDEX client_keys_by_team ON client_keys (team, id)'],
  },
];

/** A key minted through the admin API, as stored: its digest, never the key. */
export interface MintedKey {
  id: string;
  keySha256: string;
  policy: KeyPolicy;
  /** Unix milliseconds. */
  createdAt: number;
  revokedAt: number | null;
}

export interface KeyQuery {
  limit: number;
  team?: string | undefined;
  /** Revoked keys too (absent: only active ones). */
  revoked?: boolean | undefined;
  /** After this id, in id order. */
  after?: string | undefined;
}

interface KeyRow {
  id: string;
  key_sha256: string;
  policy_json: string;
  created_at: number | string;
  revoked_at: number | string | null;
}

const fromRow = (r: KeyRow): MintedKey => ({
  id: r.id,
  keySha256: r.key_sha256,
  policy: JSON.parse(r.policy_json) as KeyPolicy,
  createdAt: Number(r.created_at),
  revokedAt: r.revoked_at === null ? null : Number(r.revoked_at),
});

/** The `client_keys` table (keys minted through POST /v1/keys), in SQLite or PostgreSQL. */
export class KeyRecords {
  constructor(private readonly db: Database) {}

  migrate(): Promise<void> {
    return this.db.migrate(KEY_MIGRATIONS);
  }

  /** Changes whenever a key is minted or revoked: replicas compare it to know when to reload. */
  async stateVersion(): Promise<string> {
    const row = await this.db.get<{ n: number | string; c: number | string | null; r: number | string | null }>(
      'SELECT COUNT(*) AS n, MAX(created_at) AS c, MAX(revoked_at) AS r FROM client_keys',
    );
    return `${row?.n}:${row?.c}:${row?.r}`;
  }

  /** Every key not revoked. */
  async active(): Promise<MintedKey[]> {
    const rows = await this.db.all<KeyRow>('SELECT id, key_sha256, policy_json, created_at, revoked_at FROM client_keys WHERE revoked_at IS NULL');
    return rows.map(fromRow);
  }

  async exists(id: string): Promise<boolean> {
    return (await this.db.get('SELECT id FROM client_keys WHERE id = $1', [id])) !== undefined;
  }

  async insert(key: { id: string; keySha256: string; policy: KeyPolicy; createdAt: number }): Promise<void> {
    await this.db.run('INSERT INTO client_keys (id, key_sha256, policy_json, team, created_at) VALUES ($1, $2, $3, $4, $5)', [
      key.id,
      key.keySha256,
      JSON.stringify(key.policy),
      key.policy.team,
      key.createdAt,
    ]);
  }

  /** Marks an active key revoked; false when there was none. */
  async revoke(id: string, at: number): Promise<boolean> {
    return (await this.db.run('UPDATE client_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL', [at, id])) === 1;
  }

  /** Minted keys in id order, filtered; `limit` rows at most. */
  async list(query: KeyQuery): Promise<MintedKey[]> {
    const where: string[] = [];
    const params: SqlValue[] = [];
    const param = (value: SqlValue) => {
      params.push(value);
      return `$${params.length}`;
    };
    if (!query.revoked) where.push('revoked_at IS NULL');
    if (query.team !== undefined) where.push(`team = ${param(query.team)}`);
    if (query.after !== undefined) where.push(`id > ${param(query.after)}`);
    const rows = await this.db.all<KeyRow>(
      `SELECT id, key_sha256, policy_json, created_at, revoked_at FROM client_keys ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id LIMIT ${param(query.limit)}`,
      params,
    );
    return rows.map(fromRow);
  }
}
