import type { FastifyInstance } from 'fastify';
import { GatewayError } from '../errors.js';

export async function jobRoutes(app: FastifyInstance): Promise<void> {
  app.get<{ Params: { id: string } }>('/v1/jobs/:id', async (request) => {
    const row = await app.jobs.get(request.params.id);
    const client = request.client!;
    // Another team's job answers exactly like a missing one: its existence is not theirs to learn.
    if (!row || (row.team !== client.team && !client.admin)) {
      throw new GatewayError('not_found', `no job ${request.params.id}`);
    }
    return await app.jobs.view(row);
  });
}
