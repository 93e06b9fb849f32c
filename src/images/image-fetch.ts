import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import { Agent, request, type Dispatcher } from 'undici';
import { GatewayError, invalidField } from '../errors.js';
import { inputImage, type ImageUrlRef, type InputImage } from '../request/image-request.js';

/**
 * Addresses a caller-given URL must never reach: this host, the private networks behind it, and
 * cloud metadata services (169.254.169.254, fd00:ec2::254, 100.100.100.200 are all inside these).
 */
const NON_PUBLIC = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8], // "this network", unspecified
  ['10.0.0.0', 8],
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8],
  ['169.254.0.0', 16], // link-local, cloud metadata
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, broadcast
] as const) {
  NON_PUBLIC.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 96], // unspecified, loopback, IPv4-compatible
  ['100::', 64], // discard
  ['2001::', 32], // Teredo
  ['2001:db8::', 32], // documentation
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['fec0::', 10], // site-local
  ['ff00::', 8], // multicast
] as const) {
  NON_PUBLIC.addSubnet(net, prefix, 'ipv6');
}

/** The IPv4 address inside an IPv6 one that carries it (mapped, NAT64, 6to4), if any. */
function embeddedIpv4(v6: string): string | undefined {
  const groups = expandIpv6(v6);
  if (!groups) return undefined;
  const quad = (hi: number, lo: number) => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  const zeros = (from: number, to: number) => groups.slice(from, to).every((g) => g === 0);
  if (zeros(0, 5) && groups[5] === 0xffff) return quad(groups[6]!, groups[7]!); // ::ffff:a.b.c.d
  if (groups[0] === 0x64 && groups[1] === 0xff9b && zeros(2, 6)) return quad(groups[6]!, groups[7]!); // 64:ff9b::/96
  if (groups[0] === 0x2002) return quad(groups[1]!, groups[2]!); // 2002:AABB:CCDD::/48
  return undefined;
}

function expandIpv6(address: string): number[] | undefined {
  let text = address.split('%', 1)[0]!;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted[1]!.split('.').map(Number) as [number, number, number, number];
    text = text.slice(0, -dotted[1]!.length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const part = (s: string | undefined) => (s ? s.split(':').map((g) => parseInt(g, 16)) : []);
  const left = part(head);
  const right = part(tail);
  const groups = tail === undefined ? left : [...left, ...Array<number>(8 - left.length - right.length).fill(0), ...right];
  return groups.length === 8 && groups.every((g) => Number.isInteger(g) && g >= 0 && g <= 0xffff) ? groups : undefined;
}

/** True for an address a caller-given URL may reach; IPv4 written inside IPv6 is judged as IPv4. */
export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return !NON_PUBLIC.check(address, 'ipv4');
  if (family !== 6) return false;
  const v4 = embeddedIpv4(address);
  if (v4 !== undefined) return !NON_PUBLIC.check(v4, 'ipv4');
  return !NON_PUBLIC.check(address, 'ipv6');
}

export interface ImageFetcherOptions {
  /** MAX_UPLOAD_BYTES: the same limit as an uploaded file. */
  maxBytes: number;
  /** ALLOWED_IMAGE_HOSTS: host names fetched even when they resolve to non-public addresses. */
  allowedHosts: string[];
  /** For one URL, redirects included. */
  timeoutMs?: number;
  maxRedirects?: number;
}

/** Why a URL was not fetched; turned into a 400 naming the field. */
class EgressRefused extends Error {
  readonly code = 'EGRESS_REFUSED';
}

/**
 * The DNS lookup of every connection the fetcher opens: it refuses non-public answers, so a socket
 * connects only to an address this check passed, whatever the name resolves to by then (rebinding).
 */
export function egressLookup(allowedHosts: ReadonlySet<string>): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses: LookupAddress[]) => {
      if (err) return callback(err, '', 0);
      const refused = addresses.find((a) => !isPublicAddress(a.address));
      if (!allowedHosts.has(hostname.toLowerCase()) && (refused || addresses.length === 0)) {
        const reason = `the URL's host ${hostname} resolves to a non-public address (${refused?.address ?? 'none'}), which the gateway does not fetch`;
        return callback(new EgressRefused(reason), '', 0);
      }
      if (options.all) return (callback as unknown as (e: null, all: LookupAddress[]) => void)(null, addresses);
      return callback(null, addresses[0]!.address, addresses[0]!.family);
    });
  };
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const hostOf = (url: URL) => url.hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1');

/**
 * Why the gateway will not send a request to this URL (a caller-given image URL or job callback),
 * or undefined when it may. Connections also go through egressLookup, which checks again.
 */
export async function egressRefusal(url: URL, allowedHosts: ReadonlySet<string>): Promise<string | undefined> {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return `the URL scheme "${url.protocol.replace(/:$/, '')}" is not allowed`;
  const host = hostOf(url);
  if (allowedHosts.has(host)) return undefined;
  const addresses = isIP(host) ? [host] : await resolveAll(host);
  const refused = addresses.find((a) => !isPublicAddress(a));
  if (refused !== undefined || addresses.length === 0) {
    return `the URL's host ${host} is a private, loopback, link-local or otherwise non-public address (${refused ?? 'none'}), which the gateway does not reach`;
  }
  return undefined;
}

/**
 * Fetches input images given as URLs under one egress policy: http(s) only; never a non-public
 * address, checked after DNS resolution and again on the connection itself (the address checked
 * is the one connected to, so DNS rebinding cannot slip past); redirects followed by hand, each hop
 * checked; size, time and type limited. ALLOWED_IMAGE_HOSTS opens named hosts.
 */
export class ImageFetcher {
  private readonly dispatcher: Agent;
  private readonly allowed: Set<string>;
  private readonly timeoutMs: number;
  private readonly maxRedirects: number;

  constructor(private readonly options: ImageFetcherOptions) {
    this.allowed = new Set(options.allowedHosts);
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.maxRedirects = options.maxRedirects ?? 3;
    this.dispatcher = new Agent({ connect: { lookup: egressLookup(this.allowed) } });
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }

  /** Every URL image of a request, fetched at once; the first failure aborts the rest. */
  async fetchAll(refs: ImageUrlRef[], signal?: AbortSignal): Promise<Map<string, InputImage>> {
    const fetched = new Map<string, InputImage>();
    if (refs.length === 0) return fetched;
    const failed = new AbortController();
    const all = signal ? AbortSignal.any([signal, failed.signal]) : failed.signal;
    // A few at a time: one request must not open dozens of outbound connections at once.
    const queue = [...refs];
    const worker = async () => {
      for (let ref = queue.shift(); ref; ref = queue.shift()) {
        try {
          fetched.set(ref.field, await this.fetch(ref, all));
        } catch (err) {
          failed.abort(err);
          throw err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(4, refs.length) }, worker));
    return fetched;
  }

  async fetch(ref: ImageUrlRef, signal?: AbortSignal): Promise<InputImage> {
    const deadline = AbortSignal.timeout(this.timeoutMs);
    const combined = signal ? AbortSignal.any([signal, deadline]) : deadline;
    try {
      let url = this.parse(ref);
      for (let hop = 0; ; hop++) {
        await this.checkDestination(url);
        const res = await request(url, { method: 'GET', signal: combined, dispatcher: this.dispatcher, headers: { accept: 'image/png, image/jpeg, image/webp' } });
        const location = res.headers.location;
        if (REDIRECTS.has(res.statusCode) && typeof location === 'string') {
          await res.body.dump();
          if (hop >= this.maxRedirects) throw new EgressRefused(`the URL redirects more than ${this.maxRedirects} times`);
          url = this.parse(ref, new URL(location, url).toString());
          continue;
        }
        if (res.statusCode !== 200) {
          await res.body.dump();
          throw new EgressRefused(`fetching the URL failed with HTTP ${res.statusCode}`);
        }
        const bytes = await this.readCapped(ref.field, res);
        const name = url.pathname.split('/').pop() || ref.field.replace(/\W/g, '_');
        return inputImage(bytes, ref.field, name);
      }
    } catch (err) {
      if (err instanceof GatewayError) throw err;
      if (deadline.aborted) throw invalidField(ref.field, `fetching the URL took longer than ${this.timeoutMs} ms`);
      if (signal?.aborted) throw signal.reason;
      if (err instanceof EgressRefused) throw invalidField(ref.field, err.message);
      const reason = (err as { cause?: unknown }).cause instanceof EgressRefused ? ((err as { cause: Error }).cause.message) : (err as Error).message;
      throw invalidField(ref.field, `the URL could not be fetched: ${reason}`);
    }
  }

  private parse(ref: ImageUrlRef, value = ref.url): URL {
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw new EgressRefused('is not a valid URL');
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new EgressRefused(`the URL scheme "${url.protocol.replace(/:$/, '')}" is not allowed; give an http(s) URL or a data URL`);
    }
    if (url.username || url.password) throw new EgressRefused('URLs with credentials are not fetched');
    return url;
  }

  /** Before any connection: the host's addresses, as resolved now, must all be public. */
  private async checkDestination(url: URL): Promise<void> {
    const refusal = await egressRefusal(url, this.allowed);
    if (refusal) throw new EgressRefused(refusal);
  }

  private async readCapped(field: string, res: Dispatcher.ResponseData): Promise<Buffer> {
    const max = this.options.maxBytes;
    const tooLarge = () =>
      new GatewayError('payload_too_large', `${field}: the image at the URL is larger than ${max} bytes`, {
        details: [{ field, message: `must be at most ${max} bytes` }],
      });
    if (Number(res.headers['content-length'] ?? 0) > max) {
      res.body.destroy();
      throw tooLarge();
    }
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of res.body) {
      total += (chunk as Buffer).length;
      if (total > max) throw tooLarge();
      chunks.push(chunk as Buffer);
    }
    return Buffer.concat(chunks, total);
  }
}

async function resolveAll(host: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    dnsLookup(host, { all: true }, (err, addresses) => {
      if (err) reject(new EgressRefused(`the URL's host ${host} could not be resolved (${err.code ?? err.message})`));
      else resolve(addresses.map((a) => a.address));
    });
  });
}
