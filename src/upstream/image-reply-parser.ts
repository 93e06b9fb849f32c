/**
 * Reads a successful upstream reply whose images may be megabytes of base64, without ever holding
 * them as strings. Read whole, a 4 MiB image cost a 5.6 MB body, its copy as a string, the value
 * JSON.parse made of it and the decoded bytes (~20 MB, for ~40 ms of a slow JSON.parse over base64).
 * Here the body is scanned as it arrives: a string value of at least LONG_BASE64_BYTES of plain
 * base64 is handed, piece by piece, to a sink (the image store's staging, which decodes, hashes and
 * writes it to a temp file); the rest of the reply, now small, is JSON.parse'd as usual, with a
 * DecodedBase64 holding the sink's answer where the string was.
 */
export class DecodedBase64<T = unknown> {
  constructor(readonly result: T) {}
}

/** Receives one long base64 string's characters in order, as they arrive; answers once it has them all. */
export interface Base64Sink<T> {
  /** Base64 characters (any number of them); resolves when the sink is ready for more. */
  write(base64: Buffer): Promise<void>;
  end(): Promise<T>;
  /** The reply failed: the sink drops what it has. */
  abort(): Promise<void>;
}

/**
 * Makes the sink for each long base64 string of a reply; `maxBytes`, when the reply declared its
 * length, bounds what any string in it can decode to (3 bytes per 4 characters of the reply).
 */
export type Base64SinkFactory<T> = ((maxBytes?: number) => Base64Sink<T>) & {
  /** Its sinks keep the text they are handed (for a `b64_json` answer), besides what they decode it to. */
  readonly keepsText?: boolean;
};

/** The reply is not JSON (or breaks off); the message says where. */
export class MalformedReply extends Error {}

export class ReplyTooLarge extends Error {}

/** Reading the reply failed (the connection dropped, the call was aborted); `cause` says how. */
export class ReplyBrokeOff extends Error {}

/** Shorter strings stay in the parsed tree: JSON.parse is cheaper than a sink below this size. */
export const LONG_BASE64_BYTES = 64 * 1024;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const BASE64_ALPHABET = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_') BASE64_ALPHABET[c.charCodeAt(0)] = 1;

/** A string handed to a sink is `"\u0000base64:<index>"` in the small JSON text. */
const PLACEHOLDER_PREFIX = '\u0000base64:';
/** The rest of such a string, its opening quote being written already. */
const placeholder = (index: number) => Buffer.from(`\\u0000base64:${index}"`);

function isPlainBase64(pieces: Buffer[]): boolean {
  for (const piece of pieces) for (let i = 0; i < piece.length; i++) if (BASE64_ALPHABET[piece[i]!] === 0) return false;
  return true;
}

/**
 * Parses a JSON reply from `body` (at most `maxBytes`), handing each long base64 string to a sink
 * from `newSink` as it streams by. On failure the sink in use is aborted; sinks that had answered
 * already are the caller's to clean up (their answers never reach it, so `newSink` must track them).
 */
export async function parseImageReply<T>(
  body: AsyncIterable<Uint8Array>,
  newSink: Base64SinkFactory<T>,
  maxBytes: number,
  /** Told of the reply's bytes kept as they are until it is parsed (all but the strings handed to sinks). */
  onKept: (bytes: number) => void = () => {},
): Promise<unknown> {
  // The reply's JSON with each string handed to a sink replaced by a placeholder.
  const json: Buffer[] = [];
  const keep = (...pieces: Buffer[]) => {
    for (const piece of pieces) onKept(piece.length);
    json.push(...pieces);
  };
  const results: T[] = [];
  let state: 'between' | 'string' | 'base64' = 'between';
  // The current string: its bytes so far, whether it had an escape, and an escape cut by a chunk's end.
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let escaped = false;
  let escapeNext = false;
  let sink: Base64Sink<T> | undefined;
  let total = 0;

  /** Hands the string collected so far to a new sink; `whole` when its closing quote has been seen too. */
  const toSink = async (whole: boolean) => {
    sink = newSink();
    for (const text of pending) await sink.write(text);
    pending = [];
    if (whole) {
      results.push(await sink.end());
      sink = undefined;
      keep(placeholder(results.length - 1));
    }
  };

  const reader = body[Symbol.asyncIterator]();
  try {
    for (;;) {
      let next: IteratorResult<Uint8Array>;
      try {
        next = await reader.next();
      } catch (err) {
        throw new ReplyBrokeOff((err as Error).message, { cause: err });
      }
      if (next.done) break;
      const piece = next.value;
      const chunk = Buffer.isBuffer(piece) ? piece : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
      total += chunk.length;
      if (total > maxBytes) throw new ReplyTooLarge(`the reply is over ${maxBytes} bytes`);
      let at = 0;
      while (at < chunk.length) {
        if (state === 'between') {
          const quote = chunk.indexOf(QUOTE, at);
          const end = quote === -1 ? chunk.length : quote + 1;
          // Copied: a slice would keep the whole socket chunk alive.
          keep(Buffer.from(chunk.subarray(at, end)));
          at = end;
          if (quote !== -1) {
            state = 'string';
            pending = [];
            pendingBytes = 0;
            escaped = false;
            escapeNext = false;
          }
        } else if (state === 'string') {
          let from = at;
          if (escapeNext) {
            escapeNext = false;
            from++;
          }
          let quote = chunk.indexOf(QUOTE, from);
          let backslash = chunk.indexOf(BACKSLASH, from);
          while (backslash !== -1 && (quote === -1 || backslash < quote)) {
            escaped = true;
            from = backslash + 2;
            if (from > chunk.length) {
              escapeNext = true;
              break;
            }
            if (quote !== -1 && quote < from) quote = chunk.indexOf(QUOTE, from);
            backslash = chunk.indexOf(BACKSLASH, from);
          }
          if (escapeNext) quote = -1;
          const end = quote === -1 ? chunk.length : quote;
          pending.push(Buffer.from(chunk.subarray(at, end)));
          pendingBytes += end - at;
          const long = pendingBytes >= LONG_BASE64_BYTES && !escaped;
          if (quote !== -1) {
            // A long string that ended within one chunk goes to a sink too: the outcome must not depend on how the body was cut.
            if (long && isPlainBase64(pending)) await toSink(true);
            else keep(...pending, Buffer.from('"'));
            state = 'between';
            at = quote + 1;
          } else {
            at = chunk.length;
            if (long) {
              if (isPlainBase64(pending)) {
                await toSink(false);
                state = 'base64';
              } else {
                escaped = true; // a long string of text: kept as it is, and not looked at again
              }
            }
          }
        } else {
          const quote = chunk.indexOf(QUOTE, at);
          const backslash = chunk.indexOf(BACKSLASH, at);
          if (backslash !== -1 && (quote === -1 || backslash < quote)) throw new MalformedReply('an escape inside a base64 string');
          const end = quote === -1 ? chunk.length : quote;
          if (end > at) await sink!.write(chunk.subarray(at, end));
          if (quote === -1) {
            at = chunk.length;
          } else {
            results.push(await sink!.end());
            sink = undefined;
            keep(placeholder(results.length - 1));
            state = 'between';
            at = quote + 1;
          }
        }
      }
    }
    if (state !== 'between') throw new MalformedReply('the reply ends inside a string');
  } catch (err) {
    // The sink's own failure (not an image, the store) and the parser's pass as they are.
    await sink?.abort();
    if (!(err instanceof ReplyBrokeOff)) await reader.return?.().catch(() => {});
    throw err;
  }

  try {
    return JSON.parse(Buffer.concat(json).toString('utf8'), (_key, value: unknown) => {
      if (typeof value === 'string' && value.startsWith(PLACEHOLDER_PREFIX)) {
        const index = Number(value.slice(PLACEHOLDER_PREFIX.length));
        if (Number.isInteger(index) && index < results.length) return new DecodedBase64(results[index]);
      }
      return value;
    });
  } catch (err) {
    throw new MalformedReply((err as Error).message);
  }
}
