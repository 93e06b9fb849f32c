import type { FastifyInstance } from 'fastify';
import { mintTokenSchema } from '../auth/browser-tokens.js';
import { invalidField, zodRefusal } from '../errors.js';

export async function tokenRoutes(app: FastifyInstance): Promise<void> {
  // A backend mints a short-lived token with its client key and hands it to a browser.
  app.post('/v1/tokens', { bodyLimit: 64 * 1024 }, async (request, reply) => {
    const body = request.body ?? {};
    if (typeof body !== 'object' || Array.isArray(body)) throw invalidField('(body)', 'must be a JSON object of the token\'s bounds: {"ttl_seconds"?, "models"?, "max_images"?, "max_requests"?}, or {} for the defaults');
    const parsed = mintTokenSchema.safeParse(body);
    if (!parsed.success) throw zodRefusal(parsed.error, Object.keys(mintTokenSchema.shape));
    const minted = await app.tokens.mint(request.client!, parsed.data);
    reply.status(201);
    return minted;
  });
}
