// The thread behind Sha256Thread: sha256 hashes of image bytes the main thread has decoded into
// shared memory. Node loads this file on its own (as .js from dist/, or as .ts with the types
// stripped under the tests): node: imports only.
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';

/** update: `data` is hashed, then acknowledged; digest: the hex digest is sent back; drop: forgotten. */
type Message = { id: number; op: 'update'; data: Uint8Array } | { id: number; op: 'digest' } | { id: number; op: 'drop' };

const hashes = new Map<number, Hash>();

parentPort!.on('message', (message: Message) => {
  if (message.op === 'drop') {
    hashes.delete(message.id);
    return;
  }
  let hash = hashes.get(message.id);
  if (!hash) hashes.set(message.id, (hash = createHash('sha256')));
  if (message.op === 'update') {
    hash.update(message.data);
    parentPort!.postMessage(null);
  } else {
    hashes.delete(message.id);
    parentPort!.postMessage(hash.digest('hex'));
  }
});
