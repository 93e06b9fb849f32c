import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { ImageLibrary } from './image-library.js';
import { ImageRecords } from './image-records.js';
import type { ImageStore } from './image-store.js';
import { openImageStore } from './open-image-store.js';
import { StoragePressure, type FreeSpaceProbe } from './storage-pressure.js';

declare module 'fastify' {
  interface FastifyInstance {
    store: ImageStore;
    /** Stored result images: bytes in `store` (files or S3), rows in the database. */
    images: ImageLibrary;
    /** The free space of DATA_DIR and the S3 store's health: new generations are refused under pressure. */
    storagePressure: StoragePressure;
  }
}

export interface ImagesPluginOptions {
  /** Reads DATA_DIR's free space (tests inject one); statfs by default. */
  freeSpaceProbe?: FreeSpaceProbe | undefined;
}

async function images(app: FastifyInstance, options: ImagesPluginOptions): Promise<void> {
  const store = await openImageStore(app.config);
  // DATABASE_URL is the several-replica setup: the rows are shared, but files on this disk are not.
  if (store.kind === 'file' && app.config.DATABASE_URL) {
    app.log.warn(
      { data_dir: app.config.DATA_DIR },
      "DATABASE_URL is set but S3_BUCKET is not: images kept on local disk (DATA_DIR; those over IMAGE_INLINE_MAX_BYTES) are served only by the replica that stored them, others answer 404; set S3_BUCKET on every replica, or put DATA_DIR on storage they all share",
    );
  }
  const pressure = new StoragePressure({
    dataDir: app.config.DATA_DIR,
    minFreeBytes: app.config.STORAGE_MIN_FREE_BYTES,
    s3: store.kind === 's3',
    checkStore: () => store.check(),
    storeWhere: store.where,
    log: app.log,
    probe: options.freeSpaceProbe,
  });
  const images = new ImageLibrary(store, new ImageRecords(app.db, app.groupCommit), { inlineMaxBytes: app.config.IMAGE_INLINE_MAX_BYTES, pressure, workers: app.imageWorkers });
  app.decorate('store', store);
  app.decorate('images', images);
  app.decorate('storagePressure', pressure);
  app.addHook('onReady', async () => pressure.start());
  app.addHook('preClose', async () => pressure.stop());
  // After jobs (which depend on this plugin) have settled: a job ending in its grace period still stores its images.
  app.addHook('onClose', async () => {
    await images.close();
    await store.close();
  });
}

/** The image store (files or S3) and the library of stored images over it. */
export const imagesPlugin = fp(images, { name: 'images', dependencies: ['database', 'workers'] });
