import type { FastifyInstance } from 'fastify';
import { mintTokenSchema } from '../auth/browser-tokens.js';
import { GatewayError } from '../errors.js';

export async function tokenRoutes(app: FastifyInstance): Promise<void> {
  // A backend mints a short-lived token with its client key and hands it to a browser.
  app.post('/v1/tokens', { bodyLimit: 64 * 1024 }, async (request, reply) => {
    const parsed = mintTokenSchema.safeParse(request.body ?? {});
    if (!parsed.success) {
      const details = parsed.error.issues.map((i) =>
        i.code === 'unrecognized_keys'
          ? { field: i.keys.join(', '), message: 'is not a field of this request', allowed: Object.keys(mintTokenSchema.shape) }
          : { field: i.path.map((p, n) => (typeof p === 'number' ? `[${p}]` : n === 0 ? String(p) : `.${String(p)}`)).join('') || '(body)', message: i.message },
      );
      throw new GatewayError('invalid_request', details.map((d) => `${d.field} ${d.message}`).join('; '), { details });
    }
    const minted = await app.tokens.mint(request.client!, parsed.data);
    reply.status(201);
    return minted;
  });
}
