import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DecodedBase64, LONG_BASE64_BYTES, MalformedReply, ReplyBrokeOff, ReplyTooLarge, parseImageReply, type Base64Sink } from '../src/upstream/image-reply-parser.js';

/** The reply cut into pieces of `size` bytes, as a socket might deliver it. */
async function* inPieces(text: string | Buffer, size: number): AsyncIterable<Uint8Array> {
  const bytes = Buffer.isBuffer(text) ? text : Buffer.from(text, 'utf8');
  for (let at = 0; at < bytes.length; at += size) yield bytes.subarray(at, at + size);
}

/** Sinks that decode what they are given and remember how each ended. */
function decodingSinks() {
  const ended: string[] = [];
  const newSink = (): Base64Sink<Buffer> => {
    const parts: Buffer[] = [];
    return {
      write: async (base64) => void parts.push(Buffer.from(base64)),
      end: async () => {
        ended.push('end');
        return Buffer.from(Buffer.concat(parts).toString('latin1'), 'base64');
      },
      abort: async () => void ended.push('abort'),
    };
  };
  return { newSink, ended };
}

const big = randomBytes(Math.ceil((LONG_BASE64_BYTES * 3) / 4) + 12_345);
const bigB64 = big.toString('base64');

describe('parsing an image reply as it streams in', () => {
  for (const size of [1, 3, 4096, 65_536, 1 << 20]) {
    it(`hands a long base64 image to a sink, in pieces of ${size} bytes`, async () => {
      const { newSink, ended } = decodingSinks();
      const reply = JSON.stringify({ output: { b64_json: [{ bytesBase64: bigB64, mimeType: 'png' }] }, usage: { total_tokens: 3 }, note: 'é "quoted" \\ ✓' });
      const parsed = (await parseImageReply(inPieces(reply, size), newSink, 1 << 30)) as { output: { b64_json: Array<{ bytesBase64: unknown; mimeType: string }> }; usage: unknown; note: string };
      const image = parsed.output.b64_json[0]!;
      expect(image.bytesBase64).toBeInstanceOf(DecodedBase64);
      expect((image.bytesBase64 as DecodedBase64<Buffer>).result.equals(big)).toBe(true);
      expect(image.mimeType).toBe('png');
      expect(parsed.usage).toEqual({ total_tokens: 3 });
      expect(parsed.note).toBe('é "quoted" \\ ✓');
      expect(ended).toEqual(['end']);
    });
  }

  it('hands several images of one reply each to its own sink', async () => {
    const { newSink, ended } = decodingSinks();
    const other = randomBytes(big.length + 1);
    const reply = JSON.stringify({ data: [{ b64_json: bigB64 }, { b64_json: other.toString('base64') }] });
    const parsed = (await parseImageReply(inPieces(reply, 5000), newSink, 1 << 30)) as { data: Array<{ b64_json: DecodedBase64<Buffer> }> };
    expect(parsed.data[0]!.b64_json.result.equals(big)).toBe(true);
    expect(parsed.data[1]!.b64_json.result.equals(other)).toBe(true);
    expect(ended).toEqual(['end', 'end']);
  });

  it('leaves short strings, long text and strings with escapes as they are', async () => {
    const { newSink, ended } = decodingSinks();
    const text = 'a long prompt '.repeat(LONG_BASE64_BYTES / 8);
    const escaped = `${bigB64.slice(0, 100)}\\/${bigB64.slice(100)}`;
    const reply = `{"small":"${big.subarray(0, 300).toString('base64')}","text":"${text}","escaped":"${escaped}"}`;
    const parsed = await parseImageReply(inPieces(reply, 1000), newSink, 1 << 30);
    expect(parsed).toEqual(JSON.parse(reply));
    expect(ended).toEqual([]);
  });

  it('tells what it keeps as it is: everything but the strings handed to sinks', async () => {
    // The in-flight image bytes budget counts a streamed image at what it decodes to, and the rest at its length.
    const { newSink } = decodingSinks();
    const escaped = `${bigB64.slice(0, 100)}\\/${bigB64.slice(100)}`;
    const reply = `{"image":"${bigB64}","small":"${big.subarray(0, 300).toString('base64')}","escaped":"${escaped}","other":"${bigB64}"}`;
    for (const size of [1000, 65_536]) {
      let kept = 0;
      await parseImageReply(inPieces(reply, size), newSink, 1 << 30, (bytes) => (kept += bytes));
      // The two long base64 strings went to sinks; the JSON around them, the short and the escaped string did not.
      expect(kept, `pieces of ${size}`).toBe(Buffer.byteLength(reply) - 2 * bigB64.length + 2 * '\\u0000base64:0'.length);
    }
  });

  it('reports a reply that is not JSON, or ends inside an image, and aborts the sink', async () => {
    const { newSink, ended } = decodingSinks();
    await expect(parseImageReply(inPieces('<html>oops', 4), newSink, 1 << 30)).rejects.toBeInstanceOf(MalformedReply);
    const cut = JSON.stringify({ output: [bigB64] }).slice(0, bigB64.length - 10);
    await expect(parseImageReply(inPieces(cut, 4096), newSink, 1 << 30)).rejects.toBeInstanceOf(MalformedReply);
    expect(ended).toEqual(['abort']);
  });

  it('stops a reply over the size limit', async () => {
    const { newSink } = decodingSinks();
    await expect(parseImageReply(inPieces(JSON.stringify({ output: [bigB64] }), 4096), newSink, 10_000)).rejects.toBeInstanceOf(ReplyTooLarge);
  });

  it('reports a body that breaks off as such, and aborts the sink', async () => {
    const { newSink, ended } = decodingSinks();
    const reply = Buffer.from(JSON.stringify({ output: [bigB64] }));
    async function* breaking(): AsyncIterable<Uint8Array> {
      yield reply.subarray(0, LONG_BASE64_BYTES + 100);
      throw new Error('socket closed');
    }
    const failure = await parseImageReply(breaking(), newSink, 1 << 30).catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(ReplyBrokeOff);
    expect((failure as Error).cause).toEqual(new Error('socket closed'));
    expect(ended).toEqual(['abort']);
  });

  it('fails with the sink’s own error when the sink refuses the bytes', async () => {
    let aborted = false;
    const refusing = (): Base64Sink<number> => ({
      write: async () => {
        throw new Error('not an image');
      },
      end: async () => 0,
      abort: async () => void (aborted = true),
    });
    await expect(parseImageReply(inPieces(JSON.stringify({ output: [bigB64] }), 4096), refusing, 1 << 30)).rejects.toThrow('not an image');
    expect(aborted).toBe(true);
  });
});
