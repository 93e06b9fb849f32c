import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { randomId } from '../ids.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** DATA_DIR/uploads: where multipart files are streamed while a request is read. */
    uploadDir: string;
  }
  interface FastifyRequest {
    /** The request's files under uploadDir, removed as its answer is sent or when its client has left. */
    uploadPaths: string[] | null;
  }
}

/** A new file for one of the request's uploads, removed with the request's others when it ends. */
export function newUploadPath(app: FastifyInstance, request: FastifyRequest): string {
  const path = join(app.uploadDir, randomId('up', 16));
  (request.uploadPaths ??= []).push(path);
  return path;
}

async function removeUploads(request: FastifyRequest): Promise<void> {
  const paths = request.uploadPaths;
  if (!paths) return;
  request.uploadPaths = null;
  await Promise.all(paths.map((path) => rm(path, { force: true }).catch((err: unknown) => request.log.warn({ err, path }, 'an upload could not be removed'))));
}

/**
 * Multipart files go to DATA_DIR/uploads as they arrive, not into memory. The directory is emptied
 * at start (what a stopped process left there belongs to no request) and each request's files are
 * removed as its answer is sent, or when its client leaves before that.
 */
export const uploadsPlugin = fp(
  async (app: FastifyInstance) => {
    const dir = join(app.config.DATA_DIR, 'uploads');
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true, mode: 0o700 });
    app.decorate('uploadDir', dir);
    app.decorateRequest('uploadPaths', null);
    app.addHook('onRequest', async (request, reply) => {
      reply.raw.once('close', () => void removeUploads(request));
    });
    // Before the answer goes out: its images were read when the request was admitted, or it was refused.
    app.addHook('onSend', async (request, _reply, payload) => {
      await removeUploads(request);
      return payload;
    });
  },
  { name: 'uploads' },
);
