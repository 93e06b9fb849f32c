import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { parse } from 'yaml';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ADMIN_KEY, CLIENT_KEY, OTHER_CLIENT_KEY, jobWhenFinished, multipartBody, startHarness, type Harness } from './harness.js';
import { freshPostgres, postgresProblem } from './services.js';

const DESIGN = { authorization: `Bearer ${CLIENT_KEY}` };
const ADS = { authorization: `Bearer ${OTHER_CLIENT_KEY}` };
const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` };
const ALL_TIME = 'from=2000-01-01&to=2100-01-01';
const today = () => new Date().toISOString().slice(0, 10);

/** A CSV parser for the tests: RFC 4180 quoting, CRLF rows. */
function parseCsv(text: string): Record<string, string>[] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') (field += '"'), i++;
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') row.push(field), (field = '');
    else if (c === '\r' && text[i + 1] === '\n') {
      row.push(field), rows.push(row), (row = []), (field = ''), i++;
    } else field += c;
  }
  const [header, ...body] = rows;
  return body.map((cells) => Object.fromEntries(header!.map((name, i) => [name, cells[i]!])));
}

/** Where usage is kept for one gateway run: its DATA_DIR, and for PostgreSQL its DATABASE_URL. */
interface UsageStore {
  env: Record<string, string>;
  cleanup(): Promise<void>;
}

function usageSuite(name: string, openStore: () => Promise<UsageStore>) {
  describe(name, () => {
    const open: Array<Harness | UsageStore> = [];
    afterEach(async () => {
      for (const thing of open.splice(0).reverse()) {
        if ('app' in thing) await thing.close();
        else await thing.cleanup();
      }
    });

    async function store(): Promise<UsageStore> {
      const s = await openStore();
      open.push(s);
      return s;
    }

    async function gateway(s?: UsageStore, env: Record<string, string> = {}): Promise<Harness> {
      const h = await startHarness({ ...(s ?? (await store())).env, ...env });
      open.push(h);
      return h;
    }

    const generate = (h: Harness, auth: Record<string, string>, payload: Record<string, unknown>) =>
      h.app.inject({ method: 'POST', url: '/v1/generate', headers: auth, payload });

    const usage = async (h: Harness, query: string, auth = ADMIN) => {
      const res = await h.app.inject({ method: 'GET', url: `/v1/usage?${query}`, headers: auth });
      expect(res.statusCode, res.body).toBe(200);
      return res.json();
    };

    /** design: 2 successes (3 images), a 400, an upstream 502; ads: 1 Ideogram image; one 401 without a key. */
    async function mixedTraffic(h: Harness): Promise<void> {
      const statuses = [
        (await generate(h, DESIGN, { model: 'gpt-image-1', prompt: 'one' })).statusCode,
        (await generate(h, DESIGN, { model: 'gpt-image-1', prompt: 'two', n: 2 })).statusCode,
        (await generate(h, DESIGN, { model: 'gpt-image-1', prompt: 'bad', style: 'vivid' })).statusCode,
      ];
      h.simulator.failNext('http500');
      statuses.push((await generate(h, DESIGN, { model: 'gpt-image-1', prompt: 'fails' })).statusCode);
      statuses.push((await generate(h, ADS, { model: 'ideogram-v3', prompt: 'poster' })).statusCode);
      statuses.push((await generate(h, {}, { model: 'gpt-image-1', prompt: 'no key' })).statusCode);
      expect(statuses).toEqual([200, 200, 400, 502, 200, 401]);
    }

    // gpt-image-1 by the simulator's token usage: 10 text tokens at $5/M, 100 image tokens per image at $40/M.
    const DESIGN_COST = 0.0121; // 0.00405 + 0.00805
    const ALL_COST = 0.0721; // with Ideogram's 0.06

    it('counts every request once per team and model after successes, refusals and upstream failures', async () => {
      const h = await gateway();
      await mixedTraffic(h);
      const report = await usage(h, `${ALL_TIME}&group_by=team,model`);
      expect(report.data).toEqual([
        { team: 'ads', model: 'ideogram-v3', requests: 1, images: 1, errors: 0, estimated_cost_usd: 0.06, unpriced_images: 0 },
        { team: 'design', model: 'gpt-image-1', requests: 4, images: 3, errors: 2, estimated_cost_usd: DESIGN_COST, unpriced_images: 0 },
        { team: null, model: null, requests: 1, images: 0, errors: 1, estimated_cost_usd: 0, unpriced_images: 0 },
      ]);
    });

    it('counts what an async job made, and a failed one as an error, in the record of the request that started it', async () => {
      const h = await gateway();
      const settled = (id: string) => jobWhenFinished(h, id, DESIGN);
      await settled((await generate(h, DESIGN, { model: 'ideogram-v3', prompt: 'later', n: 2, async: true })).json().id);
      h.simulator.failNext('http500');
      await settled((await generate(h, DESIGN, { model: 'ideogram-v2', prompt: 'fails later', async: true })).json().id);
      // The record is completed just after the job's status is written (README, usage).
      await vi.waitFor(async () => {
        const report = await usage(h, `${ALL_TIME}&group_by=model`);
        const row = (model: string) => report.data.find((r: { model: string }) => r.model === model);
        expect(row('ideogram-v3')).toMatchObject({ requests: 1, images: 2, errors: 0, estimated_cost_usd: 0.12 });
        expect(row('ideogram-v2')).toMatchObject({ requests: 1, images: 0, errors: 1 });
      });
    });

    it('a client-chosen x-request-id cannot rewrite other records when a job ends', async () => {
      const h = await gateway();
      const shared = { 'x-request-id': 'req-chosen-by-client' };
      const ok = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...DESIGN, ...shared }, payload: { model: 'ideogram-v3', prompt: 'paid', n: 2 } });
      expect(ok.statusCode).toBe(200);
      h.simulator.failNext('http500');
      const accepted = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...DESIGN, ...shared }, payload: { model: 'ideogram-v3', prompt: 'fails', async: true } });
      expect((await jobWhenFinished(h, accepted.json().id, DESIGN)).status).toBe('failed');
      // The record is completed just after the job's status is written (README, usage).
      await vi.waitFor(async () => {
        const report = await usage(h, `${ALL_TIME}&group_by=model`);
        expect(report.data.find((r: { model: string }) => r.model === 'ideogram-v3')).toMatchObject({ requests: 2, images: 2, errors: 1, estimated_cost_usd: 0.12 });
      });
    });

    it('does not count a replayed idempotent answer’s images or cost twice', async () => {
      const h = await gateway();
      const body = { model: 'ideogram-v3', prompt: 'once' };
      for (let i = 0; i < 2; i++) {
        const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: { ...DESIGN, 'idempotency-key': 'usage-replay' }, payload: body });
        expect(res.statusCode).toBe(200);
      }
      const report = await usage(h, `${ALL_TIME}&group_by=model`);
      expect(report.data.find((r: { model: string }) => r.model === 'ideogram-v3')).toMatchObject({ requests: 2, images: 1, estimated_cost_usd: 0.06 });
    });

    it('echoes the window and grouping it used', async () => {
      const h = await gateway();
      const report = await usage(h, 'from=2026-01-01&to=2026-02-01T00:00:00%2B01:00&group_by=model,team');
      expect(report).toMatchObject({ from: '2026-01-01T00:00:00.000Z', to: '2026-01-31T23:00:00.000Z', group_by: ['model', 'team'] });
    });

    it('defaults to the current UTC calendar month', async () => {
      const h = await gateway();
      const now = new Date();
      const report = await usage(h, '');
      expect(report.from).toBe(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString());
      expect(report.to).toBe(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)).toISOString());
      expect(report.group_by).toEqual([]);
    });

    it('groups by each dimension on its own', async () => {
      const h = await gateway();
      await mixedTraffic(h);
      const rows = async (dimension: string) =>
        (await usage(h, `${ALL_TIME}&group_by=${dimension}`)).data.map((r: Record<string, unknown>) => [r[dimension], r.requests, r.images, r.errors]);
      expect(await rows('team')).toEqual([['ads', 1, 1, 0], ['design', 4, 3, 2], [null, 1, 0, 1]]);
      expect(await rows('model')).toEqual([['gpt-image-1', 4, 3, 2], ['ideogram-v3', 1, 1, 0], [null, 2, 0, 1]]);
      // The usage queries above are API calls too: the admin key's rows grow with each.
      expect(await rows('key')).toEqual([['admin', 2, 0, 0], ['ads', 1, 1, 0], ['design', 4, 3, 2], [null, 1, 0, 1]]);
      expect(await rows('day')).toEqual([[today(), 9, 4, 3]]);
    });

    it('groups by several dimensions at once', async () => {
      const h = await gateway();
      await mixedTraffic(h);
      const report = await usage(h, `${ALL_TIME}&group_by=day,key`);
      expect(report.data.map((r: Record<string, unknown>) => [r.day, r.key, r.requests])).toEqual([
        [today(), 'ads', 1],
        [today(), 'design', 4],
        [today(), null, 1],
      ]);
    });

    it('without group_by answers one row of totals', async () => {
      const h = await gateway();
      await mixedTraffic(h);
      const report = await usage(h, ALL_TIME);
      expect(report.data).toEqual([{ requests: 6, images: 4, errors: 3, estimated_cost_usd: ALL_COST, unpriced_images: 0 }]);
    });

    it('shows a team key only its own team, and the admin key every team', async () => {
      const h = await gateway();
      await mixedTraffic(h);
      const design = await usage(h, `${ALL_TIME}&group_by=team`, DESIGN);
      expect(design.data).toEqual([{ team: 'design', requests: 4, images: 3, errors: 2, estimated_cost_usd: DESIGN_COST, unpriced_images: 0 }]);
      const ads = await usage(h, `${ALL_TIME}&group_by=team`, ADS);
      expect(ads.data.map((r: Record<string, unknown>) => [r.team, r.requests])).toEqual([['ads', 1]]);
      const admin = await usage(h, `${ALL_TIME}&group_by=team`, ADMIN);
      expect(admin.data.map((r: Record<string, unknown>) => [r.team, r.requests])).toEqual([['ads', 2], ['design', 5], [null, 1]]);
    });

    it('counts images without a known price apart, as 0 in the cost', async () => {
      const h = await gateway();
      expect((await generate(h, DESIGN, { model: 'imagen-4.0-generate-001', prompt: 'unpriced', n: 2 })).statusCode).toBe(200);
      const report = await usage(h, `${ALL_TIME}&group_by=model`);
      expect(report.data).toEqual([{ model: 'imagen-4.0-generate-001', requests: 1, images: 2, errors: 0, estimated_cost_usd: 0, unpriced_images: 2 }]);
    });

    it('keeps each request in a record with what it did, and never the prompt by default', async () => {
      const h = await gateway();
      const res = await generate(h, DESIGN, { model: 'gpt-image-1', prompt: 'a secret plan', n: 2 });
      const refused = await generate(h, {}, { model: 'gpt-image-1', prompt: 'x' });
      const page = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}`, headers: ADMIN });
      const [success, unauthorized] = page.json().data;
      expect(success).toEqual({
        id: expect.any(Number),
        time: expect.stringMatching(new RegExp(`^${today()}T`)),
        request_id: res.headers['x-request-id'],
        key_id: 'design',
        team: 'design',
        method: 'POST',
        route: '/v1/generate',
        model: 'gpt-image-1',
        operation: 'generate',
        status: 200,
        error_code: null,
        images_requested: 2,
        images_returned: 2,
        bytes_stored: res.json().images.reduce((sum: number, i: { bytes: number }) => sum + i.bytes, 0),
        estimated_cost_usd: 0.00805,
        upstream_status: 200,
        upstream_ms: expect.any(Number),
        total_ms: expect.any(Number),
        upstream_tokens: { input_tokens: 10, output_tokens: 200, total_tokens: 210 },
        prompt: null,
        token_id: null,
        models_tried: null,
      });
      expect(unauthorized).toMatchObject({ request_id: refused.headers['x-request-id'], key_id: null, team: null, status: 401, error_code: 'unauthorized' });
      expect(page.body).not.toContain('a secret plan');
    });

    it('names the model in the record of a request refused while its body was read', async () => {
      const h = await gateway();
      const refusals = [
        await generate(h, DESIGN, { model: 'gpt-image-1', prompt: 'x', style: 'vivid' }),
        await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: DESIGN, payload: { model: 'gpt-image-1', prompt: 'x', n: 0 } }),
        await (async () => {
          const form = multipartBody({ model: 'gpt-image-1', prompt: 'x' }, []);
          return h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...DESIGN, ...form.headers }, payload: form.payload });
        })(),
      ];
      expect(refusals.map((r) => r.statusCode)).toEqual([400, 400, 400]);
      const page = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}`, headers: ADMIN });
      const records = page.json().data.filter((r: { status: number }) => r.status === 400);
      expect(records.map((r: { route: string; model: string | null }) => [r.route, r.model])).toEqual([
        ['/v1/generate', 'gpt-image-1'],
        ['/v1/images/generations', 'gpt-image-1'],
        ['/v1/edit', 'gpt-image-1'],
      ]);
    });

    it('keeps the prompt when LOG_PROMPTS=1', async () => {
      const h = await gateway(undefined, { LOG_PROMPTS: '1' });
      await generate(h, DESIGN, { model: 'gpt-image-1', prompt: 'a lighthouse at dusk' });
      const page = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}`, headers: ADMIN });
      expect(page.json().data[0].prompt).toBe('a lighthouse at dusk');
    });

    it('records model listings and usage queries with their route and no operation, but not image downloads', async () => {
      const h = await gateway();
      const res = await generate(h, DESIGN, { model: 'gpt-image-1', prompt: 'download me' });
      const url = new URL(res.json().images[0].url);
      expect((await h.app.inject({ method: 'GET', url: url.pathname + url.search })).statusCode).toBe(200);
      await h.app.inject({ method: 'GET', url: '/v1/models', headers: DESIGN });
      await usage(h, ALL_TIME, DESIGN);
      const page = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}`, headers: DESIGN });
      expect(page.json().data.map((r: Record<string, unknown>) => [r.method, r.route, r.operation])).toEqual([
        ['POST', '/v1/generate', 'generate'],
        ['GET', '/v1/models', null],
        ['GET', '/v1/usage', null],
      ]);
    });

    it('pages through records with limit and next_cursor, oldest first', async () => {
      const h = await gateway();
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        ids.push(String((await h.app.inject({ method: 'GET', url: '/v1/models', headers: DESIGN })).headers['x-request-id']));
      }
      // The window ends before the page requests, which are recorded too.
      const to = new Date(Date.now() + 1).toISOString();
      await sleep(5);
      const seen: string[] = [];
      const sizes: number[] = [];
      let cursor: string | null = '';
      while (cursor !== null) {
        const res = await h.app.inject({ method: 'GET', url: `/v1/usage/records?from=2000-01-01&to=${to}&limit=2${cursor ? `&cursor=${cursor}` : ''}`, headers: DESIGN });
        const page = res.json() as { data: Array<{ request_id: string }>; next_cursor: string | null };
        sizes.push(page.data.length);
        seen.push(...page.data.map((r) => r.request_id));
        cursor = page.next_cursor;
      }
      expect(sizes).toEqual([2, 2, 1]);
      expect(seen).toEqual(ids);
    });

    it('answers the records as CSV with a header row', async () => {
      const h = await gateway(undefined, { LOG_PROMPTS: '1' });
      await generate(h, DESIGN, { model: 'gpt-image-1', prompt: 'commas, "quotes"\nand a line break' });
      const res = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}&format=csv`, headers: ADMIN });
      expect(res.headers['content-type']).toBe('text/csv; charset=utf-8');
      const rows = parseCsv(res.body);
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ key_id: 'design', model: 'gpt-image-1', status: '200', images_returned: '1', estimated_cost_usd: '0.00405', error_code: '' });
      expect(rows[0]!.prompt).toBe('commas, "quotes"\nand a line break');
      expect(JSON.parse(rows[0]!.upstream_tokens!)).toEqual({ input_tokens: 10, output_tokens: 100, total_tokens: 110 });
    });

    it('answers the report as CSV with a header row', async () => {
      const h = await gateway();
      await mixedTraffic(h);
      const res = await h.app.inject({ method: 'GET', url: `/v1/usage?${ALL_TIME}&group_by=team,model&format=csv`, headers: ADMIN });
      expect(res.headers['content-type']).toBe('text/csv; charset=utf-8');
      expect(res.body.split('\r\n')[0]).toBe('team,model,requests,images,errors,estimated_cost_usd,unpriced_images');
      expect(parseCsv(res.body)).toEqual([
        { team: 'ads', model: 'ideogram-v3', requests: '1', images: '1', errors: '0', estimated_cost_usd: '0.06', unpriced_images: '0' },
        { team: 'design', model: 'gpt-image-1', requests: '4', images: '3', errors: '2', estimated_cost_usd: String(DESIGN_COST), unpriced_images: '0' },
        { team: '', model: '', requests: '1', images: '0', errors: '1', estimated_cost_usd: '0', unpriced_images: '0' },
      ]);
    });

    it('keeps records across a restart on the same storage', async () => {
      const s = await store();
      const first = await gateway(s);
      await mixedTraffic(first);
      await usage(first, ALL_TIME); // waits for the batch to be written
      await first.close();
      open.splice(open.indexOf(first), 1);
      const second = await gateway(s);
      const report = await usage(second, `${ALL_TIME}&group_by=team`);
      expect(report.data.map((r: Record<string, unknown>) => [r.team, r.requests, r.images, r.errors])).toEqual([
        ['admin', 1, 0, 0],
        ['ads', 1, 1, 0],
        ['design', 4, 3, 2],
        [null, 1, 0, 1],
      ]);
    });

    it('records a request whose client left just before a graceful stop, as 499', async () => {
      const s = await store();
      const first = await gateway(s);
      first.simulator.failNext('hang');
      const url = await first.app.listen({ port: 0, host: '127.0.0.1' });
      const client = new AbortController();
      const call = fetch(`${url}/v1/generate`, {
        method: 'POST',
        headers: { ...DESIGN, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-image-1', prompt: 'left before the stop' }),
        signal: client.signal,
      }).catch(() => undefined);
      await vi.waitFor(() => expect(first.simulator.received).toHaveLength(1), { timeout: 2000, interval: 5 });
      client.abort();
      await call;
      // The stop begins while the handler is still on its way from the aborted upstream call to the record.
      await first.close();
      open.splice(open.indexOf(first), 1);
      const second = await gateway(s);
      const page = await second.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}`, headers: ADMIN });
      expect(page.json().data.map((r: { route: string; model: string; status: number; error_code: string }) => [r.route, r.model, r.status, r.error_code])).toContainEqual([
        '/v1/generate',
        'gpt-image-1',
        499,
        'client_closed',
      ]);
    });

    it('writes every queued record when the gateway closes at once after its traffic', async () => {
      const s = await store();
      const first = await gateway(s);
      await mixedTraffic(first);
      await first.close();
      open.splice(open.indexOf(first), 1);
      const second = await gateway(s);
      const report = await usage(second, ALL_TIME);
      expect(report.data).toEqual([{ requests: 6, images: 4, errors: 3, estimated_cost_usd: ALL_COST, unpriced_images: 0 }]);
    });
  });
}

function sqliteStore(): Promise<UsageStore> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-usage-'));
  return Promise.resolve({ env: { DATA_DIR: dir }, cleanup: async () => rmSync(dir, { recursive: true, force: true }) });
}

usageSuite('usage in SQLite', sqliteStore);

describe.skipIf(postgresProblem !== undefined)('usage in PostgreSQL (skipped when unreachable and REQUIRE_SERVICES is unset)', () => {
  usageSuite('usage in PostgreSQL', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gw-usage-'));
    const pg = await freshPostgres();
    return {
      env: { DATA_DIR: dir, DATABASE_URL: pg.url },
      async cleanup() {
        await pg.drop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  });
});

describe('usage query parameters', () => {
  let h: Harness;
  afterEach(async () => h.close());

  it.each([
    ['from=yesterday', 'from'],
    ['from=2026-02-30', 'from'],
    ['to=2026-11-01T10:00:00', 'to'],
    ['from=2026-11-02&to=2026-11-01', 'to'],
    ['group_by=team,colour', 'group_by'],
    ['group_by=team,team', 'group_by'],
    ['format=xml', 'format'],
    ['team=design', 'team'],
  ])('GET /v1/usage?%s is a 400 naming %s', async (query, field) => {
    h = await startHarness();
    const res = await h.app.inject({ method: 'GET', url: `/v1/usage?${query}`, headers: ADMIN });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe(field);
  });

  it.each([
    ['limit=0', 'limit'],
    ['limit=1001', 'limit'],
    ['cursor=not-a-cursor', 'cursor'],
    ['group_by=team', 'group_by'],
  ])('GET /v1/usage/records?%s is a 400 naming %s', async (query, field) => {
    h = await startHarness();
    const res = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${query}`, headers: ADMIN });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe(field);
  });

  it('GET /v1/usage without a key is a 401', async () => {
    h = await startHarness();
    const res = await h.app.inject({ method: 'GET', url: '/v1/usage' });
    expect(res.statusCode).toBe(401);
  });
});

describe('usage answers and openapi.yaml', () => {
  const spec = parse(readFileSync(new URL('../openapi.yaml', import.meta.url), 'utf8'));
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats.default(ajv);
  ajv.addSchema({ ...spec, $id: 'openapi.yaml' });
  const problems = (schema: string, body: unknown) => {
    const check = ajv.getSchema(`openapi.yaml#/components/schemas/${schema}`)!;
    return check(body) ? [] : (check.errors ?? []).map((e) => `${e.instancePath} ${e.message}`);
  };

  let h: Harness;
  afterEach(async () => h.close());

  it('a usage report with null groups matches UsageReport', async () => {
    h = await startHarness();
    await h.app.inject({ method: 'POST', url: '/v1/generate', headers: DESIGN, payload: { model: 'gpt-image-1', prompt: 'x' } });
    await h.app.inject({ method: 'GET', url: '/v1/models' });
    const res = await h.app.inject({ method: 'GET', url: `/v1/usage?${ALL_TIME}&group_by=team,model,key,day`, headers: ADMIN });
    expect(res.json().data).toHaveLength(2);
    expect(problems('UsageReport', res.json())).toEqual([]);
  });

  it('a page of usage records matches UsageRecordPage', async () => {
    h = await startHarness();
    await h.app.inject({ method: 'POST', url: '/v1/generate', headers: DESIGN, payload: { model: 'gpt-image-1', prompt: 'x' } });
    await h.app.inject({ method: 'GET', url: '/v1/nothing-here', headers: DESIGN });
    const res = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}&limit=1`, headers: ADMIN });
    expect(res.json().next_cursor).toEqual(expect.any(String));
    expect(problems('UsageRecordPage', res.json())).toEqual([]);
    const rest = await h.app.inject({ method: 'GET', url: `/v1/usage/records?${ALL_TIME}&cursor=${res.json().next_cursor}`, headers: ADMIN });
    expect(rest.json().data[0]).toMatchObject({ route: null, status: 404 });
    expect(problems('UsageRecordPage', rest.json())).toEqual([]);
  });
});
