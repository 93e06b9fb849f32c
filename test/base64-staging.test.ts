import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import sharp from 'sharp';
import { open } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Base64Staging } from '../src/images/base64-staging.js';
import { WarmStagingFiles } from '../src/images/warm-staging-files.js';

let dir: string;
let png: Buffer;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gw-staging-'));
  // Noise, stored uncompressed: ~2.3 MB, so the image spans several of the staging's write buffers.
  png = await sharp(randomBytes(880 * 880 * 3), { raw: { width: 880, height: 880, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** New files only: a directory holds nothing but what the staging wrote. */
const coldFiles = (stagingDir: string) => new WarmStagingFiles(stagingDir, { count: 0, maxBytes: 0 });

/** Feeds the base64 of `bytes` in pieces of the given sizes, in turn. */
async function stage(bytes: Buffer, sizes: number[], files: WarmStagingFiles = coldFiles(join(dir, 'staging')), maxBytes?: number) {
  const base64 = Buffer.from(bytes.toString('base64'), 'latin1');
  const staging = new Base64Staging(files, maxBytes);
  for (let at = 0, i = 0; at < base64.length; i++) {
    const size = sizes[i % sizes.length]!;
    await staging.write(base64.subarray(at, at + size));
    at += size;
  }
  return staging.end();
}

describe('staging a base64 image as it arrives', () => {
  for (const sizes of [[1, 2, 3, 5, 7], [65_536], [1 << 22]]) {
    it(`writes exactly the decoded image, hashed, typed and measured (pieces of ${sizes.join(', ')} characters)`, async () => {
      const staged = await stage(png, sizes);
      expect(readFileSync(staged.path).equals(png)).toBe(true);
      expect(staged).toMatchObject({ sha256: createHash('sha256').update(png).digest('hex'), bytes: png.length, mime: 'image/png', dimensions: { width: 880, height: 880 } });
      rmSync(staged.path);
    });
  }

  // The ~2.3 MB image into a warm file longer than it (cut to it) and one shorter (written on past it).
  for (const warmBytes of [4 << 20, 1 << 20]) {
    it(`writes exactly the decoded image into a warm staging file of ${warmBytes >> 20} MiB`, async () => {
      const files = new WarmStagingFiles(join(dir, `warm-${warmBytes}`), { count: 1, maxBytes: warmBytes });
      // A first take starts the preparing.
      await (await files.take()).file.close();
      await files.prepared();
      const staged = await stage(png, [65_536], files);
      expect(files.holds(basename(staged.path))).toBe(false);
      expect(statSync(staged.path).size).toBe(png.length);
      expect(readFileSync(staged.path).equals(png)).toBe(true);
      expect(staged.sha256).toBe(createHash('sha256').update(png).digest('hex'));
      await files.close();
    });
  }

  it('gives the same image again with reused buffers, one after another', async () => {
    const small = await sharp({ create: { width: 20, height: 10, channels: 3, background: 'red' } }).png().toBuffer();
    for (const image of [png, small, png]) {
      const staged = await stage(image, [10_000]);
      expect(readFileSync(staged.path).equals(image)).toBe(true);
      rmSync(staged.path);
    }
  });

  it('refuses bytes that are not an image and leaves no file', async () => {
    const stagingDir = join(dir, 'refused');
    await expect(stage(Buffer.from('GIF89a, not at all a PNG'.repeat(10)), [50], coldFiles(stagingDir))).rejects.toThrow('not a PNG, JPEG or WebP');
    // Refused from its first bytes, before any file was opened.
    expect(existsSync(stagingDir) ? readdirSync(stagingDir) : []).toEqual([]);
  });

  it('removes what it wrote when aborted', async () => {
    const stagingDir = join(dir, 'aborted');
    const staging = new Base64Staging(coldFiles(stagingDir));
    const base64 = Buffer.from(png.toString('base64'), 'latin1');
    await staging.write(base64.subarray(0, 2_000_000));
    expect(readdirSync(stagingDir).length).toBe(1);
    await staging.abort();
    expect(readdirSync(stagingDir)).toEqual([]);
  });

  it('removes the file it was taking when aborted meanwhile', async () => {
    const stagingDir = join(dir, 'aborted-while-taking');
    const staging = new Base64Staging(coldFiles(stagingDir));
    const small = await sharp({ create: { width: 20, height: 10, channels: 3, background: 'red' } }).png().toBuffer();
    await staging.write(Buffer.from(small.toString('base64'), 'latin1'));
    // end() flushes, which takes a file (a thread-pool trip); the abort lands before that returns.
    const ended = staging.end();
    await staging.abort();
    await expect(ended).rejects.toThrow('aborted');
    expect(readdirSync(stagingDir)).toEqual([]);
  });

  it('reports a failed write (while the next MiB is being decoded), removes the file and carries on', async () => {
    const stagingDir = join(dir, 'failed-write');
    // The prototype every FileHandle shares: the second write of the image fails.
    const probe = await open(join(dir, 'probe'), 'w');
    const FileHandle = Object.getPrototypeOf(probe) as { write: (...args: unknown[]) => Promise<unknown> };
    await probe.close();
    const realWrite = FileHandle.write;
    let calls = 0;
    const write = vi.spyOn(FileHandle, 'write').mockImplementation(function (this: unknown, ...args: unknown[]) {
      calls++;
      return calls === 2 ? Promise.reject(Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' })) : realWrite.apply(this, args);
    });
    try {
      await expect(stage(png, [65_536], coldFiles(stagingDir))).rejects.toThrow('ENOSPC');
    } finally {
      write.mockRestore();
    }
    expect(readdirSync(stagingDir)).toEqual([]);
    const staged = await stage(png, [65_536], coldFiles(stagingDir));
    expect(readFileSync(staged.path).equals(png)).toBe(true);
  });

  it('keeps the last byte of unpadded base64 that ends where a write buffer is full', async () => {
    // 1 MiB buffers hold 349525 whole groups (1048575 bytes); 2 bytes more end in 3 unpadded characters.
    const bytes = Buffer.concat([png.subarray(0, 16), randomBytes(1_048_577 - 16)]);
    const unpadded = Buffer.from(bytes.toString('base64').replace(/=+$/, ''), 'latin1');
    const staging = new Base64Staging(coldFiles(join(dir, 'unpadded')));
    for (let at = 0; at < unpadded.length; at += 65_536) await staging.write(unpadded.subarray(at, at + 65_536));
    const staged = await staging.end();
    expect(staged.bytes).toBe(bytes.length);
    expect(readFileSync(staged.path).equals(bytes)).toBe(true);
    rmSync(staged.path);
  });

  describe('with the bound its reply declared', () => {
    const MiB = 1024 * 1024;
    // Just over the one MiB write buffer, as a 1 MiB render is.
    const justOver = () => Buffer.concat([png.subarray(0, 16), randomBytes(MiB + 1_638 - 16)]);

    it('takes a last buffer only as large as what is left of the image, not a second MiB', async () => {
      const image = justOver();
      const base64 = Buffer.from(image.toString('base64'), 'latin1');
      // The reply's JSON around the base64: a few dozen characters, so a bound a little over the image.
      const staging = new Base64Staging(coldFiles(join(dir, 'bounded')), image.length + 60);
      for (let at = 0; at < base64.length; at += 65_536) await staging.write(base64.subarray(at, at + 65_536));
      const staged = await staging.end();
      expect(readFileSync(staged.path).equals(image)).toBe(true);
      rmSync(staged.path);
      const [first, last] = (staging as unknown as { buffers: [Buffer, Buffer] }).buffers;
      expect(first.length).toBe(MiB);
      expect(last.length).toBeGreaterThan(1_638);
      expect(last.length).toBeLessThanOrEqual(8_192);
    });

    for (const [what, bound] of [
      ['exactly the image', 0],
      ['less than the image (a wrong bound)', -500_000],
      ['far more than the image', 10 * MiB],
    ] as const) {
      it(`writes exactly the decoded image with a bound of ${what}`, async () => {
        for (const image of [justOver(), png]) {
          const staged = await stage(image, [1, 2, 3, 65_536], undefined, image.length + bound);
          expect(staged.bytes).toBe(image.length);
          expect(readFileSync(staged.path).equals(image)).toBe(true);
          expect(staged.sha256).toBe(createHash('sha256').update(image).digest('hex'));
          rmSync(staged.path);
        }
      });
    }

    it('keeps the last bytes of unpadded base64 with a tight bound', async () => {
      const bytes = Buffer.concat([png.subarray(0, 16), randomBytes(MiB + 2 - 16)]);
      const unpadded = Buffer.from(bytes.toString('base64').replace(/=+$/, ''), 'latin1');
      const staging = new Base64Staging(coldFiles(join(dir, 'unpadded-bound')), bytes.length);
      for (let at = 0; at < unpadded.length; at += 65_536) await staging.write(unpadded.subarray(at, at + 65_536));
      const staged = await staging.end();
      expect(readFileSync(staged.path).equals(bytes)).toBe(true);
      rmSync(staged.path);
    });
  });
});

describe("keeping the upstream's text for a b64_json answer", () => {
  /** Stages `text` (base64 characters) with keepText, in pieces of the given sizes. */
  async function stageText(text: string, sizes: number[], keepText = true) {
    const base64 = Buffer.from(text, 'latin1');
    const staging = new Base64Staging(coldFiles(join(dir, 'kept')), Number.POSITIVE_INFINITY, keepText);
    for (let at = 0, i = 0; at < base64.length; i++) {
      const size = sizes[i % sizes.length]!;
      await staging.write(base64.subarray(at, at + size));
      at += size;
    }
    const staged = await staging.end();
    rmSync(staged.path);
    return staged;
  }
  /** The image with a length that is no multiple of 3, so its base64 ends in padding (bytes past IEND are still a PNG). */
  const padded = () => (png.length % 3 === 0 ? Buffer.concat([png, Buffer.from([0])]) : png);

  for (const sizes of [[1, 2, 3, 5, 7], [65_536], [1 << 22]]) {
    it(`answers the text as it came when it is the image's standard base64 (pieces of ${sizes.join(', ')})`, async () => {
      const image = padded();
      const staged = await stageText(image.toString('base64'), sizes);
      expect(staged.base64?.toString()).toBe(image.toString('base64'));
      expect(staged.bytes).toBe(image.length);
    });
  }

  it('keeps nothing when not asked to', async () => {
    expect((await stageText(png.toString('base64'), [65_536], false)).base64).toBeUndefined();
  });

  // Each is staged as what it decodes to (an image still: the change is past its first bytes), but
  // its text is not the standard base64 of that, so the answer must be encoded from the file instead.
  const notStandard: [string, (b64: string) => string][] = [
    ['base64url characters', (b64) => b64.replaceAll('+', '-').replaceAll('/', '_')],
    ['no padding', (b64) => b64.replace(/=+$/, '')],
    ['a space inside', (b64) => `${b64.slice(0, 4001)} ${b64.slice(4001, -5)}${b64.slice(-4)}`],
    ['padding inside', (b64) => `${b64.slice(0, 4000)}AA==${b64.slice(4000)}`],
    [
      'unused bits set in its last group',
      (b64) => {
        // Before padding, a last character's lowest bit is never data: setting it leaves the bytes as they are.
        const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
        const lastData = b64.replace(/=+$/, '').length - 1;
        return `${b64.slice(0, lastData)}${alphabet[alphabet.indexOf(b64[lastData]!) | 1]}${b64.slice(lastData + 1)}`;
      },
    ],
  ];
  it('does not answer a text with padding inside that keeps its length (a padded group ending a piece)', async () => {
    // No padding at its end; a middle group made "QQ==" (one byte) keeps the text's length, and with
    // it, one more group of four than its bytes need, as a standard text of one byte less would have.
    const image = png.subarray(0, png.length - (png.length % 3));
    const b64 = image.toString('base64');
    const text = `${b64.slice(0, 3996)}QQ==${b64.slice(4000)}`;
    expect(text.length).toBe(b64.length);
    const staged = await stageText(text, [4000]);
    expect(staged.bytes).toBe(image.length - 2);
    expect(staged.base64).toBeUndefined();
  });

  for (const [what, change] of notStandard) {
    it(`does not answer a text with ${what}`, async () => {
      const image = padded();
      const text = change(image.toString('base64'));
      expect(text).not.toBe(image.toString('base64'));
      for (const sizes of [[65_536], [3, 1000]]) expect((await stageText(text, sizes)).base64, `pieces of ${sizes.join(', ')}`).toBeUndefined();
    });
  }
});
