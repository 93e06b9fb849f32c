/**
 * An image URL this gateway answered, given back as an edit's input image: read from its own store
 * (its host, this machine, is one the egress policy never fetches), so "edit the image you just
 * made" works with the URL as returned. Only a URL whose signature is the gateway's own; one whose
 * image is gone is a 400 naming the field, nothing sent upstream.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startListening, type ListeningHarness } from './harness.js';

let h: ListeningHarness;
beforeAll(async () => {
  h = await startListening({ RATE_LIMIT_RPM: '1000' });
});
afterAll(async () => h?.close());
beforeEach(() => h.simulator.reset());

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
const post = async (path: string, body: unknown) => {
  const res = await h.fetch(`${h.base}${path}`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as any };
};

async function madeImage(): Promise<{ url: string; name: string; bytes: Buffer }> {
  const made = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'a lighthouse to edit' });
  expect(made.status, JSON.stringify(made.body)).toBe(200);
  const { url } = made.body.images[0];
  const bytes = Buffer.from(await (await h.fetch(url)).arrayBuffer());
  return { url, name: new URL(url).pathname.split('/').pop()!, bytes };
}

describe('an edit given an image URL of this gateway', () => {
  it('edits that image: its bytes are read from the store and sent upstream', async () => {
    const image = await madeImage();
    expect(new URL(image.url).hostname).toBe('127.0.0.1');
    h.simulator.reset();
    const edited = await post('/v1/edit', { model: 'gpt-image-1', prompt: 'make it night', image: image.url });
    expect(edited.status, JSON.stringify(edited.body)).toBe(200);
    const sent = h.simulator.received.find((r) => r.method === 'POST')?.files?.find((f) => f.field.startsWith('image'));
    expect(sent?.sha256).toBe(sha256(image.bytes));

    // Its name percent-encoded, as GET /v1/images/{name} takes it too: the same image.
    const encoded = new URL(image.url);
    encoded.pathname = encoded.pathname.replace(/\/([^/])([^/]*)$/, (_m, first: string, rest: string) => `/%${first.charCodeAt(0).toString(16)}${rest}`);
    expect(encoded.pathname).toMatch(/%[0-9a-f]{2}/);
    expect((await h.fetch(encoded.toString())).status).toBe(200);
    h.simulator.reset();
    const again = await post('/v1/edit', { model: 'gpt-image-1', prompt: 'make it night', image: encoded.toString() });
    expect(again.status, JSON.stringify(again.body)).toBe(200);
    expect(h.simulator.received.find((r) => r.method === 'POST')?.files?.find((f) => f.field.startsWith('image'))?.sha256).toBe(sha256(image.bytes));
  });

  it('a URL with a signature that is not the gateway’s is fetched as any URL: refused, its host being this machine', async () => {
    const image = await madeImage();
    h.simulator.reset();
    const forged = new URL(image.url);
    forged.searchParams.set('sig', 'A'.repeat(43));
    const res = await post('/v1/edit', { model: 'gpt-image-1', prompt: 'make it night', image: forged.toString() });
    expect(res.status).toBe(400);
    expect(res.body.error.message).toMatch(/^image: .*non-public address/);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('one whose image was deleted: 400 naming the field, saying it is gone, nothing sent', async () => {
    const image = await madeImage();
    const deleted = await h.fetch(`${h.base}/v1/images/${image.name}`, { method: 'DELETE', headers: h.auth });
    expect(deleted.status).toBe(204);
    h.simulator.reset();
    const res = await post('/v1/edit', { model: 'gpt-image-1', prompt: 'make it night', image: [image.url] });
    expect(res.status, JSON.stringify(res.body)).toBe(400);
    expect(res.body.error.message).toMatch(/^image\[0\]: is an image URL of this gateway whose image is gone/);
    expect(h.simulator.received).toHaveLength(0);
  });
});
