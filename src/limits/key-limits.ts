import { GatewayError, type ErrorDetail } from '../errors.js';
import { GROUP_FIELD, SEQUENTIAL_MAX_IMAGES, retiredModel } from '../catalogue/catalogue.js';
import type { ModelSpec } from '../catalogue/model-spec.js';
import type { Client, TokenGrant } from '../auth/client-keys.js';
import { modelAllowed } from '../auth/key-policy.js';
import type { Counters } from './counters.js';

/** What a request took from its key's daily images and monthly budget, to settle once the answer is known. */
export interface Reservation {
  client: Client;
  images: number;
  microUsd: number;
  dayKey: string;
  monthKey: string;
  /** What the answer tells the client of these limits (x-ratelimit-images-*, x-ratelimit-budget-*). */
  headers: Record<string, string>;
  /** Images taken from a browser token's max_images, given back like the daily images. */
  tokenImages?: number;
}

/**
 * What a job keeps of its reservation (JSON in its row), so that the replica that finishes it,
 * whichever it is, settles it as the one that started it would have: the key, what was taken and
 * the day and month counted in, and the key's limits (and token) the reservation counted against.
 */
export interface StoredReservation {
  keyId: string;
  images: number;
  microUsd: number;
  dayKey: string;
  monthKey: string;
  /** The key had an images_per_day / a monthly_budget_usd. */
  perDay: boolean;
  budget: boolean;
  token?: { id: string; expiresAt: number; maxImages: number | null; images?: number };
}

export function storedReservation(reservation: Reservation): StoredReservation {
  const client = reservation.client;
  const token = client.token;
  return {
    keyId: client.id,
    images: reservation.images,
    microUsd: reservation.microUsd,
    dayKey: reservation.dayKey,
    monthKey: reservation.monthKey,
    perDay: client.images_per_day !== undefined,
    budget: client.monthly_budget_usd !== undefined,
    ...(token ? { token: { id: token.id, expiresAt: token.expiresAt, maxImages: token.maxImages, ...(reservation.tokenImages !== undefined ? { images: reservation.tokenImages } : {}) } } : {}),
  };
}

/**
 * The reservation a job kept, as settle() takes it. Its client carries only what settle() reads:
 * the key id, whether it has each limit (settle counts against the windows kept, not the values),
 * and the token.
 */
export function reservationFromStored(stored: StoredReservation): Reservation {
  const client = {
    id: stored.keyId,
    ...(stored.perDay ? { images_per_day: 0 } : {}),
    ...(stored.budget ? { monthly_budget_usd: 0 } : {}),
    ...(stored.token ? { token: { id: stored.token.id, expiresAt: stored.token.expiresAt, maxImages: stored.token.maxImages, maxRequests: null } } : {}),
  } as unknown as Client;
  return {
    client,
    images: stored.images,
    microUsd: stored.microUsd,
    dayKey: stored.dayKey,
    monthKey: stored.monthKey,
    headers: {},
    ...(stored.token?.images !== undefined ? { tokenImages: stored.token.images } : {}),
  };
}

const MICRO = 1_000_000;

/** What an answer tells of images_per_day, `used` counted (this request's included once reserved). */
function imagesHeaders(limit: number, used: number): Record<string, string> {
  return { 'x-ratelimit-images-limit': String(limit), 'x-ratelimit-images-remaining': String(Math.max(0, limit - used)) };
}

/**
 * What a refusing image limit says of the field that set the image count (imagesAsked): `n`, or a
 * Seedream group's max_images, or its sequential_image_generation when max_images was not given.
 */
function imagesDetail(field: string, message: string, allowed: number): ErrorDetail {
  const why = field === GROUP_FIELD ? `; "auto" without sequential_image_generation_options.max_images may make up to ${SEQUENTIAL_MAX_IMAGES} images` : '';
  return { field, message: `${message}${why}`, allowed };
}

/** What an answer tells of monthly_budget_usd; `limit` and `usedMicroUsd` in millionths of a dollar. */
function budgetHeaders(budgetUsd: number, limit: number, usedMicroUsd: number): Record<string, string> {
  return { 'x-ratelimit-budget-limit-usd': String(budgetUsd), 'x-ratelimit-budget-remaining-usd': String(Math.max(0, limit - usedMicroUsd) / MICRO) };
}

interface DayWindow {
  day: string;
  month: string;
  dayStart: number;
  nextDay: number;
  nextMonth: number;
}

/** The UTC day now is in, worked out once a day rather than twice a request (~5 µs each). */
let today: DayWindow | undefined;

function windows(nowMs = Date.now()) {
  if (!today || nowMs < today.dayStart || nowMs >= today.nextDay) {
    const now = new Date(nowMs);
    const iso = now.toISOString();
    today = {
      day: iso.slice(0, 10),
      month: iso.slice(0, 7),
      dayStart: Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()),
      nextDay: Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1),
      nextMonth: Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1),
    };
  }
  return { day: today.day, month: today.month, msToNextDay: today.nextDay - nowMs, msToNextMonth: today.nextMonth - nowMs };
}

/**
 * A key's model allow-list, images per UTC day and estimated spend per calendar month, checked
 * before any upstream call. Counts are reserved up front (so concurrent requests cannot overshoot)
 * and settled to what the request really made.
 */
/** What a key has used in a UTC day (images) or calendar month (USD), by the usage records. */
export type UsageSoFar = (keyId: string, window: { day: string } | { month: string }) => Promise<number>;

/** What a browser token has used in its life, by the usage records. */
export type TokenUsageSoFar = (tokenId: string) => Promise<{ requests: number; images: number }>;

export class KeyLimits {
  /** Windows this process has started from the usage records; each once. */
  private readonly seeded = new Set<string>();

  constructor(
    private readonly counters: Counters,
    // Counters in memory (no Redis) or in a Redis that lost them start from the usage records, not
    // from zero, so a restart does not hand every key a fresh day or month.
    private readonly usageSoFar?: UsageSoFar,
    // Likewise a browser token's max_requests and max_images.
    private readonly tokenUsageSoFar?: TokenUsageSoFar,
  ) {}

  private async seedTokenOnce(token: TokenGrant, windowMs: number): Promise<void> {
    if (!this.tokenUsageSoFar || this.seeded.has(`token:${token.id}`)) return;
    this.seeded.add(`token:${token.id}`);
    const used = await this.tokenUsageSoFar(token.id);
    if (token.maxRequests !== null) await this.counters.seed(`token-requests:${token.id}`, used.requests, windowMs);
    if (token.maxImages !== null) await this.counters.seed(`token-images:${token.id}`, used.images, windowMs);
  }

  private async seedOnce(key: string, keyId: string, window: { day: string } | { month: string }, scale: number, windowMs: number): Promise<void> {
    if (!this.usageSoFar || this.seeded.has(key)) return;
    this.seeded.add(key);
    const used = await this.usageSoFar(keyId, window);
    await this.counters.seed(key, Math.round(used * scale), windowMs);
  }

  /**
   * The model a request names, against the key before the catalogue answers for it: outside the
   * allow-list, a 403; retired, a 410 that says when the key may not use the replacement either.
   */
  checkNamedModel(client: Client, model: ModelSpec): void {
    this.checkModel(client, model.id);
    if (model.retired && !modelAllowed(client, model.retired.replacement)) {
      const notIn = client.token ? `browser token ${client.token.id}'s models` : `key ${client.id}'s allow-list: an operator may allow it`;
      throw retiredModel(model.id, model.retired.replacement, notIn);
    }
  }

  checkModel(client: Client, modelId: string): void {
    if (!modelAllowed(client, modelId)) {
      if (client.token) {
        throw new GatewayError('forbidden', `browser token ${client.token.id} may not use model ${modelId}`, {
          details: [{ field: 'model', message: 'is not among the token’s models', allowed: client.models }],
        });
      }
      throw new GatewayError('forbidden', `key ${client.id} may not use model ${modelId}`, {
        details: [{ field: 'model', message: 'is not in this key’s allow-list', allowed: client.models }],
      });
    }
  }

  /**
   * A budget means nothing for a model of unknown price: such a key may not use one until it is priced.
   * `mode`: the edit mode, where only that route of the model is unpriced (Ideogram's legacy reframe).
   */
  checkPriced(client: Client, modelId: string, priced: boolean, mode?: string): void {
    if (client.monthly_budget_usd !== undefined && !priced) {
      const where = mode ? ` in mode ${mode}` : '';
      throw new GatewayError('forbidden', `key ${client.id} has a monthly_budget_usd, and model ${modelId} has no known price${where}; an operator can set one in PRICE_OVERRIDES`, {
        details: [{ field: 'model', message: 'has no known price, so a budgeted key may not use it' }],
      });
    }
  }

  /** A browser token's counters last until it expires (and a minute more, for clocks that differ). */
  private static tokenWindowMs(token: TokenGrant): number {
    return Math.max(1000, token.expiresAt - Date.now()) + 60_000;
  }

  private static tokenRefusal(token: TokenGrant, limit: 'max_requests' | 'max_images', message: string, images?: { allowed: number; field: string }): GatewayError {
    const allowed = images?.allowed;
    // Nothing resets a token's counts: the useful wait is until it expires, when a new token is needed anyway.
    const seconds = Math.max(1, Math.ceil((token.expiresAt - Date.now()) / 1000));
    return new GatewayError('rate_limited', `${limit} limit reached: browser token ${token.id} ${message}; ask the backend for a new token`, {
      retryAfter: seconds,
      limit: `token_${limit}`,
      // The token's images left, as its other answers say them (without the refused request).
      ...(allowed === undefined || token.maxImages === null
        ? {}
        : { headers: { 'x-ratelimit-token-images-limit': String(token.maxImages), 'x-ratelimit-token-images-remaining': String(allowed) } }),
      ...(images === undefined ? {} : { details: [imagesDetail(images.field, `over the token's ${limit}`, images.allowed)] }),
    });
  }

  /** Counts a request and its images against a browser token's max_requests and max_images (shared between replicas like the other limits). */
  private async reserveToken(token: TokenGrant, images: number, imagesField: string, reservation: Reservation): Promise<void> {
    const windowMs = KeyLimits.tokenWindowMs(token);
    if (token.maxRequests === null && token.maxImages === null) return;
    await this.seedTokenOnce(token, windowMs);
    if (token.maxRequests !== null) {
      const { total } = await this.counters.add(`token-requests:${token.id}`, 1, windowMs);
      if (total > token.maxRequests) {
        await this.counters.add(`token-requests:${token.id}`, -1, windowMs);
        throw KeyLimits.tokenRefusal(token, 'max_requests', `may make ${token.maxRequests} requests and has made them`);
      }
    }
    if (token.maxImages !== null) {
      const { total } = await this.counters.add(`token-images:${token.id}`, images, windowMs);
      if (total > token.maxImages) {
        await this.counters.add(`token-images:${token.id}`, -images, windowMs);
        if (token.maxRequests !== null) await this.counters.add(`token-requests:${token.id}`, -1, windowMs);
        const used = total - images;
        throw KeyLimits.tokenRefusal(token, 'max_images', `may make ${token.maxImages} images, has made ${used}, and asked for ${images}`, {
          allowed: Math.max(0, token.maxImages - used),
          field: imagesField,
        });
      }
      reservation.tokenImages = images;
      reservation.headers['x-ratelimit-token-images-limit'] = String(token.maxImages);
      reservation.headers['x-ratelimit-token-images-remaining'] = String(Math.max(0, token.maxImages - total));
    }
  }

  /** Gives back what reserveToken took, for a request refused by a later limit. */
  private async releaseToken(token: TokenGrant, reservation: Reservation): Promise<void> {
    const windowMs = KeyLimits.tokenWindowMs(token);
    if (token.maxRequests !== null) await this.counters.add(`token-requests:${token.id}`, -1, windowMs);
    if (reservation.tokenImages) await this.counters.add(`token-images:${token.id}`, -reservation.tokenImages, windowMs);
    reservation.tokenImages = 0;
  }

  /** `imagesField`: the field that set `images` (imagesAsked), which a refusing image limit names. */
  async reserve(client: Client, images: number, estimatedCostUsd: number | null, imagesField = 'n'): Promise<Reservation> {
    if (!client.token) return this.reserveForKey(client, images, imagesField, estimatedCostUsd, undefined);
    const pending: Reservation = { ...this.nothingReserved(client) };
    await this.reserveToken(client.token, images, imagesField, pending);
    try {
      const reservation = await this.reserveForKey(client, images, imagesField, estimatedCostUsd, pending);
      if (pending.tokenImages !== undefined) reservation.tokenImages = pending.tokenImages;
      return reservation;
    } catch (err) {
      await this.releaseToken(client.token, pending);
      throw err;
    }
  }

  private async reserveForKey(client: Client, images: number, imagesField: string, estimatedCostUsd: number | null, token: Reservation | undefined): Promise<Reservation> {
    const w = windows();
    const reservation: Reservation = {
      client,
      images: 0,
      microUsd: 0,
      dayKey: `images:${client.id}:${w.day}`,
      monthKey: `usd:${client.id}:${w.month}`,
      headers: { ...token?.headers },
    };
    // The day's images counted before this request's.
    let imagesUsedBefore = 0;
    if (client.images_per_day !== undefined) {
      await this.seedOnce(reservation.dayKey, client.id, { day: w.day }, 1, w.msToNextDay + 60_000);
      const limit = client.images_per_day;
      const { total } = await this.counters.add(reservation.dayKey, images, w.msToNextDay + 60_000);
      imagesUsedBefore = total - images;
      if (total > limit) {
        await this.counters.add(reservation.dayKey, -images, w.msToNextDay + 60_000);
        const used = imagesUsedBefore;
        throw new GatewayError(
          'rate_limited',
          `images_per_day limit reached: key ${client.id} may make ${limit} images per UTC day, has made ${used}, and asked for ${images}; it resets at 00:00 UTC`,
          {
            retryAfter: Math.ceil(w.msToNextDay / 1000),
            limit: 'images_per_day',
            details: [imagesDetail(imagesField, 'over the images_per_day limit', Math.max(0, limit - used))],
            headers: imagesHeaders(limit, used),
          },
        );
      }
      reservation.images = images;
      Object.assign(reservation.headers, imagesHeaders(limit, total));
    }
    if (client.monthly_budget_usd !== undefined) {
      await this.seedOnce(reservation.monthKey, client.id, { month: w.month }, MICRO, w.msToNextMonth + 86_400_000);
      const limit = Math.round(client.monthly_budget_usd * MICRO);
      const cost = Math.round((estimatedCostUsd ?? 0) * MICRO);
      const { total } = await this.counters.add(reservation.monthKey, cost, w.msToNextMonth + 86_400_000);
      // Refused when it would go over, or when the budget is spent already (a request of unknown price included).
      if (total > limit || total - cost >= limit) {
        await this.counters.add(reservation.monthKey, -cost, w.msToNextMonth + 86_400_000);
        await this.settle(reservation, 0, 0);
        // The day's images this request took are given back: the refusal tells what is left without them.
        const imagesLeft = client.images_per_day === undefined ? {} : imagesHeaders(client.images_per_day, imagesUsedBefore);
        throw new GatewayError(
          'rate_limited',
          `monthly_budget_usd limit reached: key ${client.id} may spend an estimated $${client.monthly_budget_usd} per calendar month and has spent $${((total - cost) / MICRO).toFixed(4)}; this request would cost about $${(cost / MICRO).toFixed(4)}`,
          { retryAfter: Math.ceil(w.msToNextMonth / 1000), limit: 'monthly_budget_usd', headers: { ...imagesLeft, ...budgetHeaders(client.monthly_budget_usd, limit, total - cost) } },
        );
      }
      reservation.microUsd = cost;
      Object.assign(reservation.headers, budgetHeaders(client.monthly_budget_usd, limit, total));
    }
    return reservation;
  }

  /**
   * Counts one request against the key's requests per minute (its rpm, else `defaultRpm`), as the
   * rate limit counts a request that can cost money: for a request first counted as a read (an
   * Idempotency-Key retry) that turns out to start a job of its own.
   */
  async countRequest(client: Client, defaultRpm: number): Promise<void> {
    if (client.admin) return;
    const limit = client.rpm ?? defaultRpm;
    const { total, ttlMs } = await this.counters.add(`rpm:${client.id}`, 1, 60_000);
    if (total > limit) {
      const seconds = Math.max(1, Math.ceil(ttlMs / 1000));
      throw new GatewayError('rate_limited', `rpm limit reached: key ${client.id} may make ${limit} requests per minute; retry in ${seconds} s`, {
        retryAfter: seconds,
        limit: 'rpm',
      });
    }
  }

  /** A reservation of nothing, for a request that can cost nothing (a retry that joins or replays the first). */
  nothingReserved(client: Client): Reservation {
    const w = windows();
    return { client, images: 0, microUsd: 0, dayKey: `images:${client.id}:${w.day}`, monthKey: `usd:${client.id}:${w.month}`, headers: {} };
  }

  /**
   * Gives back what was reserved but not used (a failure, fewer images) or adds what it cost beyond
   * the estimate. The reservation then holds what was settled, and its headers say what is left
   * after it: an answer tells the settled figures, never a reservation a failure gave back.
   */
  async settle(reservation: Reservation, images: number, costUsd: number | null): Promise<void> {
    const w = windows();
    const headers = reservation.headers;
    const token = reservation.client.token;
    if (token && reservation.tokenImages !== undefined && token.maxImages !== null) {
      const delta = images - reservation.tokenImages;
      if (delta !== 0) {
        const { total } = await this.counters.add(`token-images:${token.id}`, delta, KeyLimits.tokenWindowMs(token));
        if (headers['x-ratelimit-token-images-remaining'] !== undefined) headers['x-ratelimit-token-images-remaining'] = String(Math.max(0, token.maxImages - total));
      }
      reservation.tokenImages = images;
    }
    if (reservation.images !== 0 || (reservation.client.images_per_day !== undefined && images !== 0)) {
      const delta = images - reservation.images;
      if (delta !== 0) {
        const { total } = await this.counters.add(reservation.dayKey, delta, w.msToNextDay + 60_000);
        const limit = headers['x-ratelimit-images-limit'];
        if (limit !== undefined) Object.assign(headers, imagesHeaders(Number(limit), total));
      }
    }
    if (reservation.client.monthly_budget_usd !== undefined) {
      const actual = costUsd === null ? reservation.microUsd : Math.round(costUsd * MICRO);
      const delta = actual - reservation.microUsd;
      if (delta !== 0) {
        const { total } = await this.counters.add(reservation.monthKey, delta, w.msToNextMonth + 86_400_000);
        const budgetUsd = headers['x-ratelimit-budget-limit-usd'];
        if (budgetUsd !== undefined) Object.assign(headers, budgetHeaders(Number(budgetUsd), Math.round(Number(budgetUsd) * MICRO), total));
      }
      // Settled: settling again counts from here, not from the estimate.
      reservation.microUsd = actual;
    }
    reservation.images = images;
  }
}
