import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { ImageLibrary } from './image-library.js';
import { ImageRecords } from './image-records.js';
import type { ImageStore } from './image-store.js';
import { openImageStore } from './open-image-store.js';

declare module 'fastify' {
  interface FastifyInstance {
    store: ImageStore;
    /** Stored result images: bytes in `store` (files or S3), rows in the database. */
    images: ImageLibrary;
  }
}

async function images(app: FastifyInstance): Promise<void> {
  const store = openImageStore(app.config);
  const images = new ImageLibrary(store, new ImageRecords(app.db), { inlineMaxBytes: app.config.IMAGE_INLINE_MAX_BYTES });
  app.decorate('store', store);
  app.decorate('images', images);
  // After jobs (which depend on this plugin) have settled: a job ending in its grace period still stores its images.
  app.addHook('onClose', async () => {
    await images.close();
    await store.close();
  });
}

/** The image store (files or S3) and the library of stored images over it. */
export const imagesPlugin = fp(images, { name: 'images', dependencies: ['database'] });
