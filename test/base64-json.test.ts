/**
 * A b64_json answer's base64 is spliced into the JSON body as bytes (src/http/base64-json.ts): the
 * body must be exactly the JSON.stringify of the same answer with strings, and nothing else in the
 * answer can be taken for the place of an image.
 */
import { describe, expect, it } from 'vitest';
import { Base64Text, serializeJson, SplicedJson } from '../src/http/base64-json.js';

const text = (s: string) => new Base64Text(Buffer.from(s, 'latin1'));

/** The writes a SplicedJson makes, read as a pipe to the socket reads them (flowing). */
function writesOf(body: SplicedJson): Promise<Buffer[]> {
  const writes: Buffer[] = [];
  return new Promise((resolve, reject) => {
    body.on('data', (chunk: Buffer) => writes.push(chunk));
    body.once('end', () => resolve(writes));
    body.once('error', reject);
  });
}

/** The body a SplicedJson sends, checked against the length it declares. */
async function bodyOf(body: string | SplicedJson): Promise<string> {
  if (typeof body === 'string') return body;
  const bytes = Buffer.concat(await writesOf(body));
  expect(bytes.length).toBe(body.byteLength);
  return bytes.toString('utf8');
}

describe('serializeJson', () => {
  it('writes each Base64Text where it stands, the rest as JSON.stringify does', async () => {
    const pieces = new Base64Text([Buffer.from('UklG'), Buffer.from('Rg=='), Buffer.from('')]);
    const answer = { id: 'gen_1', images: [{ b64_json: text('iVBORw0KGgo='), sha256: 'ab' }, { b64_json: pieces, note: 'é ✓ "quoted"' }] };
    const body = serializeJson(answer);
    expect(body).toBeInstanceOf(SplicedJson);
    const plain = { id: 'gen_1', images: [{ b64_json: 'iVBORw0KGgo=', sha256: 'ab' }, { b64_json: 'UklGRg==', note: 'é ✓ "quoted"' }] };
    // The length counts bytes, not characters (é and ✓ are 2 and 3 bytes).
    expect(await bodyOf(body)).toBe(JSON.stringify(plain));
  });

  it('joins small pieces into writes of at least 64 KiB, and sends large ones as they are', async () => {
    const trickle = Array.from({ length: 3000 }, (_, i) => Buffer.from('QUJD'.repeat(1 + (i % 50))));
    const large = Buffer.alloc(200_000, 0x41);
    const writes = await writesOf(serializeJson({ images: [{ b64_json: new Base64Text([...trickle, large]) }] }) as SplicedJson);
    expect(Buffer.concat(writes).toString()).toBe(JSON.stringify({ images: [{ b64_json: Buffer.concat([...trickle, large]).toString() }] }));
    // The large piece goes as it is (the very buffer); before it, the trickle in writes of 64 KiB or
    // more, but for what was left of it; after it, the closing JSON.
    const at = writes.indexOf(large);
    expect(at).toBe(writes.length - 2);
    expect(writes.slice(0, at - 1).every((w) => w.length >= 64 * 1024)).toBe(true);
    expect(writes.length).toBeLessThan(10);
  });

  it('answers a string, as JSON.stringify, when there is no Base64Text', () => {
    expect(serializeJson({ a: [1, 'x'] })).toBe('{"a":[1,"x"]}');
  });

  it('does not take a string of the answer that looks like a marker for an image', async () => {
    // What a marker looks like, with guessed tags: an echoed prompt or a revised prompt could carry it.
    const lookalikes = ['\u0000b64:0000000000000000:0', '\u0000b64:', '\\u0000b64:0'];
    const answer = { revised_prompt: lookalikes, images: [{ b64_json: text('QUJD') }] };
    expect(JSON.parse(await bodyOf(serializeJson(answer)))).toEqual({ revised_prompt: lookalikes, images: [{ b64_json: 'QUJD' }] });
  });

  it('is the plain string to JSON.stringify elsewhere (an event stream, a stored job)', () => {
    expect(JSON.stringify({ b64_json: text('QUJD') })).toBe('{"b64_json":"QUJD"}');
    expect(String(text('QUJD'))).toBe('QUJD');
    expect(JSON.stringify({ b64_json: new Base64Text([Buffer.from('QU'), Buffer.from('JD')]) })).toBe('{"b64_json":"QUJD"}');
  });
});
