import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { GatewayError, invalidField } from '../errors.js';
import { refuseNulInField } from '../http/nul-characters.js';
import { refuseNotUtf8Field } from '../http/utf8-text.js';
import { sniffImageType } from '../images/image-bytes.js';
import { inputImage, isPending, pendingImage, type ImageRequest, type InputImage } from './image-request.js';
import { newUploadPath } from './uploads.js';
import { STYLE_REFERENCES_FIELD } from '../catalogue/model-spec.js';

/** A multipart file as received: on disk under DATA_DIR/uploads until the request is admitted. */
interface UploadedFile {
  /** How refusals name it (`image`, `image[1]`, `mask`, ...). */
  field: string;
  path: string;
  image: InputImage;
}

/**
 * A multipart edit read once: its text fields, and its images (`image` or repeated `image[]`) and
 * mask, each streamed to disk and checked by its first bytes. `images` and `mask` are pending until
 * `load` reads them, once the request is admitted.
 */
export interface EditParts {
  fields: Map<string, string>;
  images: InputImage[];
  /** The images came as a list (`image[]`, or `image` more than once): errors name each `image[i]`, one alone included. */
  imagesListed: boolean;
  mask: InputImage | undefined;
  /** `style_reference_images` files (POST /v1/edit only), in order. */
  styleReferences: InputImage[];
  /** The request with its images read from disk; the pipeline calls it after its checks (GenerationCall.loadImages). */
  load: (request: ImageRequest) => Promise<ImageRequest>;
  /** One image read from disk (a pending upload), for requests that are not an ImageRequest (describe). */
  readImage: (image: InputImage) => Promise<InputImage>;
}

const mib = (bytes: number) => `${Math.round((bytes / (1024 * 1024)) * 10) / 10} MiB`;

/** The 413 of a multipart request over MAX_REQUEST_BYTES. */
export function requestTooLarge(maxBytes: number): GatewayError {
  return new GatewayError('payload_too_large', `the request is over the size limit of ${maxBytes} bytes (${mib(maxBytes)}, MAX_REQUEST_BYTES) for all its files and fields together`, {
    details: [{ field: '(body)', message: `must be at most ${maxBytes} bytes` }],
  });
}

function fileTooLarge(field: string, maxBytes: number): GatewayError {
  return new GatewayError('payload_too_large', `${field}: the file is over the size limit of ${maxBytes} bytes (${mib(maxBytes)}, MAX_UPLOAD_BYTES)`, {
    details: [{ field, message: `must be at most ${maxBytes} bytes` }],
  });
}

/** Shared by POST /v1/edit, /v1/upscale, /v1/describe and the OpenAI-compatible POST /v1/images/edits. */
export async function readEditParts(
  app: FastifyInstance,
  request: FastifyRequest,
  /**
   * `styleReferences`: takes `style_reference_images` files too (POST /v1/edit; the OpenAI façade keeps OpenAI's fields).
   * `oneImage`: takes one `image` file and nothing else (upscale, describe): no `image[]`, no mask.
   */
  accept: { styleReferences?: boolean; oneImage?: boolean } = {},
): Promise<EditParts> {
  // Uploads are written under DATA_DIR: none while it is short of space (refused as the pipeline would).
  app.storagePressure.refuseIfPressed();
  const maxRequest = app.config.MAX_REQUEST_BYTES;
  const maxFile = app.config.MAX_UPLOAD_BYTES;
  // A declared length over the limit is refused before a byte of the body is read.
  const declared = Number(request.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxRequest) throw requestTooLarge(maxRequest);
  // Counted as it arrives too: a chunked body declares nothing.
  let received = 0;
  const count = (chunk: Buffer) => {
    received += chunk.length;
  };
  const over = () => received > maxRequest;
  request.raw.on('data', count);

  const fields = new Map<string, string>();
  const files: UploadedFile[] = [];
  const styleFiles: UploadedFile[] = [];
  let mask: UploadedFile | undefined;
  let imagesListed = false;
  const fileFields = accept.oneImage ? ['image'] : ['image', 'image[]', 'mask', ...(accept.styleReferences ? [STYLE_REFERENCES_FIELD] : [])];
  try {
    for await (const part of request.parts()) {
      if (over()) throw requestTooLarge(maxRequest);
      if (part.type === 'field') {
        if (part.valueTruncated) throw invalidField(part.fieldname, `is longer than the limit of ${mib(1024 * 1024)} for a field`);
        if (fields.has(part.fieldname)) throw invalidField(part.fieldname, 'is given more than once');
        // A part sent as application/json reaches us parsed (@fastify/multipart): its JSON text again,
        // not String()'s "[object Object]" (a prompt so would go upstream), and a JSON string as its text.
        const value = typeof part.value === 'string' ? part.value : JSON.stringify(part.value);
        refuseNulInField(part.fieldname, value);
        // Bytes that are not UTF-8 were decoded to U+FFFD: refused, naming the field, rather than sent upstream so.
        refuseNotUtf8Field(part.fieldname, value);
        fields.set(part.fieldname, value);
        continue;
      }
      if (!fileFields.includes(part.fieldname)) throw invalidField(part.fieldname, 'is not a file field of this request', fileFields);
      const isImage = part.fieldname === 'image' || part.fieldname === 'image[]';
      const isStyle = part.fieldname === STYLE_REFERENCES_FIELD;
      if (part.fieldname === 'mask' && mask) throw invalidField('mask', 'give at most one mask');
      // Named as the client sent them, as a JSON request names them, in every refusal: a file of
      // `image[]` is image[i] (the first too), a lone `image` is image, the next ones image[1], ...
      if (part.fieldname === 'image[]' || (isImage && files.length > 0)) imagesListed = true;
      const field = isImage ? (imagesListed ? `image[${files.length}]` : 'image') : isStyle ? `options.${STYLE_REFERENCES_FIELD}[${styleFiles.length}]` : 'mask';
      const path = newUploadPath(app, request);
      let head = Buffer.alloc(0);
      let size = 0;
      const watch = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          if (over()) return done(requestTooLarge(maxRequest));
          size += chunk.length;
          if (head.length < 16) head = Buffer.concat([head, chunk.subarray(0, 16 - head.length)]);
          done(null, chunk);
        },
      });
      try {
        await pipeline(part.file, watch, createWriteStream(path, { flags: 'wx', mode: 0o600 }));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') {
          throw new GatewayError('storage_full', 'the gateway has no space left to receive the upload; try again later', { retryAfter: 60, cause: err });
        }
        throw err;
      }
      if (part.file.truncated) throw fileTooLarge(field, maxFile);
      if (over()) throw requestTooLarge(maxRequest);
      if (size === 0) throw invalidField(field, 'is empty');
      const mime = sniffImageType(head);
      // Judged by its first bytes now, so a file of the wrong type is refused before anything else.
      if (!mime) inputImage(head, field, part.filename);
      const uploaded = { field, path, image: pendingImage(mime!, part.filename) };
      if (isImage) files.push(uploaded);
      else if (isStyle) styleFiles.push(uploaded);
      else mask = uploaded;
    }
    if (over()) throw requestTooLarge(maxRequest);
  } finally {
    request.raw.off('data', count);
  }
  // A first `image` followed by more is one of a list: image[0] from now on, as the others are image[i].
  if (imagesListed && files[0]?.field === 'image') files[0].field = 'image[0]';

  const byImage = new Map<InputImage, UploadedFile>([...files, ...styleFiles, ...(mask ? [mask] : [])].map((f) => [f.image, f]));
  const read = async (image: InputImage): Promise<InputImage> => {
    const file = isPending(image) ? byImage.get(image) : undefined;
    return file ? inputImage(await readFile(file.path), file.field, image.filename) : image;
  };
  return {
    fields,
    images: files.map((f) => f.image),
    imagesListed,
    mask: mask?.image,
    readImage: read,
    styleReferences: styleFiles.map((f) => f.image),
    load: async (imageRequest) => ({
      ...imageRequest,
      images: await Promise.all(imageRequest.images.map(read)),
      ...(imageRequest.mask ? { mask: await read(imageRequest.mask) } : {}),
      ...(imageRequest.styleReferences ? { styleReferences: await Promise.all(imageRequest.styleReferences.map(read)) } : {}),
    }),
  };
}
