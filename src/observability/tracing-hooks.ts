import { clipName } from '../errors.js';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Context, Span } from '@opentelemetry/api';
import { otelContext, startServerSpan, SpanStatusCode, tracingActive } from './tracing.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The request's server span and the context holding it, while tracing is on. */
    traceSpan?: { span: Span; context: Context; ended: boolean };
  }
}

/** Ends the request's server span with what is known of the request by now. */
function endServerSpan(request: FastifyRequest, status: number): void {
  const traced = request.traceSpan;
  if (!traced || traced.ended) return;
  traced.ended = true;
  const { span } = traced;
  const outcome = request.outcome;
  span.setAttribute('http.response.status_code', status);
  if (request.client?.id !== undefined) span.setAttribute('gateway.key_id', request.client.id);
  if (request.client?.team !== undefined) span.setAttribute('gateway.team', request.client.team);
  if (outcome?.model) span.setAttribute('gateway.model', outcome.model);
  if (outcome?.jobId) span.setAttribute('gateway.job_id', outcome.jobId);
  const code = outcome?.errorCode;
  if (status >= 400 || code) {
    const errorCode = code ?? String(status);
    span.setAttribute('error.type', errorCode);
    span.setStatus({ code: SpanStatusCode.ERROR, message: errorCode });
  }
  span.end();
}

/**
 * A server span per request, named `METHOD route`, continuing the client's W3C traceparent when it
 * sends a well-formed one. The rest of the request runs in its context: hooks are callback-style so
 * the next ones (and the handler, after the body is read) are called inside it, which carries it
 * through to the upstream calls, the stores and the log lines (trace_id). Added only while tracing is on.
 */
export function tracingHooks(app: FastifyInstance): void {
  if (!tracingActive()) return;
  app.decorateRequest('traceSpan', undefined);
  app.addHook('onRequest', (request, _reply, done) => {
    const route = request.routeOptions.url;
    const { span, context } = startServerSpan(route ? `${request.method} ${route}` : request.method, {
      'http.request.method': request.method,
      ...(route ? { 'http.route': route } : {}),
      'url.path': clipName(request.url.split('?', 1)[0]!),
      'gateway.request_id': request.id,
    }, request.headers);
    request.traceSpan = { span, context, ended: false };
    otelContext.with(context, done);
  });
  // The body was read between onRequest and here, outside any context: the handler is called inside it again.
  app.addHook('preHandler', (request, _reply, done) => {
    if (request.traceSpan) otelContext.with(request.traceSpan.context, done);
    else done();
  });
  // An answer may be sent from anywhere (an error handler, a stream); what runs then (the usage commit) is the request's.
  app.addHook('onSend', (request, _reply, payload, done) => {
    if (request.traceSpan) otelContext.with(request.traceSpan.context, () => done(null, payload));
    else done(null, payload);
  });
  app.addHook('onResponse', (request, reply, done) => {
    endServerSpan(request, request.outcome?.status ?? reply.statusCode);
    // The request's log line (request-records.ts) is written in its context: it carries trace_id.
    if (request.traceSpan) otelContext.with(request.traceSpan.context, done);
    else done();
  });
  // A client that left: no onResponse.
  app.addHook('onRequestAbort', (request, done) => {
    endServerSpan(request, 499);
    done();
  });
}
