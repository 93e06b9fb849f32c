// One of the image worker threads (piscina, see image-workers.ts): runs one task at a time from
// image-work.ts. Loaded by piscina on its own (as .js from dist/, or as .ts with the types stripped
// under the tests): its sibling is imported with the extension this file was loaded with.
import { move, transferableSymbol, valueSymbol } from 'piscina';
import type * as ImageWorkModule from './image-work.js';

const work = (await import(import.meta.url.endsWith('.ts') ? './image-work.ts' : './image-work.js')) as typeof ImageWorkModule;

/** What the main thread sends: a task over a file of the image store's staging directory. */
export type ImageTask = { op: 'decode-base64-file'; path: string; keepText: boolean } | { op: 'encode-file-base64'; path: string } | { op: 'hash-file'; path: string };

/**
 * A task that failed for a reason of its own (not a crash), as a value: an Error's class and code
 * do not survive the trip between threads.
 */
export interface ImageTaskFailure {
  failure: 'not-an-image' | 'file';
  message: string;
  code?: string;
}

/** Moves `value` back with `buffers` transferred, not copied. */
function moving<T extends object>(value: T, buffers: ArrayBuffer[]) {
  return move({
    get [transferableSymbol]() {
      return buffers;
    },
    get [valueSymbol]() {
      return value;
    },
  });
}

export default async function run(task: ImageTask): Promise<unknown> {
  try {
    return await perform(task);
  } catch (err) {
    const e = err as Error & { code?: unknown };
    const failure: ImageTaskFailure = { failure: e.name === 'NotAnImage' ? 'not-an-image' : 'file', message: e.message };
    if (typeof e.code === 'string') failure.code = e.code;
    return failure;
  }
}

async function perform(task: ImageTask): Promise<unknown> {
  switch (task.op) {
    case 'decode-base64-file': {
      const image = await work.decodeBase64File(task.path, task.keepText);
      return image.text ? moving(image, [image.text]) : image;
    }
    case 'encode-file-base64':
      return move(await work.encodeFileBase64(task.path));
    case 'hash-file':
      return work.hashFile(task.path);
  }
}
