/**
 * Every answer carries X-Content-Type-Options: nosniff; API answers Cache-Control: no-store
 * (image files keep their own caching); the HTML docs page a Content-Security-Policy that allows
 * its inline style by hash (never 'unsafe-inline'), frame-ancestors 'none' and X-Frame-Options.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { htmlPageHeaders } from '../src/http/security-headers.js';
import { startHarness, type Harness } from './harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => h.close());

const expectApiHeaders = (res: { headers: Record<string, unknown> }) => {
  expect(res.headers['x-content-type-options']).toBe('nosniff');
  expect(res.headers['cache-control']).toBe('no-store');
};

describe('API answers', () => {
  it('success, error, 404 and health answers carry nosniff and no-store', async () => {
    const generated = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'headers' } });
    expect(generated.statusCode).toBe(200);
    expectApiHeaders(generated);
    const refused = await h.app.inject({ method: 'POST', url: '/v1/generate', payload: { model: 'gpt-image-1', prompt: 'x' } });
    expect(refused.statusCode).toBe(401);
    expectApiHeaders(refused);
    const invalid = await h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload: { model: 'gpt-image-1' } });
    expect(invalid.statusCode).toBe(400);
    expectApiHeaders(invalid);
    const missing = await h.app.inject({ method: 'GET', url: '/no/such/route' });
    expect(missing.statusCode).toBe(404);
    expectApiHeaders(missing);
    for (const url of ['/healthz', '/readyz', '/v1/models']) expectApiHeaders(await h.app.inject({ method: 'GET', url, headers: h.auth }));
  });

  it('an event stream carries nosniff and its own no-cache', async () => {
    const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'streamed', stream: true } });
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['cache-control']).toMatch(/no-cache/);
  });

  it('an image file keeps its own caching headers, and nosniff', async () => {
    const generated = (await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'cached' } })).json();
    const url = new URL(generated.images[0].url);
    const image = await h.app.inject({ method: 'GET', url: url.pathname + url.search });
    expect(image.statusCode).toBe(200);
    expect(image.headers['cache-control']).toMatch(/^private, max-age=\d+, immutable$/);
    expect(image.headers['x-content-type-options']).toBe('nosniff');
    // A refused image URL is an API error: not cached.
    const forged = await h.app.inject({ method: 'GET', url: `${url.pathname}?exp=${url.searchParams.get('exp')}&sig=forged` });
    expect(forged.statusCode).toBe(403);
    expectApiHeaders(forged);
  });
});

describe('the HTML docs page', () => {
  it('has a CSP without unsafe-inline that allows its inline style by hash, and may not be framed', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/docs' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/html/);
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['x-frame-options']).toBe('DENY');
    const csp = String(res.headers['content-security-policy']);
    const directives = Object.fromEntries(csp.split(';').map((d) => d.trim().split(/\s+/)).map(([name, ...values]) => [name, values]));
    expect(directives['frame-ancestors']).toEqual(["'none'"]);
    expect(directives['default-src']).toEqual(["'none'"]);
    expect(csp).not.toContain('unsafe-inline');
    // Every inline style of the page is allowed by its hash, and nothing else is.
    const styles = [...res.body.matchAll(/<style>([\s\S]*?)<\/style>/g)].map((m) => `'sha256-${createHash('sha256').update(m[1]!).digest('base64')}'`);
    expect(styles.length).toBeGreaterThan(0);
    expect(directives['style-src']!.sort()).toEqual([...new Set(styles)].sort());
    // No script on the page, and none allowed.
    expect(res.body).not.toMatch(/<script/i);
    expect(directives['script-src']).toBeUndefined();
  });

  it('htmlPageHeaders hashes inline scripts and styles, not scripts loaded by src', () => {
    const headers = htmlPageHeaders('<style>a{}</style><script>run()</script><script src="/x.js"></script>');
    const hash = (s: string) => `'sha256-${createHash('sha256').update(s).digest('base64')}'`;
    expect(headers['content-security-policy']).toContain(`style-src ${hash('a{}')}`);
    expect(headers['content-security-policy']).toContain(`script-src ${hash('run()')};`);
    expect(headers['content-security-policy']).toContain("frame-ancestors 'none'");
    expect(headers['x-frame-options']).toBe('DENY');
  });

  it('the OpenAPI document carries nosniff', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/openapi.yaml' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-content-type-options']).toBe('nosniff');
  });
});
