/**
 * Named value transforms: how a value the gateway takes (always W:H ratios, WIDTHxHEIGHT sizes)
 * is written in an upstream's own terms. The catalogue file names them; code defines them here.
 */
import { parseDimensions } from './param-rule.js';

export type Transform = (value: unknown) => unknown;

/** `1024x768` → `[1024, 768]`; the rule has checked the value before any transform runs. */
function widthAndHeight(value: unknown): [number, number] {
  const d = parseDimensions(String(value));
  if (!d) throw new Error(`size-to-width-height: "${String(value)}" is not WIDTHxHEIGHT`);
  return [d.width, d.height];
}

export const TRANSFORMS = {
  /** `16:9` → `16x9` (Ideogram 3.0's aspect ratios). */
  'colon-to-x': (v) => String(v).replace(':', 'x'),
  /** `16:9` → `ASPECT_16_9` (Ideogram's legacy aspect-ratio enum). */
  'ideogram-aspect-enum': (v) => `ASPECT_${String(v).replace(':', '_')}`,
  /** `1024x768` → `1024*768` (Alibaba zimage sizes). */
  'x-to-star': (v) => String(v).replace('x', '*'),
  /** `1024x768` → 1024 and 768, written to two fields (`to: [width, height]`, Black Forest Labs' FLUX.2). */
  'size-to-width-height': widthAndHeight,
  /** `1024x768` → `RESOLUTION_1024_768` (Ideogram's legacy `Resolution` enum, the legacy reframe's resolution). */
  'ideogram-resolution-enum': (v) => `RESOLUTION_${String(v).replace('x', '_')}`,
} as const satisfies Record<string, Transform>;

export type TransformName = keyof typeof TRANSFORMS;
export const TRANSFORM_NAMES = Object.keys(TRANSFORMS) as TransformName[];

/** The transforms that split one value into several, and into how many: their mapping's `to` lists that many paths. */
export const SPLITTING_TRANSFORMS: Partial<Record<TransformName, number>> = { 'size-to-width-height': 2 };
