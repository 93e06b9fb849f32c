/**
 * /readyz answers 503 when the database is down: PostgreSQL reached through a TCP proxy that the
 * test cuts (every open connection dropped, new ones refused) and then restores. And when the S3
 * image store cannot be reached, with one log line saying why.
 */
import { createServer as createHttpServer } from 'node:http';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from './gateway-process.js';
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

describe('/readyz with an S3 store that cannot be reached', () => {
  const SECRET = 'not-a-real-secret-access-key-0123';

  it('answers 503 with one warning naming the bucket, endpoint and reason (no credentials), and one info line once it answers', async () => {
    const port = await freePort();
    const endpoint = `http://127.0.0.1:${port}`;
    const h = await startHarness({
      S3_BUCKET: 'gw-images',
      S3_ENDPOINT: endpoint,
      S3_FORCE_PATH_STYLE: '1',
      AWS_ACCESS_KEY_ID: 'AKIA-TEST-KEY-ID',
      AWS_SECRET_ACCESS_KEY: SECRET,
    });
    const s3 = createHttpServer((req, res) => res.writeHead(req.method === 'HEAD' && req.url?.startsWith('/gw-images') ? 200 : 404).end());
    try {
      const storeLines = () => h.logs.map((l) => JSON.parse(l)).filter((l) => l.msg.includes('image store'));
      for (let i = 0; i < 3; i++) {
        const down = await h.app.inject({ method: 'GET', url: '/readyz' });
        expect(down.statusCode).toBe(503);
        expect(down.json().checks.storage).toBe('unavailable');
      }
      expect(storeLines().map((l) => [l.level, l.msg])).toEqual([
        [40, expect.stringMatching(new RegExp(`^the image store \\(S3 bucket gw-images at ${endpoint}\\) cannot be reached \\(.*ECONNREFUSED.*\\): /readyz answers 503 until it answers$`))],
      ]);
      expect(h.logs.join('\n')).not.toContain(SECRET);
      expect(h.logs.join('\n')).not.toContain('AKIA-TEST-KEY-ID');

      await new Promise<void>((resolve) => s3.listen(port, '127.0.0.1', resolve));
      for (let i = 0; i < 2; i++) expect((await h.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
      expect(storeLines().map((l) => [l.level, l.msg])).toEqual([
        [40, expect.any(String)],
        [30, `the image store (S3 bucket gw-images at ${endpoint}) answers again`],
      ]);
    } finally {
      await h.close();
      s3.closeAllConnections();
      await new Promise((resolve) => s3.close(resolve));
    }
  });
});
