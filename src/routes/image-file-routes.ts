import type { FastifyInstance } from 'fastify';
import type { Readable } from 'node:stream';
import fp from 'fastify-plugin';
import { Counter } from 'prom-client';
import { GatewayError, invalidField } from '../errors.js';
import { etagMatches, parseByteRange } from '../images/byte-range.js';
import { ImageFetcher } from '../images/image-fetch.js';
import { RetentionSweeper } from '../images/retention-sweeper.js';
import type { SweepResult } from '../images/image-library.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** Removes expired images (and the oldest past IMAGE_STORE_MAX_BYTES); `sweepNow()` runs one sweep. */
    retention: RetentionSweeper;
    /** Fetches input images given as URLs, under the egress policy. */
    imageFetcher: ImageFetcher;
  }
}

/** Counters for what retention removed, in the app's metrics registry when there is one. */
function sweptMetrics(app: FastifyInstance): ((removed: SweepResult) => void) | undefined {
  if (!app.hasDecorator('metrics')) return undefined;
  const registers = [app.metrics.registry];
  const images = new Counter({ name: 'gateway_images_swept_total', help: 'Stored images removed by retention (expired, or oldest past IMAGE_STORE_MAX_BYTES).', registers });
  const bytes = new Counter({ name: 'gateway_image_bytes_swept_total', help: 'Bytes of stored images removed by retention.', registers });
  return (removed) => {
    images.inc(removed.images);
    bytes.inc(removed.bytes);
  };
}

async function imageFiles(app: FastifyInstance): Promise<void> {
  await app.images.migrate();

  const retention = new RetentionSweeper({
    library: app.images,
    log: app.log,
    intervalMs: app.config.RETENTION_SWEEP_INTERVAL_MS,
    maxBytes: app.config.IMAGE_STORE_MAX_BYTES,
    onSwept: sweptMetrics(app),
  });
  app.decorate('retention', retention);
  // Storage under pressure: expired images (and the oldest past IMAGE_STORE_MAX_BYTES) go at once, not at the next interval.
  app.storagePressure.onPressure(() => {
    retention.sweepNow().catch((err: unknown) => app.log.error({ err }, 'image retention sweep failed'));
  });
  const fetcher = new ImageFetcher({
    maxBytes: app.config.MAX_UPLOAD_BYTES,
    allowedHosts: app.config.ALLOWED_IMAGE_HOSTS,
    resolve: app.resolveHost,
    ownImage: (url, field) => ownStoredImage(app, url, field),
  });
  app.decorate('imageFetcher', fetcher);
  app.addHook('onReady', async () => retention.start());
  // preClose: before onClose hooks close the database a sweep may be using.
  app.addHook('preClose', async () => retention.stop());
  app.addHook('onClose', async () => fetcher.close());

  app.get<{ Params: { name: string }; Querystring: { exp?: string; sig?: string; o?: string; download?: string; w?: string; format?: string } }>(
    '/v1/images/:name',
    async (request, reply) => {
      const { name } = request.params;
      const exp = Number(request.query.exp);
      const sig = request.query.sig ?? '';
      const ownerTag = typeof request.query.o === 'string' && request.query.o !== '' ? request.query.o : undefined;
      if (!Number.isInteger(exp) || sig === '') {
        throw new GatewayError('forbidden', 'an image URL needs its exp and sig parameters, as returned by the gateway');
      }
      if (!app.signer.verify(name, exp, sig, ownerTag)) throw new GatewayError('forbidden', 'the image URL signature is not valid');
      // After the signature, as w and format: a bad URL is told only that; before anything is read.
      const width = thumbnailWidth(request.query);
      const download = downloadFlag(request.query.download);
      const now = Math.floor(Date.now() / 1000);
      if (exp <= now) throw new GatewayError('not_found', 'the image URL has expired');
      // A team's URL works while the team owns the image: not after it deleted it.
      const image = await app.images.findFor(name, ownerTag, (team) => app.signer.ownerTagOf(team), now);
      if (!image) throw new GatewayError('not_found', 'no such image (unknown, expired, deleted or removed by retention)');

      // The image's own headers go on answers that carry the image (or stand for it: 304) only: an
      // error kept as immutable, or with the image's ETag, would stand in for the image in caches.
      const cacheControl = `private, max-age=${Math.min(exp, image.expiresAt) - now}, immutable`;
      if (width !== undefined) {
        const etag = `"${image.sha256}-w${width}"`;
        const thumbnailHeaders = (): void => {
          reply.header('content-type', 'image/webp').header('cache-control', cacheControl).header('etag', etag).header('x-content-type-options', 'nosniff');
          if (download) reply.header('content-disposition', `attachment; filename="${name.replace(/\.\w+$/, '')}-w${width}.webp"`);
        };
        if (etagMatches(request.headers['if-none-match'], etag)) {
          thumbnailHeaders();
          return reply.status(304).send();
        }
        const thumbnail = await app.images.thumbnail(image, width);
        if (!thumbnail) throw await app.images.bytesMissing(image);
        thumbnailHeaders();
        return reply.header('content-length', thumbnail.bytes.length).send(thumbnail.bytes);
      }

      const etag = `"${image.sha256}"`;
      const imageHeaders = (): void => {
        reply
          .header('content-type', image.mimeType)
          .header('cache-control', cacheControl)
          .header('etag', etag)
          .header('accept-ranges', 'bytes')
          .header('x-content-type-options', 'nosniff');
        if (download) reply.header('content-disposition', `attachment; filename="${name}"`);
      };
      if (etagMatches(request.headers['if-none-match'], etag)) {
        imageHeaders();
        return reply.status(304).send();
      }

      // If-Range: a range of another version is no use to the client; send the whole image.
      const ifRange = request.headers['if-range'];
      const range = ifRange === undefined || ifRange === etag ? parseByteRange(request.headers.range, image.bytes) : undefined;
      if (range === 'unsatisfiable') {
        // Not an API error: a byte-range answer, which carries the size and no body (nothing to cache).
        return reply.status(416).header('accept-ranges', 'bytes').header('content-range', `bytes */${image.bytes}`).send();
      }
      const stream = await app.images.open(image, range);
      if (!stream) throw await app.images.bytesMissing(image);
      imageHeaders();
      if (range) {
        return reply
          .status(206)
          .header('content-range', `bytes ${range.start}-${range.end}/${image.bytes}`)
          .header('content-length', range.end - range.start + 1)
          .send(stream);
      }
      return reply.header('content-length', image.bytes).send(stream);
    },
  );
}

/**
 * An image URL this gateway signed (`.../v1/images/<name>?exp=&sig=[&o=]`, whatever host it was
 * given under), as an input image: read from the store, so "edit the image you just made" works
 * with the URL it answered. Its signature is the proof, as when it is fetched. A thumbnail's URL
 * (`w=`) or one whose signature is not ours is left to the fetcher.
 */
async function ownStoredImage(app: FastifyInstance, url: URL, field: string): Promise<Readable | undefined> {
  const segment = /\/v1\/images\/([^/]+)$/.exec(url.pathname)?.[1];
  // Decoded as the GET route's parameter is: a name may come percent-encoded.
  let name: string | undefined;
  try {
    name = segment === undefined ? undefined : decodeURIComponent(segment);
  } catch {
    return undefined;
  }
  const query = url.searchParams;
  const exp = Number(query.get('exp'));
  const sig = query.get('sig');
  if (name === undefined || !Number.isInteger(exp) || !sig || query.has('w')) return undefined;
  const ownerTag = query.get('o') || undefined;
  if (!app.signer.verify(name, exp, sig, ownerTag)) return undefined;
  const now = Math.floor(Date.now() / 1000);
  const gone = () => invalidField(field, 'is an image URL of this gateway whose image is gone (the URL expired, or the image was deleted or removed by retention)');
  if (exp <= now) throw gone();
  const image = await app.images.findFor(name, ownerTag, (team) => app.signer.ownerTagOf(team), now);
  const bytes = image && (await app.images.open(image));
  if (!bytes) throw gone();
  return bytes;
}

export const THUMBNAIL_MIN_WIDTH = 16;
export const THUMBNAIL_MAX_WIDTH = 1024;

/** `?w=N&format=webp`: a thumbnail's width (its longer side at most), or undefined for the image itself. */
function thumbnailWidth(query: { w?: unknown; format?: unknown }): number | undefined {
  const { w, format } = query;
  if (w === undefined) {
    if (format !== undefined) throw invalidField('w', `is needed with format: a thumbnail's width from ${THUMBNAIL_MIN_WIDTH} to ${THUMBNAIL_MAX_WIDTH}`);
    return undefined;
  }
  const width = typeof w === 'string' && /^\d{1,5}$/.test(w) ? Number(w) : Number.NaN;
  if (!(width >= THUMBNAIL_MIN_WIDTH && width <= THUMBNAIL_MAX_WIDTH)) {
    throw invalidField('w', `must be a whole number of pixels from ${THUMBNAIL_MIN_WIDTH} to ${THUMBNAIL_MAX_WIDTH}`);
  }
  if (format !== undefined && format !== 'webp') throw invalidField('format', 'must be webp (thumbnails are WebP)', ['webp']);
  return width;
}

/** `?download=1`: the answer is saved as a file (Content-Disposition: attachment); no other value. */
function downloadFlag(download: unknown): boolean {
  if (download === undefined) return false;
  if (download !== '1') throw invalidField('download', 'must be 1 (save the image as a file), or left out', ['1']);
  return true;
}

/** GET /v1/images/{name}, the retention sweeper and the input-image fetcher. */
export const imageFilesPlugin = fp(imageFiles, { name: 'image-files', dependencies: ['images', 'url-signer'] });
