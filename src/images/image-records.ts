import { sqlByRowCount, valuesPlaceholders, type Database, type Migration } from '../storage/database.js';
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
];

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
  waiters: Array<{ resolve: (saved: ImageRecord) => void; reject: (err: unknown) => void }>;
}

/**
 * The `images` table: one row per stored image, in SQLite or PostgreSQL.
 *
 * Saves that arrive in the same turn of the event loop are written by one INSERT (group commit):
 * each commit to SQLite's log cost ~100 µs of the request's CPU, and each caller still hears back
 * only once its row is committed.
 */
export class ImageRecords {
  private pending = new Map<string, PendingSave>();

  constructor(private readonly db: Database) {}

  async migrate(): Promise<void> {
    await this.db.migrate(IMAGE_MIGRATIONS);
  }

  /**
   * Records an image, resolving to its row once committed: one made again keeps its first owner
   * and gets the later of the two expiries.
   */
  save(record: ImageRecord): Promise<ImageRecord> {
    return new Promise((resolve, reject) => {
      if (this.pending.size === 0) setImmediate(() => void this.writePending());
      const same = this.pending.get(record.name);
      if (same) {
        // The same image twice in one batch: one row (an INSERT may not touch a row twice).
        if (record.expiresAt > same.record.expiresAt) same.record = { ...same.record, expiresAt: record.expiresAt };
        same.waiters.push({ resolve, reject });
      } else {
        this.pending.set(record.name, { record, waiters: [{ resolve, reject }] });
      }
    });
  }

  private async writePending(): Promise<void> {
    // In name order: two replicas upserting the same names lock their rows in the same order (no deadlock).
    const batch = [...this.pending.values()].sort((a, b) => (a.record.name < b.record.name ? -1 : a.record.name > b.record.name ? 1 : 0));
    this.pending = new Map();
    for (let i = 0; i < batch.length; i += SAVE_BATCH) await this.insert(batch.slice(i, i + SAVE_BATCH));
  }

  private async insert(batch: PendingSave[]): Promise<void> {
    try {
      const saved = await this.db.all<ImageRow>(
        upsertSql(batch.length),
        batch.flatMap(({ record: r }) => [r.name, r.sha256, r.mimeType, r.bytes, r.width, r.height, r.keyId, r.team, r.createdAt, r.expiresAt, r.inlineBytes ?? null]),
      );
      const byName = new Map(saved.map((row) => [row.name, fromRow(row)]));
      for (const { record, waiters } of batch) {
        // Not read back: the same name is the same bytes, and sending them back cost ~10 µs a row.
        const row = byName.get(record.name);
        const answer = row ? (record.inlineBytes ? { ...row, inlineBytes: record.inlineBytes } : row) : record;
        for (const w of waiters) w.resolve(answer);
      }
    } catch (err) {
      for (const { waiters } of batch) for (const w of waiters) w.reject(err);
    }
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
    return (await this.db.run('DELETE FROM images WHERE name = $1 AND expires_at = $2', [record.name, record.expiresAt])) === 1;
  }
}
