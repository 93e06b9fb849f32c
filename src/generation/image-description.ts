import { GatewayError, invalidField } from '../errors.js';
import type { Client } from '../auth/client-keys.js';
import { endpointsOf, operationsOf, type ModelCatalogue } from '../catalogue/catalogue.js';
import type { KeyLimits } from '../limits/key-limits.js';
import { isPending, type DescribeRequest } from '../request/image-request.js';
import type { RequestOutcome } from '../usage/request-outcome.js';
import type { UpstreamClient } from '../upstream/upstream-client.js';
import { checkDescribe, toDescribeRequest } from '../upstream/upstream-request.js';
import { UpstreamFailure } from '../upstream/upstream-failure.js';
import { ClientGone, asFailure } from './generation-pipeline.js';

/** One request to describe an image, as its caller made it. */
export interface DescribeCall {
  client: Client;
  request: DescribeRequest;
  /** Aborts when the caller leaves (reason: ClientGone): the upstream call stops. */
  signal: AbortSignal;
  /** What the request did, for its usage record, metrics and log line. */
  outcome: RequestOutcome;
  /** Reads the pending image (a URL to fetch, an upload on disk) once the model, the key and its limits have passed. */
  loadImage?: (request: DescribeRequest, signal: AbortSignal) => Promise<DescribeRequest>;
}

/** The answer of POST /v1/describe: text only, nothing stored. */
export interface DescriptionResult {
  model: string;
  descriptions: { text: string }[];
  usage: { images: 0; estimated_cost_usd: number | null; upstream_ms: number };
}

export interface ImageDescriptionDeps {
  catalogue: ModelCatalogue;
  upstream: UpstreamClient;
  limits: KeyLimits;
  upstreamTimeoutMs: number;
}

/** Upstream's describe reply: `{"descriptions":[{"text":"..."}]}`; anything else is a malformed reply. */
function descriptionsOf(body: unknown): { text: string }[] {
  const list = typeof body === 'object' && body !== null ? (body as { descriptions?: unknown }).descriptions : undefined;
  if (!Array.isArray(list) || list.length === 0) throw new UpstreamFailure('malformed_reply', 'upstream describe reply carried no descriptions', { upstreamStatus: 200 });
  return list.map((item) => {
    const text = typeof item === 'object' && item !== null ? (item as { text?: unknown }).text : undefined;
    if (typeof text !== 'string') throw new UpstreamFailure('malformed_reply', 'upstream describe reply has a description without text', { upstreamStatus: 200 });
    return { text };
  });
}

/**
 * POST /v1/describe: an image in, text out. Checked like a generation (the model and its options,
 * the key's allow-list, a browser token's requests) before anything is fetched or sent; nothing is
 * stored, and the usage record counts 0 images. Describe has no published price: its cost is
 * unknown (null), so a key with a monthly budget may not use it (as any unpriced model).
 */
export class ImageDescription {
  constructor(private readonly deps: ImageDescriptionDeps) {}

  /** Everything checked and reserved; `run` then sends it once. A refusal throws and costs nothing. */
  async admit(call: DescribeCall): Promise<{ headers: Record<string, string>; run: () => Promise<DescriptionResult> }> {
    const { client, request, outcome } = call;
    outcome.operation = 'describe';
    outcome.imagesRequested = 0;
    // A model outside the key's allow-list is refused as such (403) before a retired one's 410.
    const named = this.deps.catalogue.find(request.model);
    if (named) this.deps.limits.checkNamedModel(client, named);
    const model = this.deps.catalogue.resolve(request.model);
    outcome.model = model.id;
    const route = model.describe;
    if (!route) throw invalidField('model', `${model.id} does not describe images; use ${endpointsOf(model)}`, operationsOf(model));
    checkDescribe(model, route, request);
    this.deps.limits.checkPriced(client, model.id, false);
    const reservation = await this.deps.limits.reserve(client, 0, null);
    let started = false;
    return {
      headers: reservation.headers,
      run: async () => {
        if (started) throw new Error('an admitted describe runs once');
        started = true;
        try {
          const loaded = call.loadImage ? await call.loadImage(request, call.signal) : request;
          if (isPending(loaded.image)) throw new GatewayError('internal_error', 'the input image was not read before the request was sent');
          // Its size is known only now (a file on disk, a URL fetched).
          checkDescribe(model, route, loaded);
          const { body, upstreamMs } = await this.send(call, toDescribeRequest(route, loaded));
          const descriptions = descriptionsOf(body);
          outcome.upstreamStatus = 200;
          outcome.upstreamMs = upstreamMs;
          outcome.estimatedCostUsd = null;
          return { model: model.id, descriptions, usage: { images: 0, estimated_cost_usd: null, upstream_ms: upstreamMs } };
        } catch (err) {
          if (call.signal.aborted && call.signal.reason instanceof ClientGone) throw new ClientGone();
          if (err instanceof UpstreamFailure) outcome.failureKind = err.kind;
          throw asFailure(err);
        } finally {
          await this.deps.limits.settle(reservation, 0, null);
        }
      },
    };
  }

  /** The upstream call under UPSTREAM_TIMEOUT_MS, stopped when the caller leaves. */
  private async send(call: DescribeCall, upstreamRequest: ReturnType<typeof toDescribeRequest>): Promise<{ body: unknown; upstreamMs: number }> {
    const cancel = new AbortController();
    const onLeave = () => cancel.abort(call.signal.reason);
    if (call.signal.aborted) onLeave();
    else call.signal.addEventListener('abort', onLeave, { once: true });
    let timedOut = false;
    const deadline = setTimeout(() => {
      timedOut = true;
      cancel.abort(new Error('the upstream deadline passed'));
    }, this.deps.upstreamTimeoutMs);
    try {
      return await this.deps.upstream.send(upstreamRequest, cancel.signal, call.client.team);
    } catch (err) {
      if (timedOut) throw new UpstreamFailure('timeout', `no complete upstream answer within ${this.deps.upstreamTimeoutMs} ms`, { cause: err });
      throw err;
    } finally {
      clearTimeout(deadline);
      call.signal.removeEventListener('abort', onLeave);
    }
  }
}
