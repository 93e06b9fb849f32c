/**
 * Ideogram's own schema as the bound of what the gateway sends: every Ideogram 3.0 route of the
 * catalogue, and every legacy reframe route (found in the catalogue, so a new route is covered as
 * soon as it is declared), gets the fullest request the catalogue allows, sent through the gateway;
 * the multipart body the upstream simulator received on loopback must validate against the vendor's
 * request schema for that path (test/fixtures/vendor-schemas/ideogram.json, copied from
 * ../shared/upstream-specs), with no field the schema does not declare. Every value each field's
 * rule allows (enums whole, ranges at both ends) is checked against the vendor's schema of the
 * field it is written to as well.
 */
import { readFileSync } from 'node:fs';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODELS } from '../src/catalogue/models.js';
import type { EditMode, FieldMapping, UpstreamRoute } from '../src/catalogue/model-spec.js';
import type { ParamRule } from '../src/catalogue/param-rule.js';
import type { RecordedRequest } from '../src/simulator/upstream-simulator.js';
import { makePng, multipartBody, startHarness, type Harness } from './harness.js';

interface VendorSchemas {
  routes: Record<string, { properties: Record<string, unknown>; required?: string[] }>;
  components: { schemas: Record<string, unknown> };
}
const vendor = JSON.parse(readFileSync(new URL('./fixtures/vendor-schemas/ideogram.json', import.meta.url), 'utf8')) as VendorSchemas;

/** AiHubMix serves Ideogram's API under /ideogram: the vendor's path is the rest. */
const vendorPath = (route: UpstreamRoute) => route.path.replace(/^\/ideogram(?=\/)/, '');

interface CheckedRoute {
  title: string;
  model: string;
  mode?: EditMode;
  route: UpstreamRoute;
}

/**
 * Every Ideogram 3.0 route the catalogue declares (generate and each edit mode of each model calling
 * /ideogram-v3/), and every legacy reframe (an Ideogram edit route in mode reframe outside /ideogram-v3/).
 */
const CHECKED_ROUTES: CheckedRoute[] = MODELS.flatMap((model) => {
  const routes: CheckedRoute[] = [];
  if (model.generate) routes.push({ title: `${model.id} generate`, model: model.id, route: model.generate });
  for (const [mode, route] of Object.entries(model.edit ?? {}) as Array<[EditMode, UpstreamRoute]>) {
    routes.push({ title: `${model.id} edit mode ${mode}`, model: model.id, mode, route });
  }
  return routes.filter((r) => r.route.path.includes('/ideogram-v3/') || (r.mode === 'reframe' && r.route.family.startsWith('ideogram-')));
});
const LEGACY_REFRAMES = CHECKED_ROUTES.filter((r) => r.mode === 'reframe' && !r.route.path.includes('/ideogram-v3/'));

// One document: the components, and each route's schema closed to fields it does not declare.
const ajv = new Ajv2020({ strict: false, allErrors: true, coerceTypes: true, formats: { binary: true, double: true } });
ajv.addSchema({
  $id: 'ideogram',
  components: vendor.components,
  closed: Object.fromEntries(Object.entries(vendor.routes).map(([path, schema]) => [path, { ...schema, additionalProperties: false }])),
});
const pointer = (path: string) => path.replaceAll('~', '~0').replaceAll('/', '~1');
function bodyValidator(path: string): ValidateFunction {
  const check = ajv.getSchema(`ideogram#/closed/${pointer(path)}`);
  if (!check) throw new Error(`no vendor schema for ${path}`);
  return check;
}
/** A validator of one property of a vendor route (its `$ref`s resolved in the same document). */
function propertyValidator(path: string, property: string): ValidateFunction {
  const check = ajv.getSchema(`ideogram#/closed/${pointer(path)}/properties/${pointer(property)}`);
  if (!check) throw new Error(`${path} declares no field ${property}`);
  return check;
}
const problems = (check: ValidateFunction, value: unknown): string[] =>
  check(value) ? [] : (check.errors ?? []).map((e) => `${e.instancePath || '(body)'} ${e.message} ${JSON.stringify(e.params)}`);

/** Every value a rule allows that can be listed, or its bounds; undefined for a rule the test cannot enumerate. */
function allowedValues(rule: ParamRule): unknown[] | undefined {
  if (rule.values && rule.kind === 'enum') return [...rule.values];
  if (rule.range) return [rule.range.min, rule.range.max];
  if (rule.kind === 'boolean') return [true, false];
  if (rule.kind === 'text' && rule.maxLength !== undefined) return ['a', 'x'.repeat(Math.min(rule.maxLength, 200))];
  return undefined;
}

/** One valid value for a field: the fullest request sends the top of a range and a real text. */
function fullestValue(name: string, rule: ParamRule): unknown {
  const values = allowedValues(rule);
  if (!values) throw new Error(`no value can be built for ${name} (${rule.allowed}): teach this test the rule`);
  return values[values.length - 1];
}

const SOURCE = await makePng(64, 64, { r: 200, g: 40, b: 40 });
const MASK = await makePng(64, 64, { r: 0, g: 0, b: 0 }, 0);
const STYLE = await makePng(16, 16, { r: 10, g: 200, b: 10 });
const PROMPT = 'A lighthouse on a cliff at dusk, the words "OPEN LATE" painted on its side';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ RATE_LIMIT_RPM: '100000' });
});
afterAll(async () => h.close());

/** The fullest request the route allows, through the gateway: every parameter, option, image, mask and style reference it takes. */
async function sendFullest({ model, mode, route }: CheckedRoute): Promise<{ status: number; body: string; sent: RecordedRequest | undefined }> {
  const params: Record<string, unknown> = {};
  for (const [name, mapping] of Object.entries(route.params) as Array<[string, FieldMapping]>) params[name] = fullestValue(name, mapping.rule);
  const options: Record<string, unknown> = {};
  for (const [name, mapping] of Object.entries(route.options)) options[name] = fullestValue(`options.${name}`, mapping.rule);
  // n at its top makes the most images; the fullest request keeps it there.
  const styleCount = route.styleReferences?.max ?? 0;
  h.simulator.reset();
  let res;
  if (!mode) {
    const styles = styleCount > 0 ? { style_reference_images: Array.from({ length: styleCount }, () => `data:image/png;base64,${STYLE.toString('base64')}`) } : {};
    res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: h.auth,
      payload: { model, ...(route.prompt ? { prompt: PROMPT } : {}), ...params, options: { ...options, ...styles } },
    });
  } else {
    const fields: Record<string, string> = { model, mode, ...Object.fromEntries(Object.entries(params).map(([k, v]) => [k, String(v)])) };
    if (route.prompt) fields.prompt = PROMPT;
    if (Object.keys(options).length > 0) fields.options = JSON.stringify(options);
    const files = Array.from({ length: route.images?.max ?? 1 }, (_, i) => ({ field: 'image', filename: `source-${i}.png`, bytes: SOURCE }));
    if (route.mask) files.push({ field: 'mask', filename: 'mask.png', bytes: MASK });
    for (let i = 0; i < styleCount; i++) files.push({ field: 'style_reference_images', filename: `style-${i}.png`, bytes: STYLE });
    const { payload, headers } = multipartBody(fields, files);
    res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
  }
  return { status: res.statusCode, body: res.body, sent: h.simulator.received[0] };
}

/**
 * The received multipart body as the object the vendor schema describes: text fields as sent
 * (ajv coerces "8" to an integer where the schema wants one), JSON text as its value, and files by
 * field: an array where the vendor's field is an array of files, else the one file's name.
 */
function asVendorBody(path: string, sent: RecordedRequest): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(sent.fields ?? {})) {
    const parse = (v: string) => (/^[[{]/.test(v) ? (JSON.parse(v) as unknown) : v);
    body[name] = Array.isArray(value) ? value.map(parse) : parse(value);
  }
  const byField = new Map<string, string[]>();
  for (const file of sent.files ?? []) byField.set(file.field, [...(byField.get(file.field) ?? []), file.filename]);
  for (const [field, names] of byField) {
    const declared = vendor.routes[path]!.properties[field] as { type?: unknown } | undefined;
    body[field] = declared?.type === 'array' ? names : names.length === 1 ? names[0] : names;
  }
  return body;
}

describe('the Ideogram 3.0 and legacy reframe routes of the catalogue', () => {
  it('are found in the catalogue, and each calls a path the vendor schema fixture covers', () => {
    expect(CHECKED_ROUTES.map((r) => vendorPath(r.route)).sort()).toEqual([
      ...Array<string>(6).fill('/reframe'),
      '/v1/ideogram-v3/edit',
      '/v1/ideogram-v3/generate',
      '/v1/ideogram-v3/reframe',
      '/v1/ideogram-v3/remix',
      '/v1/ideogram-v3/replace-background',
    ]);
    for (const r of CHECKED_ROUTES) expect(Object.keys(vendor.routes), r.title).toContain(vendorPath(r.route));
  });

  it('include a legacy reframe for every legacy model, each sending its own model, and style_type only from V_2 on', () => {
    const fixedModel = (r: CheckedRoute) => (r.route.fixed as { model?: unknown } | undefined)?.model;
    expect(LEGACY_REFRAMES.map((r) => [r.model, fixedModel(r)])).toEqual([
      ['ideogram-v2', 'V_2'],
      ['ideogram-v2-turbo', 'V_2_TURBO'],
      ['ideogram-v2a', 'V_2A'],
      ['ideogram-v2a-turbo', 'V_2A_TURBO'],
      ['ideogram-v1', 'V_1'],
      ['ideogram-v1-turbo', 'V_1_TURBO'],
    ]);
    // Ideogram's StyleType: "only applicable for models V_2 and above and should not be specified for model versions V_1".
    for (const r of LEGACY_REFRAMES) {
      const v1 = String(fixedModel(r)).startsWith('V_1');
      expect(r.route.params.style === undefined, r.title).toBe(v1);
      if (v1) expect(r.route.refused?.style, r.title).toMatch(/V_2 and later/);
    }
  });

  it('the check itself refuses what the vendor does not define: an edit with aspect_ratio, a reframe without resolution', () => {
    const edit = bodyValidator('/v1/ideogram-v3/edit');
    expect(problems(edit, { prompt: 'x', image: 'a.png', mask: 'm.png', aspect_ratio: '16x9' }).join('\n')).toMatch(/additionalProperty.*aspect_ratio/);
    expect(problems(edit, { prompt: 'x', image: 'a.png', mask: 'm.png', style_type: 'ANIME' }).join('\n')).toMatch(/style_type/);
    const reframe = bodyValidator('/v1/ideogram-v3/reframe');
    expect(problems(reframe, { image: 'a.png' }).join('\n')).toMatch(/resolution/);
    expect(problems(reframe, { image: 'a.png', resolution: '1000x1000' }).join('\n')).toMatch(/allowedValues/);
    expect(problems(reframe, { image: 'a.png', resolution: '1024x1024', num_images: '9' }).join('\n')).toMatch(/num_images/);
  });

  it('the check refuses a legacy reframe without model, with a V3 resolution, or with a prompt', () => {
    const legacy = bodyValidator('/reframe');
    expect(problems(legacy, { image_file: 'a.png', model: 'V_2', resolution: 'RESOLUTION_1024_1024' })).toEqual([]);
    expect(problems(legacy, { image_file: 'a.png', resolution: 'RESOLUTION_1024_1024' }).join('\n')).toMatch(/model/);
    expect(problems(legacy, { image_file: 'a.png', model: 'V_2', resolution: '1024x1024' }).join('\n')).toMatch(/allowedValues/);
    expect(problems(legacy, { image_file: 'a.png', model: 'V_2', resolution: 'RESOLUTION_800_1280' }).join('\n')).toMatch(/allowedValues/);
    expect(problems(legacy, { image_file: 'a.png', model: 'V_2', resolution: 'RESOLUTION_1024_1024', prompt: 'x' }).join('\n')).toMatch(/additionalProperty.*prompt/);
    expect(problems(legacy, { image: 'a.png', model: 'V_2', resolution: 'RESOLUTION_1024_1024' }).join('\n')).toMatch(/image_file/);
  });
});

describe.each(CHECKED_ROUTES.map((r) => [r.title, r] as const))('%s', (_title, checked) => {
  const path = vendorPath(checked.route);

  it('sends, for its fullest request, a body that validates against the vendor schema with no undeclared field', async () => {
    const { status, body, sent } = await sendFullest(checked);
    expect(status, body).toBe(200);
    expect(sent?.path).toBe(checked.route.path);
    expect(sent?.headers['content-type']).toMatch(/^multipart\/form-data/);
    expect(problems(bodyValidator(path), asVendorBody(path, sent!))).toEqual([]);
  });

  it('allows in each field only values the vendor schema allows for the field it is written to', () => {
    const mappings: Array<[string, FieldMapping]> = [
      ...(Object.entries(checked.route.params) as Array<[string, FieldMapping]>),
      ...Object.entries(checked.route.options).map(([name, m]): [string, FieldMapping] => [name, m]),
    ];
    expect(mappings.length).toBeGreaterThan(0);
    for (const [name, mapping] of mappings) {
      // Ideogram's fields each go to one path (a list of paths is Flux's size as width/height).
      const target = mapping.to ?? name;
      if (typeof target !== 'string') throw new Error(`${name}: an Ideogram field mapped to several paths`);
      const check = propertyValidator(path, target);
      const values = allowedValues(mapping.rule);
      expect(values, `${name}: ${mapping.rule.allowed}`).toBeDefined();
      for (const value of values!) {
        const written = mapping.write ? mapping.write(value) : value;
        expect(problems(check, written), `${name} = ${JSON.stringify(value)} written as ${target} = ${JSON.stringify(written)}`).toEqual([]);
      }
    }
  });

  it('writes its images, mask and style references to file fields the vendor declares', () => {
    const declared = vendor.routes[path]!.properties;
    if (checked.route.images) expect(declared).toHaveProperty(checked.route.images.to);
    if (checked.route.mask) expect(declared).toHaveProperty(checked.route.mask.to);
    if (checked.route.styleReferences) expect(declared[checked.route.styleReferences.to]).toMatchObject({ type: 'array', items: { format: 'binary' } });
    if (checked.route.prompt) expect(declared).toHaveProperty(checked.route.prompt.to);
    else expect(declared).not.toHaveProperty('prompt');
  });
});
