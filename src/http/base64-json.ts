import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';

/**
 * A long base64 string (an image in a `b64_json` answer) held as its ASCII bytes. An answer written
 * by serializeJson splices the bytes into the body as they are; JSON.stringify elsewhere (an event
 * stream, a stored job) gets the string. A 4 MiB image's base64 as a string cost, here, 50 ms of
 * JSON.stringify (a scan for characters to escape, a copy) and 23 ms to encode the body as UTF-8;
 * spliced, one copy of its bytes.
 */
export class Base64Text {
  /** The text's bytes, in order: one Buffer, or the pieces an upstream reply arrived in. */
  readonly pieces: readonly Buffer[];

  constructor(ascii: Buffer | readonly Buffer[]) {
    this.pieces = Buffer.isBuffer(ascii) ? [ascii] : ascii;
  }

  toJSON(): string {
    return splicing ? splicing.mark(this.pieces) : this.toString();
  }

  toString(): string {
    return (this.pieces.length === 1 ? this.pieces[0]! : Buffer.concat(this.pieces)).toString('latin1');
  }
}

/** The Base64Texts met by the JSON.stringify of serializeJson, each replaced by a marker string. */
class Splicing {
  readonly pieces: (readonly Buffer[])[] = [];
  /**
   * Random for each answer that has a Base64Text (made then: most answers have none), so that no
   * string in the answer (a prompt echoed back) can pass for a marker.
   */
  tag = '';

  mark(ascii: readonly Buffer[]): string {
    if (this.tag === '') this.tag = `\u0000b64:${randomBytes(8).toString('hex')}:`;
    this.pieces.push(ascii);
    return `${this.tag}${this.pieces.length - 1}`;
  }
}

let splicing: Splicing | undefined;

/** What SplicedJson writes to the socket at least at a time (but its last write). */
const WRITE_BYTES = 64 * 1024;

/**
 * A JSON body with images' base64 spliced in, sent as its parts in order: joining them into one
 * Buffer cost a fresh allocation and a copy of every image's text per answer. `byteLength` is the
 * body's Content-Length (set by app.ts's onSend hook; a stream has none of its own).
 */
export class SplicedJson extends Readable {
  readonly byteLength: number;
  private parts: Buffer[] = [];

  constructor(parts: Buffer[]) {
    super();
    this.byteLength = parts.reduce((n, part) => n + part.length, 0);
    // Small pieces (an upstream that sent its reply in a trickle) are joined, so that each write
    // to the socket carries a useful amount; large ones go as they are, uncopied.
    let small: Buffer[] = [];
    let smallBytes = 0;
    const joinSmall = () => {
      if (small.length > 0) this.parts.push(small.length === 1 ? small[0]! : Buffer.concat(small, smallBytes));
      small = [];
      smallBytes = 0;
    };
    for (const part of parts) {
      if (part.length >= WRITE_BYTES) {
        joinSmall();
        this.parts.push(part);
        continue;
      }
      small.push(part);
      smallBytes += part.length;
      if (smallBytes >= WRITE_BYTES) joinSmall();
    }
    joinSmall();
  }

  override _read(): void {
    for (const part of this.parts) this.push(part);
    this.push(null);
    this.parts = [];
  }
}

/**
 * JSON.stringify of `value`, with every Base64Text in it written straight into the body: a
 * SplicedJson when there is one, else the string. Fastify's reply serializer (app.ts).
 */
export function serializeJson(value: unknown): string | SplicedJson {
  const current = new Splicing();
  splicing = current;
  let json: string;
  try {
    json = JSON.stringify(value);
  } finally {
    splicing = undefined;
  }
  if (current.pieces.length === 0) return json;
  // In the JSON text a marker reads "\u0000b64:<tag>:<index>" (JSON.stringify escapes the NUL).
  const marker = JSON.stringify(current.tag).slice(1, -1);
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const found = json.indexOf(marker, at);
    if (found === -1) break;
    let end = found + marker.length;
    while (json.charCodeAt(end) >= 0x30 && json.charCodeAt(end) <= 0x39) end++;
    parts.push(Buffer.from(json.slice(at, found), 'utf8'), ...current.pieces[Number(json.slice(found + marker.length, end))]!);
    at = end;
  }
  parts.push(Buffer.from(json.slice(at), 'utf8'));
  return new SplicedJson(parts);
}
