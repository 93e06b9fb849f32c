import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Sha256Thread, sharedBuffer } from '../src/images/sha256-thread.js';

const sha256 = (...parts: Buffer[]) => {
  const hash = createHash('sha256');
  for (const part of parts) hash.update(part);
  return hash.digest('hex');
};

/** `bytes` copied into shared memory, as the staging's buffers are. */
function shared(bytes: Buffer): Buffer {
  const buffer = sharedBuffer(bytes.length);
  bytes.copy(buffer);
  return buffer;
}

describe('the sha256 thread', () => {
  it('hashes streams fed piece by piece, interleaved, each to its own digest', async () => {
    const thread = new Sha256Thread();
    const a = [randomBytes(1 << 20), randomBytes(300_000), randomBytes(7)];
    const b = [randomBytes(5), randomBytes(1 << 19)];
    const streamA = thread.stream();
    const streamB = thread.stream();
    await Promise.all([streamA.update(shared(a[0]!)), streamB.update(shared(b[0]!)), streamA.update(shared(a[1]!))]);
    await Promise.all([streamB.update(shared(b[1]!)), streamA.update(shared(a[2]!))]);
    expect(await Promise.all([streamA.digest(), streamB.digest()])).toEqual([sha256(...a), sha256(...b)]);
    expect(await thread.stream().digest()).toBe(sha256());
    await thread.close();
  });

  it('hashes the bytes as they were when updated, a view into a larger buffer included', async () => {
    const thread = new Sha256Thread();
    const buffer = shared(randomBytes(1000));
    const stream = thread.stream();
    await stream.update(buffer.subarray(100, 600));
    const expected = sha256(Buffer.from(buffer.subarray(100, 600)));
    buffer.fill(0);
    expect(await stream.digest()).toBe(expected);
    await thread.close();
  });

  it('fails the streams in progress when the thread stops, and starts a new one for the next', async () => {
    const thread = new Sha256Thread();
    const before = thread.stream();
    await before.update(shared(randomBytes(64)));
    const failed = expect(before.update(shared(randomBytes(1 << 20)))).rejects.toThrow('sha256 thread');
    await thread.close();
    await failed;
    // Its hash so far was lost with the thread: it must not go on in a new one as if whole.
    await expect(before.digest()).rejects.toThrow('sha256 thread stopped');
    const after = thread.stream();
    const bytes = randomBytes(1000);
    await after.update(shared(bytes));
    expect(await after.digest()).toBe(sha256(bytes));
    await thread.close();
  });

  it('forgets a dropped stream', async () => {
    const thread = new Sha256Thread();
    const dropped = thread.stream();
    await dropped.update(shared(randomBytes(100)));
    dropped.drop();
    const next = thread.stream();
    expect(await next.digest()).toBe(sha256());
    await thread.close();
  });
});
