import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, rename, stat, writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { EXTENSION_OF, MIME_OF_EXTENSION, type ImageMime } from './image-bytes.js';

export interface StoredImage {
  /** `img_<sha256>`; the file name adds the extension. */
  id: string;
  /** `img_<sha256>.<ext>`, the name used in URLs. */
  name: string;
  sha256: string;
  mime: ImageMime;
  bytes: number;
}

export interface ImageStore {
  put(bytes: Buffer, mime: ImageMime): Promise<StoredImage>;
  open(name: string): Promise<{ stream: Readable; bytes: number; mime: ImageMime } | undefined>;
}

const NAME_PATTERN = /^img_([0-9a-f]{64})\.(png|jpg|webp)$/;

/** Content-addressed files under DATA_DIR/images, written to a temp file and renamed so no half image is ever served. */
export class FileImageStore implements ImageStore {
  private readonly root: string;

  constructor(dataDir: string) {
    this.root = join(dataDir, 'images');
  }

  private pathOf(sha256: string, ext: string): string {
    return join(this.root, sha256.slice(0, 2), `${sha256}.${ext}`);
  }

  async put(bytes: Buffer, mime: ImageMime): Promise<StoredImage> {
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    const ext = EXTENSION_OF[mime];
    const path = this.pathOf(sha256, ext);
    const stored: StoredImage = { id: `img_${sha256}`, name: `img_${sha256}.${ext}`, sha256, mime, bytes: bytes.length };
    const existing = await stat(path).catch(() => undefined);
    if (existing?.size === bytes.length) return stored;
    await mkdir(join(this.root, sha256.slice(0, 2)), { recursive: true });
    const temp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      await writeFile(temp, bytes);
      await rename(temp, path);
    } catch (err) {
      await rm(temp, { force: true });
      throw err;
    }
    return stored;
  }

  async open(name: string) {
    const m = NAME_PATTERN.exec(name);
    if (!m) return undefined;
    const [, sha256, ext] = m as unknown as [string, string, string];
    const path = this.pathOf(sha256, ext);
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) return undefined;
    return { stream: createReadStream(path), bytes: info.size, mime: MIME_OF_EXTENSION[ext]! };
  }
}
