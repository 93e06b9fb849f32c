import { randomId } from '../ids.js';
import { hash } from 'node:crypto';
import { rm } from 'node:fs/promises';
import sharp from 'sharp';
import { GatewayError, type ErrorCode } from '../errors.js';
import { UpstreamFailure, toGatewayError } from '../upstream/upstream-failure.js';
import type { ModelCatalogue } from '../catalogue/catalogue.js';
import { estimateCostUsd, imagesAskedOf, inputImagesOf, maxCostUsd, routeFor } from '../catalogue/catalogue.js';
import type { EditMode, ModelSpec, UpstreamRoute } from '../catalogue/model-spec.js';
import type { ImageRequest } from '../request/image-request.js';
import { checkAgainstRoute, toUpstreamRequest, type UpstreamRequest } from '../upstream/upstream-request.js';
import type { TaskHooks, UpstreamClient, UpstreamResult } from '../upstream/upstream-client.js';
import type { UpstreamImage } from '../upstream/upstream-reply.js';
import type { ImageLibrary, ImageOwner, ImageProvenance, StagedImage } from '../images/image-library.js';
import { Base64Staging } from '../images/base64-staging.js';
import { Base64Text } from '../http/base64-json.js';
import { PooledBase64Staging } from '../workers/pooled-base64-staging.js';
import type { ImageRecord } from '../images/image-records.js';
import type { UrlSigner } from '../images/url-signer.js';
import type { ProgressEvent } from './generation-events.js';
import { INLINE_FALLBACK_MAX_BYTES, ImageRowFailed } from '../images/image-library.js';
import { sniffImageType } from '../images/image-bytes.js';
import { imageDimensions } from '../images/image-dimensions.js';
import { StorageWriteFailed } from '../images/storage-pressure.js';

export interface ImageResult {
  /** Absent only when the image could not be stored (storage full) and is answered inline in `b64_json`. */
  url?: string;
  mime_type: string;
  bytes: number;
  width: number;
  height: number;
  sha256: string;
  seed?: number;
  revised_prompt?: string;
  /** Absent with `url`. */
  expires_at?: string;
  b64_json?: string | Base64Text;
}

/** Seconds a client told a paid image was lost to the database should wait (as for any outage of it). */
export const PAID_IMAGE_LOST_RETRY_AFTER_SECONDS = 5;

/**
 * Upstream made (and was paid for) the images, but the gateway lost them before answering: its
 * cost counts against the key's budget and in usage (never refunded), and no fallback model is
 * tried (that would pay twice). How it was lost decides the answer:
 * - image storage full or unavailable, the bytes not in hand to answer inline: 507 storage_full;
 * - the database did not take the image's row: 503 paid_image_lost, Retry-After 5;
 * - the request's deadline (UPSTREAM_TIMEOUT_MS) passed while the answer was being kept: 504 paid_image_lost;
 * - the result could not be fetched from the URL upstream gave (expired, over the cap, refused):
 *   502 upstream_error, as the download failure says;
 * - a job's synchronous upstream call was in flight when its replica stopped, and is not sent again:
 *   502 upstream_error, at the most it may have cost (whether upstream made it is not known).
 */
export class PaidImageLost extends GatewayError {
  private constructor(
    readonly costUsd: number | null,
    readonly upstreamMs: number | undefined,
    answer: { code: ErrorCode; status?: number; message: string; retryAfter?: number; upstreamStatus?: number; cause?: unknown },
  ) {
    super(answer.code, answer.message, {
      ...(answer.cause !== undefined ? { cause: answer.cause } : {}),
      ...(answer.upstreamStatus !== undefined ? { upstreamStatus: answer.upstreamStatus } : {}),
      ...(answer.status !== undefined ? { status: answer.status } : {}),
      ...(answer.retryAfter !== undefined ? { retryAfter: answer.retryAfter } : {}),
    });
    this.name = 'PaidImageLost';
  }

  static storageFull(costUsd: number | null, upstreamMs: number | undefined, cause: StorageWriteFailed): PaidImageLost {
    return new PaidImageLost(costUsd, upstreamMs, {
      code: 'storage_full',
      message: 'upstream made the image and it was paid for, but image storage is full or unavailable and it was lost; retry later',
      retryAfter: cause.retryAfter,
      cause,
    });
  }

  static databaseFailed(costUsd: number | null, upstreamMs: number | undefined, cause: unknown): PaidImageLost {
    return new PaidImageLost(costUsd, upstreamMs, {
      code: 'paid_image_lost',
      status: 503,
      message: 'upstream made the image and it was paid for (its cost counts), but the gateway could not record it in its database and it was lost; retry later',
      retryAfter: PAID_IMAGE_LOST_RETRY_AFTER_SECONDS,
      cause,
    });
  }

  /** `answer`: the download's failure as the edge answers it (toGatewayError). */
  static notFetched(costUsd: number | null, upstreamMs: number | undefined, answer: GatewayError): PaidImageLost {
    return new PaidImageLost(costUsd, upstreamMs, {
      code: answer.code,
      message: answer.message,
      ...(answer.upstreamStatus !== undefined ? { upstreamStatus: answer.upstreamStatus } : {}),
      ...(answer.retryAfter !== undefined ? { retryAfter: answer.retryAfter } : {}),
      cause: answer.cause ?? answer,
    });
  }

  static inFlightWhenStopped(costUsd: number | null, message: string): PaidImageLost {
    return new PaidImageLost(costUsd, undefined, { code: 'upstream_error', message });
  }

  static deadlinePassed(costUsd: number | null, upstreamMs: number | undefined, cause: unknown): PaidImageLost {
    return new PaidImageLost(costUsd, upstreamMs, {
      code: 'paid_image_lost',
      status: 504,
      message: 'upstream made the image and it was paid for (its cost counts), but the request\'s deadline passed before the gateway had kept it, and it was lost; no fallback model was tried',
      cause,
    });
  }
}

export interface GenerationResult {
  id: string;
  object: 'image.result';
  created: number;
  model: string;
  /** With fallback_models: the model asked for (`model` is the one that served). */
  requested_model?: string;
  images: ImageResult[];
  usage: { images: number; estimated_cost_usd: number | null; upstream_ms: number; upstream_tokens?: Record<string, unknown> };
}

/** A request checked against its model and written in upstream terms, ready to send. */
export interface PreparedGeneration {
  request: ImageRequest;
  model: ModelSpec;
  route: UpstreamRoute;
  mode?: EditMode;
  upstream: UpstreamRequest;
}

export interface GenerationDeps {
  catalogue: ModelCatalogue;
  upstream: UpstreamClient;
  /** Where results are kept: the image store (files or S3) and their rows in the database. */
  images: ImageLibrary;
  signer: UrlSigner;
  retentionDays: number;
  /** IMAGE_KEEP_PROMPTS: keep the prompt and parameters with each stored image's entry. */
  keepPrompts?: boolean;
}

/** The request's fields other than the prompt and the images: what GET /v1/images shows as `parameters`. */
export function requestParameters(request: ImageRequest): Record<string, unknown> {
  const parameters: Record<string, unknown> = { ...request.params };
  if (Object.keys(request.options).length > 0) parameters.options = request.options;
  if (request.mode !== undefined) parameters.mode = request.mode;
  if (request.responseFormat !== 'url') parameters.response_format = request.responseFormat;
  return parameters;
}

const newId = (prefix: string) => randomId(prefix, 12);

/** The pipeline behind /v1/generate and /v1/edit: validate, send, store, answer in one shape. */
export class ImageGeneration {
  constructor(private readonly deps: GenerationDeps) {}

  /** The request against its model, by its fields and its images' count alone (their bytes may not be read yet). */
  check(request: ImageRequest, given?: ModelSpec): { model: ModelSpec; route: UpstreamRoute; mode?: EditMode } {
    const model = given ?? this.deps.catalogue.resolve(request.model);
    const { route, mode } = routeFor(model, request.operation, request.mode, request.mask !== undefined);
    checkAgainstRoute(model, route, mode ? { ...request, mode } : request);
    return { model, route, ...(mode ? { mode } : {}) };
  }

  /**
   * Everything the gateway can check is checked here, before anything is sent or paid for.
   * `model`: the model to use instead of the catalogue's (a resumed job's kept declaration).
   */
  async prepare(request: ImageRequest, model?: ModelSpec): Promise<PreparedGeneration> {
    const { model: resolved, route, mode } = this.check(request, model);
    const upstream = await toUpstreamRequest(route, request);
    return { request, model: resolved, route, upstream, ...(mode ? { mode } : {}) };
  }

  /**
   * Sends a prepared request, stores what comes back and describes it. Reports `queued`, `running`,
   * `progress` and each `image` to `onEvent` as they happen; the caller reports the end.
   */
  async run(
    prepared: PreparedGeneration,
    ctx: {
      signal: AbortSignal;
      publicBaseUrl: string;
      task?: TaskHooks;
      owner?: ImageOwner;
      /** When UPSTREAM_TIMEOUT_MS runs out (Date.now() ms): a task is polled one last time just before it. */
      deadline?: number;
      onEvent?: (event: ProgressEvent) => void;
    },
  ): Promise<GenerationResult> {
    const { request, model, route } = prepared;
    const report = ctx.onEvent ?? (() => {});
    // Large base64 images are staged as the reply streams in; any not kept in the end are removed.
    const staged = new Set<StagedImage>();
    // A b64_json answer keeps the upstream's text (when it is the image's standard base64).
    const keepText = request.responseFormat === 'b64_json';
    const stageOne = (maxBytes?: number) => {
      // With worker threads (WORKERS) a worker decodes the text; else the main thread as it arrives.
      const { stagingFiles, workers } = this.deps.images;
      const staging = workers.size > 0 ? new PooledBase64Staging(stagingFiles, workers, keepText) : new Base64Staging(stagingFiles, maxBytes, keepText);
      // A staging write that fails (a full disk) drops this image but reads the rest of the reply,
      // which still tells what it cost (its token counts come after the images).
      let lost: StorageWriteFailed | undefined;
      const drop = async (err: unknown) => {
        lost = this.stagingFailed(err);
        await staging.abort();
      };
      return {
        write: async (base64: Buffer) => {
          if (lost) return;
          await staging.write(base64).catch(drop);
        },
        abort: () => staging.abort(),
        end: async (): Promise<StagedImage> => {
          if (!lost) {
            try {
              const image = await staging.end();
              staged.add(image);
              return image;
            } catch (err) {
              await drop(err);
            }
          }
          return { path: '', sha256: '', mime: 'image/png', bytes: 0, lost };
        },
      };
    };
    const stageImage = Object.assign(stageOne, { keepsText: keepText });
    let produced: UpstreamResult | undefined;
    let images: ImageResult[];
    const task = ctx.task ?? {};
    if (task.resumeTaskId) report({ type: 'running', task_id: task.resumeTaskId });
    else report({ type: 'queued' });
    try {
      produced = await this.deps.upstream.generate(prepared.upstream, ctx.signal, {
        ...task,
        ...(ctx.owner ? { queueOwner: ctx.owner.team } : {}),
        ...(ctx.deadline !== undefined ? { deadline: ctx.deadline } : {}),
        stageImage,
        // Running once sent; an asynchronous model says so again with its task id once it accepted the task.
        onSent: async () => {
          await task.onSent?.();
          report({ type: 'running' });
        },
        onTaskId: async (taskId, keyTag) => {
          await task.onTaskId?.(taskId, keyTag);
          report({ type: 'running', task_id: taskId });
        },
        onProgress: ({ status, progress }) => report({ type: 'progress', upstream_status: status, ...(progress !== undefined ? { progress } : {}) }),
      });
      const expiresAt = Math.floor(Date.now() / 1000) + this.deps.retentionDays * 86_400;
      const made = produced;
      const totalCost = estimateCostUsd(route.price, { images: made.images.length, options: request.options, upstreamTokens: made.usage });
      const keepPrompts = this.deps.keepPrompts ?? true;
      const provenanceOf = (image: UpstreamImage): ImageProvenance => {
        const seed = image.seed ?? request.params.seed;
        return {
          model: model.id,
          operation: request.operation,
          prompt: keepPrompts && request.prompt !== '' ? request.prompt : null,
          parameters: keepPrompts ? requestParameters(request) : null,
          seed: typeof seed === 'number' && Number.isSafeInteger(seed) ? seed : null,
          costUsd: totalCost === null || made.images.length === 0 ? null : totalCost / made.images.length,
        };
      };
      images = await Promise.all(
        made.images.map(async (image, index) => {
          if (image.staged) staged.delete(image.staged); // keepStaged owns it from here
          const kept = await this.keep(image, request.responseFormat, expiresAt, { ...ctx, provenance: provenanceOf(image) });
          report({ type: 'image', index, image: kept });
          return kept;
        }),
      );
    } catch (err) {
      // Past the upstream answer: the images are paid for. Their cost goes with the failure.
      const paidCost = () => {
        const paidImages = produced?.images.length ?? imagesAskedOf(request);
        // A reply cut short by its staging never showed its token counts: the most the request could cost, as reserved.
        return (
          estimateCostUsd(route.price, { images: paidImages, options: request.options, upstreamTokens: produced?.usage }) ??
          maxCostUsd(route.price, { images: paidImages, prompt: request.prompt, params: request.params, options: request.options, inputImages: inputImagesOf(request) })
        );
      };
      if (err instanceof StorageWriteFailed) throw PaidImageLost.storageFull(paidCost(), produced?.upstreamMs, err);
      if (produced !== undefined && !(err instanceof PaidImageLost)) {
        if (err instanceof ImageRowFailed) throw PaidImageLost.databaseFailed(paidCost(), produced.upstreamMs, err);
        // Stopped (the deadline, or the caller leaving) while the answer was being kept: what the
        // caller makes of it is the caller's, but it is paid, never a plain failure to fall back from.
        if (ctx.signal.aborted) throw PaidImageLost.deadlinePassed(paidCost(), produced.upstreamMs, err);
        // Made and paid for, but its URL could not be fetched (expired, over the cap, refused): lost.
        if (err instanceof UpstreamFailure && err.kind === 'download_failed') throw PaidImageLost.notFetched(paidCost(), produced.upstreamMs, toGatewayError(err));
      }
      throw err;
    } finally {
      await Promise.all([...staged].map((image) => rm(image.path, { force: true })));
    }
    // A token price needs the reply's token counts: a reply without them counts the most the request
    // could cost (what a budget reserved for it), so that the answer, the usage record and the
    // budget agree, rather than an unknown cost the budget still holds.
    const estimatedCostUsd =
      estimateCostUsd(route.price, { images: images.length, options: request.options, upstreamTokens: produced.usage }) ??
      maxCostUsd(route.price, { images: images.length, prompt: request.prompt, params: request.params, options: request.options, inputImages: inputImagesOf(request) });
    return {
      id: newId('gen'),
      object: 'image.result',
      created: Math.floor(Date.now() / 1000),
      model: model.id,
      images,
      usage: {
        images: images.length,
        estimated_cost_usd: estimatedCostUsd,
        upstream_ms: produced.upstreamMs,
        ...(produced.usage ? { upstream_tokens: produced.usage } : {}),
      },
    };
  }

  /**
   * Stores one upstream image now (its URL may expire within minutes) and describes it. A download
   * streams through a hash into a temp file; a base64 reply is decoded once; neither is copied again.
   */
  private async keep(
    image: UpstreamImage,
    responseFormat: 'url' | 'b64_json',
    expiresAt: number,
    ctx: { signal: AbortSignal; publicBaseUrl: string; owner?: ImageOwner; provenance?: ImageProvenance },
  ): Promise<ImageResult> {
    try {
      if (image.staged?.lost) throw image.staged.lost;
      return await this.store(image, responseFormat, expiresAt, ctx);
    } catch (err) {
      if (!(err instanceof StorageWriteFailed)) throw err;
      // The store could not take it: the bytes still in hand are answered inline, without a URL.
      const bytes =
        err.salvaged ??
        (image.b64 !== undefined ? Buffer.from(image.b64, 'base64') : image.url !== undefined ? await this.downloadToMemory(image.url, ctx.signal) : undefined);
      if (!bytes || bytes.length > INLINE_FALLBACK_MAX_BYTES) throw err;
      return this.inline(image, bytes);
    }
  }

  /** A download into memory, for an image its staging could not take; undefined when over INLINE_FALLBACK_MAX_BYTES. */
  private async downloadToMemory(url: string, signal: AbortSignal): Promise<Buffer | undefined> {
    return this.deps.upstream.download(url, signal, async (body) => {
      const chunks: Uint8Array[] = [];
      let total = 0;
      for await (const chunk of body) {
        total += chunk.length;
        if (total > INLINE_FALLBACK_MAX_BYTES) return undefined;
        chunks.push(chunk);
      }
      return Buffer.concat(chunks);
    });
  }

  /** An image answered only inline: no URL, no expiry, nothing stored. */
  private async inline(image: UpstreamImage, bytes: Buffer): Promise<ImageResult> {
    const mime = sniffImageType(bytes);
    if (!mime) throw new GatewayError('upstream_error', 'upstream returned data that is not a PNG, JPEG or WebP image');
    const size = imageDimensions(bytes) ?? (await sharp(bytes).metadata());
    const result: ImageResult = {
      mime_type: mime,
      bytes: bytes.length,
      width: size.width,
      height: size.height,
      sha256: hash('sha256', bytes, 'hex'),
      b64_json: bytes.toString('base64'),
    };
    if (image.seed !== undefined) result.seed = image.seed;
    if (image.revisedPrompt !== undefined) result.revised_prompt = image.revisedPrompt;
    return result;
  }

  /** A failure of the staging of a base64 reply: the file system's is storage's; a bad image stays what it is. */
  private stagingFailed(err: unknown): StorageWriteFailed {
    if (err instanceof StorageWriteFailed) return err;
    if (err instanceof GatewayError) throw err;
    return this.deps.images.writeFailed('the image staging file', 'disk', err);
  }

  private async store(
    image: UpstreamImage,
    responseFormat: 'url' | 'b64_json',
    expiresAt: number,
    ctx: { signal: AbortSignal; publicBaseUrl: string; owner?: ImageOwner; provenance?: ImageProvenance },
  ): Promise<ImageResult> {
    const options = { owner: ctx.owner, provenance: ctx.provenance, expiresAt };
    let record: ImageRecord;
    let b64: string | Base64Text | undefined;
    if (image.staged !== undefined) {
      const kept = await this.deps.images.keepStaged(image.staged, { ...options, answerBase64: responseFormat === 'b64_json' });
      record = kept.record;
      b64 = kept.base64;
    } else if (image.b64 !== undefined) {
      record = await this.deps.images.keepBytes(Buffer.from(image.b64, 'base64'), options);
      b64 = image.b64;
    } else {
      const staged = await this.deps.upstream.download(image.url!, ctx.signal, (body) => this.deps.images.stage(body));
      const kept = await this.deps.images.keepStaged(staged, { ...options, answerBase64: responseFormat === 'b64_json' });
      record = kept.record;
      b64 = kept.base64;
    }
    const result: ImageResult = {
      url: `${ctx.publicBaseUrl}/v1/images/${record.name}?${this.deps.signer.query(record.name, expiresAt, ctx.owner?.team)}`,
      mime_type: record.mimeType,
      bytes: record.bytes,
      width: record.width,
      height: record.height,
      sha256: record.sha256,
      expires_at: new Date(expiresAt * 1000).toISOString(),
    };
    if (image.seed !== undefined) result.seed = image.seed;
    if (image.revisedPrompt !== undefined) result.revised_prompt = image.revisedPrompt;
    if (responseFormat === 'b64_json') result.b64_json = b64;
    return result;
  }
}
