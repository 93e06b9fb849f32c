import type { Database, Migration } from '../storage/database.js';
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
});

/** The `images` table: one row per stored image, in SQLite or PostgreSQL. */
export class ImageRecords {
  constructor(private readonly db: Database) {}

  async migrate(): Promise<void> {
    await this.db.migrate(IMAGE_MIGRATIONS);
  }

  /** Records an image; one made again keeps its first owner and gets the later of the two expiries. */
  async save(record: ImageRecord): Promise<ImageRecord> {
    await this.db.run(
      `INSERT INTO images (name, sha256, mime_type, bytes, width, height, key_id, team, created_at, expires_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
       ON CONFLICT (name) DO UPDATE SET expires_at =
         CASE WHEN excluded.expires_at > images.expires_at THEN excluded.expires_at ELSE images.expires_at END`,
      [record.name, record.sha256, record.mimeType, record.bytes, record.width, record.height, record.keyId, record.team, record.createdAt, record.expiresAt],
    );
    return (await this.find(record.name)) ?? record;
  }

  async find(name: string): Promise<ImageRecord | undefined> {
    const row = await this.db.get<ImageRow>('SELECT * FROM images WHERE name = $1', [name]);
    return row && fromRow(row);
  }

  /** Images whose expiry has passed, soonest-expired first. */
  async expired(nowSeconds: number, limit: number): Promise<ImageRecord[]> {
    const rows = await this.db.all<ImageRow>('SELECT * FROM images WHERE expires_at <= $1 ORDER BY expires_at, created_at LIMIT $2', [nowSeconds, limit]);
    return rows.map(fromRow);
  }

  /**
   * Oldest first. Every image lives the same IMAGE_RETENTION_DAYS from when it was last made, so
   * the soonest expiry is the least recently made image.
   */
  async oldest(limit: number): Promise<ImageRecord[]> {
    const rows = await this.db.all<ImageRow>('SELECT * FROM images ORDER BY expires_at, created_at LIMIT $1', [limit]);
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
