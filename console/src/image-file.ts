/**
 * Whether a chosen file is an image the playground can edit (PNG, JPEG or WebP), told before it is
 * shown or uploaded. A file's name and type can lie: its first bytes (the formats' magic numbers)
 * decide. Free of the DOM (Blob only), so it runs, and is tested, in Node.
 */

export type ImageType = 'image/png' | 'image/jpeg' | 'image/webp';

const ASCII = (text: string) => [...text].map((c) => c.charCodeAt(0));
const startsWith = (bytes: Uint8Array, at: number, expected: number[]) => expected.every((b, i) => bytes[at + i] === b);

/** The image type that bytes begin as: PNG, JPEG or WebP; undefined for anything else. */
export function sniffImageType(bytes: Uint8Array): ImageType | undefined {
  if (startsWith(bytes, 0, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'image/png';
  if (startsWith(bytes, 0, [0xff, 0xd8, 0xff])) return 'image/jpeg';
  if (startsWith(bytes, 0, ASCII('RIFF')) && startsWith(bytes, 8, ASCII('WEBP'))) return 'image/webp';
  return undefined;
}

const DECLARED_OK = new Set(['', 'image/png', 'image/jpeg', 'image/jpg', 'image/pjpeg', 'image/webp']);

/**
 * The file as an image to edit (typed as its bytes say), or why it is refused. A file that declares
 * another type (text/plain, image/gif) is refused whatever its bytes; one that declares none is judged
 * by its bytes alone.
 */
export async function checkImageFile(file: Blob & { name?: string }): Promise<{ image: Blob } | { problem: string }> {
  const name = file.name ? `${file.name}` : 'The file';
  const refused = { problem: `${name} is not a PNG, JPEG or WebP image; choose another file.` };
  if (!DECLARED_OK.has(file.type.toLowerCase())) return refused;
  const type = sniffImageType(new Uint8Array(await file.slice(0, 12).arrayBuffer()));
  if (!type) return refused;
  // Retyped by its bytes, keeping its name for the upload.
  return { image: file.type === type ? file : file.name ? new File([file], file.name, { type }) : new Blob([file], { type }) };
}
