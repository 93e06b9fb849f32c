import type { FastifyRequest } from 'fastify';
import { invalidField } from '../errors.js';
import { inputImage, type InputImage } from './image-request.js';

/** A multipart edit read once: its text fields, its images (`image` or repeated `image[]`) and mask, checked by their bytes. */
export interface EditParts {
  fields: Map<string, string>;
  images: InputImage[];
  mask: InputImage | undefined;
}

/** Shared by POST /v1/edit and the OpenAI-compatible POST /v1/images/edits. */
export async function readEditParts(request: FastifyRequest): Promise<EditParts> {
  const fields = new Map<string, string>();
  const images: InputImage[] = [];
  let mask: InputImage | undefined;
  for await (const part of request.parts()) {
    if (part.type === 'file') {
      const bytes = await part.toBuffer();
      if (part.fieldname === 'image' || part.fieldname === 'image[]') {
        images.push(inputImage(bytes, images.length === 0 ? 'image' : `image[${images.length}]`, part.filename));
      } else if (part.fieldname === 'mask') {
        if (mask) throw invalidField('mask', 'give at most one mask');
        mask = inputImage(bytes, 'mask', part.filename);
      } else {
        throw invalidField(part.fieldname, 'is not a file field of this request', ['image', 'image[]', 'mask']);
      }
    } else {
      if (fields.has(part.fieldname)) throw invalidField(part.fieldname, 'is given more than once');
      fields.set(part.fieldname, String(part.value));
    }
  }
  return { fields, images, mask };
}
