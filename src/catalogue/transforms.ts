/**
 * Named value transforms: how a value the gateway takes (always W:H ratios, WIDTHxHEIGHT sizes)
 * is written in an upstream's own terms. The catalogue file names them; code defines them here.
 */
export type Transform = (value: unknown) => unknown;

export const TRANSFORMS = {
  /** `16:9` → `16x9` (Ideogram 3.0's aspect ratios). */
  'colon-to-x': (v) => String(v).replace(':', 'x'),
  /** `16:9` → `ASPECT_16_9` (Ideogram's legacy aspect-ratio enum). */
  'ideogram-aspect-enum': (v) => `ASPECT_${String(v).replace(':', '_')}`,
  /** `1024x768` → `1024*768` (Alibaba zimage sizes). */
  'x-to-star': (v) => String(v).replace('x', '*'),
} as const satisfies Record<string, Transform>;

export type TransformName = keyof typeof TRANSFORMS;
export const TRANSFORM_NAMES = Object.keys(TRANSFORMS) as TransformName[];
