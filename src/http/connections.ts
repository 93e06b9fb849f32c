import { STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyHttpOptions, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { Counter, Gauge } from 'prom-client';
import type { Config } from '../config.js';
import { GatewayError, errorBody, type ErrorCode } from '../errors.js';
import { randomId } from '../ids.js';
import { SECURITY_HEADERS } from './security-headers.js';

/**
 * Connection hygiene: how long a client may take to send a request, how long an idle connection
 * stays open, and how many connections a replica holds. Node's own defaults leave a body that
 * trickles in one byte at a time connected forever (Fastify sets `requestTimeout` to 0).
 *
 * - REQUEST_TIMEOUT_MS: the whole request, body included, arrives within it, else `408
 *   request_timeout`, answered like any other error (the route's error shape, a usage record).
 *   Once the body is in, the time the gateway takes to answer does not count.
 * - HEADERS_TIMEOUT_MS: the headers alone (default: the smaller of 30 s and REQUEST_TIMEOUT_MS).
 * - KEEP_ALIVE_TIMEOUT_MS: an idle keep-alive connection between requests.
 * - CONNECTION_TIMEOUT_MS: a socket with no traffic is cut, unless a request on it is being
 *   worked on: a render of minutes, or an event stream, is never cut by it.
 * - MAX_CONNECTIONS: connections past it are closed as they arrive, and counted.
 */

declare module 'fastify' {
  interface FastifyInstance {
    /** Open connections of the main listener and those refused past MAX_CONNECTIONS. */
    connections: ConnectionStats;
  }
}

export interface ConnectionStats {
  readonly open: number;
  readonly refused: number;
}

export function headersTimeoutMs(config: Config): number {
  return config.HEADERS_TIMEOUT_MS ?? Math.min(30_000, config.REQUEST_TIMEOUT_MS);
}

/**
 * How often Node looks for requests past their deadline (30 s by default, which would stretch a
 * 120 s limit to 150 s): a tenth of the shorter limit, from 10 ms to 5 s.
 */
function checkingIntervalMs(config: Config): number {
  return Math.max(10, Math.min(5_000, Math.floor(Math.min(headersTimeoutMs(config), config.REQUEST_TIMEOUT_MS) / 10)));
}

/** The requests in flight on each socket of the main listener (the Fastify request with its reply). */
const inFlight = new WeakMap<Socket, { request: FastifyRequest; reply: FastifyReply }>();

/** Options for `Fastify(...)`: the timeouts, and the answer to what Node refuses before a route runs. */
export function connectionOptions(config: Config): Pick<FastifyHttpOptions<Server>, 'requestTimeout' | 'keepAliveTimeout' | 'connectionTimeout' | 'http' | 'clientErrorHandler'> {
  return {
    requestTimeout: config.REQUEST_TIMEOUT_MS,
    keepAliveTimeout: config.KEEP_ALIVE_TIMEOUT_MS,
    connectionTimeout: config.CONNECTION_TIMEOUT_MS,
    http: {
      requestTimeout: config.REQUEST_TIMEOUT_MS,
      headersTimeout: headersTimeoutMs(config),
      connectionsCheckingInterval: checkingIntervalMs(config),
    },
    clientErrorHandler(this: FastifyInstance, err: NodeJS.ErrnoException, socket: Socket) {
      onClientError(this, config, err, socket);
    },
  };
}

/** An answer written straight to the socket, for a request Fastify never saw (or whose route cannot answer). */
function rawAnswer(socket: Socket, status: number, code: ErrorCode, message: string): void {
  const requestId = randomId('req', 12);
  const body = JSON.stringify({ error: { code, message, request_id: requestId } });
  const headers = [
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}`,
    'content-type: application/json; charset=utf-8',
    `content-length: ${Buffer.byteLength(body)}`,
    'connection: close',
    `x-request-id: ${requestId}`,
    ...Object.entries(SECURITY_HEADERS).map(([name, value]) => `${name}: ${value}`),
    'cache-control: no-store',
  ];
  socket.end(`${headers.join('\r\n')}\r\n\r\n${body}`);
}

/**
 * A request whose body is late: its body reader fails with `408 request_timeout`, so the route's
 * error handler answers it (in the route's shape, recorded like any other), and the connection
 * closes after the answer (the rest of the body is not waited for). A reader attached later (a
 * multipart route reads after authentication) gets the error as it attaches; a route that reads
 * no body answers as usual, and the connection closes after it.
 */
export function timeOutBody(request: FastifyRequest, reply: FastifyReply, config: Config): void {
  const err = new GatewayError('request_timeout', `the request did not arrive in full within ${config.REQUEST_TIMEOUT_MS} ms; send the body at once`);
  reply.header('connection', 'close');
  const raw = request.raw;
  if (raw.listenerCount('error') > 0) {
    raw.emit('error', err);
    return;
  }
  const onListener = (event: string | symbol) => {
    if (event !== 'error') return;
    raw.off('newListener', onListener);
    process.nextTick(() => raw.emit('error', err));
  };
  raw.on('newListener', onListener);
}

function onClientError(app: FastifyInstance, config: Config, err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const current = inFlight.get(socket);
  if (current) {
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT' && !current.request.raw.complete && !current.reply.sent && !current.reply.raw.headersSent) {
      timeOutBody(current.request, current.reply, config);
      return;
    }
    // A request on this socket is still being answered (a pipelined one behind it failed): nothing
    // can be written before its answer.
    socket.destroy();
    return;
  }
  // An answer was written already: nothing more can be said.
  if (!socket.writable || socket.writableEnded) {
    socket.destroy();
    return;
  }
  const remote = socket.remoteAddress;
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT' && socket.bytesRead === 0) {
    // Not a byte in: there is no request to answer, only a connection to free.
    app.log.info({ remote, code: 'request_timeout' }, 'connection sent nothing in time; closed');
    socket.destroy();
    return;
  }
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    app.log.info({ remote, code: 'request_timeout' }, 'request not received in time; connection closed');
    rawAnswer(socket, 408, 'request_timeout', `the request headers did not arrive within ${headersTimeoutMs(config)} ms`);
  } else if (err.code === 'HPE_HEADER_OVERFLOW') {
    app.log.info({ remote, code: 'invalid_request' }, 'request headers too large; connection closed');
    // 431 (Request Header Fields Too Large), with the code of every other refused request.
    rawAnswer(socket, 431, 'invalid_request', 'the request headers are larger than the server accepts (16 KiB in all)');
  } else {
    app.log.info({ remote, code: 'invalid_request', parser_error: err.code }, 'malformed HTTP request; connection closed');
    rawAnswer(socket, 400, 'invalid_request', 'the request is not well-formed HTTP/1.1');
  }
}

async function connections(app: FastifyInstance): Promise<void> {
  const server = app.server;
  let open = 0;
  let refused = 0;
  server.maxConnections = app.config.MAX_CONNECTIONS;

  const registers = [app.metrics.registry];
  const refusedCounter = new Counter({
    name: 'gateway_connections_refused_total',
    help: 'Connections closed on arrival because MAX_CONNECTIONS were open on this replica.',
    registers,
  });
  new Gauge({
    name: 'gateway_open_connections',
    help: 'Open client connections on this replica (the main listener).',
    registers,
    collect() {
      this.set(open);
    },
  });
  app.decorate('connections', {
    get open() {
      return open;
    },
    get refused() {
      return refused;
    },
  });

  // A socket that never sends a byte is not reliably cut by Node's timers (no request has begun on
  // it, and the socket timeout may not be armed): the gateway's own timer frees it after the
  // headers timeout (or CONNECTION_TIMEOUT_MS if shorter). One whose request has begun but whose
  // headers trickle in is answered 408 by Node's headers timeout; should that not happen either, it
  // is cut one headers timeout later.
  const silentMs = Math.min(headersTimeoutMs(app.config), app.config.CONNECTION_TIMEOUT_MS);
  const started = new WeakSet<Socket>();
  const onConnection = (socket: Socket) => {
    open++;
    let timer: NodeJS.Timeout | undefined = setTimeout(() => {
      if (started.has(socket) || socket.destroyed) return;
      if (socket.bytesRead === 0) {
        socket.destroy();
        return;
      }
      timer = setTimeout(() => {
        if (!started.has(socket)) socket.destroy();
      }, headersTimeoutMs(app.config)).unref();
    }, silentMs).unref();
    socket.once('close', () => {
      open--;
      clearTimeout(timer);
      timer = undefined;
    });
  };
  const onDrop = () => {
    refused++;
    refusedCounter.inc();
  };
  // Requests being worked on, per socket: an idle timeout leaves those sockets alone.
  const busy = new WeakMap<Socket, number>();
  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    started.add(socket);
    busy.set(socket, (busy.get(socket) ?? 0) + 1);
    res.once('close', () => busy.set(socket, (busy.get(socket) ?? 1) - 1));
  };
  // With a listener here Node leaves the decision to it (else it destroys every socket that times out).
  const onTimeout = (socket: Socket) => {
    if ((busy.get(socket) ?? 0) === 0) socket.destroy();
  };
  server.on('connection', onConnection);
  server.on('drop', onDrop);
  server.on('request', onRequest);
  server.on('timeout', onTimeout);
  app.addHook('onClose', async () => {
    server.off('connection', onConnection);
    server.off('drop', onDrop);
    server.off('request', onRequest);
    server.off('timeout', onTimeout);
  });

}

/**
 * Notes which request each socket is carrying, so that a late body is answered by its route. Added
 * before the other hooks: a body may run late while authentication is still being decided.
 */
export function trackRequests(app: FastifyInstance): void {
  app.addHook('onRequest', (request, reply, done) => {
    const socket = request.raw.socket as Socket | null;
    if (socket) inFlight.set(socket, { request, reply });
    done();
  });
  // An answer given before the body is in (a refused key, a wrong content type) closes the
  // connection after it: the rest of the body is not waited for, and nothing else is said on it (a
  // late body would otherwise earn the same request a second answer, a 408).
  app.addHook('onSend', (request, reply, payload, done) => {
    if (request.raw.complete === false) reply.header('connection', 'close');
    done(null, payload);
  });
  app.addHook('onResponse', (request, _reply, done) => {
    const socket = request.raw.socket as Socket | null;
    if (socket && inFlight.get(socket)?.request === request) inFlight.delete(socket);
    done();
  });
}

/** Connection counts and limits of the main listener; the timeouts are set by `connectionOptions`. */
export const connectionsPlugin = fp(connections, { name: 'connections', dependencies: ['metrics'] });
