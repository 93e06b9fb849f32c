import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig } from '../src/config.js';

describe('configuration from the environment', () => {
  it('has the contract’s defaults', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      PORT: 8080,
      HOST: '0.0.0.0',
      AIHUBMIX_BASE_URL: 'https://aihubmix.com',
      DATA_DIR: './data',
      UPSTREAM_TIMEOUT_MS: 180_000,
      RATE_LIMIT_RPM: 60,
      IMAGE_RETENTION_DAYS: 7,
      UPSTREAM_MAX_CONCURRENCY: 16,
      LOG_LEVEL: 'info',
      GATEWAY_API_KEYS: [],
    });
  });

  it('reads client keys as team:key pairs, naming repeated teams apart', () => {
    const config = loadConfig({ GATEWAY_API_KEYS: 'design:gk-aaaaaaaaaaaaaaaaaaaaaaaa, ads:gk-bbbbbbbbbbbbbbbbbbbbbbbb,design:gk-cccccccccccccccccccccccc' });
    expect(config.GATEWAY_API_KEYS.map((k) => [k.id, k.team])).toEqual([
      ['design', 'design'],
      ['ads', 'ads'],
      ['design-2', 'design'],
    ]);
  });

  it.each([
    ['PORT', 'eighty', /PORT must be a positive integer/],
    ['UPSTREAM_TIMEOUT_MS', '-5', /UPSTREAM_TIMEOUT_MS must be a positive integer/],
    ['UPSTREAM_RETRIES', '11', /UPSTREAM_RETRIES must be an integer from 0 to 10/],
    ['AIHUBMIX_BASE_URL', 'not a url', /AIHUBMIX_BASE_URL must be an absolute URL/],
    ['LOG_LEVEL', 'loud', /LOG_LEVEL must be one of/],
    ['GATEWAY_API_KEYS', 'nocolon', /GATEWAY_API_KEYS entry 1 must be team:key/],
  ])('a wrong %s stops the start with a message naming it', (name, value, message) => {
    expect(() => loadConfig({ [name]: value })).toThrow(ConfigError);
    expect(() => loadConfig({ [name]: value })).toThrow(message);
  });

  it('never echoes a client key in its complaint', () => {
    try {
      loadConfig({ GATEWAY_API_KEYS: 'design:short' });
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).not.toContain('short');
    }
  });

  it('requires the upstream key for npm start, and names it', () => {
    expect(() => loadConfig({}, { requireUpstreamKey: true })).toThrow(/AIHUBMIX_API_KEY is required/);
  });
});

describe('a start that cannot work', () => {
  it('names DATABASE_URL when PostgreSQL cannot be reached', async () => {
    const { buildApp } = await import('../src/app.js');
    const config = loadConfig({ DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none', DATA_DIR: mkdtempSync(join(tmpdir(), 'gw-cfg-')) });
    await expect(buildApp(config)).rejects.toThrow(/^DATABASE_URL: the PostgreSQL database cannot be reached/);
  });

  it('names DATA_DIR when it is not a directory', async () => {
    const { buildApp } = await import('../src/app.js');
    const file = join(mkdtempSync(join(tmpdir(), 'gw-cfg-')), 'a-file');
    writeFileSync(file, 'x');
    await expect(buildApp(loadConfig({ DATA_DIR: file }))).rejects.toThrow(/^DATA_DIR .* cannot be used as a directory/);
  });

  it('names PORT when the port is taken', async () => {
    const { startupProblem } = await import('../src/server.js');
    const config = loadConfig({ PORT: '8123' });
    const taken = Object.assign(new Error('listen EADDRINUSE'), { code: 'EADDRINUSE', syscall: 'listen' });
    expect(startupProblem(taken, config)).toMatch(/port 8123 .* in use; set PORT/);
    expect(startupProblem(new Error('something else'), config)).toBeUndefined();
  });

  it('refuses a DATABASE_URL or REDIS_URL of another kind of server', () => {
    expect(() => loadConfig({ DATABASE_URL: 'mysql://x/y' })).toThrow(/DATABASE_URL must be a postgres:\/\//);
    expect(() => loadConfig({ REDIS_URL: 'http://x' })).toThrow(/REDIS_URL must be a redis:\/\//);
  });

  it('keeps images of up to 16 KiB in their rows unless IMAGE_INLINE_MAX_BYTES says otherwise', () => {
    expect(loadConfig({}).IMAGE_INLINE_MAX_BYTES).toBe(16_384);
    expect(loadConfig({ IMAGE_INLINE_MAX_BYTES: '0' }).IMAGE_INLINE_MAX_BYTES).toBe(0);
    expect(() => loadConfig({ IMAGE_INLINE_MAX_BYTES: '-1' })).toThrow(/IMAGE_INLINE_MAX_BYTES must be an integer from 0 to 1048576, got "-1"/);
    expect(() => loadConfig({ IMAGE_INLINE_MAX_BYTES: '2000000' })).toThrow(/IMAGE_INLINE_MAX_BYTES must be an integer from 0 to 1048576/);
  });
});
