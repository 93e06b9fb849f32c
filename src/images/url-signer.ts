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

  private readonly ownerTags = new Map<string, string>();

  /**
   * Signs an image URL. With `ownerTag` (ownerTagOf(team), carried in the URL as `o`) the URL is
   * one team's: it stops working when that team deletes the image, even while another team that
   * made the same bytes keeps them.
   */
  sign(imageName: string, expiresAtSeconds: number, ownerTag?: string): string {
    const message = ownerTag === undefined ? `${imageName}\n${expiresAtSeconds}` : `${imageName}\n${expiresAtSeconds}\n${ownerTag}`;
    return createHmac('sha256', this.secret).update(message).digest('base64url');
  }

  /** An opaque tag for a team in its image URLs (the team's name is not shown). */
  ownerTagOf(team: string): string {
    let tag = this.ownerTags.get(team);
    if (tag === undefined) {
      tag = createHmac('sha256', this.secret).update(`image-owner\n${team}`).digest('base64url').slice(0, 16);
      if (this.ownerTags.size < 10_000) this.ownerTags.set(team, tag);
    }
    return tag;
  }

  /** The query string of a team's (or, without a team, anyone's) signed URL of an image: `exp=...&sig=...[&o=...]`. */
  query(imageName: string, expiresAtSeconds: number, team?: string | null): string {
    if (team === undefined || team === null) return `exp=${expiresAtSeconds}&sig=${this.sign(imageName, expiresAtSeconds)}`;
    const tag = this.ownerTagOf(team);
    return `exp=${expiresAtSeconds}&sig=${this.sign(imageName, expiresAtSeconds, tag)}&o=${tag}`;
  }

  /** A key for another purpose, derived from this one (job callbacks' without CALLBACK_SECRET). */
  derivedKey(purpose: string): Buffer {
    return createHmac('sha256', this.secret).update(purpose).digest();
  }

  /** Constant-time comparison of the signature, whatever its length. */
  verify(imageName: string, expiresAtSeconds: number, signature: string, ownerTag?: string): boolean {
    const expected = Buffer.from(this.sign(imageName, expiresAtSeconds, ownerTag), 'utf8');
    const given = Buffer.from(signature, 'utf8');
    if (given.length !== expected.length) {
      timingSafeEqual(expected, expected);
      return false;
    }
    return timingSafeEqual(expected, given);
  }
}
