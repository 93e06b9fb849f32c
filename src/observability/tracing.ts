/**
 * OpenTelemetry traces. Code paths use the helpers below, which do nothing (not even a context
 * switch) until startTracing() has loaded the SDK; it is loaded, with a dynamic import, only when
 * an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
 * and OTEL_SDK_DISABLED is not true. Only @opentelemetry/api is imported statically: its calls are
 * not reached while tracing is off.
 */
import { DiagLogLevel, ROOT_CONTEXT, context, diag, propagation, trace, SpanKind, SpanStatusCode, type Attributes, type Context, type Link, type Span, type SpanContext } from '@opentelemetry/api';
import type { Config } from '../config.js';
import { GatewayError } from '../errors.js';
import { UpstreamFailure, toGatewayError } from '../upstream/upstream-failure.js';

/** What the OTEL_* variables asked for, as read by config.ts. */
export interface TracingSettings {
  /** Where spans are POSTed: the traces endpoint as given, or the generic endpoint + /v1/traces. */
  url: string;
  protocol: 'http/protobuf' | 'http/json';
  headers: string | undefined;
  serviceName: string;
  resourceAttributes: string | undefined;
  sampler: string;
  samplerArg: string | undefined;
  batch: { scheduledDelayMillis?: number; maxQueueSize?: number; maxExportBatchSize?: number; exportTimeoutMillis?: number };
}

/** The settings, or undefined when traces are off (no endpoint, OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER=none). */
export function tracingSettings(config: Config): TracingSettings | undefined {
  if (config.OTEL_SDK_DISABLED || config.OTEL_TRACES_EXPORTER === 'none') return undefined;
  const url = config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? (config.OTEL_EXPORTER_OTLP_ENDPOINT ? new URL('v1/traces', config.OTEL_EXPORTER_OTLP_ENDPOINT.replace(/\/?$/, '/')).toString() : undefined);
  if (url === undefined) return undefined;
  const batch: TracingSettings['batch'] = {};
  if (config.OTEL_BSP_SCHEDULE_DELAY !== undefined) batch.scheduledDelayMillis = config.OTEL_BSP_SCHEDULE_DELAY;
  if (config.OTEL_BSP_MAX_QUEUE_SIZE !== undefined) batch.maxQueueSize = config.OTEL_BSP_MAX_QUEUE_SIZE;
  if (config.OTEL_BSP_MAX_EXPORT_BATCH_SIZE !== undefined) batch.maxExportBatchSize = config.OTEL_BSP_MAX_EXPORT_BATCH_SIZE;
  if (config.OTEL_BSP_EXPORT_TIMEOUT !== undefined) batch.exportTimeoutMillis = config.OTEL_BSP_EXPORT_TIMEOUT;
  return {
    url,
    protocol: (config.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? config.OTEL_EXPORTER_OTLP_PROTOCOL ?? 'http/protobuf') as TracingSettings['protocol'],
    headers: config.OTEL_EXPORTER_OTLP_TRACES_HEADERS ?? config.OTEL_EXPORTER_OTLP_HEADERS,
    serviceName: config.OTEL_SERVICE_NAME ?? 'image-gateway',
    resourceAttributes: config.OTEL_RESOURCE_ATTRIBUTES,
    sampler: config.OTEL_TRACES_SAMPLER ?? 'parentbased_always_on',
    samplerArg: config.OTEL_TRACES_SAMPLER_ARG,
    batch,
  };
}

/** The running SDK; undefined while tracing is off. One per process (the API's globals are). */
let running: { owner: object; shutdown: () => Promise<void>; forceFlush: () => Promise<void> } | undefined;
/** True while spans are made: the helpers below check it before touching the API. */
let active = false;
/** How many times the SDK was loaded in this process: a test checks that an app without an endpoint loads nothing. */
let sdkLoads = 0;

export function tracingActive(): boolean {
  return active;
}

export function sdkLoadCount(): number {
  return sdkLoads;
}

export interface Tracing {
  enabled: boolean;
  /** Where the SDK's own warnings and errors go (an export that failed, a collector that refused): the gateway's log. */
  logTo(log: { warn(obj: object, msg: string): void; error(obj: object, msg: string): void }): void;
  /** Exports what is buffered; resolves when done (or failed: export failures are the SDK's to log). */
  forceFlush(): Promise<void>;
  /** Exports what is left and turns tracing off. */
  shutdown(): Promise<void>;
}

const OFF: Tracing = { enabled: false, logTo: () => {}, forceFlush: async () => {}, shutdown: async () => {} };

/** The SDK's diagnostics as log lines; its arguments (errors, codes) summed up in `details`. */
function diagnosticsTo(log: { warn(obj: object, msg: string): void; error(obj: object, msg: string): void }): void {
  const details = (args: unknown[]) => ({ details: args.map((a) => (a instanceof Error ? a.message : typeof a === 'string' ? a : JSON.stringify(a))).join(' ').slice(0, 500) });
  const quiet = () => {};
  diag.setLogger(
    {
      error: (msg, ...args) => log.error(details(args), `OpenTelemetry: ${msg}`),
      warn: (msg, ...args) => log.warn(details(args), `OpenTelemetry: ${msg}`),
      info: quiet,
      debug: quiet,
      verbose: quiet,
    },
    { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true },
  );
}

/**
 * Loads the SDK and registers it with the API (tracer provider, AsyncLocalStorage context manager,
 * W3C traceparent propagator), or does nothing when `settings` is undefined.
 */
export async function startTracing(settings: TracingSettings | undefined, log: { warn(obj: object, msg: string): void }): Promise<Tracing> {
  if (!settings) return OFF;
  if (running) {
    log.warn({}, 'tracing is already running in this process (another gateway instance started it); this one shares it');
    return { enabled: true, logTo: () => {}, forceFlush: running.forceFlush, shutdown: async () => {} };
  }
  sdkLoads++;
  const [sdk, { AsyncLocalStorageContextManager }, { W3CTraceContextPropagator, parseKeyPairsIntoRecord }, { defaultResource, resourceFromAttributes }, semconv, exporterModule] =
    await Promise.all([
      import('@opentelemetry/sdk-trace'),
      import('@opentelemetry/context-async-hooks'),
      import('@opentelemetry/core'),
      import('@opentelemetry/resources'),
      import('@opentelemetry/semantic-conventions'),
      settings.protocol === 'http/json' ? import('@opentelemetry/exporter-trace-otlp-http') : import('@opentelemetry/exporter-trace-otlp-proto'),
    ]);
  const headers = parseKeyPairsIntoRecord(settings.headers);
  const exporter = new exporterModule.OTLPTraceExporter({ url: settings.url, ...(Object.keys(headers).length > 0 ? { headers } : {}) });
  const ratio = settings.samplerArg === undefined ? 1 : Number(settings.samplerArg);
  const root =
    settings.sampler.endsWith('always_off') ? new sdk.AlwaysOffSampler() : settings.sampler.endsWith('traceidratio') ? new sdk.TraceIdRatioBasedSampler(ratio) : new sdk.AlwaysOnSampler();
  const sampler = settings.sampler.startsWith('parentbased_') ? new sdk.ParentBasedSampler({ root }) : root;
  const resource = defaultResource()
    .merge(resourceFromAttributes(parseKeyPairsIntoRecord(settings.resourceAttributes)))
    .merge(resourceFromAttributes({ [semconv.ATTR_SERVICE_NAME]: settings.serviceName }));
  const provider = new sdk.TracerProvider({
    resource,
    sampler,
    spanProcessors: [new sdk.BatchSpanProcessor({ exporter: exporter as unknown as import('@opentelemetry/sdk-trace').SpanExporter, ...settings.batch })],
  });
  const contextManager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(contextManager);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  const owner = {};
  const shutdown = async () => {
    if (running?.owner !== owner) return;
    active = false;
    running = undefined;
    try {
      await provider.shutdown();
    } finally {
      trace.disable();
      propagation.disable();
      context.disable();
      diag.disable();
    }
  };
  const forceFlush = () => provider.forceFlush();
  running = { owner, shutdown, forceFlush };
  active = true;
  return { enabled: true, logTo: diagnosticsTo, forceFlush, shutdown };
}

const TRACER = 'image-gateway';

function tracer() {
  return trace.getTracer(TRACER);
}

/** The gateway's error code for a failure (what a span's ERROR status says). */
function errorCodeOf(err: unknown): string {
  if (err instanceof GatewayError) return err.code;
  if (err instanceof UpstreamFailure) return toGatewayError(err).code;
  if (err instanceof Error && err.name === 'AbortError') return 'aborted';
  if (err instanceof Error && err.name === 'ClientGone') return 'client_closed';
  return 'internal_error';
}

/** Marks a span failed: status ERROR with the gateway error code, and `error.type`. */
export function markSpanError(span: Span, err: unknown): void {
  const code = errorCodeOf(err);
  span.setStatus({ code: SpanStatusCode.ERROR, message: code });
  span.setAttribute('error.type', code);
  if ((err instanceof GatewayError || err instanceof UpstreamFailure) && err.upstreamStatus !== undefined) {
    span.setAttribute('gateway.upstream.status_code', err.upstreamStatus);
  }
  if (err instanceof UpstreamFailure) span.setAttribute('gateway.upstream.failure_kind', err.kind);
}

export interface SpanOptions {
  kind?: SpanKind;
  links?: Link[];
  /** Start under this span context instead of the active one. */
  parent?: SpanContext;
}

/**
 * Runs `fn` inside a child span of the active one (ended when it settles; a throw marks it ERROR).
 * While tracing is off it just runs `fn`, with no span.
 */
export function inSpan<T>(name: string, attributes: Attributes, fn: (span: Span | undefined) => Promise<T>, options: SpanOptions = {}): Promise<T> {
  if (!active) return fn(undefined);
  const parentContext = options.parent ? trace.setSpanContext(context.active(), options.parent) : context.active();
  const span = tracer().startSpan(name, { attributes, kind: options.kind ?? SpanKind.INTERNAL, ...(options.links ? { links: options.links } : {}) }, parentContext);
  return context.with(trace.setSpan(parentContext, span), async () => {
    try {
      return await fn(span);
    } catch (err) {
      markSpanError(span, err);
      throw err;
    } finally {
      span.end();
    }
  });
}

/** An event on the active span (a retry, a poll); nothing while tracing is off. */
export function spanEvent(name: string, attributes?: Attributes): void {
  if (active) trace.getActiveSpan()?.addEvent(name, attributes);
}

/** The active span's context, to link to or to continue later; undefined while tracing is off. */
export function activeSpanContext(): SpanContext | undefined {
  if (!active) return undefined;
  const sc = trace.getActiveSpan()?.spanContext();
  return sc && trace.isSpanContextValid(sc) ? sc : undefined;
}

/** Adds `traceparent` (and `tracestate`) of the active span to outgoing headers; nothing while tracing is off. */
export function injectTraceHeaders(headers: Record<string, string>): Record<string, string> {
  if (active) propagation.inject(context.active(), headers);
  return headers;
}

/** trace_id and span_id of the active span for a log line (a pino mixin); {} when there is none. */
export function traceLogFields(): { trace_id?: string; span_id?: string } {
  if (!active) return {};
  const sc = trace.getActiveSpan()?.spanContext();
  return sc && trace.isSpanContextValid(sc) ? { trace_id: sc.traceId, span_id: sc.spanId } : {};
}

/** For the server span (tracing-hooks.ts): a span started in `parent` and the context holding it. */
export function startServerSpan(name: string, attributes: Attributes, carrier: Record<string, unknown>): { span: Span; context: Context } {
  // A client's traceparent, when it is well formed; a malformed one is ignored (a new trace).
  const parent = propagation.extract(ROOT_CONTEXT, carrier);
  const span = tracer().startSpan(name, { kind: SpanKind.SERVER, attributes }, parent);
  return { span, context: trace.setSpan(parent, span) };
}

export { context as otelContext, SpanKind, SpanStatusCode };
