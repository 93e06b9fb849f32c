import type { ImageOperation } from '../catalogue/model-spec.js';
import { migration, sqlByRowCount, valuesPlaceholders, type BatchStatement, type Database, type Migration, type SqlValue, type Statements } from '../storage/database.js';
import { GroupCommit, type CommitShare, type CommitSource } from '../storage/group-commit.js';
import { activeSpanContext } from '../observability/tracing.js';
import type { SpanContext } from '@opentelemetry/api';
import type { ImageMime } from './image-bytes.js';

/** What the gateway knows about one stored image; the bytes themselves are in the ImageStore. */
export interface ImageRecord {
  /** `img_<sha256>.<ext>`, the name in URLs and in the store. */
  name: string;
  sha256: string;
  mimeType: ImageMime;
  bytes: number;
  width: number;
  height: number;
  /** The client key that first made it; absent for images made outside a client request. */
  keyId: string | null;
  team: string | null;
  /** Unix milliseconds of the first time it was stored. */
  createdAt: number;
  /** Unix seconds, as in the signed URL's `exp`; past it the image is gone. */
  expiresAt: number;
  /**
   * A small image's bytes, kept in its row instead of the ImageStore (IMAGE_INLINE_MAX_BYTES).
   * Present on a row read by name; lists of rows (retention) leave it out.
   */
  inlineBytes?: Buffer | undefined;
}

export const IMAGE_MIGRATIONS: Migration[] = [
  {
    id: 'images',
    sqlite: [
      `CREATE TABLE images (
        name TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        mime_type TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        key_id TEXT,
        team TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
      )`,
      'CREATE INDEX images_by_expiry ON images (expires_at, created_at)',
    ],
    postgres: [
      `CREATE TABLE images (
        name TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        mime_type TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        key_id TEXT,
        team TEXT,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
      )`,
      'CREATE INDEX images_by_expiry ON images (expires_at, created_at)',
    ],
  },
  {
    id: 'images-inline-bytes',
    sqlite: ['ALTER TABLE images ADD COLUMN inline_bytes BLOB'],
    postgres: ['ALTER TABLE images ADD COLUMN inline_bytes BYTEA'],
  },
  // One row per team that made an image (its gallery entry), with what the request asked for. The
  // bytes stay content-addressed (one `images` row and one stored copy); each existing image gets
  // its first owner's row.
  migration('image-owners', (t) => [
    `CREATE TABLE image_owners (
      name TEXT NOT NULL,
      team TEXT NOT NULL,
      key_id TEXT,
      model TEXT,
      operation TEXT,
      prompt TEXT,
      parameters_json TEXT,
      seed ${t.bigint},
      cost_usd ${t.double},
      created_at ${t.bigint} NOT NULL,
      expires_at ${t.bigint} NOT NULL,
      PRIMARY KEY (name, team)
    )`,
    'CREATE INDEX image_owners_by_team ON image_owners (team, created_at, name)',
    'CREATE INDEX image_owners_by_time ON image_owners (created_at, name, team)',
    'CREATE INDEX image_owners_by_expiry ON image_owners (expires_at)',
    `INSERT INTO image_owners (name, team, key_id, created_at, expires_at)
      SELECT name, team, key_id, created_at, expires_at FROM images WHERE team IS NOT NULL`,
  ]),
];

/** One team's entry for a stored image (its gallery row): who made it and what they asked for. */
export interface ImageOwnership {
  /** The image's name (`img_<sha256>.<ext>`): the bytes, shared by every team that made them. */
  name: string;
  team: string;
  /** The key that last made it for this team. */
  keyId: string | null;
  model: string | null;
  operation: ImageOperation | null;
  /** Absent with IMAGE_KEEP_PROMPTS=0. */
  prompt: string | null;
  parameters: Record<string, unknown> | null;
  seed: number | null;
  /** This image's share of the request's estimated cost. */
  costUsd: number | null;
  /** Unix milliseconds of the last time this team made it. */
  createdAt: number;
  /** Unix seconds: this team's URLs of it expire then. */
  expiresAt: number;
}

/** A team's entry with the image's own facts: what GET /v1/images lists. */
export interface GalleryImage extends ImageOwnership {
  sha256: string;
  mimeType: ImageMime;
  bytes: number;
  width: number;
  height: number;
}

/** Where a page of GET /v1/images starts: after this row, newest first. */
export interface GalleryCursor {
  createdAt: number;
  name: string;
  team: string;
}

export interface GalleryQuery {
  /** Unix seconds: expired entries are not listed. */
  now: number;
  limit: number;
  team?: string | undefined;
  model?: string | undefined;
  keyId?: string | undefined;
  /** Unix milliseconds, inclusive. */
  from?: number | undefined;
  /** Unix milliseconds, exclusive. */
  to?: number | undefined;
  /** A case-insensitive substring of the kept prompt. */
  q?: string | undefined;
  after?: GalleryCursor | undefined;
}

interface ImageRow {
  name: string;
  sha256: string;
  mime_type: string;
  bytes: number | string;
  width: number;
  height: number;
  key_id: string | null;
  team: string | null;
  created_at: number | string;
  expires_at: number | string;
  inline_bytes?: Uint8Array | null;
}

// PostgreSQL hands BIGINT back as a string.
const fromRow = (r: ImageRow): ImageRecord => ({
  name: r.name,
  sha256: r.sha256,
  mimeType: r.mime_type as ImageMime,
  bytes: Number(r.bytes),
  width: Number(r.width),
  height: Number(r.height),
  keyId: r.key_id,
  team: r.team,
  createdAt: Number(r.created_at),
  expiresAt: Number(r.expires_at),
  // node:sqlite reads a BLOB as a Uint8Array, pg a BYTEA as a Buffer: a view either way, no copy.
  ...(r.inline_bytes ? { inlineBytes: Buffer.from(r.inline_bytes.buffer, r.inline_bytes.byteOffset, r.inline_bytes.byteLength) } : {}),
});

interface OwnerRow {
  name: string;
  team: string;
  key_id: string | null;
  model: string | null;
  operation: string | null;
  prompt: string | null;
  parameters_json: string | null;
  seed: number | string | null;
  cost_usd: number | string | null;
  created_at: number | string;
  expires_at: number | string;
}

const ownershipFromRow = (r: OwnerRow): ImageOwnership => ({
  name: r.name,
  team: r.team,
  keyId: r.key_id,
  model: r.model,
  operation: r.operation === 'generate' || r.operation === 'edit' || r.operation === 'upscale' ? r.operation : null,
  prompt: r.prompt,
  parameters: r.parameters_json === null ? null : (JSON.parse(r.parameters_json) as Record<string, unknown>),
  seed: r.seed === null ? null : Number(r.seed),
  costUsd: r.cost_usd === null ? null : Number(r.cost_usd),
  createdAt: Number(r.created_at),
  expiresAt: Number(r.expires_at),
});

const OWNER_COLUMNS = ['name', 'team', 'key_id', 'model', 'operation', 'prompt', 'parameters_json', 'seed', 'cost_usd', 'created_at', 'expires_at'];

const ownerParams = (o: ImageOwnership): SqlValue[] => [
  o.name,
  o.team,
  o.keyId,
  o.model,
  o.operation,
  o.prompt,
  o.parameters === null ? null : JSON.stringify(o.parameters),
  o.seed,
  o.costUsd,
  o.createdAt,
  o.expiresAt,
];

// Made again by the same team: the latest request's facts, the later expiry.
const upsertOwnersSql = sqlByRowCount(
  (rows) => `INSERT INTO image_owners (${OWNER_COLUMNS.join(', ')}) VALUES ${valuesPlaceholders(rows, OWNER_COLUMNS.length)}
   ON CONFLICT (name, team) DO UPDATE SET
     key_id = excluded.key_id, model = excluded.model, operation = excluded.operation, prompt = excluded.prompt,
     parameters_json = excluded.parameters_json, seed = excluded.seed, cost_usd = excluded.cost_usd, created_at = excluded.created_at,
     expires_at = CASE WHEN excluded.expires_at > image_owners.expires_at THEN excluded.expires_at ELSE image_owners.expires_at END`,
);

/** `%text%` for LIKE, with LIKE's own characters taken literally (ESCAPE '\\'). */
const likePattern = (text: string) => `%${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;

/** Every column but the inline bytes: what lists of rows (retention) read. */
const LISTED = 'name, sha256, mime_type, bytes, width, height, key_id, team, created_at, expires_at';
const COLUMNS = [...LISTED.split(', '), 'inline_bytes'];
/** Rows per INSERT: each distinct row count is one more prepared statement. */
const SAVE_BATCH = 64;

const upsertSql = sqlByRowCount(
  (rows) => `INSERT INTO images (${COLUMNS.join(', ')}) VALUES ${valuesPlaceholders(rows, COLUMNS.length)}
   ON CONFLICT (name) DO UPDATE SET
     expires_at = CASE WHEN excluded.expires_at > images.expires_at THEN excluded.expires_at ELSE images.expires_at END,
     inline_bytes = COALESCE(images.inline_bytes, excluded.inline_bytes)
   RETURNING ${LISTED}`,
);

interface PendingSave {
  record: ImageRecord;
  /** By team: the teams that made it in this batch. */
  owners: Map<string, ImageOwnership>;
  waiters: Array<{ resolve: (saved: ImageRecord) => void; reject: (err: unknown) => void }>;
  /** The spans of the requests that saved it (while traces are on): the commit's span links to each. */
  spans: SpanContext[];
}

/**
 * The `images` table: one row per stored image, in SQLite or PostgreSQL.
 *
 * Saves wait for the next group commit (GroupCommit): those that arrive in the same turn of the
 * event loop are written by one INSERT, in the same transaction as their owners' entries and the
 * other repositories' writes of that turn, and each caller hears back only once its row is committed.
 */
export class ImageRecords implements CommitSource {
  private pending = new Map<string, PendingSave>();
  private readonly commits: GroupCommit;

  /** `commits`: the group commit shared with the other repositories of `db` (one of its own if none). */
  constructor(
    private readonly db: Database,
    commits?: GroupCommit,
  ) {
    this.commits = commits ?? new GroupCommit(db);
    this.commits.register(this);
  }

  /** Whether other replicas may share these records (PostgreSQL; SQLite is one replica's own). */
  get shared(): boolean {
    return this.db.dialect === 'postgres';
  }

  async migrate(): Promise<void> {
    await this.db.migrate(IMAGE_MIGRATIONS);
  }

  /**
   * Records an image, resolving to its row once committed: one made again keeps its first owner
   * and gets the later of the two expiries.
   */
  save(record: ImageRecord, owner?: ImageOwnership): Promise<ImageRecord> {
    const span = activeSpanContext();
    return new Promise((resolve, reject) => {
      if (this.pending.size === 0) this.commits.wake();
      let same = this.pending.get(record.name);
      if (same) {
        // The same image twice in one batch: one row (an INSERT may not touch a row twice).
        if (record.expiresAt > same.record.expiresAt) same.record = { ...same.record, expiresAt: record.expiresAt };
        same.waiters.push({ resolve, reject });
      } else {
        same = { record, owners: new Map(), waiters: [{ resolve, reject }], spans: [] };
        this.pending.set(record.name, same);
      }
      if (span) same.spans.push(span);
      if (owner) {
        const earlier = same.owners.get(owner.team);
        same.owners.set(owner.team, earlier ? { ...owner, expiresAt: Math.max(owner.expiresAt, earlier.expiresAt) } : owner);
      }
    });
  }

  /** The saves waiting, as statements of the next group commit: the images, then their owners' entries. */
  take(): CommitShare | undefined {
    if (this.pending.size === 0) return undefined;
    // In name order: two replicas upserting the same names lock their rows in the same order (no deadlock).
    const batch = [...this.pending.values()].sort((a, b) => (a.record.name < b.record.name ? -1 : a.record.name > b.record.name ? 1 : 0));
    this.pending = new Map();
    const statements: BatchStatement[] = [];
    for (let i = 0; i < batch.length; i += SAVE_BATCH) {
      const some = batch.slice(i, i + SAVE_BATCH);
      const params = some.flatMap(({ record: r }) => [r.name, r.sha256, r.mimeType, r.bytes, r.width, r.height, r.keyId, r.team, r.createdAt, r.expiresAt, r.inlineBytes ?? null]);
      statements.push({ sql: upsertSql(some.length), params, rows: true });
    }
    const owners = batch.flatMap(({ owners }) => [...owners.values()].sort((a, b) => (a.team < b.team ? -1 : a.team > b.team ? 1 : 0)));
    for (let i = 0; i < owners.length; i += SAVE_BATCH) {
      const some = owners.slice(i, i + SAVE_BATCH);
      statements.push({ sql: upsertOwnersSql(some.length), params: some.flatMap(ownerParams) });
    }
    return {
      statements,
      spans: batch.flatMap((save) => save.spans),
      count: { attribute: 'gateway.image.rows', value: batch.length },
      committed: (results) => {
        const byName = new Map<string, ImageRecord>();
        for (const rows of results) if (Array.isArray(rows)) for (const row of rows as unknown as ImageRow[]) byName.set(row.name, fromRow(row));
        for (const { record, waiters } of batch) {
          // Not read back: the same name is the same bytes, and sending them back cost ~10 µs a row.
          const row = byName.get(record.name);
          const answer = row ? (record.inlineBytes ? { ...row, inlineBytes: record.inlineBytes } : row) : record;
          for (const w of waiters) w.resolve(answer);
        }
      },
      failed: (err) => {
        for (const { waiters } of batch) for (const w of waiters) w.reject(err);
      },
    };
  }

  async find(name: string): Promise<ImageRecord | undefined> {
    const row = await this.db.get<ImageRow>('SELECT * FROM images WHERE name = $1', [name]);
    return row && fromRow(row);
  }

  /** Images whose expiry has passed, soonest-expired first. */
  async expired(nowSeconds: number, limit: number): Promise<ImageRecord[]> {
    const rows = await this.db.all<ImageRow>(`SELECT ${LISTED} FROM images WHERE expires_at <= $1 ORDER BY expires_at, created_at LIMIT $2`, [nowSeconds, limit]);
    return rows.map(fromRow);
  }

  /**
   * Oldest first. Every image lives the same IMAGE_RETENTION_DAYS from when it was last made, so
   * the soonest expiry is the least recently made image.
   */
  async oldest(limit: number): Promise<ImageRecord[]> {
    const rows = await this.db.all<ImageRow>(`SELECT ${LISTED} FROM images ORDER BY expires_at, created_at LIMIT $1`, [limit]);
    return rows.map(fromRow);
  }

  async totalBytes(): Promise<number> {
    const row = await this.db.get<{ total: number | string | null }>('SELECT SUM(bytes) AS total FROM images');
    return Number(row?.total ?? 0);
  }

  /**
   * Deletes the row only if its expiry is still the one the caller saw: an image made again in the
   * meantime has a later expiry and stays. True when the row was deleted.
   */
  async removeIfUnchanged(record: ImageRecord): Promise<boolean> {
    return this.db.transaction(async (tx) => {
      if ((await tx.run('DELETE FROM images WHERE name = $1 AND expires_at = $2', [record.name, record.expiresAt])) !== 1) return false;
      await tx.run('DELETE FROM image_owners WHERE name = $1', [record.name]);
      return true;
    });
  }

  /** Owners' entries past their expiry (the image itself may live on for another team); how many went. */
  removeExpiredOwners(nowSeconds: number): Promise<number> {
    return this.db.run('DELETE FROM image_owners WHERE expires_at <= $1', [nowSeconds]);
  }

  /** An image with the teams that own it (their entries' expiry), or undefined. */
  async findWithOwners(name: string): Promise<{ image: ImageRecord; owners: Array<{ team: string; expiresAt: number }> } | undefined> {
    const rows = await this.db.all<ImageRow & { owner_team: string | null; owner_expires_at: number | string | null }>(
      `SELECT images.*, image_owners.team AS owner_team, image_owners.expires_at AS owner_expires_at
       FROM images LEFT JOIN image_owners ON image_owners.name = images.name WHERE images.name = $1`,
      [name],
    );
    if (rows.length === 0) return undefined;
    const owners = rows.flatMap((r) => (r.owner_team === null ? [] : [{ team: r.owner_team, expiresAt: Number(r.owner_expires_at) }]));
    return { image: fromRow(rows[0]!), owners };
  }

  /** One team's entry for an image, or undefined. */
  async ownership(name: string, team: string): Promise<ImageOwnership | undefined> {
    const row = await this.db.get<OwnerRow>(`SELECT ${OWNER_COLUMNS.join(', ')} FROM image_owners WHERE name = $1 AND team = $2`, [name, team]);
    return row && ownershipFromRow(row);
  }

  /** Teams' entries with their images' facts, newest first, filtered; `limit` rows at most. */
  async list(query: GalleryQuery): Promise<GalleryImage[]> {
    const where = ['o.expires_at > $1'];
    const params: SqlValue[] = [query.now];
    const param = (value: SqlValue) => {
      params.push(value);
      return `$${params.length}`;
    };
    if (query.team !== undefined) where.push(`o.team = ${param(query.team)}`);
    if (query.model !== undefined) where.push(`o.model = ${param(query.model)}`);
    if (query.keyId !== undefined) where.push(`o.key_id = ${param(query.keyId)}`);
    if (query.from !== undefined) where.push(`o.created_at >= ${param(query.from)}`);
    if (query.to !== undefined) where.push(`o.created_at < ${param(query.to)}`);
    if (query.q !== undefined) where.push(`LOWER(o.prompt) LIKE LOWER(${param(likePattern(query.q))}) ESCAPE '\\'`);
    if (query.after) {
      const { createdAt, name, team } = query.after;
      where.push(`(o.created_at, o.name, o.team) < (${param(createdAt)}, ${param(name)}, ${param(team)})`);
    }
    const rows = await this.db.all<OwnerRow & { sha256: string; mime_type: string; bytes: number | string; width: number; height: number }>(
      `SELECT ${OWNER_COLUMNS.map((c) => `o.${c}`).join(', ')}, i.sha256, i.mime_type, i.bytes, i.width, i.height
       FROM image_owners o JOIN images i ON i.name = o.name
       WHERE ${where.join(' AND ')}
       ORDER BY o.created_at DESC, o.name DESC, o.team DESC LIMIT ${param(query.limit)}`,
      params,
    );
    return rows.map((r) => ({
      ...ownershipFromRow(r),
      sha256: r.sha256,
      mimeType: r.mime_type as ImageMime,
      bytes: Number(r.bytes),
      width: Number(r.width),
      height: Number(r.height),
    }));
  }

  /**
   * Removes one team's entry for an image (every team's when `team` is absent), and the image's row
   * when no team owns it any more, in one transaction. `removed`: whether any entry was there;
   * `orphaned`: the image's row, deleted, whose bytes the caller removes.
   */
  async removeOwners(name: string, team: string | undefined): Promise<{ removed: boolean; orphaned?: ImageRecord }> {
    return this.db.transaction(async (tx: Statements) => {
      const removed = team === undefined
        ? await tx.run('DELETE FROM image_owners WHERE name = $1', [name])
        : await tx.run('DELETE FROM image_owners WHERE name = $1 AND team = $2', [name, team]);
      if (removed === 0) return { removed: false };
      const left = await tx.get<{ n: number | string }>('SELECT COUNT(*) AS n FROM image_owners WHERE name = $1', [name]);
      if (Number(left?.n ?? 0) > 0) return { removed: true };
      const row = await tx.get<ImageRow>(`SELECT ${LISTED} FROM images WHERE name = $1`, [name]);
      await tx.run('DELETE FROM images WHERE name = $1', [name]);
      return row ? { removed: true, orphaned: fromRow(row) } : { removed: true };
    });
  }
}
