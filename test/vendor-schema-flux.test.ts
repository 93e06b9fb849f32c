/**
 * Every Flux route of the catalogue sends only what Black Forest Labs' own spec defines. For each
 * route (found in the catalogue: any predictions path under /v1/models/bfl/, so a new one is covered
 * without touching this file) the fullest request it takes (every parameter and option, the most
 * images) goes through the gateway, twice (each value at its upper bound, then at its lower bound),
 * and the body the upstream simulator received is validated against the vendor's request schema,
 * kept in test/fixtures/vendor-schemas/flux.json (copied from ../shared/upstream-specs).
 */
import { readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { declarationOf } from '../src/catalogue/catalogue-schema.js';
import { MODELS } from '../src/catalogue/models.js';
import type { ModelSpec } from '../src/catalogue/model-spec.js';
import { makePng, startHarness, type Harness } from './harness.js';

interface VendorSpec {
  paths: Record<string, { post: { requestBody: { content: { 'application/json': { schema: { $ref: string } } } } } }>;
  components: { schemas: Record<string, Record<string, unknown>> };
}
const VENDOR = JSON.parse(readFileSync(new URL('./fixtures/vendor-schemas/flux.json', import.meta.url), 'utf8')) as VendorSpec;

/**
 * Catalogue models reached through AiHubMix's general interface under another name than the
 * vendor's endpoint: the vendor endpoint whose schema bounds them.
 */
const VENDOR_ENDPOINT_OF: Record<string, string> = {
  // The same FLUX.1 Kontext [pro], synchronous on AiHubMix's general interface (001).
  'FLUX.1-Kontext-pro': '/v1/flux-kontext-pro',
};

/**
 * Catalogue models whose body AiHubMix itself defines, not Black Forest Labs: no vendor schema applies.
 * Listed with why, and checked to be exactly the routes without a schema (see the last test).
 */
const AIHUBMIX_SHAPED: Record<string, string> = {
  // AiHubMix's synchronous (Azure) channel takes `size` and an `extra_body` (001's example), not BFL's width/height.
  'FLUX-1.1-pro': 'size and extra_body, as the AiHubMix documents (001) give them',
};

// ------------------------------------------------------------------ the Flux routes, from the catalogue

interface FluxRoute {
  model: ModelSpec;
  /** generate, or the edit mode. */
  op: string;
  /** The route's declaration in the catalogue data (its params, options and images as written). */
  declared: RouteDeclaration;
  /** The vendor endpoint the upstream path names: /v1/models/bfl/<name>/predictions → /v1/<name>. */
  endpoint: string;
}

interface RouteDeclaration {
  path: string;
  params?: Record<string, MappingDeclaration>;
  options?: Record<string, MappingDeclaration>;
  images?: { max: number };
}
interface MappingDeclaration {
  rule: Record<string, unknown>;
  to?: string | string[];
}

const BFL_PATH = /^\/v1\/models\/bfl\/([^/]+)\/predictions$/;

function fluxRoutes(): FluxRoute[] {
  const routes: FluxRoute[] = [];
  for (const model of MODELS) {
    const declaration = declarationOf(model) as { generate?: RouteDeclaration; edit?: Record<string, RouteDeclaration> } | undefined;
    if (!declaration) throw new Error(`${model.id} has no declaration`);
    const declared: Array<[string, RouteDeclaration | undefined]> = [['generate', declaration.generate], ...Object.entries(declaration.edit ?? {})];
    for (const [op, route] of declared) {
      const match = route ? BFL_PATH.exec(route.path) : null;
      if (!route || !match) continue;
      routes.push({ model, op, declared: route, endpoint: VENDOR_ENDPOINT_OF[model.id] ?? `/v1/${match[1]}` });
    }
  }
  return routes;
}

const ROUTES = fluxRoutes();
const CHECKED = ROUTES.filter((r) => !Object.hasOwn(AIHUBMIX_SHAPED, r.model.id));

// ------------------------------------------------------------------ the vendor's schemas, strict

// The vendor's pydantic models may ignore a field they do not declare; the gateway must never rely
// on that, so each request schema is compiled closed (additionalProperties: false).
const closedSpec = structuredClone(VENDOR) as VendorSpec & { $id: string };
closedSpec.$id = 'bfl-flux.json';
for (const schema of Object.values(closedSpec.components.schemas)) {
  if (schema.type === 'object') schema.additionalProperties = false;
}
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats.default(ajv);
ajv.addSchema(closedSpec);

function vendorSchemaName(endpoint: string): string | undefined {
  const ref = VENDOR.paths[endpoint]?.post.requestBody.content['application/json'].schema.$ref;
  return ref?.replace('#/components/schemas/', '');
}

function vendorErrors(endpoint: string, body: unknown): string[] {
  const check = ajv.getSchema(`bfl-flux.json#/components/schemas/${vendorSchemaName(endpoint)}`);
  if (!check) throw new Error(`no vendor schema for ${endpoint}`);
  return check(body) ? [] : (check.errors ?? []).map((e) => `${e.instancePath || '(body)'} ${e.message} ${JSON.stringify(e.params)}`);
}

// ------------------------------------------------------------------ the fullest request, from the declaration

type Bound = 'upper' | 'lower';

/** A value the declared rule takes, at its upper or lower end; a descriptor without one here fails the test. */
function sample(rule: Record<string, unknown>, bound: Bound, where: string): unknown {
  const [name, args] = Object.entries(rule)[0] as [string, any];
  const upper = bound === 'upper';
  switch (name) {
    case 'oneOf':
      return upper ? args.at(-1) : args[0];
    case 'intRange':
    case 'numberRange':
      return upper ? args.max : args.min;
    case 'bool':
      return upper;
    case 'text':
      return upper ? 'x'.repeat(Math.min(args.maxLength, 200)) : 'x';
    case 'ratioRange':
      return upper ? args.max : args.min;
    case 'pixelSize': {
      const step: number = args.multipleOf ?? 1;
      if (!upper) {
        const side = Math.ceil(args.minSide / step) * step;
        return `${side}x${side}`;
      }
      let side = Math.floor(args.maxSide / step) * step;
      if (args.maxPixels) side = Math.min(side, Math.floor(Math.sqrt(args.maxPixels) / step) * step);
      return `${side}x${side}`;
    }
    default:
      throw new Error(`${where}: no sample value for a ${name} rule; teach sample() one`);
  }
}

function sampleAll(mappings: Record<string, MappingDeclaration> | undefined, bound: Bound, where: string): Record<string, unknown> {
  return Object.fromEntries(Object.entries(mappings ?? {}).map(([name, m]) => [name, sample(m.rule, bound, `${where}.${name}`)]));
}

const PNG = await makePng(32, 32, { r: 30, g: 120, b: 200 });
const DATA_URL = `data:image/png;base64,${PNG.toString('base64')}`;

function fullestRequest(route: FluxRoute, bound: Bound): { url: string; payload: Record<string, unknown> } {
  const where = `${route.model.id} ${route.op}`;
  const payload: Record<string, unknown> = {
    model: route.model.id,
    prompt: 'a lighthouse on a cliff at dawn',
    ...sampleAll(route.declared.params, bound, `${where} params`),
    options: sampleAll(route.declared.options, bound, `${where} options`),
  };
  if (route.op === 'generate') return { url: '/v1/generate', payload };
  const images = Array.from({ length: route.declared.images?.max ?? 1 }, () => DATA_URL);
  return { url: '/v1/edit', payload: { ...payload, mode: route.op, image: images } };
}

/** The upstream fields a declared mapping writes (its `to`, or its own name). */
function writtenFields(mappings: Record<string, MappingDeclaration> | undefined): string[] {
  return Object.entries(mappings ?? {}).flatMap(([name, m]) => (m.to === undefined ? [name] : typeof m.to === 'string' ? [m.to] : m.to));
}

// ------------------------------------------------------------------ the tests

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ RATE_LIMIT_RPM: '100000' });
});
afterAll(async () => h.close());

describe('the Flux routes found in the catalogue', () => {
  it('include Kontext and FLUX.2, generate and edit', () => {
    const found = ROUTES.map((r) => `${r.model.id} ${r.op}`);
    for (const id of ['flux-kontext-max', 'flux-kontext-pro', 'flux-2-pro', 'flux-2-flex']) {
      expect(found).toContain(`${id} generate`);
      expect(found).toContain(`${id} edit`);
    }
  });

  it('each have a vendor request schema, but for the models AiHubMix shapes itself', () => {
    const withoutSchema = [...new Set(ROUTES.filter((r) => vendorSchemaName(r.endpoint) === undefined).map((r) => r.model.id))].sort();
    expect(withoutSchema).toEqual(Object.keys(AIHUBMIX_SHAPED).sort());
  });
});

describe.each(CHECKED.flatMap((route) => (['upper', 'lower'] as const).map((bound) => [`${route.model.id} ${route.op}, values at their ${bound} bounds`, route, bound] as const)))(
  '%s',
  (_title, route, bound) => {
    let sent: Record<string, unknown>;

    beforeAll(async () => {
      h.simulator.reset();
      const { url, payload } = fullestRequest(route, bound);
      const res = await h.app.inject({ method: 'POST', url, headers: h.auth, payload });
      expect(res.statusCode, res.body).toBe(200);
      const submission = h.simulator.received.find((r) => r.method === 'POST');
      sent = (submission?.json as { input: Record<string, unknown> }).input;
    });

    it(`sends a body the vendor's schema (${vendorSchemaName(route.endpoint)}) takes, with no field it does not declare`, () => {
      expect(vendorErrors(route.endpoint, sent)).toEqual([]);
    });

    it('sends every parameter and option it was given, and every image', () => {
      const expected = [...writtenFields(route.declared.params), ...writtenFields(route.declared.options)];
      for (const field of expected) expect(sent, field).toHaveProperty(field.split('.'));
      const images = Object.keys(sent).filter((key) => /^input_image(_\d+)?$/.test(key));
      expect(images).toHaveLength(route.op === 'generate' ? 0 : (route.declared.images?.max ?? 1));
    });
  },
);

describe('the vendor schema check itself', () => {
  it('refuses a field the schema does not declare, and a value out of its range', () => {
    expect(vendorErrors('/v1/flux-2-pro', { prompt: 'p', aspect_ratio: '16:9' }).join()).toContain('"additionalProperty":"aspect_ratio"');
    expect(vendorErrors('/v1/flux-2-flex', { prompt: 'p', guidance: 11 }).join()).toContain('guidance');
    expect(vendorErrors('/v1/flux-kontext-pro', { prompt: 'p', input_image_5: 'abc' }).join()).toContain('input_image_5');
  });
});
