import type { GatewayError } from '../errors.js';
import type { GenerationResult, ImageResult } from './image-generation.js';

/**
 * What a generation reports as it goes, in order: `queued` (waiting for an upstream slot),
 * `running` (sent upstream; again with the task id once an asynchronous model accepted the task),
 * `progress` (where upstream reports it), `image` (each image once it is stored), then one of
 * `succeeded` or `failed`. Direct calls, jobs, the gateway's streams and the OpenAI façade all read these.
 */
export type GenerationEvent =
  | { type: 'queued'; job_id?: string }
  | { type: 'running'; task_id?: string }
  | { type: 'progress'; upstream_status: string; progress?: number }
  /** Upstream could not serve `from` (`reason`: the failure kind, e.g. no_channel): the request goes on with `to` (fallback_models). */
  | { type: 'fallback'; from: string; to: string; reason: string }
  /**
   * A preview before the image is done: OpenAI's `partial_images`. No upstream the gateway calls
   * sends one today; a streaming upstream would report them here.
   */
  | { type: 'partial_image'; index: number; partial_image_index: number; b64_json: string }
  | { type: 'image'; index: number; image: ImageResult }
  | { type: 'succeeded'; result: GenerationResult }
  | { type: 'failed'; error: GatewayError };

export type ReportEvent = (event: GenerationEvent) => void;

/** The events before the end: what a job's followers are told while it runs. */
export type ProgressEvent = Exclude<GenerationEvent, { type: 'succeeded' } | { type: 'failed' }>;
