import type { FastifyInstance, FastifyRequest } from 'fastify';
import { GatewayError, clipName, errorBody, invalidField } from '../errors.js';
import type { JobRow } from '../jobs/job-runner.js';
import { eventWithOrigin, resultWithOrigin } from '../jobs/job-origin.js';
import { errorEvent, gatewayEvents, publicBaseUrl, streamAnswer, whileConnected, writeEvents } from './generation-http.js';

/** The longest a status read waits for a job to finish (`?wait=`), in seconds: under a proxy's usual 60 s read timeout. */
const MAX_WAIT_SECONDS = 60;

function waitSeconds(query: Record<string, unknown>): number {
  const value = query.wait;
  if (value === undefined) return 0;
  const seconds = typeof value === 'string' && /^\d+(\.\d+)?$/.test(value) ? Number(value) : Number.NaN;
  if (!(seconds >= 0 && seconds <= MAX_WAIT_SECONDS)) {
    throw invalidField('wait', `must be a number of seconds from 0 to ${MAX_WAIT_SECONDS}`);
  }
  return seconds;
}

export async function jobRoutes(app: FastifyInstance): Promise<void> {
  /**
   * The job, if the caller's team may see it (a browser token: only the jobs it started): another
   * team's job answers exactly like a missing one.
   */
  async function visibleJob(request: FastifyRequest<{ Params: { id: string } }>): Promise<JobRow> {
    const row = await app.jobs.get(request.params.id);
    const client = request.client!;
    const visible = row && (client.token ? row.token_id === client.token.id : row.team === client.team || client.admin);
    if (!row || !visible) {
      throw new GatewayError('not_found', `no job ${clipName(request.params.id)}`);
    }
    return row;
  }

  // `?wait=N`: answers as soon as the job has finished, or after N seconds with where it stands.
  app.get<{ Params: { id: string }; Querystring: Record<string, unknown> }>('/v1/jobs/:id', async (request, reply) => {
    const wait = waitSeconds(request.query);
    let row = await visibleJob(request);
    if (wait > 0 && row.status !== 'succeeded' && row.status !== 'failed') {
      const connected = whileConnected(reply);
      const timeout = AbortSignal.timeout(Math.round(wait * 1000));
      try {
        row = await app.jobs.follow(row.id, { signal: AbortSignal.any([connected.signal, timeout, app.stopping]) });
      } catch (err) {
        if (connected.signal.aborted) throw connected.signal.reason;
        // The wait is over (or the gateway is stopping): where the job stands now.
        if (!timeout.aborted && !app.stopping.aborted) throw err;
        row = (await app.jobs.get(row.id)) ?? row;
      } finally {
        connected.release();
      }
    }
    // The row keeps image paths unless PUBLIC_BASE_URL is set: this reader's origin goes in front.
    const view = await app.jobs.view(row);
    return view.result ? { ...view, result: resultWithOrigin(view.result, publicBaseUrl(app, request)) } : view;
  });

  // The job's events: first where it stands (a finished job: its last event at once), then as they happen.
  app.get<{ Params: { id: string } }>('/v1/jobs/:id/events', async (request, reply) => {
    const row = await visibleJob(request);
    const connected = whileConnected(reply);
    try {
      return await streamAnswer(
        app,
        request,
        reply,
        async (stream) => {
          const write = writeEvents(stream, gatewayEvents, request);
          const origin = publicBaseUrl(app, request);
          const send = (event: Parameters<typeof write>[0]) => write(eventWithOrigin(event, origin));
          // A stopping gateway ends the stream with an error event (service_unavailable): follow again.
          const finished = await app.jobs.follow(row.id, { signal: AbortSignal.any([connected.signal, app.stopping]), onEvent: send });
          const view = await app.jobs.view(finished);
          if (view.result) send({ type: 'succeeded', result: view.result });
          else void stream.send('failed', view.error ?? errorBody(new GatewayError('upstream_error', 'the job failed'), row.id).error);
        },
        errorEvent,
      );
    } finally {
      connected.release();
    }
  });
}
