import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { Base64Staging } from '../dist/images/base64-staging.js';
import { WarmStagingFiles } from '../dist/images/warm-staging-files.js';
const png = await sharp(randomBytes(1200 * 1160 * 3), { raw: { width: 1200, height: 1160, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
const b64 = Buffer.from(png.toString('base64'), 'latin1');
const dir = mkdtempSync(join(tmpdir(), 'st-'));
const files = new WarmStagingFiles(dir, { count: 0, maxBytes: 0 });
const keep = process.env.KEEP === '1';
const s = performance.now();
const N = 200;
for (let i = 0; i < N; i++) {
  const st = new Base64Staging(files, b64.length, keep);
  for (let at = 0; at < b64.length; at += 65536) await st.write(Buffer.from(b64.subarray(at, at + 65536)));
  const r = await st.end();
  rmSync(r.path);
}
console.log('per image', ((performance.now() - s) / N).toFixed(2), 'ms', png.length);
rmSync(dir, { recursive: true });
