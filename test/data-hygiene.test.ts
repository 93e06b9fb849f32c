/**
 * Data hygiene: what the gateway keeps is closed to other users of the machine (DATA_DIR 0700, its
 * files 0600), a usage export never carries a formula into a spreadsheet, a refused request's model
 * is a catalogue id or `unknown` (never the client's text), the admin key's team name is reserved,
 * GET /v1/models/{id} applies the key's allow-list, and the documentation's example key is refused.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { PUBLIC_EXAMPLE_KEYS, loadConfig } from '../src/config.js';
import { toCsv } from '../src/usage/usage-report.js';
import { tightenDataDirSync } from '../src/storage/private-files.js';
import { ADMIN_KEY, CLIENT_KEY, UPSTREAM_KEY, startHarness, type Harness } from './harness.js';

const admin = { authorization: `Bearer ${ADMIN_KEY}` };
const ALL_TIME = 'from=2000-01-01&to=2100-01-01';
const mode = (path: string) => statSync(path).mode & 0o777;

/** Every file and directory under `dir`, with its mode. */
function tree(dir: string): Array<{ path: string; dir: boolean; mode: number }> {
  return readdirSync(dir, { withFileTypes: true, recursive: true }).map((entry) => {
    const path = join(entry.parentPath, entry.name);
    return { path, dir: entry.isDirectory(), mode: mode(path) };
  });
}

describe('DATA_DIR is private to the gateway', () => {
  let parent: string;
  beforeAll(() => {
    parent = mkdtempSync(join(tmpdir(), 'gw-hygiene-'));
  });
  afterAll(() => rmSync(parent, { recursive: true, force: true }));

  it('is created 0700, and the database (with -wal and -shm), the image store and its files are 0700/0600', async () => {
    const dataDir = join(parent, 'fresh', 'data');
    // Images kept in the store, not in their database rows.
    const h = await startHarness({ DATA_DIR: dataDir, IMAGE_INLINE_MAX_BYTES: '0' });
    try {
      const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'a private cat' } });
      expect(res.statusCode).toBe(200);
      expect(mode(dataDir)).toBe(0o700);
      expect(mode(join(dataDir, 'gateway.sqlite'))).toBe(0o600);
      expect(mode(join(dataDir, 'gateway.sqlite-wal'))).toBe(0o600);
      expect(mode(join(dataDir, 'gateway.sqlite-shm'))).toBe(0o600);
      expect(mode(join(dataDir, 'images'))).toBe(0o700);
      const entries = tree(dataDir);
      const images = entries.filter((e) => !e.dir && /\/images\/[0-9a-f]{2}\/[0-9a-f]{64}\.png$/.test(e.path));
      expect(images).toHaveLength(1);
      // Every directory 0700 and every file 0600, whatever the umask would have left.
      expect(entries.filter((e) => e.mode !== (e.dir ? 0o700 : 0o600))).toEqual([]);
    } finally {
      await h.close();
    }
  });

  it('tightens a database and an image store an older version left readable (0644, 0755)', async () => {
    const dataDir = join(parent, 'older');
    mkdirSync(join(dataDir, 'images'), { recursive: true, mode: 0o755 });
    writeFileSync(join(dataDir, 'gateway.sqlite'), '', { mode: 0o644 });
    const h = await startHarness({ DATA_DIR: dataDir });
    try {
      expect(mode(join(dataDir, 'gateway.sqlite'))).toBe(0o600);
      expect(mode(join(dataDir, 'images'))).toBe(0o700);
    } finally {
      await h.close();
    }
  });

  it('tightens an existing DATA_DIR (0755) and its url-signing.key, -wal and -shm (0644)', async () => {
    const dataDir = join(parent, 'loose');
    mkdirSync(dataDir, { mode: 0o755 });
    chmodSync(dataDir, 0o755);
    writeFileSync(join(dataDir, 'url-signing.key'), randomBytes(32).toString('base64'), { mode: 0o644 });
    for (const f of ['url-signing.key']) chmodSync(join(dataDir, f), 0o644);
    const h = await startHarness({ DATA_DIR: dataDir });
    try {
      expect(mode(dataDir)).toBe(0o700);
      expect(mode(join(dataDir, 'url-signing.key'))).toBe(0o600);
    } finally {
      await h.close();
    }
  });

  it('tightenDataDirSync tightens the secret files and leaves other files alone', () => {
    const dataDir = join(parent, 'loose-files');
    mkdirSync(dataDir, { mode: 0o755 });
    chmodSync(dataDir, 0o755);
    for (const f of ['url-signing.key', 'gateway.sqlite', 'gateway.sqlite-wal', 'gateway.sqlite-shm', 'other.txt']) {
      writeFileSync(join(dataDir, f), 'x');
      chmodSync(join(dataDir, f), 0o644);
    }
    expect(tightenDataDirSync(dataDir)).toEqual([]);
    expect(mode(dataDir)).toBe(0o700);
    for (const f of ['url-signing.key', 'gateway.sqlite', 'gateway.sqlite-wal', 'gateway.sqlite-shm']) expect(mode(join(dataDir, f))).toBe(0o600);
    expect(mode(join(dataDir, 'other.txt'))).toBe(0o644);
  });
});

describe('usage exports carry no formula into a spreadsheet', () => {
  it.each([
    ['=HYPERLINK("http://evil.example","click")'],
    ['+1+1'],
    ['-2+3'],
    ['@SUM(A1:A2)'],
    ['\t=1+1'],
    ['\r=1+1'],
  ])('a text cell %j is written with a leading quote', (text) => {
    const csv = toCsv(['team'], [{ team: text }]);
    const cell = csv.split('\r\n')[1]!;
    const unquoted = cell.startsWith('"') ? cell.slice(1, -1).replace(/""/g, '"') : cell;
    expect(unquoted).toBe(`'${text}`);
  });

  it('leaves numbers (a negative one too) and ordinary text as they are', () => {
    expect(toCsv(['a', 'b', 'c'], [{ a: -1.5, b: 'design', c: 'a-b' }])).toBe('a,b,c\r\n-1.5,design,a-b\r\n');
  });

  describe('end to end', () => {
    let h: Harness;
    beforeAll(async () => {
      h = await startHarness({ LOG_PROMPTS: '1' });
    });
    afterAll(async () => h.close());

    it('a prompt and a team that start a formula reach /v1/usage/records?format=csv quoted', async () => {
      const minted = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: '-2-3' } });
      expect(minted.statusCode).toBe(201);
      const key = { authorization: `Bearer ${minted.json().key}` };
      const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: key, payload: { model: 'gpt-image-1', prompt: '=HYPERLINK("http://evil.example","click")' } });
      expect(res.statusCode).toBe(200);
      const csv = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}&format=csv`, headers: admin });
      expect(csv.statusCode).toBe(200);
      const line = csv.body.split('\r\n').find((l) => l.includes(res.headers['x-request-id'] as string))!;
      expect(line).toContain(`,'-2-3,`);
      expect(line).toContain(`"'=HYPERLINK(""http://evil.example"",""click"")"`);
      // No cell of the export opens with a formula character.
      expect(csv.body).not.toMatch(/(^|,|\r\n)"?[=+@]/);
    });
  });
});

describe('a refused request\'s model is a catalogue id or unknown', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());

  const recordOf = async (requestId: string) => {
    const page = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}&limit=1000`, headers: admin });
    return page.json().data.find((r: { request_id: string }) => r.request_id === requestId);
  };

  it.each([
    ['/v1/generate', { model: '=HYPERLINK("http://evil.example")', prompt: 'x' }],
    ['/v1/generate', { model: 'no-such-model', prompt: 'x' }],
    ['/v1/generate', { model: 'gpt-image-1 ', prompt: 'x' }],
    ['/v1/images/generations', { model: '@evil', prompt: 'x' }],
  ])('%s with model %j is recorded as unknown', async (url, payload) => {
    const res = await h.app.inject({ method: 'POST', url, headers: h.auth, payload });
    expect(res.statusCode).toBeGreaterThanOrEqual(400);
    const record = await recordOf(res.headers['x-request-id'] as string);
    expect(record.model).toBe('unknown');
  });

  it('a request refused for another reason, naming a model by alias, is recorded with the catalogue id', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'google/imagen-4.0-generate-001', prompt: 'x', size: 'nonsense' } });
    expect(res.statusCode).toBe(400);
    expect((await recordOf(res.headers['x-request-id'] as string)).model).toBe('imagen-4.0-generate-001');
  });
});

describe('the admin team name is reserved; the admin key reaches by its flag', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h.close());

  it.each([['admin'], ['Admin'], ['ADMIN']])('minting a key with team %s is a 400 naming team', async (team) => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ code: 'invalid_request', details: [{ field: 'team' }] });
    expect(res.json().error.message).toMatch(/reserved/);
  });

  it('a minted key stored with that team before it was reserved is no longer accepted (it would share the admin key\'s jobs and usage)', async () => {
    const parent = mkdtempSync(join(tmpdir(), 'gw-legacy-'));
    const dataDir = join(parent, 'data');
    const key = 'gk-legacy-admin-team-0123456789abcdef';
    try {
      const before = await startHarness({ DATA_DIR: dataDir });
      await before.app.db.run('INSERT INTO client_keys (id, key_sha256, policy_json, created_at) VALUES ($1, $2, $3, $4)', [
        'legacy-admin',
        createHash('sha256').update(key).digest('hex'),
        JSON.stringify({ id: 'legacy-admin', team: 'admin', admin: false }),
        Date.now(),
      ]);
      await before.close();
      const after = await startHarness({ DATA_DIR: dataDir });
      try {
        const res = await after.app.inject({ method: 'GET', url: `/v1/usage?${ALL_TIME}`, headers: { authorization: `Bearer ${key}` } });
        expect(res.statusCode).toBe(401);
        expect(after.logs.some((l) => l.includes('legacy-admin') && l.includes('reserved'))).toBe(true);
      } finally {
        await after.close();
      }
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  });

  it('GATEWAY_API_KEYS with the team admin stops the start, naming the variable and not the key', async () => {
    const key = 'gk-would-be-admin-0123456789abcdef';
    const err = await startHarness({ GATEWAY_API_KEYS: `admin:${key}` }).then(
      async (started) => {
        await started.close();
        return undefined;
      },
      (e: Error) => e,
    );
    expect(err?.message).toMatch(/GATEWAY_API_KEYS.*reserved/);
    expect(err?.message).not.toContain(key);
  });

  it('a non-admin entry of GATEWAY_KEYS_FILE with the team admin stops the start', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gw-keysfile-'));
    try {
      const file = join(dir, 'keys.yaml');
      writeFileSync(file, 'keys:\n  - id: sneaky\n    key: gk-sneaky-admin-team-0123456789abcdef\n    team: admin\n');
      await expect(startHarness({ GATEWAY_KEYS_FILE: file })).rejects.toThrow(/GATEWAY_KEYS_FILE: key sneaky .*reserved/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('GET /v1/models/{id} applies the key\'s allow-list', () => {
  let h: Harness;
  let limited: Record<string, string>;
  beforeAll(async () => {
    h = await startHarness();
    const minted = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'limited', models: ['gpt-image-*'] } });
    limited = { authorization: `Bearer ${minted.json().key}` };
  });
  afterAll(async () => h.close());

  it('a model outside it answers 404 as an unknown model does', async () => {
    const outside = await h.app.inject({ method: 'GET', url: '/v1/models/dall-e-3', headers: limited });
    const unknown = await h.app.inject({ method: 'GET', url: '/v1/models/no-such-model', headers: limited });
    expect(outside.statusCode).toBe(404);
    expect(outside.json().error.code).toBe('not_found');
    expect(outside.json().error.message).toBe(unknown.json().error.message.replace('no-such-model', 'dall-e-3'));
  });

  it('an alias with its "/" left unencoded is no route: the 404 says to URL-encode it, and encoded it is found', async () => {
    const plain = await h.app.inject({ method: 'GET', url: '/v1/models/openai/gpt-image-1', headers: limited });
    expect(plain.statusCode).toBe(404);
    expect(plain.json().error.message).toBe('no route GET /v1/models/openai/gpt-image-1; a model id with a "/" goes URL-encoded, e.g. GET /v1/models/openai%2Fgpt-image-1');
    const encoded = await h.app.inject({ method: 'GET', url: '/v1/models/openai%2Fgpt-image-1', headers: limited });
    expect(encoded.statusCode, encoded.body).toBe(200);
    expect(encoded.json().id).toBe('gpt-image-1');
    // Any other path without a route: no hint.
    expect((await h.app.inject({ method: 'GET', url: '/v1/nothing/here', headers: limited })).json().error.message).toBe('no route GET /v1/nothing/here');
  });

  it('a model inside it (or any model, for a key without one) is described', async () => {
    expect((await h.app.inject({ method: 'GET', url: '/v1/models/gpt-image-1', headers: limited })).statusCode).toBe(200);
    expect((await h.app.inject({ method: 'GET', url: '/v1/models/dall-e-3', headers: { authorization: `Bearer ${CLIENT_KEY}` } })).statusCode).toBe(200);
  });
});

describe('the example key of openapi.yaml is refused at start', () => {
  const openapi = readFileSync(new URL('../openapi.yaml', import.meta.url), 'utf8');

  it('every gk- key printed in openapi.yaml is a listed example', () => {
    const printed = [...new Set(openapi.match(/gk-[A-Za-z0-9_-]{8,}/g) ?? [])];
    expect(printed.length).toBeGreaterThan(0);
    expect(printed.filter((key) => !PUBLIC_EXAMPLE_KEYS.includes(key))).toEqual([]);
    // The keys found are the document's own example values, in a document that still parses.
    expect(parseYaml(openapi)).toMatchObject({ openapi: expect.stringMatching(/^3\./) });
  });

  it.each(PUBLIC_EXAMPLE_KEYS.map((key) => [key]))('%s in GATEWAY_API_KEYS or GATEWAY_ADMIN_KEY stops the start, naming the variable', (key) => {
    const base = { AIHUBMIX_API_KEY: UPSTREAM_KEY };
    expect(() => loadConfig({ ...base, GATEWAY_API_KEYS: `design:${key}` })).toThrow(/GATEWAY_API_KEYS \(team design\).*example key/);
    expect(() => loadConfig({ ...base, GATEWAY_ADMIN_KEY: key })).toThrow(/GATEWAY_ADMIN_KEY.*example key/);
    try {
      loadConfig({ ...base, GATEWAY_API_KEYS: `design:${key}` });
    } catch (err) {
      expect((err as Error).message).not.toContain(key);
    }
  });

  it('an example key as a plaintext key of GATEWAY_KEYS_FILE stops the start', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gw-keysfile-'));
    try {
      const file = join(dir, 'keys.yaml');
      writeFileSync(file, `keys:\n  - id: copied\n    key: ${PUBLIC_EXAMPLE_KEYS[0]}\n    team: design\n`);
      await expect(startHarness({ GATEWAY_KEYS_FILE: file })).rejects.toThrow(/GATEWAY_KEYS_FILE: key copied is an example key/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
