import { describe, expect, it } from 'vitest';
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
    const config = loadConfig({ GATEWAY_API_KEYS: 'design:gk-aaaaaaaa, ads:gk-bbbbbbbb,design:gk-cccccccc' });
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
