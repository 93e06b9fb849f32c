/**
 * An edit's image URLs are fetched only once the request has passed the checks that need no image
 * bytes: the model, the key's allow-list, the model's own rules and the key's limits. A refused
 * edit makes no request to the URL's host.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, makePng, startHarness, type Harness } from './harness.js';

let h: Harness;
let server: Server;
let imageUrl: string;
/** Every request the image host got. */
const hits: string[] = [];

beforeAll(async () => {
  const cat = await makePng(32, 32, { r: 10, g: 120, b: 200 });
  server = createServer((req, res) => {
    hits.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'image/png' }).end(cat);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  imageUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/cat.png`;
  // The image host is on loopback: allowed by name, as the operator of a private image host would.
  h = await startHarness({ ALLOWED_IMAGE_HOSTS: '127.0.0.1' });
});
afterAll(async () => {
  await h.close();
  await new Promise((resolve) => server.close(resolve));
});
beforeEach(() => {
  hits.length = 0;
  h.simulator.reset();
});

/** A key of its own, with the policy given (allow-list, limits). */
async function mintKey(policy: Record<string, unknown>): Promise<Record<string, string>> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'fetch-order', ...policy } });
  expect(res.statusCode, res.body).toBe(201);
  return { authorization: `Bearer ${res.json().key}` };
}

function edit(body: Record<string, unknown>, auth: Record<string, string> = h.auth) {
  return h.app.inject({ method: 'POST', url: '/v1/edit', headers: auth, payload: { prompt: 'add a hat', image: imageUrl, ...body } });
}

describe('an edit with an image URL', () => {
  it('fetches the image once when the edit is admitted (the control for the refusals below)', async () => {
    const res = await edit({ model: 'gpt-image-1' });
    expect(res.statusCode, res.body).toBe(200);
    expect(hits).toEqual(['/cat.png']);
  });

  it('fetches nothing for an unknown model', async () => {
    const res = await edit({ model: 'no-such-model' });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('model');
    expect(hits).toEqual([]);
  });

  it('fetches nothing for a model that does not edit', async () => {
    const res = await edit({ model: 'dall-e-3' });
    expect(res.statusCode).toBe(400);
    expect(hits).toEqual([]);
  });

  it('fetches nothing for a model outside the key’s allow-list', async () => {
    const auth = await mintKey({ models: ['flux-*'] });
    const res = await edit({ model: 'gpt-image-1' }, auth);
    expect(res.statusCode).toBe(403);
    expect(hits).toEqual([]);
  });

  it('fetches nothing for a parameter the model does not take', async () => {
    const res = await edit({ model: 'gpt-image-1', size: '13x13' });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('size');
    expect(hits).toEqual([]);
  });

  it('fetches nothing for more images than the model takes', async () => {
    // flux-kontext-pro takes 4.
    const res = await edit({ model: 'flux-kontext-pro', image: Array.from({ length: 5 }, () => imageUrl) });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('image');
    expect(hits).toEqual([]);
  });

  it('fetches nothing when the key’s images_per_day is spent', async () => {
    const auth = await mintKey({ images_per_day: 0 });
    const res = await edit({ model: 'gpt-image-1' }, auth);
    expect(res.statusCode).toBe(429);
    expect(res.json().error.message).toMatch(/images_per_day/);
    expect(hits).toEqual([]);
  });

  it('fetches nothing when the key’s monthly budget is spent', async () => {
    const auth = await mintKey({ monthly_budget_usd: 0 });
    const res = await edit({ model: 'gpt-image-1' }, auth);
    expect(res.statusCode).toBe(429);
    expect(res.json().error.message).toMatch(/monthly_budget_usd/);
    expect(hits).toEqual([]);
  });

  it('gives back what it reserved when the fetch fails, so the limit is not spent by a refused edit', async () => {
    const auth = await mintKey({ images_per_day: 1 });
    const refused = await edit({ model: 'gpt-image-1', image: 'http://127.0.0.1:1/unreachable.png' }, auth);
    expect(refused.statusCode).toBe(400);
    const res = await edit({ model: 'gpt-image-1' }, auth);
    expect(res.statusCode, res.body).toBe(200);
    expect(hits).toEqual(['/cat.png']);
  });
});
