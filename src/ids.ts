import { randomFillSync } from 'node:crypto';

// One getrandom() per id cost ~15 µs here, three times per request; a pool refilled 4 KiB at a
// time costs well under a microsecond an id (as crypto.randomUUID does inside Node).
const POOL_BYTES = 4096;
const pool = Buffer.alloc(POOL_BYTES);
let offset = POOL_BYTES;

/** `bytes` fresh random bytes from the operating system's CSPRNG; a copy the caller may keep. */
export function randomBytesPooled(bytes: number): Buffer {
  if (bytes > POOL_BYTES) return randomFillSync(Buffer.alloc(bytes));
  if (offset + bytes > POOL_BYTES) {
    randomFillSync(pool);
    offset = 0;
  }
  const out = Buffer.from(pool.subarray(offset, offset + bytes));
  offset += bytes;
  return out;
}

/** A random id for requests, jobs and temp files: `<prefix>_<base64url>` (or bare when no prefix). */
export function randomId(prefix: string | undefined, bytes: number): string {
  const token = randomBytesPooled(bytes).toString('base64url');
  return prefix ? `${prefix}_${token}` : token;
}

/** Random hex, for temp file names. */
export function randomHex(bytes: number): string {
  return randomBytesPooled(bytes).toString('hex');
}
