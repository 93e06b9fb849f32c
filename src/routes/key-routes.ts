import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { GatewayError, absentAsRequired, invalidField, zodRefusal } from '../errors.js';
import { NAME_WORDS, mintKeySchema, modelAllowed, type KeyPolicy } from '../auth/key-policy.js';
import { hasKnownPrice } from '../catalogue/catalogue.js';

/** What a mint must give, in the words of its refusal when it gives none. */
const MINT_REQUIRED = { team: `give the team the key belongs to (its usage, images and jobs are the team's), ${NAME_WORDS}` };

function requireAdmin(request: FastifyRequest): void {
  if (!request.client?.admin) throw new GatewayError('forbidden', 'only the admin key may manage keys');
}

/**
 * A budgeted key is refused every model of unknown price (403 at each request): one whose
 * allow-list matches only such models could make nothing, so it is not minted.
 */
function refuseBudgetWithoutPricedModel(app: FastifyInstance, policy: Pick<KeyPolicy, 'models' | 'monthly_budget_usd'>): void {
  if (policy.monthly_budget_usd === undefined || policy.models === undefined) return;
  const allowed = app.catalogue.models.filter((m) => !m.retired && modelAllowed(policy, m.id));
  // Patterns matching no model at all are refused as typos, by the key store.
  if (allowed.length === 0 || allowed.some(hasKnownPrice)) return;
  const patterns = policy.models.join(', ');
  throw new GatewayError(
    'invalid_request',
    `models: ${patterns} ${policy.models.length === 1 ? 'matches' : 'match'} only models with no known price, which a key with a monthly_budget_usd may not use; allow priced models (GET /v1/models shows price_per_image_usd), drop monthly_budget_usd, or have an operator price them in PRICE_OVERRIDES`,
    { details: [{ field: 'models', message: 'matches no model with a known price, and the key has a monthly_budget_usd' }] },
  );
}

export async function keyRoutes(app: FastifyInstance): Promise<void> {
  app.get('/v1/keys', async (request) => {
    requireAdmin(request);
    return { data: app.keyStore.list() };
  });

  app.post('/v1/keys', { bodyLimit: 64 * 1024 }, async (request, reply) => {
    requireAdmin(request);
    const body = request.body ?? {};
    if (typeof body !== 'object' || Array.isArray(body)) throw invalidField('(body)', 'must be a JSON object: {"team": "<the team the key belongs to>", ...}');
    const parsed = mintKeySchema.safeParse(body);
    if (!parsed.success) throw zodRefusal(parsed.error, Object.keys(mintKeySchema.shape), { messageOf: absentAsRequired(body, MINT_REQUIRED) });
    refuseBudgetWithoutPricedModel(app, parsed.data);
    const { policy, key } = await app.keyStore.mint(parsed.data);
    reply.status(201);
    return { ...policy, source: 'api', key };
  });

  app.delete<{ Params: { id: string } }>('/v1/keys/:id', async (request, reply) => {
    requireAdmin(request);
    const id = z.string().min(1).max(64).safeParse(request.params.id);
    if (!id.success) throw invalidField('id', 'must be 1-64 characters');
    await app.keyStore.revoke(id.data);
    return reply.status(204).send();
  });
}
