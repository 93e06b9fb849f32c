import type { FastifyInstance, FastifyRequest } from 'fastify';
import { GatewayError, clipName, invalidField } from '../errors.js';
import type { GalleryCursor, GalleryImage } from '../images/image-records.js';
import { parseImageName } from '../images/image-store.js';
import { checkQueryNames, parseInstant, single, type Query } from '../usage/usage-report.js';
import { publicBaseUrl } from './generation-http.js';

const LIST_PARAMETERS = ['limit', 'cursor', 'model', 'from', 'to', 'q', 'key', 'team'] as const;
const DEFAULT_LIMIT = 50;
const MAX_LIMIT = 100;
/** The width of `thumbnail_url`. */
export const LISTED_THUMBNAIL_WIDTH = 256;
const TEXT_MAX = 200;

function parseLimit(query: Query): number {
  const text = single(query, 'limit');
  if (text === undefined) return DEFAULT_LIMIT;
  const n = /^\d{1,4}$/.test(text) ? Number(text) : Number.NaN;
  if (!(n >= 1 && n <= MAX_LIMIT)) throw invalidField('limit', `must be a whole number from 1 to ${MAX_LIMIT}`);
  return n;
}

const encodeCursor = (c: GalleryCursor) => Buffer.from(JSON.stringify([c.createdAt, c.name, c.team]), 'utf8').toString('base64url');

function parseCursor(query: Query): GalleryCursor | undefined {
  const text = single(query, 'cursor');
  if (text === undefined) return undefined;
  try {
    const value: unknown = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'));
    if (Array.isArray(value) && value.length === 3 && Number.isSafeInteger(value[0]) && typeof value[1] === 'string' && typeof value[2] === 'string') {
      return { createdAt: value[0] as number, name: value[1], team: value[2] };
    }
  } catch {
    // answered below
  }
  throw invalidField('cursor', 'is not a cursor this route returned (pass next_cursor as it came)');
}

function text(query: Query, name: string): string | undefined {
  const value = single(query, name);
  if (value !== undefined && value.length > TEXT_MAX) throw invalidField(name, `must be at most ${TEXT_MAX} characters`);
  return value;
}

/** An entry as GET /v1/images answers it, with its team's signed URLs. */
function describe(app: FastifyInstance, origin: string, image: GalleryImage) {
  const url = `${origin}/v1/images/${image.name}?${app.signer.query(image.name, image.expiresAt, image.team)}`;
  return {
    id: image.name,
    url,
    thumbnail_url: `${url}&w=${LISTED_THUMBNAIL_WIDTH}&format=webp`,
    mime_type: image.mimeType,
    bytes: image.bytes,
    width: image.width,
    height: image.height,
    sha256: image.sha256,
    model: image.model,
    operation: image.operation,
    key_id: image.keyId,
    team: image.team,
    prompt: image.prompt,
    parameters: image.parameters,
    seed: image.seed,
    cost_usd: image.costUsd,
    created_at: new Date(image.createdAt).toISOString(),
    expires_at: new Date(image.expiresAt * 1000).toISOString(),
  };
}

function callerOf(request: FastifyRequest) {
  const client = request.client;
  if (!client) throw new GatewayError('unauthorized', 'a client key is required');
  return client;
}

/** GET /v1/images (the caller's team's stored images; the admin's: every team's) and DELETE /v1/images/{id}. */
export async function imageListRoutes(app: FastifyInstance): Promise<void> {
  app.get<{ Querystring: Query }>('/v1/images', async (request) => {
    const client = callerOf(request);
    const query = request.query;
    checkQueryNames(query, LIST_PARAMETERS);
    const limit = parseLimit(query);
    const after = parseCursor(query);
    const fromText = single(query, 'from');
    const toText = single(query, 'to');
    const from = fromText === undefined ? undefined : parseInstant('from', fromText);
    const to = toText === undefined ? undefined : parseInstant('to', toText);
    if (from !== undefined && to !== undefined && to <= from) throw invalidField('to', 'must be after from');
    const modelText = text(query, 'model');
    // An alias finds the images stored under the model's id.
    const model = modelText === undefined ? undefined : (app.catalogue.find(modelText)?.id ?? modelText);
    let team = text(query, 'team');
    if (!client.admin) {
      if (team !== undefined && team !== client.team) {
        throw new GatewayError('forbidden', `team: a team key lists only its own team's images (${client.team}); the admin key lists every team's`, {
          details: [{ field: 'team', message: 'must be the key’s own team (or absent)' }],
        });
      }
      team = client.team;
    }
    const rows = await app.images.list({
      now: Math.floor(Date.now() / 1000),
      limit: limit + 1,
      team,
      model,
      keyId: text(query, 'key'),
      from,
      to,
      q: text(query, 'q'),
      after,
    });
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    const origin = publicBaseUrl(app, request);
    return {
      data: page.map((image) => describe(app, origin, image)),
      next_cursor: rows.length > limit && last ? encodeCursor(last) : null,
    };
  });

  // The same route as the signed download; only GET and HEAD of it go without a key (usage-routes.ts isApiCall).
  app.delete<{ Params: { name: string } }>('/v1/images/:name', async (request, reply) => {
    const client = callerOf(request);
    const id = request.params.name;
    const notFound = () => new GatewayError('not_found', `no image ${clipName(id)} of yours; GET /v1/images lists them`);
    if (!parseImageName(id)) throw notFound();
    // A team key removes its team's entry (another team that made the same bytes keeps its own); the admin removes the image.
    const removed = await app.images.deleteImage(id, client.admin ? undefined : client.team);
    if (!removed) throw notFound();
    return reply.status(204).send();
  });
}
