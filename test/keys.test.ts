import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_KEY, CLIENT_KEY, startHarness, type Harness } from './harness.js';
import { ConfigError } from '../src/config.js';
import { modelAllowed } from '../src/auth/key-policy.js';
import type { GatewayError } from '../src/errors.js';

const admin = { authorization: `Bearer ${ADMIN_KEY}` };
let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => h.close());

describe('the admin key API', () => {
  it('mints a key shown once, stored only as a hash, that works at once', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'growth', rpm: 5, models: ['gpt-image-*'] } });
    expect(res.statusCode).toBe(201);
    const minted = res.json();
    expect(minted).toMatchObject({ team: 'growth', rpm: 5, models: ['gpt-image-*'], admin: false, key: expect.stringMatching(/^gk-/) });
    const stored = await h.app.db.all<{ key_sha256: string; policy_json: string }>('SELECT key_sha256, policy_json FROM client_keys');
    const row = stored.find((r) => JSON.parse(r.policy_json).id === minted.id)!;
    expect(row.key_sha256).toBe(createHash('sha256').update(minted.key).digest('hex'));
    expect(JSON.stringify(stored)).not.toContain(minted.key);
    const use = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${minted.key}` }, payload: { model: 'gpt-image-1', prompt: 'hi' } });
    expect(use.statusCode).toBe(200);
  });

  it('lists keys with their policies and never a key', async () => {
    const minted = (await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'list-me' } })).json();
    const res = await h.app.inject({ method: 'GET', url: '/v1/keys', headers: admin });
    expect(res.statusCode).toBe(200);
    const ids = res.json().data.map((k: { id: string }) => k.id);
    expect(ids).toEqual(expect.arrayContaining(['design', 'ads', 'admin', minted.id]));
    expect(res.body).not.toContain(minted.key);
    expect(res.body).not.toContain(ADMIN_KEY);
    expect(res.json().data.every((k: Record<string, unknown>) => !('key' in k))).toBe(true);
  });

  it('revokes a key, which is refused at once', async () => {
    const minted = (await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'temp' } })).json();
    const del = await h.app.inject({ method: 'DELETE', url: `/v1/keys/${minted.id}`, headers: admin });
    expect(del.statusCode).toBe(204);
    const use = await h.app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: `Bearer ${minted.key}` } });
    expect(use.statusCode).toBe(401);
    const again = await h.app.inject({ method: 'DELETE', url: `/v1/keys/${minted.id}`, headers: admin });
    expect(again.statusCode).toBe(404);
  });

  it('refuses every key route to a non-admin key with 403', async () => {
    for (const [method, url] of [['GET', '/v1/keys'], ['POST', '/v1/keys'], ['DELETE', '/v1/keys/design']] as const) {
      const res = await h.app.inject({ method, url, headers: h.auth, payload: method === 'POST' ? { team: 'x' } : undefined });
      expect(res.statusCode).toBe(403);
    }
  });

  it('refuses a bad mint body naming the field', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'x', rpm: 0 } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('rpm');
    const unknown = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'x', key: 'gk-mine' } });
    expect(unknown.statusCode).toBe(400);
  });

  it.each([
    [{ rpm: 0 }, 'rpm: must be an integer from 1 to 1000000'],
    [{ rpm: 2.5 }, 'rpm: must be an integer from 1 to 1000000'],
    [{ images_per_day: -1 }, 'images_per_day: must be an integer from 0 to 100000000'],
    [{ images_per_day: '10' }, 'images_per_day: must be an integer from 0 to 100000000'],
    [{ monthly_budget_usd: -5 }, 'monthly_budget_usd: must be a number from 0 to 100000000'],
  ])('answers a mint with %j with what the field allows: %s', async (fields, message) => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'x', ...fields } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toBe(message);
  });

  const NAME_WORDS = 'a string of 1-64 letters, digits, _ . or -';
  it.each([
    [undefined, 'team', `team: is required: give the team the key belongs to (its usage, images and jobs are the team's), ${NAME_WORDS}`],
    [{}, 'team', `team: is required: give the team the key belongs to (its usage, images and jobs are the team's), ${NAME_WORDS}`],
    [{ team: 5 }, 'team', `team: must be the team's name: ${NAME_WORDS}`],
    [{ team: null }, 'team', `team: must be the team's name: ${NAME_WORDS}`],
    [{ team: 'x', id: 3 }, 'id', `id: must be the key's id: ${NAME_WORDS}`],
    [{ team: 'x', models: 'gpt-image-*' }, 'models', 'models: must be a list of at most 200 model ids or globs (gpt-image-*)'],
    [{ team: 'x', models: [3] }, 'models[0]', 'models[0]: must be a model id or glob (gpt-image-*): a string of 1-200 characters'],
    [{ team: 'x', admin: 'yes' }, 'admin', 'admin: must be true or false'],
    [[{ team: 'x' }], '(body)', '(body): must be a JSON object: {"team": "<the team the key belongs to>", ...}'],
  ])('answers a mint of %j in its own words, naming %s, never zod’s', async (payload, field, message) => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, ...(payload === undefined ? {} : { payload }) });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ code: 'invalid_request', message, details: [{ field, message: message.slice(field.length + 2) }] });
    expect(res.body).not.toMatch(/Invalid input|expected \w+, received/);
  });

  // 1e300 is no integer and above the range: one refusal, told once (it was twice in details).
  it.each([
    [{ rpm: 1e300 }, 'rpm', 'must be an integer from 1 to 1000000'],
    [{ rpm: -1e300 }, 'rpm', 'must be an integer from 1 to 1000000'],
    [{ images_per_day: 1e300 }, 'images_per_day', 'must be an integer from 0 to 100000000'],
    [{ monthly_budget_usd: 1e300 }, 'monthly_budget_usd', 'must be a number from 0 to 100000000'],
  ])('answers a mint with %j with one detail for the field', async (fields, field, message) => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'x', ...fields } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toBe(`${field}: ${message}`);
    expect(res.json().error.details).toEqual([expect.objectContaining({ field, message })]);
  });

  it('refuses an allow-list pattern that matches no model', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'x', models: ['imagen-*', 'gpt-imgae-*'] } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toMatch(/^models: gpt-imgae-\* matches no model/);
    const two = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'x', models: ['gpt-imgae-*', 'imagn-*'] } });
    expect(two.json().error.message).toMatch(/^models: gpt-imgae-\*, imagn-\* match no model/);
  });

  it('lists to a key only the models it may use', async () => {
    const minted = (await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'narrow', models: ['imagen-4.0-*'] } })).json();
    const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: `Bearer ${minted.key}` } });
    const ids = res.json().data.map((m: { id: string }) => m.id);
    expect(ids.length).toBeGreaterThan(0);
    expect(ids.every((id: string) => id.startsWith('imagen-4.0-'))).toBe(true);
  });

  it('refuses a model of unknown price to a key with a monthly budget, before any upstream call', async () => {
    const minted = (await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'budgeted', monthly_budget_usd: 10 } })).json();
    h.simulator.reset();
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${minted.key}` }, payload: { model: 'imagen-4.0-generate-001', prompt: 'x' } });
    expect(res.statusCode).toBe(403);
    expect(res.json().error.message).toMatch(/no known price.*PRICE_OVERRIDES/);
    expect(h.simulator.received).toHaveLength(0);
    const priced = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${minted.key}` }, payload: { model: 'ideogram-v3', prompt: 'x' } });
    expect(priced.statusCode).toBe(200);
  });

  it('refuses a budgeted key whose allow-list matches only models of unknown price, naming the field', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'unpriced', monthly_budget_usd: 50, models: ['imagen-*'] } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('models');
    expect(res.json().error.message).toMatch(/imagen-\* matches only models with no known price.*monthly_budget_usd.*PRICE_OVERRIDES/);
  });

  it('mints a budgeted key whose allow-list matches priced models among unpriced ones', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'mixed', monthly_budget_usd: 50, models: ['imagen-*', 'ideogram-v3'] } });
    expect(res.statusCode).toBe(201);
  });

  it('the key docs/client-keys.md mints can generate with every model it allows', async () => {
    const doc = readFileSync(new URL('../docs/client-keys.md', import.meta.url), 'utf8');
    const body = JSON.parse(/curl -s -X POST localhost:8080\/v1\/keys[^\n]*\n\s*-d '([^']+)'/.exec(doc)![1]!);
    const minted = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: body });
    expect(minted.statusCode, minted.body).toBe(201);
    const auth = { authorization: `Bearer ${minted.json().key}` };
    const models = (await h.app.inject({ method: 'GET', url: '/v1/models', headers: auth })).json().data;
    expect(models.length).toBeGreaterThan(0);
    for (const model of models) {
      const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload: { model: model.id, prompt: 'a kite' } });
      expect(res.statusCode, `${model.id}: ${res.body}`).toBe(200);
    }
  });

  it('refuses to mint a second key with an id in use', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { id: 'design', team: 'design' } });
    expect(res.statusCode).toBe(409);
  });

  it('answers two simultaneous mints of one new id with one key and one 409, not a 500', async () => {
    const mint = () => h.app.keyStore.mint({ id: 'twice-at-once', team: 'twins' }).then(() => 201, (err) => (err as GatewayError).status ?? 500);
    const statuses = (await Promise.all([mint(), mint()])).sort();
    expect(statuses).toEqual([201, 409]);
  });

  it('will not revoke a key that comes from the environment', async () => {
    const res = await h.app.inject({ method: 'DELETE', url: '/v1/keys/design', headers: admin });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toMatch(/GATEWAY_API_KEYS/);
  });
});

describe('GATEWAY_KEYS_FILE', () => {
  it('loads keys given in plaintext or as sha256, with their policies', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'gw-keys-')), 'keys.yaml');
    const plain = 'gk-file-plain-0123456789';
    const hashed = 'gk-file-hashed-0123456789';
    const h2 = await startHarness({
      GATEWAY_KEYS_FILE: writeKeysFile(file, `keys:
  - id: web
    key: ${plain}
    team: design
    models: ["imagen-4.0-*"]
  - id: batch
    key_sha256: "${createHash('sha256').update(hashed).digest('hex')}"
    team: ads
    images_per_day: 1
`),
    });
    try {
      const web = await h2.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${plain}` }, payload: { model: 'gpt-image-1', prompt: 'x' } });
      expect(web.statusCode).toBe(403);
      expect(web.json().error.code).toBe('forbidden');
      const ok = await h2.app.inject({ method: 'POST', url: '/v1/generate', headers: { authorization: `Bearer ${plain}` }, payload: { model: 'imagen-4.0-generate-001', prompt: 'x' } });
      expect(ok.statusCode).toBe(200);
      const batch = await h2.app.inject({ method: 'POST', url: '/v1/generate', headers: { 'x-api-key': hashed }, payload: { model: 'gpt-image-1', prompt: 'x', n: 2 } });
      expect(batch.statusCode).toBe(429);
    } finally {
      await h2.close();
    }
  });

  it('a file key that is also a GATEWAY_API_KEYS key stops the start, naming both and never the key', async () => {
    const file = writeKeysFile(join(mkdtempSync(join(tmpdir(), 'gw-keys-')), 'keys.yaml'), `keys:\n  - id: web\n    team: web\n    key: ${CLIENT_KEY}\n`);
    const start = startHarness({ GATEWAY_KEYS_FILE: file });
    await expect(start).rejects.toThrow(ConfigError);
    await expect(start).rejects.toThrow(/GATEWAY_KEYS_FILE: key web is the same key as GATEWAY_API_KEYS \(team design\)/);
    await start.catch((err: Error) => expect(err.message).not.toContain(CLIENT_KEY));
  });

  it('a file with a bad entry stops the start with a message naming the file and field', async () => {
    const file = writeKeysFile(join(mkdtempSync(join(tmpdir(), 'gw-keys-')), 'bad.yaml'), 'keys:\n  - id: x\n    team: t\n    rpm: -1\n    key: gk-0123456789\n');
    await expect(startHarness({ GATEWAY_KEYS_FILE: file })).rejects.toThrow(/GATEWAY_KEYS_FILE .*bad\.yaml is not valid: keys\[0\] \(id x\)\.rpm: /);
  });

  it('names an entry by its place and its id, and an unknown field with the fields an entry takes', async () => {
    const file = writeKeysFile(
      join(mkdtempSync(join(tmpdir(), 'gw-keys-')), 'typo.yaml'),
      `keys:\n  - id: web\n    team: t\n    key: ${CLIENT_KEY}x\n  - id: design-web\n    team: design\n    rpmm: 5\n    key: gk-design-web-0123456789abcdef\n`,
    );
    const start = startHarness({ GATEWAY_KEYS_FILE: file });
    await expect(start).rejects.toThrow(
      /typo\.yaml is not valid: keys\[1\] \(id design-web\): "rpmm" is not a field of a key entry \(allowed: id, key, key_sha256, team, rpm, images_per_day, monthly_budget_usd, models, admin, fallbacks\)$/,
    );
    await start.catch((err: Error) => expect(err.message).not.toContain('gk-design-web'));
  });
});

describe('model allow-lists', () => {
  it('globs match model ids, and a plain name matches only itself', () => {
    expect(modelAllowed({ models: ['gpt-image-*'] }, 'gpt-image-1.5')).toBe(true);
    expect(modelAllowed({ models: ['gpt-image-*'] }, 'dall-e-3')).toBe(false);
    expect(modelAllowed({ models: ['FLUX-1.1-pro'] }, 'FLUX-1.1-pro')).toBe(true);
    expect(modelAllowed({ models: ['FLUX-1.1-pro'] }, 'FLUX-1x1-pro')).toBe(false);
    expect(modelAllowed({ models: ['*'] }, 'anything')).toBe(true);
    expect(modelAllowed({}, 'anything')).toBe(true);
    expect(modelAllowed({ models: [] }, 'anything')).toBe(false);
  });

  it('an alias is checked as the model id it names', async () => {
    const minted = (await h.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { team: 'imagen-only', models: ['imagen-*'] } })).json();
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { authorization: `Bearer ${minted.key}` },
      payload: { model: 'google/imagen-4.0-generate-001', prompt: 'x' },
    });
    expect(res.statusCode).toBe(200);
  });
});

function writeKeysFile(path: string, text: string): string {
  writeFileSync(path, text);
  return path;
}
