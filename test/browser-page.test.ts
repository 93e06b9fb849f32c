/**
 * A real page in headless Chromium on a listed origin: its backend mints a browser token with a
 * client key, the page calls the gateway on another origin with that token and shows the image.
 * The same page served from an origin not in CORS_ORIGINS cannot read the gateway's answers.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser } from 'playwright-core';
import { chromiumProblem, launchChromium } from './browser.js';
import { CLIENT_KEY, startListening, type ListeningHarness } from './harness.js';

const PAGE = `<!doctype html>
<html><body><img id="result" alt="result"><script>
async function run() {
  const { token, gateway } = await (await fetch('/api/image-token', { method: 'POST' })).json();
  const out = {};
  try {
    const res = await fetch(gateway + '/v1/generate', {
      method: 'POST',
      headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-image-1', prompt: 'a lighthouse from a page' }),
    });
    out.status = res.status;
    out.requestId = res.headers.get('x-request-id');
    out.imagesRemaining = res.headers.get('x-ratelimit-token-images-remaining');
    const body = await res.json();
    const img = document.getElementById('result');
    await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = reject; img.src = body.images[0].url; });
    out.imageWidth = img.naturalWidth;
    const usage = await fetch(gateway + '/v1/usage', { headers: { Authorization: 'Bearer ' + token } });
    out.usageStatus = usage.status;
  } catch (err) {
    out.error = String(err);
  }
  return out;
}
</script></body></html>`;

describe.skipIf(chromiumProblem !== undefined)('a browser page calling the gateway with a token (skipped when Chromium is absent and REQUIRE_SERVICES is unset)', () => {
  let browser: Browser;
  let h: ListeningHarness;
  let backend: Server;
  let pagePort: number;
  const minted: string[] = [];

  beforeAll(async () => {
    // The page's own server, which is also its backend: it holds the client key, the page never does.
    backend = createServer(async (req, res) => {
      if (req.method === 'POST' && req.url === '/api/image-token') {
        const mint = await fetch(`${h.base}/v1/tokens`, {
          method: 'POST',
          headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
          body: JSON.stringify({ ttl_seconds: 120, models: ['gpt-image-1'], max_images: 2 }),
        });
        const { token } = (await mint.json()) as { token: string };
        minted.push(token);
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, gateway: h.base }));
        return;
      }
      res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    });
    await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
    pagePort = (backend.address() as AddressInfo).port;
    h = await startListening({ CORS_ORIGINS: `http://127.0.0.1:${pagePort}` });
    browser = await launchChromium();
  });

  afterAll(async () => {
    await browser?.close();
    await h?.close();
    await new Promise((resolve) => backend?.close(resolve));
  });

  it('generates and shows the image on a listed origin, reads the answer headers, and the token cannot read usage', async () => {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${pagePort}/`);
    const out = await page.evaluate('run()');
    expect(out).toMatchObject({ status: 200, imagesRemaining: '1', usageStatus: 403 });
    expect((out as { imageWidth: number }).imageWidth).toBeGreaterThan(0);
    expect((out as { requestId: string }).requestId).toMatch(/\S/);
    // The key stayed on the page's server: nothing in the page's storage or cookies holds it.
    const stored = await page.evaluate('JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage), document.cookie])');
    expect(stored).not.toContain(CLIENT_KEY);
    await page.close();
  });

  it('cannot read the gateway from an origin not listed', async () => {
    const page = await browser.newPage();
    // localhost and 127.0.0.1 are different origins; only the latter is in CORS_ORIGINS.
    await page.goto(`http://localhost:${pagePort}/`);
    const out = (await page.evaluate('run()')) as { status?: number; error?: string };
    expect(out.status).toBeUndefined();
    expect(out.error).toMatch(/TypeError|Failed to fetch/);
    await page.close();
  });
});
