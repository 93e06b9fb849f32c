import type { ModelSpec, UpstreamRoute } from '../catalogue/model-spec.js';
import { GatewayError, NOT_A_FIELD, detailsSummary } from '../errors.js';

/** What a request asks of its model, by the route it came to; undefined where the hint does not apply. */
export type HintedOperation = 'generate' | 'edit' | 'upscale' | 'describe';

const OPERATION_OF_ROUTE: Readonly<Record<string, HintedOperation>> = {
  '/v1/generate': 'generate',
  '/v1/images/generations': 'generate',
  '/v1/edit': 'edit',
  '/v1/images/edits': 'edit',
  '/v1/upscale': 'upscale',
  '/v1/describe': 'describe',
};

export function hintedOperationOf(routeUrl: string | undefined): HintedOperation | undefined {
  return routeUrl !== undefined && Object.hasOwn(OPERATION_OF_ROUTE, routeUrl) ? OPERATION_OF_ROUTE[routeUrl] : undefined;
}

/** The options the model takes for that operation (every edit mode's, for an edit). */
function optionsFor(model: ModelSpec, operation: HintedOperation): Set<string> {
  const routes: Array<{ options: UpstreamRoute['options'] } | undefined> =
    operation === 'generate' ? [model.generate] : operation === 'edit' ? Object.values(model.edit ?? {}) : operation === 'upscale' ? [model.upscale] : [model.describe];
  return new Set(routes.flatMap((route) => (route ? Object.keys(route.options) : [])));
}

/**
 * A model option sent as a top-level field (`"rendering_speed": "TURBO"`, as the vendors' docs
 * write it) is refused as no field of the request; the refusal then also says where it goes:
 * `options.<name>` in JSON, inside the `options` part's JSON in a multipart body. Only for a model
 * the key may use and an option of the operation asked for: the hint tells nothing the key could
 * not read in GET /v1/models.
 */
export function hintOptionsSentAsFields(err: GatewayError, model: ModelSpec | undefined, operation: HintedOperation | undefined, multipart: boolean): GatewayError {
  if (model === undefined || operation === undefined || err.code !== 'invalid_request') return err;
  const options = optionsFor(model, operation);
  let hinted = false;
  const details = err.details.map((detail) => {
    if (detail.message !== NOT_A_FIELD || detail.field === undefined || !options.has(detail.field)) return detail;
    hinted = true;
    const where = multipart ? `send it inside the options part's JSON: options={"${detail.field}": ...}` : `send it as options.${detail.field}`;
    return { ...detail, message: `${NOT_A_FIELD}; it is an option of ${model.id}: ${where}` };
  });
  if (!hinted) return err;
  return new GatewayError(err.code, detailsSummary(details), {
    details,
    headers: err.headers,
    expected: err.expected,
    ...(err.cause !== undefined ? { cause: err.cause } : {}),
  });
}
