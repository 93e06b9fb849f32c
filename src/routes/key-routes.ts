import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { GatewayError, zodRefusal } from '../errors.js';
import { mintKeySchema } from '../auth/key-policy.js';

function requireAdmin(request: FastifyRequest): void {
  if (!request.client?.admin) throw new GatewayError('forbidden', 'only the admin key may manage keys');
}

export async function keyRoutes(app: FastifyInstance): Promise<void> {
  app.get('/v1/keys', async (request) => {
    requireAdmin(request);
    return { data: app.keyStore.list() };
  });

  app.post('/v1/keys', { bodyLimit: 64 * 1024 }, async (request, reply) => {
    requireAdmin(request);
    const parsed = mintKeySchema.safeParse(request.body ?? {});
    if (!parsed.success) throw zodRefusal(parsed.error, Object.keys(mintKeySchema.shape));
    const { policy, key } = await app.keyStore.mint(parsed.data);
    reply.status(201);
    return { ...policy, source: 'api', key };
  });

  app.delete<{ Params: { id: string } }>('/v1/keys/:id', async (request, reply) => {
    requireAdmin(request);
    const id = z.string().min(1).max(64).safeParse(request.params.id);
    if (!id.success) throw new GatewayError('invalid_request', 'id: must be 1-64 characters');
    await app.keyStore.revoke(id.data);
    return reply.status(204).send();
  });
}
