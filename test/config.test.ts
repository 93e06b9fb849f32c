import { describe, expect, it } from 'vitest';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CONFIG_VARIABLES, ConfigError, MAX_TIMER_MS, PUBLIC_EXAMPLE_KEYS, loadConfig } from '../src/config.js';
import { runFailingStart } from './gateway-process.js';

/** What `npm start` needs, for the tests that start the built gateway; errors only, so its one line is all it prints. */
const startEnv = () => ({
  AIHUBMIX_API_KEY: 'sk-test-upstream-key',
  GATEWAY_API_KEYS: 'design:gk-test-design-0123456789',
  DATA_DIR: mkdtempSync(join(tmpdir(), 'gw-cfg-')),
  LOG_LEVEL: 'error',
});

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
    ['PORT', 'eighty', /PORT must be an integer from 1 to 65535/],
    ['UPSTREAM_TIMEOUT_MS', '-5', /UPSTREAM_TIMEOUT_MS must be a positive integer/],
    // Decimal digits only: Number() alone would read 16 and 1000 here.
    ['UPSTREAM_TIMEOUT_MS', '0x10', /UPSTREAM_TIMEOUT_MS must be a positive integer/],
    ['UPSTREAM_TIMEOUT_MS', '1e3', /UPSTREAM_TIMEOUT_MS must be a positive integer/],
    ['UPSTREAM_RETRIES', '0x2', /UPSTREAM_RETRIES must be an integer from 0 to 10/],
    ['UPSTREAM_RETRIES', '11', /UPSTREAM_RETRIES must be an integer from 0 to 10/],
    ['AIHUBMIX_BASE_URL', 'not a url', /AIHUBMIX_BASE_URL must be an http\(s\) URL such as https:\/\/aihubmix\.com/],
    ['LOG_LEVEL', 'loud', /LOG_LEVEL must be one of/],
    ['GATEWAY_API_KEYS', 'nocolon', /GATEWAY_API_KEYS entry 1 must be team:key/],
  ])('a wrong %s stops the start with a message naming it', (name, value, message) => {
    expect(() => loadConfig({ [name]: value })).toThrow(ConfigError);
    expect(() => loadConfig({ [name]: value })).toThrow(message);
  });

  it.each([
    ['PORT', '99999', /PORT must be an integer from 1 to 65535, got "99999"/],
    ['PORT', '0', /PORT must be an integer from 1 to 65535, got "0"/],
    ['METRICS_PORT', '65536', /METRICS_PORT must be an integer from 0 to 65535, got "65536"/],
  ])('%s=%s is no port: the start stops naming the variable and the range', (name, value, message) => {
    expect(() => loadConfig({ [name]: value })).toThrow(ConfigError);
    expect(() => loadConfig({ [name]: value })).toThrow(message);
  });

  it('never echoes a client key in its complaint', () => {
    try {
      loadConfig({ GATEWAY_API_KEYS: 'design:s3cr3t' });
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).not.toContain('s3cr3t');
    }
  });

  it('refuses a client key shorter than 24 characters, naming its team and never the key', () => {
    const short = 'gk-only-23-characters-x';
    expect(short).toHaveLength(23);
    for (const env of [{ GATEWAY_API_KEYS: `design:gk-long-enough-0123456789abcdef,ads:${short}` }, { GATEWAY_ADMIN_KEY: short }]) {
      let message = '';
      try {
        loadConfig(env);
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        message = (err as Error).message;
      }
      expect(message).toMatch(env.GATEWAY_ADMIN_KEY ? /GATEWAY_ADMIN_KEY \(team admin\) must be at least 24 characters/ : /GATEWAY_API_KEYS: the key of team ads .*shorter than 24 characters/);
      expect(message).not.toContain(short);
    }
    expect(loadConfig({ GATEWAY_API_KEYS: `ads:${short}x` }).GATEWAY_API_KEYS).toHaveLength(1);
  });

  it('refuses the admin key given as a client key too, naming both variables and never the key', () => {
    const key = 'gk-one-key-for-two-uses-0123456789';
    expect(() => loadConfig({ GATEWAY_ADMIN_KEY: key, GATEWAY_API_KEYS: `design:gk-another-key-0123456789abc,ads:${key}` })).toThrow(ConfigError);
    try {
      loadConfig({ GATEWAY_ADMIN_KEY: key, GATEWAY_API_KEYS: `design:gk-another-key-0123456789abc,ads:${key}` });
    } catch (err) {
      expect((err as Error).message).toMatch(/GATEWAY_ADMIN_KEY and GATEWAY_API_KEYS \(team ads, entry 2\) hold the same key/);
      expect((err as Error).message).not.toContain(key);
    }
  });

  it('refuses one key given to two GATEWAY_API_KEYS entries, naming them and never the key', () => {
    const key = 'gk-one-key-for-two-teams-0123456789';
    expect(() => loadConfig({ GATEWAY_API_KEYS: `design:${key},ads:${key}` })).toThrow(ConfigError);
    try {
      loadConfig({ GATEWAY_API_KEYS: `design:${key},ads:${key}` });
    } catch (err) {
      expect((err as Error).message).toMatch(/GATEWAY_API_KEYS: entries 1 \(team design\) and 2 \(team ads\) hold the same key/);
      expect((err as Error).message).not.toContain(key);
    }
  });

  it('refuses a short plaintext key in GATEWAY_KEYS_FILE, naming its team and never the key', async () => {
    const { loadKeysFile } = await import('../src/auth/key-store.js');
    const file = join(mkdtempSync(join(tmpdir(), 'gw-cfg-')), 'keys.yaml');
    writeFileSync(file, 'keys:\n  - id: web\n    team: design\n    key: gk-too-short-123\n');
    expect(() => loadKeysFile(file)).toThrow(/key of web \(team design\) is shorter than 24 characters/);
    try {
      loadKeysFile(file);
    } catch (err) {
      expect((err as Error).message).not.toContain('gk-too-short-123');
    }
  });

  it.each([
    ['', false],
    ['0', false],
    ['1', 'hops:1'],
    ['2', 'hops:2'],
    ['10.0.0.0/8, 127.0.0.1', ['10.0.0.0/8', '127.0.0.1']],
    ['loopback,fd00::/8', ['loopback', 'fd00::/8']],
  ])('TRUST_PROXY=%j is a hop count or the proxies’ addresses', (value, expected) => {
    const trust = loadConfig({ TRUST_PROXY: value }).TRUST_PROXY;
    expect(typeof trust === 'number' ? `hops:${trust}` : trust).toEqual(expected);
  });

  it.each([['true'], ['TRUE'], ['*'], ['0.0.0.0/0'], ['::/0'], ['nginx'], ['10.0.0.0/33'], ['1.5']])(
    'TRUST_PROXY=%s (every hop, or not an address) stops the start, explaining the choices',
    (value) => {
      expect(() => loadConfig({ TRUST_PROXY: value })).toThrow(ConfigError);
      expect(() => loadConfig({ TRUST_PROXY: value })).toThrow(/TRUST_PROXY.*number of proxies in front of the gateway.*addresses\/CIDRs/);
    },
  );

  it.each([
    ['0.0.0.0/1,128.0.0.0/1', '0.0.0.0/1'],
    ['10.0.0.0/8,0.0.0.0/7', '0.0.0.0/7'],
    ['::/1,8000::/1', '::/1'],
    ['fc00::/7', 'fc00::/7'],
  ])('TRUST_PROXY=%s (ranges wide enough to cover every address together) stops the start, naming the entry', (value, entry) => {
    expect(() => loadConfig({ TRUST_PROXY: value })).toThrow(ConfigError);
    expect(() => loadConfig({ TRUST_PROXY: value })).toThrow(new RegExp(`TRUST_PROXY: "${entry.replace(/\./g, '\\.')}" is wider than a /8`));
  });

  it('TRUST_PROXY refuses many /8s that together span a quarter of IPv4', () => {
    const many = Array.from({ length: 64 }, (_, i) => `${i + 1}.0.0.0/8`).join(',');
    expect(() => loadConfig({ TRUST_PROXY: many })).toThrow(/TRUST_PROXY: the ranges together span a quarter or more of all IPv4 addresses/);
    expect(loadConfig({ TRUST_PROXY: '10.0.0.0/8,172.16.0.0/12,192.168.0.0/16' }).TRUST_PROXY).toEqual(['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16']);
  });

  it('requires PUBLIC_BASE_URL when NODE_ENV=production, and names it', () => {
    expect(() => loadConfig({ NODE_ENV: 'production' })).toThrow(/PUBLIC_BASE_URL is required when NODE_ENV=production/);
    expect(loadConfig({ NODE_ENV: 'production', PUBLIC_BASE_URL: 'https://images.example.com' }).PUBLIC_BASE_URL).toBe('https://images.example.com');
    expect(loadConfig({ NODE_ENV: 'development' }).PUBLIC_BASE_URL).toBeUndefined();
  });

  it('reads AUTH_FAILURES_PER_MINUTE (default 20)', () => {
    expect(loadConfig({}).AUTH_FAILURES_PER_MINUTE).toBe(20);
    expect(loadConfig({ AUTH_FAILURES_PER_MINUTE: '5' }).AUTH_FAILURES_PER_MINUTE).toBe(5);
    expect(() => loadConfig({ AUTH_FAILURES_PER_MINUTE: '0' })).toThrow(/AUTH_FAILURES_PER_MINUTE must be a positive integer/);
  });

  it('requires the upstream key for npm start, and names it', () => {
    expect(() => loadConfig({}, { requireUpstreamKey: true })).toThrow(/AIHUBMIX_API_KEY is required/);
  });

  it('refuses an example secret for npm start, naming each variable that holds one', () => {
    const upstream = { AIHUBMIX_API_KEY: 'sk-real-upstream-key-0123456789' };
    expect(() => loadConfig({ ...upstream, IMAGE_URL_SECRET: 'replace-me-with-32-random-characters' }, { requireUpstreamKey: true })).toThrow(
      /IMAGE_URL_SECRET still holds the example value/,
    );
    expect(() => loadConfig({ ...upstream, IMAGE_URL_SECRET: 'replace-me-with-32-random-characters', METRICS_TOKEN: 'change-me-change-me-change-me-change-me' }, { requireUpstreamKey: true })).toThrow(
      /IMAGE_URL_SECRET, METRICS_TOKEN still hold the example value/,
    );
    // The upstream key's placeholder in docker/env.example would otherwise start a gateway whose every render fails.
    expect(() => loadConfig({ AIHUBMIX_API_KEY: 'sk-...' }, { requireUpstreamKey: true })).toThrow(/AIHUBMIX_API_KEY still holds the example value/);
    expect(loadConfig({ AIHUBMIX_API_KEY: 'sk-...real' }, { requireUpstreamKey: true }).AIHUBMIX_API_KEY).toBe('sk-...real');
  });

  it('takes commas alone in AIHUBMIX_API_KEY as no key', () => {
    expect(() => loadConfig({ AIHUBMIX_API_KEY: ' , ' }, { requireUpstreamKey: true })).toThrow(/AIHUBMIX_API_KEY is required/);
  });

  it('names every problem of a start at once, not one a try (PUBLIC_BASE_URL in production and AIHUBMIX_API_KEY)', () => {
    expect(() => loadConfig({ NODE_ENV: 'production', S3_ENDPOINT: 'http://minio:9000' }, { requireUpstreamKey: true })).toThrow(
      /^invalid configuration: S3_BUCKET is required when S3_ENDPOINT .*; PUBLIC_BASE_URL is required when NODE_ENV=production.*; AIHUBMIX_API_KEY is required/,
    );
  });

  it('refuses the example key printed in openapi.yaml, naming each variable that holds it', () => {
    const [example] = PUBLIC_EXAMPLE_KEYS;
    expect(() => loadConfig({ GATEWAY_ADMIN_KEY: example })).toThrow(/GATEWAY_ADMIN_KEY holds the example key printed in openapi.yaml/);
    expect(() => loadConfig({ GATEWAY_ADMIN_KEY: example, GATEWAY_API_KEYS: `design:${example}` })).toThrow(
      /GATEWAY_API_KEYS \(team design\), GATEWAY_ADMIN_KEY hold the example key/,
    );
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

  it('names DATA_DIR and the reason, at once, when it cannot be created (under /proc)', async () => {
    // Node's recursive mkdir never returns here: /proc exists but answers ENOENT for a new entry.
    const dir = `/proc/gw-nope-${process.pid}`;
    const run = await runFailingStart({ ...startEnv(), DATA_DIR: dir }, { timeoutMs: 8000 });
    expect(run.code).toBe(2);
    expect(run.output.trim().split('\n')).toEqual([`DATA_DIR ${dir} cannot be used as a directory: ENOENT: no such file or directory, mkdir '${dir}'; set DATA_DIR to a directory this user can create and write to`]);
  });

  it('names DATA_DIR and the reason when it exists but this user cannot write to it', async () => {
    const dir = startEnv().DATA_DIR;
    // Root writes anywhere: then the gateway runs as nobody, for whom the directory (root's, 0755) is read-only.
    const asRoot = process.getuid?.() === 0;
    chmodSync(dir, asRoot ? 0o755 : 0o555);
    const run = await runFailingStart({ ...startEnv(), DATA_DIR: dir }, asRoot ? { uid: 65534 } : {});
    expect(run.code).toBe(2);
    expect(run.output.trim().split('\n')).toEqual([`DATA_DIR ${dir} cannot be used as a directory: EACCES: permission denied, access '${dir}'; set DATA_DIR to a directory this user can create and write to`]);
  });

  it('names PORT when the port is taken', async () => {
    const { startupProblem } = await import('../src/server.js');
    const config = loadConfig({ PORT: '8123' });
    const taken = Object.assign(new Error('listen EADDRINUSE'), { code: 'EADDRINUSE', syscall: 'listen' });
    expect(startupProblem(taken, config)).toMatch(/port 8123 .* in use; set PORT/);
    expect(startupProblem(new Error('something else'), config)).toBeUndefined();
  });

  // ENOTFOUND where a resolver answers for .invalid; EAI_AGAIN on a machine with none.
  it('names HOST, in one line and no stack, when it is no address nor a name that resolves', async () => {
    const run = await runFailingStart({ ...startEnv(), HOST: 'not.a.host.invalid' });
    expect(run.code).toBe(2);
    expect(run.output.trim().split('\n')).toEqual([expect.stringMatching(/^cannot listen: HOST not\.a\.host\.invalid .*\((ENOTFOUND|EAI_AGAIN)\); set HOST to an address of this machine/)]);
  });

  it('refuses a DATABASE_URL or REDIS_URL of another kind of server', () => {
    expect(() => loadConfig({ DATABASE_URL: 'mysql://x/y' })).toThrow(/DATABASE_URL must be a postgres:\/\//);
    expect(() => loadConfig({ REDIS_URL: 'http://x' })).toThrow(/REDIS_URL must be a redis:\/\//);
  });

  it('refuses a REDIS_URL whose path is not a database number (ioredis would use database 0), never echoing its password', () => {
    for (const url of ['redis://:s3cret@cache:6379/sessions', 'redis://cache:6379/2/x', 'rediss://cache/-1']) {
      expect(() => loadConfig({ REDIS_URL: url })).toThrow(ConfigError);
      expect(() => loadConfig({ REDIS_URL: url })).toThrow(/REDIS_URL: the path must be a database number \(redis:\/\/host:6379\/2\) or nothing, got "\/[^"]+"/);
      expect(() => loadConfig({ REDIS_URL: url })).not.toThrow(/s3cret/);
    }
    for (const url of ['redis://cache:6379', 'redis://cache:6379/', 'rediss://user:pw@cache:6380/15']) expect(loadConfig({ REDIS_URL: url }).REDIS_URL).toBe(url);
  });

  // Node's timers take at most 2^31-1 ms; given more they fire after 1 ms (TimeoutOverflowWarning):
  // every generate a 504 at once, the retention sweep or lease renewal in a tight loop.
  const timerVariables = [...CONFIG_VARIABLES.filter((name) => name.endsWith('_MS')), 'OTEL_BSP_SCHEDULE_DELAY', 'OTEL_BSP_EXPORT_TIMEOUT'];

  it('takes every time that ends up in a timer up to 2147483647 ms, and refuses one ms more naming the variable and the maximum', () => {
    expect(MAX_TIMER_MS).toBe(2 ** 31 - 1);
    expect(timerVariables).toEqual(expect.arrayContaining(['UPSTREAM_TIMEOUT_MS', 'RETENTION_SWEEP_INTERVAL_MS', 'JOB_LEASE_MS', 'STREAM_KEEPALIVE_MS', 'JOB_SHUTDOWN_GRACE_MS', 'TASK_POLL_INTERVAL_MS', 'REQUEST_TIMEOUT_MS']));
    for (const name of timerVariables) {
      // HEADERS_TIMEOUT_MS may not pass REQUEST_TIMEOUT_MS: both at the maximum.
      const most = { [name]: String(MAX_TIMER_MS), ...(name === 'HEADERS_TIMEOUT_MS' ? { REQUEST_TIMEOUT_MS: String(MAX_TIMER_MS) } : {}) };
      expect(loadConfig(most)[name as keyof ReturnType<typeof loadConfig>], name).toBe(MAX_TIMER_MS);
      for (const value of [String(MAX_TIMER_MS + 1), '3000000000', '1e15']) {
        expect(() => loadConfig({ [name]: value }), `${name}=${value}`).toThrow(ConfigError);
        expect(() => loadConfig({ [name]: value }), `${name}=${value}`).toThrow(
          new RegExp(`^invalid configuration: ${name} must be a positive integer of milliseconds, at most 2147483647 ms \\(about 24\\.8 days\\), got "${value}"$`),
        );
      }
    }
  });

  it('refuses a retention of more than 100 years (expiry dates past what a Date holds)', () => {
    expect(loadConfig({ IMAGE_RETENTION_DAYS: '36500' }).IMAGE_RETENTION_DAYS).toBe(36_500);
    expect(() => loadConfig({ IMAGE_RETENTION_DAYS: '1000000000' })).toThrow(/IMAGE_RETENTION_DAYS must be an integer from 1 to 36500, got "1000000000"/);
  });

  it('stops the start in one line when UPSTREAM_TIMEOUT_MS or RETENTION_SWEEP_INTERVAL_MS is past what a timer takes', async () => {
    for (const [name, value] of [['UPSTREAM_TIMEOUT_MS', '3000000000'], ['RETENTION_SWEEP_INTERVAL_MS', '2592000000']] as const) {
      const run = await runFailingStart({ ...startEnv(), [name]: value }, { timeoutMs: 8000 });
      expect(run.code, run.output).toBe(2);
      expect(run.output.trim().split('\n')).toEqual([
        `invalid configuration: ${name} must be a positive integer of milliseconds, at most 2147483647 ms (about 24.8 days), got "${value}"`,
      ]);
    }
  });

  // URL.canParse alone took these: every generate then a 500 (Invalid URL) or 502, or image URLs that are no URLs.
  it.each([
    ['AIHUBMIX_BASE_URL', 'localhost:18900', 'https://aihubmix.com', ' (the scheme is missing: http:// or https://)'],
    ['AIHUBMIX_BASE_URL', 'ftp://aihubmix.com', 'https://aihubmix.com', ' (not ftp://)'],
    ['PUBLIC_BASE_URL', 'gw.example.com:443', 'https://images.example.com', ' (the scheme is missing: http:// or https://)'],
    ['PUBLIC_BASE_URL', 'javascript:alert(1)', 'https://images.example.com', ' (not javascript://)'],
    ['PUBLIC_BASE_URL', 'https://gw.example.com/?x=1', 'https://images.example.com', ' (no query or fragment: it is the front of every image URL)'],
    ['S3_ENDPOINT', 'minio:9000', 'http://minio:9000', ' (the scheme is missing: http:// or https://)'],
    ['OTEL_EXPORTER_OTLP_ENDPOINT', 'file:///tmp/traces', 'http://collector:4318', ' (not file://)'],
    ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'collector', 'http://collector:4318/v1/traces', ''],
  ])('%s=%s is refused at start: it must be an http(s) URL with a host', (name, value, example, why) => {
    const env = { [name]: value, ...(name === 'S3_ENDPOINT' ? { S3_BUCKET: 'images' } : {}) };
    expect(() => loadConfig(env)).toThrow(ConfigError);
    expect(() => loadConfig(env)).toThrow(`invalid configuration: ${name} must be an http(s) URL such as ${example}${why}, got "${value}"`);
  });

  it('takes http(s) URLs in the URL settings, and never echoes a password in one it refuses', () => {
    const config = loadConfig({
      AIHUBMIX_BASE_URL: 'http://localhost:18900',
      PUBLIC_BASE_URL: 'https://gw.example.com/images',
      S3_BUCKET: 'images',
      S3_ENDPOINT: 'http://minio:9000',
      OTEL_EXPORTER_OTLP_ENDPOINT: 'https://otlp.example.com',
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces?tenant=a',
    });
    expect(config.AIHUBMIX_BASE_URL).toBe('http://localhost:18900');
    expect(config.PUBLIC_BASE_URL).toBe('https://gw.example.com/images');
    expect(() => loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'ftp://user:s3cret@collector' })).toThrow(/OTEL_EXPORTER_OTLP_ENDPOINT must be an http\(s\) URL .*got "ftp:\/\/\.\.\.@collector"/);
    expect(() => loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'ftp://user:s3cret@collector' })).not.toThrow(/s3cret/);
  });

  it('stops the start in one line when AIHUBMIX_BASE_URL has no scheme, instead of answering every generate 500', async () => {
    const run = await runFailingStart({ ...startEnv(), AIHUBMIX_BASE_URL: 'localhost:18900' }, { timeoutMs: 8000 });
    expect(run.code, run.output).toBe(2);
    expect(run.output.trim().split('\n')).toEqual([
      'invalid configuration: AIHUBMIX_BASE_URL must be an http(s) URL such as https://aihubmix.com (the scheme is missing: http:// or https://), got "localhost:18900"',
    ]);
  });

  it('refuses a PRICE_OVERRIDES price above 1000 USD per image, naming the model', () => {
    expect(loadConfig({ PRICE_OVERRIDES: '{"gpt-image-2": 1000}' }).PRICE_OVERRIDES).toEqual({ 'gpt-image-2': 1000 });
    expect(() => loadConfig({ PRICE_OVERRIDES: '{"gpt-image-2": 1e308}' })).toThrow(ConfigError);
    expect(() => loadConfig({ PRICE_OVERRIDES: '{"gpt-image-2": 1e308}' })).toThrow(
      'invalid configuration: PRICE_OVERRIDES: the price of "gpt-image-2": a price per image is at most 1000 USD, got 1e+308',
    );
  });

  it('keeps images of up to 16 KiB in their rows unless IMAGE_INLINE_MAX_BYTES says otherwise', () => {
    expect(loadConfig({}).IMAGE_INLINE_MAX_BYTES).toBe(16_384);
    expect(loadConfig({ IMAGE_INLINE_MAX_BYTES: '0' }).IMAGE_INLINE_MAX_BYTES).toBe(0);
    expect(() => loadConfig({ IMAGE_INLINE_MAX_BYTES: '-1' })).toThrow(/IMAGE_INLINE_MAX_BYTES must be an integer from 0 to 1048576, got "-1"/);
    expect(() => loadConfig({ IMAGE_INLINE_MAX_BYTES: '2000000' })).toThrow(/IMAGE_INLINE_MAX_BYTES must be an integer from 0 to 1048576/);
  });
});

describe('a start stopped by bad settings (dist/server.js)', () => {
  /** What the process printed, as lines; none may be a stack frame or a JSON log entry. */
  async function failedStart(env: Record<string, string>): Promise<string[]> {
    const run = await runFailingStart({ ...startEnv(), ...env }, { timeoutMs: 8000 });
    expect(run.code, run.output).toBe(2);
    const lines = run.output.trim().split('\n');
    expect(lines.filter((line) => /^\s+at |^\{/.test(line)), run.output).toEqual([]);
    return lines;
  }

  it.each([
    ['PORT', 'abc', 'PORT must be an integer from 1 to 65535, got "abc"'],
    ['RATE_LIMIT_RPM', '1.5', 'RATE_LIMIT_RPM must be a positive integer, got "1.5"'],
    ['LOG_LEVEL', 'loud', 'LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent'],
    // One problem per variable: "not an absolute URL" and "not redis://" were two lines for one value.
    ['REDIS_URL', 'nope', 'REDIS_URL must be a redis:// (or rediss://) URL such as redis://cache:6379'],
    ['DATABASE_URL', 'nope', 'DATABASE_URL must be a postgres:// (or postgresql://) URL such as postgres://gateway:password@db:5432/gateway'],
  ])('%s=%s: exit code 2 and one line naming the variable and what it takes', async (name, value, problem) => {
    expect(await failedStart({ [name]: value })).toEqual([`invalid configuration: ${problem}`]);
  });

  it('several bad variables: still one line, naming each', async () => {
    expect(await failedStart({ PORT: 'abc', UPSTREAM_RETRIES: '11' })).toEqual([
      'invalid configuration: PORT must be an integer from 1 to 65535, got "abc"; UPSTREAM_RETRIES must be an integer from 0 to 10, got "11"',
    ]);
  });

  it('a CATALOGUE_FILE that is not YAML: one line, the parser\'s excerpt left out', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'gw-cfg-')), 'catalogue.yaml');
    writeFileSync(file, 'models: [: bad\n');
    const lines = await failedStart({ CATALOGUE_FILE: file });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^invalid configuration: CATALOGUE_FILE ${file}: cannot be read as YAML: .* at line \\d+, column \\d+`));
  });

  it('a DATABASE_URL no database answers at: the one line, not also an error log entry with its stack', async () => {
    const lines = await failedStart({ DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' });
    expect(lines).toEqual([expect.stringMatching(/^DATABASE_URL: the PostgreSQL database cannot be reached: connect ECONNREFUSED/)]);
  });
});

describe('the variables documented', () => {
  const read = (path: string) => readFileSync(new URL(`../${path}`, import.meta.url), 'utf8');

  it('docs/configuration.md documents every variable the gateway reads', () => {
    const docs = read('docs/configuration.md');
    expect(CONFIG_VARIABLES.length).toBeGreaterThan(40);
    expect(CONFIG_VARIABLES.filter((name) => !docs.includes(`\`${name}\``))).toEqual([]);
  });

  it('the README names every variable of the public contract (CONTRACT.md, "Running it")', () => {
    // The contract's list, which may only grow: renaming one is not allowed.
    const contract = ['PORT', 'AIHUBMIX_API_KEY', 'AIHUBMIX_BASE_URL', 'GATEWAY_API_KEYS', 'GATEWAY_KEYS_FILE', 'GATEWAY_ADMIN_KEY', 'DATA_DIR', 'PUBLIC_BASE_URL',
      'UPSTREAM_TIMEOUT_MS', 'RATE_LIMIT_RPM', 'IMAGE_RETENTION_DAYS', 'UPSTREAM_MAX_CONCURRENCY', 'REDIS_URL', 'DATABASE_URL', 'LOG_LEVEL', 'CORS_ORIGINS',
      'CATALOGUE_FILE', 'STORAGE_MIN_FREE_BYTES', 'METRICS_TOKEN'] as const;
    const readme = read('README.md');
    expect(contract.filter((name) => !readme.includes(`\`${name}\``))).toEqual([]);
    expect(contract.filter((name) => !(CONFIG_VARIABLES as readonly string[]).includes(name))).toEqual([]);
  });
});
