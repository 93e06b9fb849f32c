/**
 * /readyz answers 503 when the database is down: PostgreSQL reached through a TCP proxy that the
 * test cuts (every open connection dropped, new ones refused) and then restores.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Harness } from './harness.js';
import { freshPostgres, postgresProblem } from './services.js';

/** A TCP proxy to `target`; while cut, it drops every connection it has and every new one. */
async function tcpProxy(target: URL): Promise<{ port: number; cut(): void; restore(): void; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let cut = false;
  const server: Server = createServer((client) => {
    if (cut) {
      client.destroy();
      return;
    }
    const upstream = createConnection({ host: target.hostname, port: Number(target.port || 5432) });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => {});
    }
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    cut() {
      cut = true;
      for (const socket of sockets) socket.destroy();
    },
    restore() {
      cut = false;
    },
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

describe.skipIf(postgresProblem !== undefined)('/readyz with PostgreSQL (skipped when unreachable and REQUIRE_SERVICES is unset)', () => {
  let h: Harness;
  let proxy: Awaited<ReturnType<typeof tcpProxy>>;
  let drop: () => Promise<void>;
  beforeAll(async () => {
    const pg = await freshPostgres();
    drop = pg.drop;
    const direct = new URL(pg.url);
    proxy = await tcpProxy(direct);
    const viaProxy = new URL(pg.url);
    viaProxy.host = `127.0.0.1:${proxy.port}`;
    h = await startHarness({ DATABASE_URL: viaProxy.toString() });
  });
  afterAll(async () => {
    proxy?.restore();
    await h?.close();
    await proxy?.close();
    await drop?.();
  });

  it('answers 200 while the database answers', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/readyz' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ status: 'ok', checks: { storage: 'ok', database: 'ok' } });
  });

  it('answers 503 naming the database once it is cut off, and 200 again once it is back', async () => {
    proxy.cut();
    const down = await h.app.inject({ method: 'GET', url: '/readyz' });
    expect(down.statusCode).toBe(503);
    expect(down.json()).toMatchObject({ status: 'unavailable', checks: { storage: 'ok', database: 'unavailable' } });

    proxy.restore();
    const up = await h.app.inject({ method: 'GET', url: '/readyz' });
    expect(up.statusCode).toBe(200);
    expect(up.json().checks.database).toBe('ok');
  });
});
