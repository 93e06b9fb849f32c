import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { Readable } from 'node:stream';
import { Agent, request, type Dispatcher } from 'undici';
import { GatewayError, invalidField } from '../errors.js';
import { inputImage, type ImageUrlRef, type InputImage } from '../request/image-request.js';

/**
 * How the egress policy resolves a host name: at the check before a request (`check`) and in the
 * DNS lookup of every connection (`connect`). The system resolver unless a test gives its own, which
 * may answer differently at the two moments, as a rebinding name does.
 */
export type HostResolver = (hostname: string, phase: 'check' | 'connect') => Promise<LookupAddress[]>;

export const systemResolver: HostResolver = (hostname) =>
  new Promise((resolve, reject) => {
    dnsLookup(hostname, { all: true }, (err, addresses) => (err ? reject(err) : resolve(addresses)));
  });

const v6 = (cidr: string) => ipaddr.IPv6.parseCIDR(cidr);

/** IPv6 forms that reach the IPv4 address they carry: judged by that IPv4 address. */
const CARRIES_IPV4 = [
  v6('::ffff:0:0/96'), // IPv4-mapped, ::ffff:a.b.c.d
  v6('::ffff:0:0:0/96'), // IPv4-translated (RFC 6145), ::ffff:0:a.b.c.d
  v6('64:ff9b::/96'), // NAT64, well-known prefix (RFC 6052)
];
const SIX_TO_FOUR = v6('2002::/16'); // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD
const IPV4_COMPATIBLE = v6('::/96'); // ::a.b.c.d (deprecated); also holds :: and ::1
const NAT64_LOCAL = v6('64:ff9b:1::/48'); // NAT64 local-use (RFC 8215): a network's own translator
const TEREDO = v6('2001::/32'); // a tunnel to the (obfuscated) client IPv4 it carries

/**
 * An IPv6 address parsed as written. A dotted tail is rewritten as two hex groups first: ipaddr.js
 * reads "::a.b.c.d" (IPv4-compatible) as "::ffff:a.b.c.d" (IPv4-mapped), another form.
 */
function parseV6(address: string): ipaddr.IPv6 {
  const text = address.split('%', 1)[0]!.replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_all, a: string, b: string, c: string, d: string) =>
    `${((Number(a) << 8) | Number(b)).toString(16)}:${((Number(c) << 8) | Number(d)).toString(16)}`,
  );
  return ipaddr.IPv6.parse(text);
}

const within = (ip: ipaddr.IPv6, [net, bits]: readonly [ipaddr.IPv6, number]) => ip.match(net, bits);

/**
 * Every IPv4 address an IPv6 one carries (mapped, translated, NAT64 /96 and local-use /48, 6to4,
 * Teredo server and client, IPv4-compatible); empty for any other address.
 */
export function embeddedIpv4(address: string): string[] {
  if (isIP(address) !== 6) return [];
  const ip = parseV6(address);
  const b = ip.toByteArray();
  const quad = (o: number[]) => new ipaddr.IPv4(o.slice(0, 4)).toString();
  if (CARRIES_IPV4.some((net) => within(ip, net)) || within(ip, IPV4_COMPATIBLE)) return [quad(b.slice(12, 16))];
  // RFC 6052 with a /48 prefix: the IPv4 in bytes 6-7 and 9-10 (byte 8 is the reserved "u" octet).
  if (within(ip, NAT64_LOCAL)) return [quad([b[6]!, b[7]!, b[9]!, b[10]!])];
  if (within(ip, SIX_TO_FOUR)) return [quad(b.slice(2, 6))];
  // Teredo: the server's IPv4 in bytes 4-7, the client's in bytes 12-15 with every bit flipped.
  if (within(ip, TEREDO)) return [quad(b.slice(4, 8)), quad(b.slice(12, 16).map((x) => x ^ 0xff))];
  return [];
}

/** Why an address is not one a caller-given URL may reach, or undefined when it is public unicast. */
export function addressRefusal(address: string): string | undefined {
  const family = isIP(address);
  if (family === 0) return 'not an IP address';
  if (family === 4) {
    const range = ipaddr.IPv4.parse(address).range();
    return range === 'unicast' ? undefined : `${range} IPv4 address`;
  }
  const ip = parseV6(address);
  // :: and ::1 sit inside ::/96 (IPv4-compatible) but are IPv6's own unspecified and loopback addresses.
  if (ip.range() === 'loopback' || ip.range() === 'unspecified') return `${ip.range()} IPv6 address`;
  const inside = embeddedIpv4(address);
  const refusedInside = inside.map((v4) => [v4, addressRefusal(v4)] as const).find(([, why]) => why !== undefined);
  if (refusedInside) return `IPv6 form of the ${refusedInside[1]} ${refusedInside[0]}`;
  if (within(ip, IPV4_COMPATIBLE)) return ip.range() === 'unicast' ? 'IPv4-compatible IPv6 address' : `${ip.range()} IPv6 address`;
  if (within(ip, NAT64_LOCAL)) return 'local-use NAT64 IPv6 address (64:ff9b:1::/48)';
  if (within(ip, TEREDO)) return 'Teredo IPv6 address';
  // Reaches the public IPv4 address it carries.
  if (CARRIES_IPV4.some((net) => within(ip, net)) || within(ip, SIX_TO_FOUR)) return undefined;
  const range = ip.range();
  return range === 'unicast' ? undefined : `${range} IPv6 address`;
}

/**
 * True for an address a caller-given URL may reach: IPv4 only in public unicast space (no private,
 * loopback, link-local with cloud metadata, carrier-grade NAT, documentation, benchmarking,
 * multicast or reserved ranges); IPv6 likewise, and an IPv6 form that carries an IPv4 address is
 * judged by that address.
 */
export function isPublicAddress(address: string): boolean {
  return addressRefusal(address) === undefined;
}

export interface ImageFetcherOptions {
  /** MAX_UPLOAD_BYTES: the same limit as an uploaded file. */
  maxBytes: number;
  /** ALLOWED_IMAGE_HOSTS: host names fetched even when they resolve to non-public addresses. */
  allowedHosts: string[];
  /** For one URL, redirects included. */
  timeoutMs?: number;
  /** How host names are resolved (the system resolver by default; tests give their own). */
  resolve?: HostResolver;
  maxRedirects?: number;
  /**
   * A URL this gateway signed for one of its stored images: its bytes, read from the store (its
   * host is often this machine, which egress refuses); undefined for any other URL, fetched as usual.
   * Throws a 400 naming `field` for such a URL whose image is gone.
   */
  ownImage?: (url: URL, field: string) => Promise<Readable | undefined>;
}

/** Why a URL was not fetched; turned into a 400 naming the field. */
class EgressRefused extends Error {
  readonly code = 'EGRESS_REFUSED';
}

/** A URL's host did not resolve when the egress policy checked it: a failure that may pass. */
export class HostUnresolved extends Error {}

/** The egress policy's reason when a request failed on it (the connection's DNS check included), else undefined. */
export function egressRefusalOf(err: unknown): string | undefined {
  for (let e = err, depth = 0; e instanceof Error && depth < 3; e = e.cause, depth++) {
    if (e instanceof EgressRefused) return e.message;
  }
  return undefined;
}

/**
 * The DNS lookup of every connection the fetcher opens: it refuses non-public answers, so a socket
 * connects only to an address this check passed, whatever the name resolves to by then (rebinding).
 */
export function egressLookup(allowedHosts: ReadonlySet<string>, resolve: HostResolver = systemResolver): LookupFunction {
  return (hostname, options, callback) => {
    resolve(hostname, 'connect').then(
      (all) => {
        const addresses = options.family === 4 || options.family === 6 ? all.filter((a) => a.family === options.family) : all;
        const refused = addresses.find((a) => !isPublicAddress(a.address));
        if (!allowedHosts.has(hostname.toLowerCase()) && (refused || addresses.length === 0)) {
          const reason = `the URL's host ${hostname} resolves to a non-public address (${refused?.address ?? 'none'}), which the gateway does not fetch`;
          return callback(new EgressRefused(reason), '', 0);
        }
        if (options.all) return (callback as unknown as (e: null, all: LookupAddress[]) => void)(null, addresses);
        return callback(null, addresses[0]!.address, addresses[0]!.family);
      },
      (err: NodeJS.ErrnoException) => callback(err, '', 0),
    );
  };
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const hostOf = (url: URL) => url.hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1');

/**
 * Why the gateway will not send a request to this URL (a caller-given image URL or job callback),
 * or undefined when it may; HostUnresolved when the host does not resolve. Connections also go
 * through egressLookup, which checks again.
 */
export async function egressRefusal(url: URL, allowedHosts: ReadonlySet<string>, resolve: HostResolver = systemResolver): Promise<string | undefined> {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return `the URL scheme "${url.protocol.replace(/:$/, '')}" is not allowed`;
  const host = hostOf(url);
  if (allowedHosts.has(host)) return undefined;
  let addresses: string[];
  try {
    addresses = isIP(host) ? [host] : (await resolve(host, 'check')).map((a) => a.address);
  } catch (err) {
    // Not a refusal: DNS may answer on a retry (a result download or a callback delivery tries again).
    throw new HostUnresolved(`the URL's host ${host} could not be resolved (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err });
  }
  for (const address of addresses) {
    const why = addressRefusal(address);
    if (why) return `the URL's host ${host} is or resolves to a non-public address (${address}: ${why}), which the gateway does not reach`;
  }
  return addresses.length === 0 ? `the URL's host ${host} resolves to no address` : undefined;
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
  private readonly resolve: HostResolver;

  constructor(private readonly options: ImageFetcherOptions) {
    this.allowed = new Set(options.allowedHosts);
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.maxRedirects = options.maxRedirects ?? 3;
    this.resolve = options.resolve ?? systemResolver;
    this.dispatcher = new Agent({ connect: { lookup: egressLookup(this.allowed, this.resolve) } });
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
      const own = await this.options.ownImage?.(url, ref.field);
      if (own) {
        // Under the same deadline and cancellation as a fetch: a stalled store read is ended too.
        const stop = () => own.destroy(combined.reason instanceof Error ? combined.reason : new Error('aborted'));
        combined.addEventListener('abort', stop, { once: true });
        try {
          return inputImage(await this.readCapped(ref.field, { headers: {}, body: own }), ref.field, url.pathname.split('/').pop()!);
        } finally {
          combined.removeEventListener('abort', stop);
        }
      }
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
    const refusal = await egressRefusal(url, this.allowed, this.resolve);
    if (refusal) throw new EgressRefused(refusal);
  }

  private async readCapped(field: string, res: Pick<Dispatcher.ResponseData, 'headers'> & { body: Readable }): Promise<Buffer> {
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
