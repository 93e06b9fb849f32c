import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';
import { parse } from 'yaml';
import { describeModel } from '../catalogue/catalogue.js';
import { htmlPageHeaders } from '../http/security-headers.js';

const SPEC_PATH = new URL('../../openapi.yaml', import.meta.url);
/** The same spec as JSON, written by the build next to dist/'s modules (scripts/copy-catalogue.mjs): absent under src/. */
const SPEC_JSON_PATH = new URL('../openapi.json', import.meta.url);
const METHODS = ['get', 'post', 'put', 'patch', 'delete'] as const;

const escape = (s: unknown) =>
  String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

type Json = Record<string, unknown>;

/**
 * The page's icon, inline (the CSP's img-src allows data: URLs), so a browser asks for no
 * /favicon.ico, which the gateway does not serve: a picture on the console's accent colour, in
 * base64 (the page names no http(s) URL, not even the SVG namespace). console/index.html carries
 * the same data URL.
 */
const ICON_SVG =
  "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'><rect width='32' height='32' rx='6' fill='#2454c5'/>" +
  "<circle cx='22' cy='10' r='3.5' fill='#fff'/><path d='M4 26l8-11 6 7 4-5 6 9z' fill='#fff'/></svg>";
export const ICON = `data:image/svg+xml;base64,${Buffer.from(ICON_SVG).toString('base64')}`;

/** `**bold**` and `*italic*` / `_italic_` outside code spans; `a*b`, `gpt-image-*` and `STREAM_KEEPALIVE_MS` stay as written. */
const emphasis = (s: string) =>
  s
    .replace(/\*\*(?=\S)(.+?)(?<=\S)\*\*/g, '<strong>$1</strong>')
    .replace(/(?<![\w*])\*(?=[^\s*])([^*]+?)(?<=\S)\*(?![\w*])/g, '<em>$1</em>')
    .replace(/(?<![\w])_(?=[^\s_])([^_]+?)(?<=\S)_(?!\w)/g, '<em>$1</em>');

/** Inline Markdown of OpenAPI descriptions (`code`, **bold**, *italic*), after escaping; line breaks are kept by the page's CSS. */
export const prose = (s: unknown) =>
  escape(s)
    .split(/(`[^`]+`)/)
    .map((part, i) => (i % 2 ? `<code>${part.slice(1, -1)}</code>` : emphasis(part)))
    .join('');

/** Follows a local `$ref` (`#/components/...`) to what it names. */
function resolve(spec: Json, node: unknown): Json {
  let current = node as Json;
  for (let depth = 0; depth < 10 && current && typeof current.$ref === 'string'; depth++) {
    const path = String(current.$ref).replace(/^#\//, '').split('/');
    current = path.reduce<Json>((at, key) => (at?.[key] ?? {}) as Json, spec);
  }
  return current ?? {};
}

/** A schema's type in a few words: `string`, `one of a, b`, `array of ...`. */
function typeOf(spec: Json, schema: unknown): string {
  const s = resolve(spec, schema);
  if (Array.isArray(s.enum)) return `one of ${s.enum.join(', ')}`;
  if (Array.isArray(s.oneOf)) return s.oneOf.map((x) => typeOf(spec, x)).join(' or ');
  if (s.type === 'array') return `array of ${typeOf(spec, s.items)}`;
  if (Array.isArray(s.type)) return s.type.join(' or ');
  return String(s.type ?? (s.properties ? 'object' : 'any'));
}

function fieldsTable(spec: Json, schema: unknown): string {
  const s = resolve(spec, schema);
  const properties = (s.properties ?? {}) as Record<string, unknown>;
  const required = new Set((s.required as string[] | undefined) ?? []);
  const rows = Object.entries(properties).map(([name, prop]) => {
    const p = resolve(spec, prop);
    const description = (prop as Json).description ?? p.description ?? '';
    return `<tr><td><code>${escape(name)}</code>${required.has(name) ? ' <b>required</b>' : ''}</td><td>${escape(typeOf(spec, prop))}</td><td>${prose(description)}</td></tr>`;
  });
  return rows.length ? `<table class="f"><tr><th>field</th><th>type</th><th>meaning</th></tr>${rows.join('')}</table>` : '';
}

function operationSection(spec: Json, method: string, path: string, op: Json): string {
  const params = ((op.parameters as Json[] | undefined) ?? [])
    .map((p) => resolve(spec, p))
    .map((p) => `<tr><td><code>${escape(p.name)}</code> (${escape(p.in)})${p.required ? ' <b>required</b>' : ''}</td><td>${escape(typeOf(spec, p.schema))}</td><td>${prose(p.description)}</td></tr>`)
    .join('');
  const body = resolve(spec, op.requestBody);
  const bodies = Object.entries((body.content ?? {}) as Record<string, Json>)
    .map(([type, media]) => `<p>Body (<code>${escape(type)}</code>):</p>${fieldsTable(spec, media.schema)}`)
    .join('');
  const responses = Object.entries((op.responses ?? {}) as Json)
    .map(([status, r]) => `<li><code>${escape(status)}</code> ${prose(resolve(spec, r).description)}</li>`)
    .join('');
  const open = Array.isArray(op.security) && op.security.length === 0;
  return `<section id="${escape(op.operationId ?? `${method}-${path}`)}">
<h3><span class="m">${method.toUpperCase()}</span> ${escape(path)}${open ? ' <small>(no key)</small>' : ''}</h3>
<p>${prose(op.summary)}</p>${op.description ? `<p class="d">${prose(op.description)}</p>` : ''}
${params ? `<p>Parameters:</p><table class="f"><tr><th>name</th><th>type</th><th>meaning</th></tr>${params}</table>` : ''}${bodies}
<p>Responses:</p><ul>${responses}</ul></section>`;
}

/** The API reference as one self-contained page: no scripts, no CDN, works on a closed network. */
function renderDocs(spec: Json, models: ReturnType<typeof describeModel>[]): string {
  const info = (spec.info ?? {}) as Json;
  const paths = (spec.paths ?? {}) as Record<string, Json>;
  const sections: string[] = [];
  for (const [path, item] of Object.entries(paths)) {
    for (const method of METHODS) {
      const op = item[method] as Json | undefined;
      if (op) sections.push(operationSection(spec, method, path, op));
    }
  }
  const rows = models
    .map(
      (m) => `<tr><td><code>${escape(m.id)}</code><br><small>${escape(m.aliases.join(', '))}</small></td><td>${escape(m.operations.join(', '))}${'edit_modes' in m && m.edit_modes ? `<br><small>modes: ${escape(m.edit_modes.join(', '))}</small>` : ''}</td><td>${m.max_n}</td><td>${escape(Object.entries(m.parameters).map(([k, v]) => `${k}: ${v}`).join('\n'))}</td><td>${escape(Object.entries(m.options).map(([k, v]) => `${k}: ${v}`).join('\n'))}</td><td>${m.async ? 'yes' : 'no'}</td><td>${'price_by_option' in m && m.price_by_option ? escape(`by ${m.price_by_option.option}:\n${Object.entries(m.price_by_option.per_image_usd).map(([value, usd]) => `${value} ${usd}${value === m.price_by_option!.default ? ' (default)' : ''}`).join('\n')}`) : (m.price_per_image_usd ?? '—')}</td></tr>`,
    )
    .join('\n');
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escape(info.title)} API reference</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="${ICON}">
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
h3{margin:1.5rem 0 .25rem}.m{display:inline-block;min-width:4rem;color:#fff;background:#2b6cb0;border-radius:4px;padding:0 .4rem;font-size:.8rem;text-align:center}
code{background:#f3f3f3;padding:0 .2rem;border-radius:3px;overflow-wrap:anywhere}.d{white-space:pre-wrap;color:#444}
table{border-collapse:collapse;width:100%;font-size:13px}td,th{border:1px solid #ddd;padding:.3rem;vertical-align:top;text-align:left;white-space:pre-wrap;overflow-wrap:anywhere}
table.f td,table.f th{white-space:normal}.s{overflow-x:auto}.s table{min-width:48rem}</style></head>
<body><h1>${escape(info.title)} <small>${escape(info.version)}</small></h1><p class="d">${prose(info.description)}</p>
<p>The machine-readable specification: <a href="/openapi.yaml">/openapi.yaml</a>.</p>
<h2>Authentication</h2><p>Every <code>/v1</code> route except image downloads needs a client key:
<code>Authorization: Bearer &lt;key&gt;</code> or <code>x-api-key: &lt;key&gt;</code>. Image URLs
(<code>/v1/images/{id}?exp=…&amp;sig=…</code>) are signed capabilities and need no header. Every answer carries
<code>x-request-id</code>; errors are <code>{"error":{"code","message","details","request_id"}}</code>.</p>
<h2>Endpoints</h2>${sections.join('\n')}
<h2 id="models">Models</h2><p>Read from the gateway's catalogue (also at <code>GET /v1/models</code>).</p>
<div class="s" role="region" aria-label="Models" tabindex="0"><table><thead><tr><th>model</th><th>operations</th><th>max n</th><th>parameters</th><th>options</th><th>async upstream</th><th>USD / image</th></tr></thead><tbody>${rows}</tbody></table></div>
</body></html>`;
}

export async function docsRoutes(app: FastifyInstance): Promise<void> {
  const specText = await readFile(SPEC_PATH, 'utf8');
  // The built gateway reads the JSON: parsing the YAML held resident memory for good (bench/README.md, seventh pass).
  const spec = (existsSync(SPEC_JSON_PATH) ? JSON.parse(await readFile(SPEC_JSON_PATH, 'utf8')) : parse(specText)) as Json;
  // Rendered again only when the catalogue was replaced (a CATALOGUE_FILE reload).
  let rendered: { models: unknown; page: string; headers: ReturnType<typeof htmlPageHeaders> } | undefined;
  const docsPage = () => {
    const models = app.catalogue.models;
    if (rendered?.models !== models) {
      const page = renderDocs(spec, models.map(describeModel));
      // Its inline style is allowed by its hash; the page runs no script and is never framed.
      rendered = { models, page, headers: htmlPageHeaders(page) };
    }
    return rendered;
  };
  docsPage();
  app.get('/openapi.yaml', async (_request, reply) => reply.type('application/yaml; charset=utf-8').send(specText));
  app.get('/docs', async (_request, reply) => {
    const { page, headers } = docsPage();
    return reply.type('text/html; charset=utf-8').headers(headers).send(page);
  });
}
