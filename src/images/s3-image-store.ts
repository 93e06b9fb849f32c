import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import type { ImageMime } from './image-bytes.js';
import { thumbnailNameOf, type ByteRange, type ImageStore } from './image-store.js';

export interface S3ImageStoreOptions {
  bucket: string;
  /** For MinIO, R2, s3rver, ...; absent: AWS itself. */
  endpoint?: string;
  region: string;
  /** `bucket` in the path rather than the host name; MinIO and most self-hosted servers need it. */
  forcePathStyle: boolean;
  /** Absent: the SDK's usual chain (environment, profile, instance role). */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** A directory on this machine for downloads before they are uploaded. */
  stagingDir: string;
}

const KEY_PREFIX = 'images/';
const THUMBNAIL_PREFIX = 'thumbs/';

/** Images as objects `images/<name>` in one bucket, so every replica serves what any replica stored. */
export class S3ImageStore implements ImageStore {
  readonly kind = 's3' as const;
  readonly stagingDir: string;
  readonly where: string;
  private readonly client: S3Client;
  private readonly bucket: string;

  constructor(options: S3ImageStoreOptions) {
    this.bucket = options.bucket;
    // An endpoint URL could carry a user and password: never shown.
    const endpoint = options.endpoint?.replace(/^(\w+:\/\/)[^@/]*@/, '$1').replace(/\/$/, '');
    this.where = `S3 bucket ${options.bucket} at ${endpoint ?? `AWS S3 (${options.region})`}`;
    this.stagingDir = options.stagingDir;
    this.client = new S3Client({
      region: options.region,
      forcePathStyle: options.forcePathStyle,
      ...(options.endpoint ? { endpoint: options.endpoint } : {}),
      ...(options.credentials ? { credentials: options.credentials } : {}),
      // The SDK's default checksums send streamed bodies as aws-chunked, which many S3-compatible
      // servers do not understand; S3 itself still checks Content-Length and the signature.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  async putBytes(name: string, bytes: Buffer, mime: ImageMime): Promise<void> {
    await this.client.send(
      new PutObjectCommand({ Bucket: this.bucket, Key: KEY_PREFIX + name, Body: bytes, ContentType: mime, ContentLength: bytes.length }),
    );
  }

  async putFile(name: string, stagedPath: string, bytes: number, mime: ImageMime): Promise<void> {
    // A PutObject is all or nothing: nobody ever reads a partly uploaded object.
    await this.client.send(
      new PutObjectCommand({ Bucket: this.bucket, Key: KEY_PREFIX + name, Body: createReadStream(stagedPath), ContentType: mime, ContentLength: bytes }),
    );
    // Removed once uploaded; after a failure the caller still has it (to answer it inline) and removes it.
    await rm(stagedPath, { force: true });
  }

  async open(name: string, range?: ByteRange, prefix = KEY_PREFIX): Promise<Readable | undefined> {
    try {
      const res = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: prefix + name, ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}) }),
      );
      return res.Body as Readable | undefined;
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw err;
    }
  }

  async delete(name: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: KEY_PREFIX + name }));
  }

  async putThumbnail(sha256: string, width: number, bytes: Buffer): Promise<void> {
    const Key = THUMBNAIL_PREFIX + thumbnailNameOf(sha256, width);
    await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: bytes, ContentType: 'image/webp', ContentLength: bytes.length }));
  }

  async readThumbnail(sha256: string, width: number): Promise<Buffer | undefined> {
    const body = await this.open(thumbnailNameOf(sha256, width), undefined, THUMBNAIL_PREFIX);
    return body && Buffer.concat(await body.toArray());
  }

  async deleteThumbnails(sha256: string): Promise<void> {
    const Prefix = `${THUMBNAIL_PREFIX}${sha256}-w`;
    const listed = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix }));
    for (const { Key } of listed.Contents ?? []) if (Key) await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }));
  }

  async check(): Promise<void> {
    await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}

function isMissing(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e.name === 'NoSuchKey' || e.name === 'NotFound' || e.$metadata?.httpStatusCode === 404;
}
