import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Readable } from 'node:stream';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ImageLibrary } from '../src/images/image-library.js';
import { ImageRecords } from '../src/images/image-records.js';
import { FileImageStore } from '../src/images/image-store.js';
import { WarmStagingFiles } from '../src/images/warm-staging-files.js';
import { SqliteDatabase } from '../src/storage/database.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'gw-warm-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1024 * 1024;

describe('warm staging files', () => {
  it('hands out a new file until warm ones are ready, then warm ones of the set length, sparse on disk', async () => {
    const files = new WarmStagingFiles(join(dir, 'pool'), { count: 2, maxBytes: 2 * MiB });
    const first = await files.take();
    expect(first.warmBytes).toBe(0);
    expect(statSync(first.path).size).toBe(0);
    await first.file.close();
    await files.prepared();
    const ready = readdirSync(join(dir, 'pool')).filter((name) => files.holds(name));
    expect(ready).toHaveLength(2);
    for (const name of ready) {
      const info = statSync(join(dir, 'pool', name));
      expect(info.size).toBe(2 * MiB);
      // Prepared by reading, not writing: no disk blocks (the page cache holds zeroed pages).
      expect(info.blocks).toBe(0);
    }
    const warm = await files.take();
    expect(warm.warmBytes).toBe(2 * MiB);
    expect(ready).toContain(basename(warm.path));
    expect(files.holds(basename(warm.path))).toBe(false);
    await warm.file.close();
    await files.prepared();
    // The one taken is replaced.
    expect(readdirSync(join(dir, 'pool')).filter((name) => files.holds(name))).toHaveLength(2);
    await files.close();
    expect(readdirSync(join(dir, 'pool')).sort()).toEqual([basename(first.path), basename(warm.path)].sort());
  });

  it('makes each warm file as long as the largest of the last large images staged, rounded up to 256 KiB, within the maximum', async () => {
    const files = new WarmStagingFiles(join(dir, 'sized'), { count: 1, maxBytes: 4 * MiB });
    expect(files.nextWarmBytes()).toBe(4 * MiB);
    // A thumbnail does not size them.
    files.noteImageBytes(10_000);
    expect(files.nextWarmBytes()).toBe(4 * MiB);
    files.noteImageBytes(300_000);
    expect(files.nextWarmBytes()).toBe(512 * 1024);
    await (await files.take()).file.close();
    await files.prepared();
    const [warm] = readdirSync(join(dir, 'sized')).filter((name) => files.holds(name));
    expect(statSync(join(dir, 'sized', warm!)).size).toBe(512 * 1024);
    files.noteImageBytes(9 * MiB);
    expect(files.nextWarmBytes()).toBe(4 * MiB);
    // Only the last eight count: the 9 MiB image is forgotten after eight smaller ones.
    for (let i = 0; i < 8; i++) files.noteImageBytes(600_000);
    expect(files.nextWarmBytes()).toBe(768 * 1024);
    await files.close();
  });

  it('makes none when the count is 0', async () => {
    const files = new WarmStagingFiles(join(dir, 'none'), { count: 0, maxBytes: MiB });
    const taken = await files.take();
    await taken.file.close();
    await files.prepared();
    expect(readdirSync(join(dir, 'none'))).toEqual([basename(taken.path)]);
    expect(taken.warmBytes).toBe(0);
  });

  it('still hands out new files when warm ones cannot be made', async () => {
    // Longer than the file system allows: every preparing fails (and leaves nothing behind).
    const files = new WarmStagingFiles(join(dir, 'unwarmable'), { count: 2, maxBytes: 2 ** 62 });
    for (let i = 0; i < 3; i++) {
      const taken = await files.take();
      expect(taken.warmBytes).toBe(0);
      await taken.file.close();
      rmSync(taken.path);
      await files.prepared();
    }
    expect(readdirSync(join(dir, 'unwarmable'))).toEqual([]);
    await files.close();
  });

  it('says why when no staging file can be made at all', async () => {
    // The directory is a file: neither kind can be made, and take() fails instead of hanging.
    const notADir = join(dir, 'not-a-dir');
    writeFileSync(notADir, 'x');
    const files = new WarmStagingFiles(notADir, { count: 2, maxBytes: MiB });
    await expect(files.take()).rejects.toThrow(/ENOTDIR|EEXIST/);
    await files.prepared();
    await files.close();
  });

  it('keeps its ready files fresh for the stale-staging sweep of any process sharing the directory', async () => {
    vi.useFakeTimers({ toFake: ['setInterval'] });
    try {
      const dataDir = join(dir, 'shared');
      const files = new WarmStagingFiles(join(dataDir, 'images', '.staging'), { count: 2, maxBytes: MiB });
      await (await files.take()).file.close();
      await files.prepared();
      const stagingDir = join(dataDir, 'images', '.staging');
      const ready = readdirSync(stagingDir).filter((name) => files.holds(name));
      expect(ready).toHaveLength(2);
      const hoursAgo = Date.now() / 1000 - 2 * 3600;
      for (const name of readdirSync(stagingDir)) utimesSync(join(stagingDir, name), hoursAgo, hoursAgo);
      vi.advanceTimersByTime(10 * 60 * 1000);
      await vi.waitFor(() => {
        for (const name of ready) expect(statSync(join(stagingDir, name)).mtimeMs).toBeGreaterThan(Date.now() - 60_000);
      });
      // Another process's library over the same directory holds none of them: its sweep leaves them.
      const db = new SqliteDatabase(':memory:');
      const other = new ImageLibrary(new FileImageStore(dataDir), new ImageRecords(db), { inlineMaxBytes: 0 });
      await other.migrate();
      await other.sweep();
      expect(readdirSync(stagingDir).filter((name) => files.holds(name)).sort()).toEqual([...ready].sort());
      // The file taken first (never touched again) is a stray to it.
      expect(readdirSync(stagingDir)).toHaveLength(2);
      await other.close();
      await db.close();
      await files.close();
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('a download staged in a warm file', () => {
  let library: ImageLibrary;
  let dataDir: string;
  let db: SqliteDatabase;
  beforeAll(async () => {
    dataDir = join(dir, 'library');
    db = new SqliteDatabase(':memory:');
    library = new ImageLibrary(new FileImageStore(dataDir), new ImageRecords(db), { inlineMaxBytes: 0, warmStaging: { count: 1, maxBytes: 3 * MiB } });
    await library.migrate();
  });
  afterAll(async () => {
    await library.close();
    await db.close();
  });

  const noisePng = (side: number) => sharp(randomBytes(side * side * 3), { raw: { width: side, height: side, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();

  it('is cut to the image when shorter, and runs on past the warm length when longer', async () => {
    // A first take starts the preparing.
    const first = await library.stagingFiles.take();
    await first.file.close();
    rmSync(first.path);
    for (const png of [await noisePng(300), await noisePng(1100)]) {
      await library.stagingFiles.prepared();
      const warm = readdirSync(library.store.stagingDir).filter((name) => library.stagingFiles.holds(name));
      expect(warm).toHaveLength(1);
      const staged = await library.stage(Readable.from([png.subarray(0, 1000), png.subarray(1000)]));
      expect(basename(staged.path)).toBe(warm[0]);
      expect(statSync(staged.path).size).toBe(png.length);
      expect(readFileSync(staged.path).equals(png)).toBe(true);
      expect(staged.bytes).toBe(png.length);
      rmSync(staged.path);
    }
  });

  it('leaves the warm files alone when sweeping stale staging files, and removes the rest', async () => {
    await library.stagingFiles.prepared();
    const stagingDir = library.store.stagingDir;
    const stale = join(stagingDir, 'left-by-a-crash.tmp');
    writeFileSync(stale, 'x');
    const hourAgo = Date.now() / 1000 - 2 * 3600;
    for (const name of readdirSync(stagingDir)) utimesSync(join(stagingDir, name), hourAgo, hourAgo);
    await library.sweep();
    expect(existsSync(stale)).toBe(false);
    const left = readdirSync(stagingDir);
    expect(left).toHaveLength(1);
    expect(library.stagingFiles.holds(left[0]!)).toBe(true);
    await library.close();
    expect(readdirSync(stagingDir)).toEqual([]);
  });
});
