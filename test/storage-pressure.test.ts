/**
 * Storage pressure: with DATA_DIR below STORAGE_MIN_FREE_BYTES (an injected free-space probe stands
 * in for a full disk) new generations are refused before anything is sent upstream, /readyz says
 * so, and the metrics and log show it. An image the store cannot take once upstream has made it is
 * answered inline, or, with its bytes gone, 507 with what it cost in the usage record.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { ADMIN_KEY, makePng, multipartBody, startHarness, type Harness } from './harness.js';
import type { FreeSpace } from '../src/images/storage-pressure.js';

const GiB = 1024 ** 3;
const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` };
const ALL_TIME = 'from=2000-01-01&to=2100-01-01';
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

/** A disk whose free space the test sets. */
function fakeDisk(space: FreeSpace) {
  return { space, probe: async () => ({ ...space }) };
}

function metric(text: string, name: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

const noSpace = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 });

/** Staging files left behind: every file under the staging directory but the warm ones kept ready. */
function stagingLeftovers(h: Harness): string[] {
  const dir = join(h.dataDir, 'images', '.staging');
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names.filter((name) => !h.app.images.stagingFiles.holds(name));
}

async function usageRecords(h: Harness): Promise<any[]> {
  return (await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}&limit=1000`, headers: ADMIN })).json().data;
}

describe('DATA_DIR below STORAGE_MIN_FREE_BYTES', () => {
  let h: Harness;
  const disk = fakeDisk({ freeBytes: 50 * GiB, totalBytes: 100 * GiB });
  beforeAll(async () => {
    h = await startHarness({ STORAGE_MIN_FREE_BYTES: String(2 * GiB) }, {}, { freeSpaceProbe: disk.probe });
  });
  afterAll(async () => h.close());
  afterEach(async () => {
    disk.space.freeBytes = 50 * GiB;
    await h.app.storagePressure.check();
    vi.restoreAllMocks();
  });

  async function fillDisk() {
    disk.space.freeBytes = GiB;
    expect(await h.app.storagePressure.check()).toBe('full');
    h.simulator.reset();
  }

  it('refuses /v1/generate with 507 storage_full and Retry-After, and sends nothing upstream', async () => {
    await fillDisk();
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a kite' } });
    expect(res.statusCode).toBe(507);
    expect(res.headers['retry-after']).toBe('60');
    expect(res.json().error.code).toBe('storage_full');
    expect(res.json().error.message).toMatch(/storage/);
    expect(res.json().error.message).toMatch(/STORAGE_MIN_FREE_BYTES/);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('refuses an edit, the OpenAI façade and an async job at submission, and sends nothing upstream', async () => {
    await fillDisk();
    const png = await makePng();
    const { payload, headers } = multipartBody({ model: 'gpt-image-1', prompt: 'make it blue' }, [{ field: 'image', filename: 'in.png', bytes: png }]);
    const edit = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
    expect(edit.statusCode).toBe(507);
    expect(edit.json().error.code).toBe('storage_full');

    const openai = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a kite' } });
    expect(openai.statusCode).toBe(507);
    expect(openai.headers['retry-after']).toBe('60');
    expect(openai.json().error).toMatchObject({ type: 'server_error', code: 'storage_full' });

    const job = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'flux-kontext-pro', prompt: 'later', async: true } });
    expect(job.statusCode).toBe(507);
    const jobs = Object.values(await h.app.jobs.counts()).reduce((sum, n) => sum + n, 0);
    expect(jobs).toBe(0);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('answers /readyz 503 naming storage as full', async () => {
    await fillDisk();
    const res = await h.app.inject({ method: 'GET', url: '/readyz' });
    expect(res.statusCode).toBe(503);
    expect(res.json()).toMatchObject({ status: 'unavailable', checks: { storage: 'full', database: 'ok' } });
  });

  it('shows the pressure in the metrics', async () => {
    const before = (await h.app.inject({ method: 'GET', url: '/metrics' })).body;
    expect(metric(before, 'gateway_storage_refusing')).toBe(0);
    expect(metric(before, 'gateway_storage_free_bytes')).toBe(50 * GiB);
    expect(metric(before, 'gateway_storage_min_free_bytes')).toBe(2 * GiB);
    await fillDisk();
    const during = (await h.app.inject({ method: 'GET', url: '/metrics' })).body;
    expect(metric(during, 'gateway_storage_refusing')).toBe(1);
    expect(metric(during, 'gateway_storage_free_bytes')).toBe(GiB);
  });

  it('logs a warning when the pressure begins and when it ends', async () => {
    const from = h.logs.length;
    await fillDisk();
    disk.space.freeBytes = 50 * GiB;
    await h.app.storagePressure.check();
    const lines = h.logs.slice(from).map((l) => JSON.parse(l)).filter((l) => /image storage/.test(l.msg));
    expect(lines.map((l) => [l.level, l.storage])).toEqual([
      [40, 'full'],
      [40, 'ok'],
    ]);
    expect(lines[0]).toMatchObject({ free_bytes: GiB, min_free_bytes: 2 * GiB });
  });

  it('runs the retention sweep at once when the pressure begins', async () => {
    const sweep = vi.spyOn(h.app.retention, 'sweepNow');
    await fillDisk();
    expect(sweep).toHaveBeenCalledTimes(1);
    // Still under pressure: no second sweep for the same episode.
    await h.app.storagePressure.check();
    expect(sweep).toHaveBeenCalledTimes(1);
  });

  it('takes generations again and answers /readyz 200 once space returns', async () => {
    await fillDisk();
    disk.space.freeBytes = 3 * GiB;
    expect(await h.app.storagePressure.check()).toBe('ok');
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a kite' } });
    expect(res.statusCode, res.body).toBe(200);
    expect(h.simulator.received).toHaveLength(1);
    const ready = await h.app.inject({ method: 'GET', url: '/readyz' });
    expect(ready.statusCode).toBe(200);
    expect(ready.json().checks.storage).toBe('ok');
    expect(metric((await h.app.inject({ method: 'GET', url: '/metrics' })).body, 'gateway_storage_refusing')).toBe(0);
  });
});

describe('STORAGE_MIN_FREE_BYTES unset or 0', () => {
  it('defaults to the smaller of 1 GiB and 5 % of the file system', async () => {
    const small = fakeDisk({ freeBytes: 600 * 1024 ** 2, totalBytes: 10 * GiB });
    const h = await startHarness({}, {}, { freeSpaceProbe: small.probe });
    try {
      // 5 % of 10 GiB is 512 MiB, less than 1 GiB; 600 MiB free is above it.
      expect(metric((await h.app.inject({ method: 'GET', url: '/metrics' })).body, 'gateway_storage_min_free_bytes')).toBe(512 * 1024 ** 2);
      expect((await h.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
      small.space.freeBytes = 500 * 1024 ** 2;
      expect(await h.app.storagePressure.check()).toBe('full');
      small.space.totalBytes = 100 * GiB;
      small.space.freeBytes = 1.5 * GiB;
      // 5 % of 100 GiB is 5 GiB: the 1 GiB cap applies.
      expect(await h.app.storagePressure.check()).toBe('ok');
      expect(h.app.storagePressure.minFreeBytes).toBe(GiB);
    } finally {
      await h.close();
    }
  });

  it('turns the check off with 0', async () => {
    const full = fakeDisk({ freeBytes: 0, totalBytes: 10 * GiB });
    const h = await startHarness({ STORAGE_MIN_FREE_BYTES: '0' }, {}, { freeSpaceProbe: full.probe });
    try {
      const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a kite' } });
      expect(res.statusCode, res.body).toBe(200);
    } finally {
      await h.close();
    }
  });

  it('refuses a negative or non-integer value at start, naming the variable', async () => {
    await expect(startHarness({ STORAGE_MIN_FREE_BYTES: '-1' })).rejects.toThrow(/STORAGE_MIN_FREE_BYTES must be an integer of at least 0/);
    await expect(startHarness({ STORAGE_MIN_FREE_BYTES: '1GB' })).rejects.toThrow(/STORAGE_MIN_FREE_BYTES/);
  });
});

describe('an image the store cannot take after upstream made it', () => {
  let h: Harness;
  beforeAll(async () => {
    // Every image in the store (none in its row), so each result is a store write.
    h = await startHarness({ IMAGE_INLINE_MAX_BYTES: '0' });
  });
  afterAll(async () => h.close());
  afterEach(() => vi.restoreAllMocks());

  it('answers a base64 reply inline, without a URL, when the store write fails', async () => {
    vi.spyOn(h.app.store, 'putBytes').mockRejectedValue(noSpace());
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a kite on a full disk' } });
    expect(res.statusCode, res.body).toBe(200);
    const [image] = res.json().images;
    expect(image.url).toBeUndefined();
    expect(image.expires_at).toBeUndefined();
    const bytes = Buffer.from(image.b64_json, 'base64');
    expect(sha256(bytes)).toBe(image.sha256);
    expect(image).toMatchObject({ mime_type: 'image/png', bytes: bytes.length, width: 64, height: 64 });
    expect(stagingLeftovers(h)).toEqual([]);
    // No row left naming bytes that were never stored.
    expect(await h.app.db.get('SELECT name FROM images WHERE sha256 = $1', [image.sha256])).toBeUndefined();
  });

  it('answers a downloaded result inline when the store write fails, and leaves no staged file', async () => {
    vi.spyOn(h.app.store, 'putFile').mockImplementation(async () => {
      throw noSpace();
    });
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'FLUX-1.1-pro', prompt: 'a lighthouse on a full disk' } });
    expect(res.statusCode, res.body).toBe(200);
    const [image] = res.json().images;
    expect(image.url).toBeUndefined();
    expect(sha256(Buffer.from(image.b64_json, 'base64'))).toBe(image.sha256);
    expect(stagingLeftovers(h)).toEqual([]);
  });

  it('downloads a result into memory when its staging file cannot be written', async () => {
    vi.spyOn(h.app.images.stagingFiles, 'take').mockRejectedValue(noSpace());
    h.simulator.reset();
    const res = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload: { model: 'FLUX-1.1-pro', prompt: 'a dune', response_format: 'url' } });
    expect(res.statusCode, res.body).toBe(200);
    // The OpenAI form: no URL to give, so the bytes, whatever was asked.
    const [item] = res.json().data;
    expect(item.url).toBeUndefined();
    expect((await sharp(Buffer.from(item.b64_json, 'base64')).metadata()).format).toBe('png');
    expect(h.simulator.received.filter((r) => r.method === 'POST')).toHaveLength(1);
  });

  it('keeps an inline-only image in an async job’s result', async () => {
    vi.spyOn(h.app.store, 'putBytes').mockRejectedValue(noSpace());
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a job on a full disk', async: true } });
    expect(res.statusCode, res.body).toBe(202);
    let job: any;
    for (let i = 0; i < 250 && !['succeeded', 'failed'].includes(job?.status); i++) {
      job = (await h.app.inject({ method: 'GET', url: `/v1/jobs/${res.json().id}?wait=5`, headers: h.auth })).json();
    }
    expect(job.status).toBe('succeeded');
    const [image] = job.result.images;
    expect(image.url).toBeUndefined();
    expect(sha256(Buffer.from(image.b64_json, 'base64'))).toBe(image.sha256);
  });
});

describe('a database out of room when the image row is saved (SQLite on the same full disk)', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ IMAGE_INLINE_MAX_BYTES: '0' });
  });
  afterAll(async () => h.close());
  afterEach(() => vi.restoreAllMocks());

  const sqliteFull = () => Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL', errcode: 13 });

  it('answers the paid image inline, then /readyz 503 and 507 before upstream for the next request', async () => {
    const records = (h.app.images as any).records;
    vi.spyOn(records, 'save').mockRejectedValueOnce(sqliteFull());
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a kite on a full database' } });
    expect(res.statusCode, res.body).toBe(200);
    const [image] = res.json().images;
    expect(image.url).toBeUndefined();
    expect(sha256(Buffer.from(image.b64_json, 'base64'))).toBe(image.sha256);
    expect(stagingLeftovers(h)).toEqual([]);

    const ready = await h.app.inject({ method: 'GET', url: '/readyz' });
    expect(ready.statusCode).toBe(503);
    expect(ready.json()).toMatchObject({ checks: { storage: 'full' } });

    h.simulator.reset();
    const next = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'another kite' } });
    expect(next.statusCode).toBe(507);
    expect(next.json().error.code).toBe('storage_full');
    expect(h.simulator.received).toHaveLength(0);
  });

  it('PostgreSQL’s disk_full (53100) and ENOSPC count as full; other database errors do not', async () => {
    const { isStorageFullError } = await import('../src/images/storage-pressure.js');
    expect(isStorageFullError(Object.assign(new Error('could not extend file'), { code: '53100' }))).toBe(true);
    expect(isStorageFullError(new Error('wrapped', { cause: noSpace() }))).toBe(true);
    expect(isStorageFullError(sqliteFull())).toBe(true);
    expect(isStorageFullError(Object.assign(new Error('UNIQUE constraint failed'), { code: 'SQLITE_CONSTRAINT' }))).toBe(false);
  });
});

describe('a usage commit refused for want of room', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({});
  });
  afterAll(async () => h.close());
  afterEach(() => vi.restoreAllMocks());

  it('keeps the record queued (committed once the database takes it) and marks storage full', async () => {
    const batch = h.app.db.batch.bind(h.app.db);
    // Every commit is refused (the image row's too) until the disk has room again.
    let full = true;
    let refused = 0;
    vi.spyOn(h.app.db, 'batch').mockImplementation(async (statements) => {
      if (full) {
        refused++;
        throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
      }
      return batch(statements);
    });
    // Answered once the usage log stops holding it (the record stays queued).
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a usage record on a full disk' } });
    expect(res.statusCode, res.body).toBe(200);
    expect(refused).toBeGreaterThan(0);
    expect(h.app.storagePressure.state).toBe('full');
    expect(h.app.usageLog.pending).toBeGreaterThan(0);
    full = false;
    await h.app.usageLog.flush();
    const ids = (await usageRecords(h)).map((r) => r.request_id);
    expect(ids).toContain(res.headers['x-request-id']);
  });
});

describe('a large base64 image whose staging fails mid-reply', () => {
  let upstream: Server;
  let h: Harness;
  let png: Buffer;
  let replies = 0;
  beforeAll(async () => {
    // Noise, so the PNG stays large (~270 KB): over the size that is staged as it streams in.
    const raw = Buffer.alloc(300 * 300 * 3);
    for (let i = 0; i < raw.length; i++) raw[i] = (i * 2654435761) >>> 24;
    png = await sharp(raw, { raw: { width: 300, height: 300, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
    upstream = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        replies++;
        const body = JSON.stringify({ output: { b64_json: [{ bytesBase64: png.toString('base64'), mimeType: 'png' }] }, usage: { input_tokens: 10, output_tokens: 100, total_tokens: 110 } });
        res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      });
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    h = await startHarness({ AIHUBMIX_BASE_URL: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` });
  });
  afterAll(async () => {
    await h?.close();
    await new Promise((resolve) => upstream?.close(resolve));
  });

  it('answers 507 storage_full, never 500, records the paid image with its cost, and leaves no partial file', async () => {
    vi.spyOn(h.app.images.stagingFiles, 'take').mockRejectedValue(noSpace());
    try {
      const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a big noise' } });
      expect(res.statusCode).toBe(507);
      expect(res.headers['retry-after']).toBe('60');
      expect(res.json().error.code).toBe('storage_full');
      expect(res.json().error.message).toMatch(/paid for.*lost/);
      // Paid for: not to be sent again by a client library on its own.
      expect(res.headers['x-should-retry']).toBe('false');
      expect(replies).toBe(1);
      const record = (await usageRecords(h)).find((r) => r.request_id === res.headers['x-request-id']);
      expect(record).toMatchObject({ status: 507, error_code: 'storage_full', images_returned: 0 });
      expect(record.estimated_cost_usd).toBeGreaterThan(0);
      expect(stagingLeftovers(h)).toEqual([]);
      // The write failure made the watcher look at the disk again; the disk itself has room.
      expect(h.app.storagePressure.state).toBe('ok');
    } finally {
      vi.restoreAllMocks();
    }
  });

  it('stores the same image normally once staging works', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a big noise' } });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().images[0].sha256).toBe(sha256(png));
  });
});
