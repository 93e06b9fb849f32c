import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { randomId } from '../ids.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** DATA_DIR/uploads: where multipart files are streamed while a request is read. */
    uploadDir: string;
    /** Paths of this process's uploads in flight (the stale-upload sweep leaves them alone). */
    liveUploads: Set<string>;
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
  app.liveUploads.add(path);
  return path;
}

async function removeUploads(app: FastifyInstance, request: FastifyRequest): Promise<void> {
  const paths = request.uploadPaths;
  if (!paths) return;
  request.uploadPaths = null;
  await Promise.all(
    paths.map((path) =>
      rm(path, { force: true })
        .catch((err: unknown) => request.log.warn({ err, path }, 'an upload could not be removed'))
        .finally(() => app.liveUploads.delete(path)),
    ),
  );
}

/** An upload untouched this long belongs to no request: a file being written is touched as its bytes arrive. */
export const STALE_UPLOAD_MS = 3600_000;
/** How often DATA_DIR/uploads is swept of stale files while the gateway runs. */
export const UPLOAD_SWEEP_INTERVAL_MS = 10 * 60_000;

/** Removes files of `dir` untouched for over STALE_UPLOAD_MS, but never one of `live` (this process's requests). */
async function sweepStaleUploads(dir: string, live: ReadonlySet<string>, log: FastifyBaseLogger): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const cutoff = Date.now() - STALE_UPLOAD_MS;
  let removed = 0;
  for (const name of names) {
    const path = join(dir, name);
    if (live.has(path)) continue;
    const info = await stat(path).catch(() => undefined);
    if (!info || info.mtimeMs >= cutoff) continue;
    await rm(path, { recursive: true, force: true }).then(
      () => removed++,
      (err: unknown) => log.warn({ err, path }, 'a stale upload could not be removed'),
    );
  }
  if (removed > 0) log.info({ files_removed: removed, dir }, 'removed uploads untouched for over an hour (left by a stopped process)');
}

/**
 * Multipart files go to DATA_DIR/uploads as they arrive, not into memory, and each request's files
 * are removed as its answer is sent, or when its client leaves before that. What a killed process
 * left there is removed at start and every 10 minutes, once untouched for over an hour: replicas
 * may share DATA_DIR, and a newer file may be another replica's upload in flight.
 */
export const uploadsPlugin = fp(
  async (app: FastifyInstance) => {
    const dir = join(app.config.DATA_DIR, 'uploads');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    /** This process's uploads in flight, never swept whatever their age (a client that sends slowly). */
    const live = new Set<string>();
    await sweepStaleUploads(dir, live, app.log);
    let sweeping: Promise<void> | undefined;
    const timer = setInterval(() => {
      sweeping ??= sweepStaleUploads(dir, live, app.log)
        .catch((err: unknown) => app.log.warn({ err }, 'sweeping DATA_DIR/uploads failed'))
        .finally(() => (sweeping = undefined));
    }, UPLOAD_SWEEP_INTERVAL_MS);
    timer.unref();
    app.addHook('onClose', async () => {
      clearInterval(timer);
      await sweeping;
    });
    app.decorate('uploadDir', dir);
    app.decorate('liveUploads', live);
    app.decorateRequest('uploadPaths', null);
    app.addHook('onRequest', async (request, reply) => {
      reply.raw.once('close', () => void removeUploads(app, request));
    });
    // Before the answer goes out: its images were read when the request was admitted, or it was refused.
    app.addHook('onSend', async (request, _reply, payload) => {
      await removeUploads(app, request);
      return payload;
    });
  },
  { name: 'uploads' },
);
