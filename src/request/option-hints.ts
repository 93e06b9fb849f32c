import type { ModelSpec, UpstreamRoute } from '../catalogue/model-spec.js';
import { GatewayError, NOT_A_FIELD, detailsSummary } from '../errors.js';

function routesOf(model: ModelSpec): UpstreamRoute[] {
  return [model.generate, ...Object.values(model.edit ?? {}), model.upscale].filter((r): r is UpstreamRoute => r !== undefined);
}

/**
 * A model option sent as a top-level field (`"rendering_speed": "TURBO"`, as the vendors' docs
 * write it) is refused as no field of the request; the refusal then also says where it goes,
 * `options.<name>`, so the fix is in the message rather than in the docs.
 */
export function hintOptionsSentAsFields(err: GatewayError, model: ModelSpec | undefined): GatewayError {
  if (model === undefined || err.code !== 'invalid_request') return err;
  const options = new Set(routesOf(model).flatMap((route) => Object.keys(route.options)));
  if (model.describe) for (const name of Object.keys(model.describe.options)) options.add(name);
  let hinted = false;
  const details = err.details.map((detail) => {
    if (detail.message !== NOT_A_FIELD || detail.field === undefined || !options.has(detail.field)) return detail;
    hinted = true;
    return { ...detail, message: `${NOT_A_FIELD}; it is an option of ${model.id}: send it as options.${detail.field}` };
  });
  if (!hinted) return err;
  return new GatewayError(err.code, detailsSummary(details), {
    details,
    headers: err.headers,
    expected: err.expected,
    ...(err.cause !== undefined ? { cause: err.cause } : {}),
  });
}
