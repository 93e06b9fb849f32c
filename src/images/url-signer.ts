import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';

/**
 * Signed capability URLs for stored images: anyone holding the URL may fetch the image until it
 * expires, so an <img> tag works without an auth header, and nobody can guess another image's URL.
 */
export class UrlSigner {
  // A KeyObject made once: createHmac with a Buffer makes one on every call.
  private readonly secret: KeyObject;

  constructor(secret: Buffer) {
    this.secret = createSecretKey(secret);
  }

  sign(imageName: string, expiresAtSeconds: number): string {
    return createHmac('sha256', this.secret).update(`${imageName}\n${expiresAtSeconds}`).digest('base64url');
  }

  /** A key for another purpose, derived from this one (job callbacks' without CALLBACK_SECRET). */
  derivedKey(purpose: string): Buffer {
    return createHmac('sha256', this.secret).update(purpose).digest();
  }

  /** Constant-time comparison of the signature, whatever its length. */
  verify(imageName: string, expiresAtSeconds: number, signature: string): boolean {
    const expected = Buffer.from(this.sign(imageName, expiresAtSeconds), 'utf8');
    const given = Buffer.from(signature, 'utf8');
    if (given.length !== expected.length) {
      timingSafeEqual(expected, expected);
      return false;
    }
    return timingSafeEqual(expected, given);
  }
}
