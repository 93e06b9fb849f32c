import { readFile } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';
import { parse } from 'yaml';
import { describeModel } from '../catalogue/catalogue.js';

const SPEC_PATH = new URL('../../openapi.yaml', import.meta.url);
const METHODS = ['get', 'post', 'put', 'patch', 'delete'] as const;

const escape = (s: unknown) =>
  String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

type Json = Record<string, unknown>;

/** The API reference as one self-contained page: no scripts, no CDN, works on a closed network. */
function renderDocs(spec: Json, models: ReturnType<typeof describeModel>[]): string {
  const info = (spec.info ?? {}) as Json;
  const paths = (spec.paths ?? {}) as Record<string, Json>;
  const sections: string[] = [];
  for (const [path, item] of Object.entries(paths)) {
    for (const method of METHODS) {
      const op = item[method] as Json | undefined;
      if (!op) continue;
      const params = ((op.parameters as Json[] | undefined) ?? [])
        .map((p) => (p.$ref ? String(p.$ref).split('/').pop() : `${p.name} (${p.in})`))
        .map((p) => `<code>${escape(p)}</code>`)
        .join(' ');
      const responses = Object.keys((op.responses ?? {}) as Json).map((s) => `<code>${escape(s)}</code>`).join(' ');
      sections.push(`<section id="${escape(op.operationId ?? `${method}-${path}`)}">
<h3><span class="m">${method.toUpperCase()}</span> ${escape(path)}</h3>
<p>${escape(op.summary)}</p>${op.description ? `<p class="d">${escape(op.description)}</p>` : ''}
${params ? `<p>Parameters: ${params}</p>` : ''}<p>Responses: ${responses}</p></section>`);
    }
  }
  const rows = models
    .map(
      (m) => `<tr><td><code>${escape(m.id)}</code><br><small>${escape(m.aliases.join(', '))}</small></td><td>${escape(m.operations.join(', '))}${'edit_modes' in m && m.edit_modes ? `<br><small>modes: ${escape(m.edit_modes.join(', '))}</small>` : ''}</td><td>${m.max_n}</td><td>${escape(Object.entries(m.parameters).map(([k, v]) => `${k}: ${v}`).join('\n'))}</td><td>${escape(Object.entries(m.options).map(([k, v]) => `${k}: ${v}`).join('\n'))}</td><td>${m.async ? 'yes' : 'no'}</td><td>${m.price_per_image_usd ?? '—'}</td></tr>`,
    )
    .join('\n');
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escape(info.title)} API reference</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
h3{margin:1.5rem 0 .25rem}.m{display:inline-block;min-width:4rem;color:#fff;background:#2b6cb0;border-radius:4px;padding:0 .4rem;font-size:.8rem;text-align:center}
code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}.d{white-space:pre-wrap;color:#444}
table{border-collapse:collapse;width:100%;font-size:13px}td,th{border:1px solid #ddd;padding:.3rem;vertical-align:top;text-align:left;white-space:pre-wrap}</style></head>
<body><h1>${escape(info.title)} <small>${escape(info.version)}</small></h1><p class="d">${escape(info.description)}</p>
<p>The machine-readable specification: <a href="/openapi.yaml">/openapi.yaml</a>.</p>
<h2>Endpoints</h2>${sections.join('\n')}
<h2 id="models">Models</h2><p>Read from the gateway's catalogue (also at <code>GET /v1/models</code>).</p>
<table><thead><tr><th>model</th><th>operations</th><th>max n</th><th>parameters</th><th>options</th><th>async upstream</th><th>USD / image</th></tr></thead><tbody>${rows}</tbody></table>
</body></html>`;
}

export async function docsRoutes(app: FastifyInstance): Promise<void> {
  const specText = await readFile(SPEC_PATH, 'utf8');
  const page = renderDocs(parse(specText) as Json, app.catalogue.models.map(describeModel));
  app.get('/openapi.yaml', async (_request, reply) => reply.type('application/yaml; charset=utf-8').send(specText));
  app.get('/docs', async (_request, reply) => reply.type('text/html; charset=utf-8').send(page));
}
