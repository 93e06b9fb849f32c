import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { addressRefusal, egressLookup, embeddedIpv4, isPublicAddress } from '../src/images/image-fetch.js';
import { makePng, startHarness, type Harness } from './harness.js';

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/** A tiny image host on loopback that records every request it gets. */
interface ImageHost {
  url: string;
  port: number;
  hits: string[];
  close(): Promise<void>;
}

async function startImageHost(routes: Record<string, (res: import('node:http').ServerResponse) => void>): Promise<ImageHost> {
  const hits: string[] = [];
  const server: Server = createServer((req, res) => {
    hits.push(req.url ?? '');
    const route = routes[req.url ?? ''];
    if (route) route(res);
    else res.writeHead(404).end('not found');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    hits,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

const MAX_UPLOAD_BYTES = 8192;
let cat: Buffer;
let mask: Buffer;
let host: ImageHost;

beforeAll(async () => {
  cat = await makePng(32, 32, { r: 10, g: 120, b: 200 });
  mask = await makePng(32, 32, { r: 0, g: 0, b: 0 }, 0);
  host = await startImageHost({
    '/cat.png': (res) => res.writeHead(200, { 'content-type': 'image/png' }).end(cat),
    '/mask.png': (res) => res.writeHead(200, { 'content-type': 'image/png' }).end(mask),
    '/moved.png': (res) => res.writeHead(302, { location: '/cat.png' }).end(),
    '/to-private': (res) => res.writeHead(302, { location: 'http://10.0.0.1/cat.png' }).end(),
    '/to-metadata': (res) => res.writeHead(301, { location: 'http://169.254.169.254/latest/meta-data' }).end(),
    '/to-localhost': (res) => res.writeHead(307, { location: `http://localhost:${host.port}/cat.png` }).end(),
    '/loop': (res) => res.writeHead(302, { location: '/loop' }).end(),
    '/text': (res) => res.writeHead(200, { 'content-type': 'image/png' }).end('this is not an image at all'),
    // No Content-Length: the limit has to hold while reading, not only from the header.
    '/huge.png': (res) => {
      res.writeHead(200, { 'content-type': 'image/png' });
      res.write(cat);
      res.end(Buffer.alloc(MAX_UPLOAD_BYTES));
    },
  });
});
afterAll(async () => host.close());

function editWith(h: Harness, image: unknown, extra: Record<string, unknown> = {}) {
  return h.app.inject({ method: 'POST', url: '/v1/edit', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'add a hat', image, ...extra } });
}

const editsSent = (h: Harness) => h.simulator.received.filter((r) => r.path === '/v1/images/edits');

describe('the egress policy for caller-given image URLs', () => {
  it.each([
    ['127.0.0.1'],
    ['127.8.9.10'],
    ['10.0.0.1'],
    ['172.16.5.4'],
    ['192.168.1.1'],
    ['169.254.169.254'],
    ['100.64.0.1'],
    ['100.100.100.200'],
    ['0.0.0.0'],
    ['224.0.0.251'],
    ['255.255.255.255'],
    ['::'],
    ['::1'],
    ['::ffff:127.0.0.1'],
    ['::ffff:7f00:1'],
    ['::ffff:a9fe:a9fe'],
    ['64:ff9b::a00:1'],
    ['2002:a00:1::1'],
    ['fd00:ec2::254'],
    ['fe80::1'],
    ['ff02::1'],
  ])('refuses the non-public address %s', (address) => {
    expect(isPublicAddress(address)).toBe(false);
  });

  it.each([['93.184.215.14'], ['8.8.8.8'], ['2606:4700:4700::1111'], ['::ffff:8.8.8.8']])('allows the public address %s', (address) => {
    expect(isPublicAddress(address)).toBe(true);
  });

  // Every IPv6 form that carries an IPv4 address, each around loopback, private and metadata addresses.
  it.each([
    ['::ffff:0:7f00:1', 'IPv4-translated loopback'],
    ['::ffff:0:127.0.0.1', 'IPv4-translated loopback, dotted'],
    ['::ffff:0:a9fe:a9fe', 'IPv4-translated metadata'],
    ['::ffff:0:a00:1', 'IPv4-translated private'],
    ['64:ff9b::7f00:1', 'NAT64 loopback'],
    ['64:ff9b::169.254.169.254', 'NAT64 metadata, dotted'],
    ['64:ff9b:1::', 'NAT64 local-use, prefix itself'],
    ['64:ff9b:1::808:8', 'NAT64 local-use'],
    ['64:ff9b:1:7f00:0:100::', 'NAT64 local-use carrying loopback (/48 layout)'],
    ['64:ff9b:1:808:8:800::', 'NAT64 local-use carrying a public address'],
    ['2002:7f00:1::', '6to4 loopback'],
    ['2002:a9fe:a9fe::1', '6to4 metadata'],
    ['2002:c0a8:101::1', '6to4 private'],
    ['2001:0:4136:e378:8000:63bf:80ff:fffe', 'Teredo, client 127.0.0.1'],
    ['2001:0:808:808:8000:63bf:f7f7:f7f7', 'Teredo, public server and client'],
    ['::127.0.0.1', 'IPv4-compatible loopback'],
    ['::7f00:1', 'IPv4-compatible loopback, hex'],
    ['::8.8.8.8', 'IPv4-compatible public (deprecated form)'],
    ['::ffff:7f00:1', 'IPv4-mapped loopback, hex'],
    ['::ffff:100.64.0.1', 'IPv4-mapped carrier-grade NAT'],
    ['fe80::1%eth0', 'link-local with a zone'],
    ['2001:db8::1', 'documentation'],
    ['100::1', 'discard'],
    ['fec0::1', 'site-local'],
  ])('refuses %s (%s)', (address) => {
    expect(isPublicAddress(address)).toBe(false);
    expect(addressRefusal(address)).toEqual(expect.any(String));
  });

  it.each([
    ['64:ff9b::808:808', 'NAT64 of a public address'],
    ['::ffff:0:808:808', 'IPv4-translated public address'],
    ['2002:808:808::1', '6to4 of a public address'],
  ])('allows %s (%s): it reaches a public IPv4 address', (address) => {
    expect(isPublicAddress(address)).toBe(true);
  });

  it.each([
    ['::ffff:127.0.0.1', ['127.0.0.1']],
    ['::ffff:0:7f00:1', ['127.0.0.1']],
    ['64:ff9b::a9fe:a9fe', ['169.254.169.254']],
    ['64:ff9b:1:7f00:0:100::', ['127.0.0.1']],
    ['2002:c0a8:101::1', ['192.168.1.1']],
    ['2001:0:4136:e378:8000:63bf:80ff:fffe', ['65.54.227.120', '127.0.0.1']],
    ['::a00:1', ['10.0.0.1']],
    ['2606:4700:4700::1111', []],
  ])('decodes the IPv4 inside %s', (address, inside) => {
    expect(embeddedIpv4(address)).toEqual(inside);
  });

  it('names the IPv4 address an IPv6 form carries in the refusal', () => {
    expect(addressRefusal('::ffff:0:7f00:1')).toMatch(/loopback.*127\.0\.0\.1/);
  });

  it('calls ::1 loopback and :: unspecified, not forms of an IPv4 address', () => {
    expect(addressRefusal('::1')).toBe('loopback IPv6 address');
    expect(addressRefusal('::')).toBe('unspecified IPv6 address');
    expect(addressRefusal('0:0:0:0:0:0:0:1')).toBe('loopback IPv6 address');
  });
});

describe('JSON edits with an image URL whose host is an IPv6 form of loopback', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ MAX_UPLOAD_BYTES: String(MAX_UPLOAD_BYTES) });
  });
  afterAll(async () => h.close());

  it.each([['::ffff:0:7f00:1'], ['64:ff9b:1::7f00:1'], ['2002:7f00:1::1']])('refuses http://[%s]/ with 400 naming the field', async (address) => {
    const res = await editWith(h, `http://[${address}]:${host.port}/cat.png`);
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ code: 'invalid_request', details: [{ field: 'image' }] });
    expect(editsSent(h)).toHaveLength(0);
  });
});

describe('the DNS lookup of every fetch connection', () => {
  const lookup = (allowed: string[], hostname: string) =>
    new Promise<{ err: unknown; addresses: unknown }>((resolve) => {
      egressLookup(new Set(allowed))(hostname, { all: true }, (err, addresses) => resolve({ err, addresses }));
    });

  it('refuses a name that resolves to loopback at connect time (no rebinding past the first check)', async () => {
    const { err } = await lookup([], 'localhost');
    expect(err).toMatchObject({ code: 'EGRESS_REFUSED' });
  });

  it('lets a name in ALLOWED_IMAGE_HOSTS resolve to loopback', async () => {
    const { err, addresses } = await lookup(['localhost'], 'localhost');
    expect(err).toBeNull();
    expect(addresses).toEqual(expect.arrayContaining([expect.objectContaining({ address: expect.stringMatching(/^(127\.0\.0\.1|::1)$/) })]));
  });
});

describe('JSON edits with image URLs, no hosts allowed', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ MAX_UPLOAD_BYTES: String(MAX_UPLOAD_BYTES) });
  });
  afterAll(async () => h.close());
  beforeEach(() => {
    host.hits.length = 0;
    h.simulator.reset();
  });

  it.each([
    ['a loopback address', () => `${host.url}/cat.png`],
    ['the cloud metadata address', () => 'http://169.254.169.254/latest/meta-data'],
    ['IPv6 loopback', () => `http://[::1]:${host.port}/cat.png`],
    ['IPv4-mapped IPv6 loopback', () => `http://[::ffff:127.0.0.1]:${host.port}/cat.png`],
    ['a private network address', () => 'http://10.0.0.1/cat.png'],
    ['a host name that resolves to loopback', () => `http://localhost:${host.port}/cat.png`],
  ])('refuses %s with 400 naming the field, before fetching or calling upstream', async (_name, url) => {
    const res = await editWith(h, url());
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ code: 'invalid_request', details: [{ field: 'image' }] });
    expect(res.json().error.message).toMatch(/non-public/);
    expect(host.hits).toEqual([]);
    expect(editsSent(h)).toEqual([]);
  });

  it.each([['file:///etc/passwd'], ['ftp://example.com/cat.png']])('refuses the scheme of %s with 400 naming the field', async (url) => {
    const res = await editWith(h, url);
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('image');
    expect(res.json().error.message).toMatch(/http\(s\) URL/);
    expect(editsSent(h)).toEqual([]);
  });

  it('names the mask field when the mask URL is refused', async () => {
    const res = await editWith(h, `data:image/png;base64,${cat.toString('base64')}`, { mask: 'http://127.0.0.1/mask.png' });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('mask');
  });

  it('names the entry of an image array that is refused', async () => {
    const res = await editWith(h, [`data:image/png;base64,${cat.toString('base64')}`, 'http://192.168.0.10/b.png']);
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe('image[1]');
  });
});

describe('JSON edits with image URLs from ALLOWED_IMAGE_HOSTS', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ MAX_UPLOAD_BYTES: String(MAX_UPLOAD_BYTES), ALLOWED_IMAGE_HOSTS: '127.0.0.1' });
  });
  afterAll(async () => h.close());
  beforeEach(() => {
    host.hits.length = 0;
    h.simulator.reset();
  });

  it('fetches an image from an allowed host and sends its bytes upstream', async () => {
    const res = await editWith(h, `${host.url}/cat.png`);
    expect(res.statusCode, res.body).toBe(200);
    expect(host.hits).toEqual(['/cat.png']);
    expect(editsSent(h)[0]?.files?.map((f) => f.sha256)).toEqual([sha256(cat)]);
  });

  it('takes an array mixing data URLs and URLs, and a mask URL, in order', async () => {
    const other = await makePng(32, 32, { r: 250, g: 250, b: 0 });
    const res = await editWith(h, [`data:image/png;base64,${other.toString('base64')}`, `${host.url}/cat.png`], { mask: `${host.url}/mask.png` });
    expect(res.statusCode, res.body).toBe(200);
    const files = editsSent(h)[0]?.files ?? [];
    expect(files.filter((f) => f.field !== 'mask').map((f) => f.sha256)).toEqual([sha256(other), sha256(cat)]);
    expect(files.find((f) => f.field === 'mask')?.sha256).toBe(sha256(mask));
  });

  it('fetches nothing when the model takes fewer images than the URLs given', async () => {
    const res = await editWith(h, [`${host.url}/cat.png`, `${host.url}/cat.png`], { model: 'FLUX.1-Kontext-pro' });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toMatch(/at most 1 image/);
    expect(host.hits).toEqual([]);
  });

  it('follows a redirect within the allowed host', async () => {
    const res = await editWith(h, `${host.url}/moved.png`);
    expect(res.statusCode, res.body).toBe(200);
    expect(host.hits).toEqual(['/moved.png', '/cat.png']);
  });

  it.each([
    ['a private address', '/to-private'],
    ['the metadata address', '/to-metadata'],
    ['a host name that resolves to loopback', '/to-localhost'],
  ])('refuses a redirect from an allowed host to %s without following it', async (_name, path) => {
    const res = await editWith(h, `${host.url}${path}`);
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toMatch(/non-public/);
    expect(host.hits).toEqual([path]);
    expect(editsSent(h)).toEqual([]);
  });

  it('refuses more than 3 redirects', async () => {
    const res = await editWith(h, `${host.url}/loop`);
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toMatch(/redirects more than 3 times/);
    expect(host.hits).toHaveLength(4);
  });

  it('refuses an image over MAX_UPLOAD_BYTES with 413', async () => {
    const res = await editWith(h, `${host.url}/huge.png`);
    expect(res.statusCode).toBe(413);
    expect(res.json().error.details[0].field).toBe('image');
    expect(editsSent(h)).toEqual([]);
  });

  it('refuses a URL whose bytes are not an image with 415', async () => {
    const res = await editWith(h, `${host.url}/text`);
    expect(res.statusCode).toBe(415);
    expect(res.json().error.details[0].field).toBe('image');
    expect(editsSent(h)).toEqual([]);
  });

  it('refuses a URL that answers 404 with 400 naming the status', async () => {
    const res = await editWith(h, `${host.url}/missing.png`);
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toMatch(/HTTP 404/);
  });
});
