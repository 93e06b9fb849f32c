import { createHash, randomInt, randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import multipart from '@fastify/multipart';
import { colourForPrompt, distinctSolidPng, solidPng, type Rgb } from './png.js';

export interface RecordedFile {
  field: string;
  filename: string;
  mimetype: string;
  bytes: number;
  sha256: string;
  /** The file itself, for files up to RECORDED_FILE_DATA_LIMIT bytes, so tests can decode what arrived. */
  data?: Buffer;
}

export interface RecordedRequest {
  method: string;
  /** URL path without query, e.g. '/v1/models/opanai/gpt-image-1/predictions'. */
  path: string;
  headers: Record<string, string | string[] | undefined>;
  /** Parsed JSON body, when the body was JSON. */
  json?: unknown;
  /** Multipart text fields; a repeated name gives an array. */
  fields?: Record<string, string | string[]>;
  files?: RecordedFile[];
  /** When it arrived (Date.now()). */
  at: number;
  /** For a task poll: the status it was answered with ('Pending', 'Ready', ...). */
  taskStatus?: string;
}

export type SimulatedFault =
  | 'http429'
  | 'http500'
  | 'http503'
  /** 503 with AiHubMix's (new-api's) "no available channel" message: no provider serves the model right now. */
  | 'no_channel'
  | 'http400'
  | 'http401'
  | 'http403'
  | 'http403_model'
  | 'moderated'
  | 'hang'
  | 'malformed'
  | 'task_error';

export interface UpstreamSimulator {
  /** e.g. 'http://127.0.0.1:43123' */
  url: string;
  /** Every request to the API routes (not the image downloads under /sim/files/), in arrival order. */
  received: RecordedRequest[];
  /** Every image download (GET /sim/files/...), in arrival order: path and headers (no body). */
  downloads: RecordedRequest[];
  /**
   * The next `count` API submissions (task polls excluded) fail that way. 'task_error' instead
   * makes the next `count` asynchronous tasks end in Error.
   */
  failNext(fault: SimulatedFault, count?: number): void;
  /** While true, every async task answers Pending, however long it has run (to catch a job mid-task). */
  holdTasks: boolean;
  /** The next `count` task polls answer 502 (a passing fault on a task already paid for). */
  failNextPolls(count: number): void;
  /** Clears `received` and every pending fault. */
  reset(): void;
  close(): Promise<void>;
}

export interface SimulatorOptions {
  /** 0 = ephemeral (default). */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** When set, a request whose key (Bearer, or Api-Key for Ideogram) differs gets 401. */
  apiKey?: string;
  /** More keys of the same account that are accepted (for key rotation). */
  extraApiKeys?: string[];
  /** Keys that are valid but whose balance is spent: refused with 403. */
  brokeApiKeys?: string[];
  /** How long served image URLs live; default 10 minutes, like Flux's result URLs. */
  urlTtlMs?: number;
  /**
   * An async task answers Pending, with the fraction of this time gone by as its progress, until
   * this long after its submission, then its outcome; default 4000 (long enough to watch progress).
   */
  taskReadyAfterMs?: number;
  /** Delay before every API answer; default 0. */
  latencyMs?: number;
  /**
   * Every image made carries a serial number, so no two renders share their bytes, as with a real
   * model (the demo: its gallery shows each generation). Off by default: tests tell an image by its
   * prompt's bytes.
   */
  distinctImages?: boolean;
  /** The clock for task readiness, URL expiry and `received[].at`; default Date.now (tests pass one they move by hand). */
  now?: () => number;
  /** How the `latencyMs` delay is waited; default a timer (a test passes one it releases by hand). */
  wait?: (ms: number) => Promise<void>;
}

const BODY_LIMIT_BYTES = 64 * 1024 * 1024;
const MAX_IMAGES_PER_CALL = 16;
const RECORDED_FILE_DATA_LIMIT = 1024 * 1024;
/**
 * Black Forest Labs' own model names (`flux-kontext-pro`, `flux-2-pro`) run as tasks; AiHubMix's
 * capitalised channels (`FLUX-1.1-pro`, `FLUX.1-Kontext-pro`) answer at once. A name of the first
 * kind the simulator has not heard of (an operator's copy under a new upstream name) is a task too.
 */
const ASYNC_BFL_MODEL = /^flux-/;

/** Faults that answer a submission; 'task_error' acts on a task instead. */
type SubmissionFault = Exclude<SimulatedFault, 'task_error'>;
const SUBMISSION_FAULTS: readonly SubmissionFault[] = ['http429', 'http500', 'http503', 'no_channel', 'http400', 'http401', 'http403', 'http403_model', 'moderated', 'hang', 'malformed'];

/** Ideogram answers errors as {"error":"..."}; the other families as {"error":{"message","type"}}. */
type ErrorStyle = 'openai' | 'ideogram';

class SimulatedHttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
  ) {
    super(message);
  }
}

interface SimulatedTask {
  prompt: string;
  outcome: 'ready' | 'error' | 'moderated';
  submittedAt: number;
  sampleUrl?: string;
}

interface ServedFile {
  colour: Rgb;
  /** Its serial number, when images are made distinct. */
  serial?: number;
  expiresAt: number;
}

class SimulatorState {
  baseUrl = '';
  readonly received: RecordedRequest[] = [];
  readonly downloads: RecordedRequest[] = [];
  readonly recordOf = new WeakMap<FastifyRequest, RecordedRequest>();
  /** Insertion order equals expiry order, because every file gets the same TTL. */
  readonly files = new Map<string, ServedFile>();
  readonly tasks = new Map<string, SimulatedTask>();
  readonly hungResponses = new Set<ServerResponse>();
  private pendingFaults: SubmissionFault[] = [];
  private pendingTaskErrors = 0;
  holdTasks = false;
  pollFaults = 0;
  distinctImages = false;
  private rendered = 0;

  constructor(
    readonly apiKey: string | undefined,
    readonly urlTtlMs: number,
    readonly taskReadyAfterMs: number,
    readonly latencyMs: number,
    readonly now: () => number = Date.now,
    private readonly wait: (ms: number) => Promise<void> = (ms) => sleep(ms),
  ) {}

  failNext(fault: SimulatedFault, count: number): void {
    for (let i = 0; i < count; i++) {
      if (fault === 'task_error') this.pendingTaskErrors += 1;
      else this.pendingFaults.push(fault);
    }
  }

  reset(): void {
    this.received.length = 0;
    this.downloads.length = 0;
    this.pendingFaults = [];
    this.pendingTaskErrors = 0;
    this.pollFaults = 0;
  }

  /**
   * The fault this submission answers with: one queued by failNext, or one its prompt asks for
   * (`#sim:http429`, `#sim:moderated`, ...), so a frontend developer can see every error state
   * through the demo without touching code.
   */
  takeFault(request?: FastifyRequest): SubmissionFault | undefined {
    const queued = this.pendingFaults.shift();
    if (queued) return queued;
    const record = request ? this.recordOf.get(request) : undefined;
    const json = record?.json as { prompt?: unknown; input?: { prompt?: unknown }; image_request?: { prompt?: unknown } } | undefined;
    const imageRequest = typeof record?.fields?.image_request === 'string' ? record.fields.image_request : '';
    const prompt = [json?.prompt, json?.input?.prompt, json?.image_request?.prompt, record?.fields?.prompt, imageRequest].find(
      (p): p is string => typeof p === 'string' && p.includes('#sim:'),
    );
    // `#sim:<fault>:<upstream model>`: only that model fails, so a fallback to another can be seen serving.
    const [, asked, onlyFor] = (prompt ? /#sim:(\w+)(?::([\w./-]+))?/.exec(prompt) : undefined) ?? [];
    if (onlyFor !== undefined && record) {
      const named = [json && (json as { model?: unknown }).model, record.fields?.model];
      if (!named.includes(onlyFor) && !record.path.split('/').includes(onlyFor)) return undefined;
    }
    return SUBMISSION_FAULTS.find((f) => f === asked);
  }

  takeTaskError(): boolean {
    if (this.pendingTaskErrors === 0) return false;
    this.pendingTaskErrors -= 1;
    return true;
  }

  extraApiKeys: string[] = [];
  brokeApiKeys: string[] = [];

  /** Refuses with 401 when an API key is configured and the request carries another one; 403 for a spent key. */
  checkKey(request: FastifyRequest, style: ErrorStyle): void {
    if (this.apiKey === undefined) return;
    const presented = style === 'ideogram' ? apiKeyHeader(request) : bearerToken(request);
    if (presented !== undefined && this.brokeApiKeys.includes(presented)) {
      throw new SimulatedHttpError(403, 'insufficient balance', 'insufficient_quota');
    }
    if (presented !== this.apiKey && !(presented !== undefined && this.extraApiKeys.includes(presented))) {
      throw new SimulatedHttpError(401, 'invalid api key', 'authentication_error');
    }
  }

  async delay(): Promise<void> {
    if (this.latencyMs > 0) await this.wait(this.latencyMs);
  }

  imageUrl(prompt: string, index: number): string {
    const now = this.now();
    this.forgetExpiredFiles(now);
    const name = `${randomUUID()}.png`;
    const expiresAt = now + this.urlTtlMs;
    this.files.set(name, { colour: colourForPrompt(prompt, index), ...(this.distinctImages ? { serial: ++this.rendered } : {}), expiresAt });
    return `${this.baseUrl}/sim/files/${name}?exp=${expiresAt}`;
  }

  imageBase64(prompt: string, index: number): string {
    return this.png(colourForPrompt(prompt, index)).toString('base64');
  }

  png(colour: Rgb, serial?: number): Buffer {
    if (!this.distinctImages) return solidPng(colour);
    return distinctSolidPng(colour, serial ?? ++this.rendered);
  }

  createTask(prompt: string, outcome: SimulatedTask['outcome']): { taskId: string; polling_url: string } {
    const taskId = `sim-task-${randomUUID()}`;
    this.tasks.set(taskId, { prompt, outcome, submittedAt: this.now() });
    return { taskId, polling_url: `${this.baseUrl}/v1/tasks/${taskId}` };
  }

  private forgetExpiredFiles(now: number): void {
    for (const [name, file] of this.files) {
      if (file.expiresAt > now) break;
      this.files.delete(name);
    }
  }
}

export async function startUpstreamSimulator(opts: SimulatorOptions = {}): Promise<UpstreamSimulator> {
  const host = opts.host ?? '127.0.0.1';
  const sim = new SimulatorState(
    opts.apiKey,
    opts.urlTtlMs ?? 10 * 60 * 1000,
    opts.taskReadyAfterMs ?? 4000,
    opts.latencyMs ?? 0,
    opts.now,
    opts.wait,
  );
  sim.distinctImages = opts.distinctImages ?? false;
  sim.extraApiKeys = opts.extraApiKeys ?? [];
  sim.brokeApiKeys = opts.brokeApiKeys ?? [];

  // forceCloseConnections: close() must not wait for keep-alive sockets or 'hang' faults.
  const app = Fastify({ logger: false, bodyLimit: BODY_LIMIT_BYTES, forceCloseConnections: true });
  await app.register(multipart, {
    limits: { fileSize: BODY_LIMIT_BYTES, fieldSize: BODY_LIMIT_BYTES, files: 32, fields: 256, parts: 288 },
  });

  app.setErrorHandler((error: FastifyError | SimulatedHttpError, request, reply) => {
    const status = error instanceof SimulatedHttpError ? error.status : (error.statusCode ?? 500);
    const type =
      error instanceof SimulatedHttpError ? error.type : status >= 500 ? 'server_error' : 'invalid_request_error';
    return reply.code(status).send(errorBody(errorStyleOf(request), error.message, type));
  });

  app.get<{ Params: { name: string } }>('/sim/files/:name', async (request, reply) => {
    sim.downloads.push({ method: request.method, path: request.url.split('?')[0] ?? request.url, headers: { ...request.headers }, at: sim.now() });
    const file = sim.files.get(request.params.name);
    if (!file || file.expiresAt <= sim.now()) {
      return reply.code(404).send({ error: 'file not found or expired' });
    }
    return reply.type('image/png').send(file.serial === undefined ? solidPng(file.colour) : distinctSolidPng(file.colour, file.serial));
  });

  await app.register(async (api) => {
    api.addHook('onRequest', async (request) => {
      const record: RecordedRequest = {
        method: request.method,
        path: request.url.split('?')[0] ?? request.url,
        headers: { ...request.headers },
        at: sim.now(),
      };
      sim.received.push(record);
      sim.recordOf.set(request, record);
    });
    registerPredictionRoutes(api, sim);
    registerOpenAiImageRoutes(api, sim);
    registerIdeogramV3Routes(api, sim);
    registerIdeogramLegacyRoutes(api, sim);
  });

  await app.listen({ port: opts.port ?? 0, host });
  const { port } = app.server.address() as AddressInfo;
  sim.baseUrl = `http://${urlHost(host)}:${port}`;

  return {
    url: sim.baseUrl,
    received: sim.received,
    downloads: sim.downloads,
    failNext: (fault, count = 1) => sim.failNext(fault, count),
    failNextPolls: (count: number) => {
      sim.pollFaults += count;
    },
    get holdTasks() {
      return sim.holdTasks;
    },
    set holdTasks(hold: boolean) {
      sim.holdTasks = hold;
    },
    reset: () => sim.reset(),
    close: async () => {
      for (const response of sim.hungResponses) response.destroy();
      await app.close();
    },
  };
}

function registerPredictionRoutes(api: FastifyInstance, sim: SimulatorState): void {
  api.post<{ Params: { vendor: string; model: string } }>(
    '/v1/models/:vendor/:model/predictions',
    async (request, reply) => {
      const { vendor, model } = request.params;
      const body = recordJsonBody(sim, request);
      sim.checkKey(request, 'openai');
      await sim.delay();
      const isAsync = vendor === 'bfl' && ASYNC_BFL_MODEL.test(model);
      const fault = sim.takeFault(request);
      // An async submission is accepted even when moderated; the moderation shows in the task.
      if (fault && !(fault === 'moderated' && isAsync)) return answerFault(sim, reply, fault, 'openai');

      const input = asObject(asObject(body)?.input) ?? {};
      const prompt = requirePrompt(input.prompt);
      if (isAsync) {
        const outcome = fault === 'moderated' ? 'moderated' : sim.takeTaskError() ? 'error' : 'ready';
        return { output: [sim.createTask(prompt, outcome)] };
      }

      const count = vendor === 'doubao' && input.sequential_image_generation === 'auto'
        ? seedreamGroupSize(input)
        : imageCount(input.n ?? input.numberOfImages ?? input.sampleCount ?? input.num_images);
      const indexes = Array.from({ length: count }, (_, index) => index);
      switch (vendor) {
        case 'opanai':
        case 'openai':
          return {
            output: {
              b64_json: indexes.map((i) => ({ bytesBase64: sim.imageBase64(prompt, i), mimeType: 'png' })),
              urls: [],
            },
            usage: tokenUsage(count),
          };
        case 'google':
          return { output: indexes.map((i) => ({ bytesBase64: sim.imageBase64(prompt, i) })) };
        case 'stability':
          return { output: { urls: indexes.map((i) => sim.imageUrl(prompt, i)) } };
        case 'doubao':
        case 'qianfan':
        case 'bailian':
        case 'ideogram':
        case 'bfl':
          return { output: indexes.map((i) => ({ url: sim.imageUrl(prompt, i) })) };
        default:
          // What AiHubMix answers for a model id it has no channel for.
          throw new SimulatedHttpError(503, `no available channel for model ${vendor}/${model}`, 'server_error');
      }
    },
  );

  // Unknown task ids answer HTTP 404 with Black Forest Labs' body, so a client may rely on either.
  api.get<{ Params: { taskId: string } }>('/v1/tasks/:taskId', async (request, reply) => {
    const id = request.params.taskId;
    sim.checkKey(request, 'openai');
    await sim.delay();
    if (sim.pollFaults > 0) {
      sim.pollFaults -= 1;
      return reply.code(502).send(errorBody('openai', 'bad gateway', 'server_error'));
    }
    const answer = taskAnswer(sim, id);
    const record = sim.recordOf.get(request);
    if (record) record.taskStatus = answer.status;
    return answer.status === 'Task not found' ? reply.code(404).send(answer) : answer;
  });
}

function taskAnswer(sim: SimulatorState, id: string): { id: string; status: string; [field: string]: unknown } {
  const task = sim.tasks.get(id);
  if (!task) return { id, status: 'Task not found' };
  const elapsed = sim.now() - task.submittedAt;
  if (sim.holdTasks || elapsed < sim.taskReadyAfterMs) return { id, status: 'Pending', progress: pendingProgress(elapsed, sim.taskReadyAfterMs) };
  switch (task.outcome) {
    case 'error':
      return { id, status: 'Error', details: 'simulated failure' };
    case 'moderated':
      return { id, status: 'Content Moderated' };
    case 'ready':
      task.sampleUrl ??= sim.imageUrl(task.prompt, 0);
      return { id, status: 'Ready', result: { sample: task.sampleUrl } };
  }
}

/** The fraction of the task's time gone by, to two places; a held task stays short of done. */
function pendingProgress(elapsedMs: number, readyAfterMs: number): number {
  const fraction = readyAfterMs > 0 ? elapsedMs / readyAfterMs : 1;
  return Math.min(Math.floor(fraction * 100) / 100, 0.99);
}

function registerOpenAiImageRoutes(api: FastifyInstance, sim: SimulatorState): void {
  api.post('/v1/images/generations', async (request, reply) => {
    const body = asObject(recordJsonBody(sim, request)) ?? {};
    sim.checkKey(request, 'openai');
    await sim.delay();
    const fault = sim.takeFault(request);
    if (fault) return answerFault(sim, reply, fault, 'openai');

    const prompt = requirePrompt(body.prompt);
    return openAiImagesReply(sim, prompt, imageCount(body.n), body.response_format === 'url');
  });

  api.post('/v1/images/edits', async (request, reply) => {
    const { fields, files } = await recordMultipartBody(sim, request, 'openai');
    sim.checkKey(request, 'openai');
    await sim.delay();
    const fault = sim.takeFault(request);
    if (fault) return answerFault(sim, reply, fault, 'openai');

    if (!files.some((file) => file.field === 'image' || file.field === 'image[]')) {
      throw new SimulatedHttpError(400, 'image is required', 'invalid_request_error');
    }
    const prompt = requirePrompt(firstField(fields, 'prompt'));
    const count = imageCount(firstField(fields, 'n'));
    return openAiImagesReply(sim, prompt, count, firstField(fields, 'response_format') === 'url');
  });
}

const IDEOGRAM_V3_ACTIONS = [
  { action: 'generate', needsImage: false, needsMask: false },
  { action: 'remix', needsImage: true, needsMask: false },
  { action: 'edit', needsImage: true, needsMask: true },
  { action: 'replace-background', needsImage: true, needsMask: false },
  // Reframe (Ideogram's spec): no prompt, a required resolution.
  { action: 'reframe', needsImage: true, needsMask: false },
] as const;

/** A reframe's resolution: WIDTHxHEIGHT, as Ideogram's ResolutionV3 values are written (its whole list is the gateway's catalogue's). */
const V3_RESOLUTION = /^\d{3,4}x\d{3,4}$/;

function registerIdeogramV3Routes(api: FastifyInstance, sim: SimulatorState): void {
  for (const { action, needsImage, needsMask } of IDEOGRAM_V3_ACTIONS) {
    api.post(`/ideogram/v1/ideogram-v3/${action}`, async (request, reply) => {
      const { fields, files } = await recordMultipartBody(sim, request, 'ideogram');
      sim.checkKey(request, 'ideogram');
      await sim.delay();
      const fault = sim.takeFault(request);
      if (fault) return answerFault(sim, reply, fault, 'ideogram');

      // Files the V3 routes define: the image, the edit's mask, and repeated style_reference_images.
      const unknownFile = files.find((file) => !['image', 'mask', 'style_reference_images'].includes(file.field));
      if (unknownFile) throw new SimulatedHttpError(400, `unexpected file field ${unknownFile.field}`, 'invalid_request_error');
      if (needsImage && !files.some((file) => file.field === 'image')) {
        throw new SimulatedHttpError(400, 'image is required', 'invalid_request_error');
      }
      if (needsMask && !files.some((file) => file.field === 'mask')) {
        throw new SimulatedHttpError(400, 'mask is required', 'invalid_request_error');
      }
      const count = imageCount(firstField(fields, 'num_images'));
      if (action === 'reframe') {
        const resolution = firstField(fields, 'resolution');
        if (resolution === undefined || !V3_RESOLUTION.test(resolution)) {
          throw new SimulatedHttpError(400, 'resolution is required (one of the ResolutionV3 values, e.g. 1024x1024)', 'invalid_request_error');
        }
        if (fields.prompt !== undefined) throw new SimulatedHttpError(400, 'reframe takes no prompt', 'invalid_request_error');
        return ideogramReply(sim, `reframe ${resolution}`, count, firstField(fields, 'seed'), resolution);
      }
      const prompt = requirePrompt(firstField(fields, 'prompt'));
      return ideogramReply(sim, prompt, count, firstField(fields, 'seed'));
    });
  }
}

/** Ideogram's legacy ModelEnum (AUTO aside) and Resolution values (RESOLUTION_<width>_<height>; the whole list is the gateway's catalogue's). */
const LEGACY_MODELS = ['V_1', 'V_1_TURBO', 'V_2', 'V_2_TURBO', 'V_2A', 'V_2A_TURBO'];
const LEGACY_RESOLUTION = /^RESOLUTION_(\d{3,4})_(\d{3,4})$/;

function registerIdeogramLegacyRoutes(api: FastifyInstance, sim: SimulatorState): void {
  api.post('/ideogram/generate', async (request, reply) => {
    const body = asObject(recordJsonBody(sim, request)) ?? {};
    sim.checkKey(request, 'ideogram');
    await sim.delay();
    const fault = sim.takeFault(request);
    if (fault) return answerFault(sim, reply, fault, 'ideogram');

    const imageRequest = asObject(body.image_request);
    if (!imageRequest) throw new SimulatedHttpError(400, 'image_request is required', 'invalid_request_error');
    const prompt = requirePrompt(imageRequest.prompt);
    return ideogramReply(sim, prompt, imageCount(imageRequest.num_images), imageRequest.seed);
  });

  api.post('/ideogram/edit', async (request, reply) => {
    const { fields, files } = await recordMultipartBody(sim, request, 'ideogram');
    sim.checkKey(request, 'ideogram');
    await sim.delay();
    const fault = sim.takeFault(request);
    if (fault) return answerFault(sim, reply, fault, 'ideogram');

    for (const required of ['image_file', 'mask']) {
      if (!files.some((file) => file.field === required)) {
        throw new SimulatedHttpError(400, `${required} is required`, 'invalid_request_error');
      }
    }
    if (firstField(fields, 'model') === undefined) {
      throw new SimulatedHttpError(400, 'model is required', 'invalid_request_error');
    }
    const prompt = requirePrompt(firstField(fields, 'prompt'));
    return ideogramReply(sim, prompt, imageCount(firstField(fields, 'num_images')), firstField(fields, 'seed'));
  });

  api.post('/ideogram/remix', async (request, reply) => {
    const { fields, files } = await recordMultipartBody(sim, request, 'ideogram');
    sim.checkKey(request, 'ideogram');
    await sim.delay();
    const fault = sim.takeFault(request);
    if (fault) return answerFault(sim, reply, fault, 'ideogram');

    if (!files.some((file) => file.field === 'image_file')) {
      throw new SimulatedHttpError(400, 'image_file is required', 'invalid_request_error');
    }
    const imageRequest = parseImageRequestField(firstField(fields, 'image_request'));
    const prompt = requirePrompt(imageRequest.prompt);
    return ideogramReply(sim, prompt, imageCount(imageRequest.num_images), imageRequest.seed);
  });

  // Ideogram's legacy reframe (spec: POST /reframe; AiHubMix documents none, so the path is the gateway's
  // inference): flat fields like /edit, the file image_file, a required model and Resolution value, no prompt.
  api.post('/ideogram/reframe', async (request, reply) => {
    const { fields, files } = await recordMultipartBody(sim, request, 'ideogram');
    sim.checkKey(request, 'ideogram');
    await sim.delay();
    const fault = sim.takeFault(request);
    if (fault) return answerFault(sim, reply, fault, 'ideogram');

    const unknownFile = files.find((file) => file.field !== 'image_file');
    if (unknownFile) throw new SimulatedHttpError(400, `unexpected file field ${unknownFile.field}`, 'invalid_request_error');
    if (files.length !== 1) throw new SimulatedHttpError(400, 'one image_file is required', 'invalid_request_error');
    const model = firstField(fields, 'model');
    if (model === undefined || !LEGACY_MODELS.includes(model)) {
      throw new SimulatedHttpError(400, `model is required, one of ${LEGACY_MODELS.join(', ')}`, 'invalid_request_error');
    }
    const resolution = LEGACY_RESOLUTION.exec(firstField(fields, 'resolution') ?? '');
    if (!resolution) throw new SimulatedHttpError(400, 'resolution is required (a Resolution value, e.g. RESOLUTION_1024_1024)', 'invalid_request_error');
    if (fields.prompt !== undefined) throw new SimulatedHttpError(400, 'reframe takes no prompt', 'invalid_request_error');
    if (fields.style_type !== undefined && model.startsWith('V_1')) {
      throw new SimulatedHttpError(400, 'style_type is only for V_2 and later models', 'invalid_request_error');
    }
    const size = `${resolution[1]}x${resolution[2]}`;
    return ideogramReply(sim, `reframe ${size}`, imageCount(firstField(fields, 'num_images')), firstField(fields, 'seed'), size);
  });

  // As the documents show: image_file, and image_request (a JSON object, {} at least) whose prompt is optional.
  api.post('/ideogram/upscale', async (request, reply) => {
    const { fields, files } = await recordMultipartBody(sim, request, 'ideogram');
    sim.checkKey(request, 'ideogram');
    await sim.delay();
    const fault = sim.takeFault(request);
    if (fault) return answerFault(sim, reply, fault, 'ideogram');

    if (files.filter((file) => file.field === 'image_file').length !== 1) {
      throw new SimulatedHttpError(400, 'one image_file is required', 'invalid_request_error');
    }
    const imageRequest = parseImageRequestField(firstField(fields, 'image_request'));
    for (const name of ['resemblance', 'detail']) {
      const value = imageRequest[name];
      if (value !== undefined && !(typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 100)) {
        throw new SimulatedHttpError(400, `${name} must be an integer from 1 to 100`, 'invalid_request_error');
      }
    }
    const prompt = typeof imageRequest.prompt === 'string' && imageRequest.prompt !== '' ? imageRequest.prompt : `upscale ${files[0]!.sha256}`;
    return ideogramReply(sim, prompt, imageCount(imageRequest.num_images), imageRequest.seed);
  });

  // One image_file in, {"descriptions":[{"text"}]} out; describe_model_version as the vendor's spec allows.
  api.post('/ideogram/describe', async (request, reply) => {
    const { fields, files } = await recordMultipartBody(sim, request, 'ideogram');
    sim.checkKey(request, 'ideogram');
    await sim.delay();
    const fault = sim.takeFault(request);
    if (fault) return answerFault(sim, reply, fault, 'ideogram');

    const image = files.find((file) => file.field === 'image_file');
    if (!image) throw new SimulatedHttpError(400, 'image_file is required', 'invalid_request_error');
    const version = firstField(fields, 'describe_model_version') ?? 'V_3';
    if (!['V_2', 'V_3', 'V_4'].includes(version)) {
      throw new SimulatedHttpError(400, 'describe_model_version must be one of V_2, V_3, V_4', 'invalid_request_error');
    }
    return { descriptions: [{ text: `A simulated description (${version}) of an image of ${image.bytes} bytes, sha256 ${image.sha256.slice(0, 12)}.` }] };
  });
}

function answerFault(
  sim: SimulatorState,
  reply: FastifyReply,
  fault: SubmissionFault,
  style: ErrorStyle,
): FastifyReply {
  switch (fault) {
    case 'http429':
      return reply.code(429).header('retry-after', '1').send(errorBody(style, 'rate limited', 'rate_limit_error'));
    case 'http500':
      return reply.code(500).send(errorBody(style, 'internal server error', 'server_error'));
    case 'http503':
      return reply.code(503).send(errorBody(style, 'service temporarily unavailable', 'server_error'));
    case 'no_channel':
      return reply.code(503).send(errorBody(style, 'No available channel for model under group default (distributor)', 'new_api_error', 'model_not_found'));
    case 'http400':
      return reply.code(400).send(errorBody(style, 'size not supported', 'invalid_request_error'));
    case 'http401':
      return reply.code(401).send(errorBody(style, 'invalid api key', 'authentication_error'));
    case 'http403':
      return reply.code(403).send(errorBody(style, 'insufficient balance', 'insufficient_quota'));
    case 'http403_model':
      return reply.code(403).send(errorBody(style, 'this key may not use this model', 'permission_error'));
    case 'moderated':
      return reply
        .code(422)
        .send(
          errorBody(
            style,
            'Your request was rejected by the safety system',
            'content_policy_violation',
            'moderation_blocked',
          ),
        );
    case 'malformed':
      return reply.code(200).header('content-type', 'application/json').send('<html>oops');
    case 'hang':
      // Never answer; close() destroys the socket.
      reply.hijack();
      sim.hungResponses.add(reply.raw);
      reply.raw.once('close', () => sim.hungResponses.delete(reply.raw));
      return reply;
  }
}

function errorBody(style: ErrorStyle, message: string, type: string, code?: string): unknown {
  if (style === 'ideogram') return { error: message };
  return { error: code === undefined ? { message, type } : { message, type, code } };
}

function errorStyleOf(request: FastifyRequest): ErrorStyle {
  return request.url.startsWith('/ideogram/') ? 'ideogram' : 'openai';
}

function openAiImagesReply(sim: SimulatorState, prompt: string, count: number, asUrl: boolean): unknown {
  const data = Array.from({ length: count }, (_, i) =>
    asUrl ? { url: sim.imageUrl(prompt, i) } : { b64_json: sim.imageBase64(prompt, i) },
  );
  return { created: Math.floor(Date.now() / 1000), data, usage: tokenUsage(count) };
}

/** Ideogram's seed range (0 to 2147483647, its documents' and spec's). */
const IDEOGRAM_MAX_SEED = 2_147_483_647;

/**
 * The seed an Ideogram request asked for (a multipart field's text, or a JSON number), or undefined
 * when it asked for none; one outside Ideogram's range is a 400, as upstream refuses it.
 */
function ideogramSeed(value: unknown): number | undefined {
  if (value === undefined || value === null) return undefined;
  const seed = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  if (typeof seed !== 'number' || !Number.isInteger(seed) || seed < 0 || seed > IDEOGRAM_MAX_SEED) {
    throw new SimulatedHttpError(400, `seed must be an integer from 0 to ${IDEOGRAM_MAX_SEED}`, 'invalid_request_error');
  }
  return seed;
}

/**
 * Ideogram's answer: each image names the seed it was made with, the one asked for (every image
 * of the request then shares it) or, as upstream does without one, a random one of its own.
 */
function ideogramReply(sim: SimulatorState, prompt: string, count: number, seedAsked: unknown, resolution = '1024x1024'): unknown {
  const seed = ideogramSeed(seedAsked);
  const data = Array.from({ length: count }, (_, i) => ({
    url: sim.imageUrl(prompt, i),
    prompt,
    resolution,
    is_image_safe: true,
    seed: seed ?? randomInt(0, IDEOGRAM_MAX_SEED + 1),
    style_type: 'AUTO',
  }));
  return { created: new Date().toISOString(), data };
}

function tokenUsage(imageCount: number): { input_tokens: number; output_tokens: number; total_tokens: number } {
  const outputTokens = 100 * imageCount;
  return { input_tokens: 10, output_tokens: outputTokens, total_tokens: 10 + outputTokens };
}

function recordJsonBody(sim: SimulatorState, request: FastifyRequest): unknown {
  const record = sim.recordOf.get(request);
  const contentType = request.headers['content-type'] ?? '';
  if (record && request.body !== undefined && contentType.includes('json')) record.json = request.body;
  return request.body;
}

async function recordMultipartBody(
  sim: SimulatorState,
  request: FastifyRequest,
  style: ErrorStyle,
): Promise<{ fields: Record<string, string | string[]>; files: RecordedFile[] }> {
  if (!request.isMultipart()) {
    // A wrong key must still win over a wrong body, as on the other routes.
    sim.checkKey(request, style);
    throw new SimulatedHttpError(400, 'multipart/form-data body required', 'invalid_request_error');
  }
  const fields: Record<string, string | string[]> = {};
  const files: RecordedFile[] = [];
  for await (const part of request.parts()) {
    if (part.type === 'file') {
      const bytes = await part.toBuffer();
      files.push({
        field: part.fieldname,
        filename: part.filename,
        mimetype: part.mimetype,
        bytes: bytes.length,
        sha256: createHash('sha256').update(bytes).digest('hex'),
        ...(bytes.length <= RECORDED_FILE_DATA_LIMIT ? { data: bytes } : {}),
      });
    } else {
      const value = String(part.value);
      const existing = fields[part.fieldname];
      if (existing === undefined) fields[part.fieldname] = value;
      else if (Array.isArray(existing)) existing.push(value);
      else fields[part.fieldname] = [existing, value];
    }
  }
  const record = sim.recordOf.get(request);
  if (record) {
    record.fields = fields;
    record.files = files;
  }
  return { fields, files };
}

function parseImageRequestField(raw: string | undefined): Record<string, unknown> {
  if (raw === undefined) throw new SimulatedHttpError(400, 'image_request is required', 'invalid_request_error');
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new SimulatedHttpError(400, 'image_request must be a JSON object', 'invalid_request_error');
  }
  const imageRequest = asObject(parsed);
  if (!imageRequest) throw new SimulatedHttpError(400, 'image_request must be a JSON object', 'invalid_request_error');
  return imageRequest;
}

function requirePrompt(value: unknown): string {
  if (typeof value !== 'string' || value.trim() === '') {
    throw new SimulatedHttpError(400, 'prompt is required', 'invalid_request_error');
  }
  return value;
}

/**
 * Seedream's group (`sequential_image_generation: "auto"`): up to `max_images` images (1-15,
 * default 15), with the reference images and the images made 15 at most. The simulator makes
 * them all, the most upstream may make.
 */
function seedreamGroupSize(input: Record<string, unknown>): number {
  const options = asObject(input.sequential_image_generation_options) ?? {};
  const max = options.max_images ?? 15;
  if (typeof max !== 'number' || !Number.isInteger(max) || max < 1 || max > 15) {
    throw new SimulatedHttpError(400, 'sequential_image_generation_options.max_images must be an integer from 1 to 15', 'invalid_request_error');
  }
  const references = Array.isArray(input.image) ? input.image.length : typeof input.image === 'string' ? 1 : 0;
  return Math.max(1, Math.min(max, 15 - references));
}

function imageCount(value: unknown): number {
  if (value === undefined || value === null || value === '') return 1;
  const count = typeof value === 'string' ? Number(value) : value;
  if (typeof count !== 'number' || !Number.isInteger(count) || count < 1 || count > MAX_IMAGES_PER_CALL) {
    throw new SimulatedHttpError(400, `n must be an integer from 1 to ${MAX_IMAGES_PER_CALL}`, 'invalid_request_error');
  }
  return count;
}

function firstField(fields: Record<string, string | string[]>, name: string): string | undefined {
  const value = fields[name];
  return Array.isArray(value) ? value[0] : value;
}

function asObject(value: unknown): Record<string, unknown> | undefined {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

function bearerToken(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (header === undefined) return undefined;
  return /^Bearer\s+(.+)$/i.exec(header)?.[1]?.trim();
}

function apiKeyHeader(request: FastifyRequest): string | undefined {
  const header = request.headers['api-key'];
  return typeof header === 'string' ? header.trim() : undefined;
}

function urlHost(host: string): string {
  if (host === '0.0.0.0' || host === '::') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}
