import { GatewayError, clipName, invalidField } from '../errors.js';
import { fieldHolding } from './nul-characters.js';

/**
 * Client text must be UTF-8. Node's usual decoding turns bytes that are not into U+FFFD without a
 * word, and the mangled prompt would reach upstream and be paid for; here they are refused, naming
 * the field. ignoreBOM: a leading U+FEFF is kept as sent, as the lenient decoding kept it.
 */
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** What every refusal of text that is not UTF-8 says. */
export const NOT_UTF8 = 'must be valid UTF-8 text: it holds bytes that are not UTF-8 (send text encoded as UTF-8)';

/** The bytes as UTF-8 text; undefined when they are not valid UTF-8. */
export function decodeUtf8(bytes: Uint8Array): string | undefined {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return undefined;
  }
}

/** The multipart refusal also names U+FFFD, which it cannot tell from a bad byte. */
export const NOT_UTF8_FIELD = `${NOT_UTF8}; U+FFFD, the character such bytes decode to, is refused too`;

/**
 * A multipart text field as busboy decoded it (UTF-8 unless the part declares another charset),
 * refused when it holds U+FFFD: the character busboy puts for each byte that is not UTF-8. The
 * field's bytes are not kept, so a U+FFFD the client wrote itself is refused too; it is the mark of
 * text mangled before, never something to draw.
 */
export function refuseNotUtf8Field(name: string, value: string): void {
  if (value.includes('\uFFFD')) throw invalidField(name, NOT_UTF8_FIELD);
}

/** U+FFFD as the client may write it itself: raw (EF BF BD) or escaped in JSON (\ufffd). */
const REPLACEMENT_BYTES = Buffer.from('\uFFFD', 'utf8');
const ESCAPED_REPLACEMENT = /\\u[fF]{3}[dD]/;

/**
 * The 400 for a JSON body that is not UTF-8, naming the field whose value holds the bad bytes: the
 * body decoded leniently (each bad byte as U+FFFD) and parsed, the first value holding U+FFFD. Where
 * that cannot be told (the body does not parse so, the bad bytes are in a key, or the body writes
 * U+FFFD itself, which would then be no sign of a bad byte), the body is named.
 */
export function notUtf8Body(bytes: Buffer): GatewayError {
  const lenient = bytes.toString('utf8');
  const writesReplacement = bytes.includes(REPLACEMENT_BYTES) || ESCAPED_REPLACEMENT.test(lenient);
  let found: ReturnType<typeof fieldHolding>;
  if (!writesReplacement) {
    try {
      found = fieldHolding(JSON.parse(lenient) as unknown, '\uFFFD');
    } catch {
      found = undefined;
    }
  }
  return invalidField(found && !found.inName ? clipName(found.field) : '(body)', NOT_UTF8);
}
