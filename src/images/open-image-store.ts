import { join } from 'node:path';
import type { Config } from '../config.js';
import { FileImageStore, type ImageStore } from './image-store.js';

/** The image store the configuration asks for: S3 when S3_BUCKET is set, else files under DATA_DIR. */
export async function openImageStore(config: Config): Promise<ImageStore> {
  if (!config.S3_BUCKET) return new FileImageStore(config.DATA_DIR);
  // Loaded only when asked for: the AWS SDK is resident memory a gateway on files never uses (bench/README.md, seventh pass).
  const { S3ImageStore } = await import('./s3-image-store.js');
  return new S3ImageStore({
    bucket: config.S3_BUCKET,
    endpoint: config.S3_ENDPOINT,
    region: config.S3_REGION,
    forcePathStyle: config.S3_FORCE_PATH_STYLE,
    ...(config.AWS_ACCESS_KEY_ID && config.AWS_SECRET_ACCESS_KEY
      ? { credentials: { accessKeyId: config.AWS_ACCESS_KEY_ID, secretAccessKey: config.AWS_SECRET_ACCESS_KEY } }
      : {}),
    // Downloads are staged on local disk, then uploaded whole.
    stagingDir: join(config.DATA_DIR, 'staging'),
  });
}
