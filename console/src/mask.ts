/**
 * The mask editor's pixel logic, kept free of the DOM so it runs (and is tested) in Node.
 *
 * A mask is one byte per pixel of the source image at its natural size: 255 where the user painted
 * (the area to change), 0 elsewhere. It is exported in the gateway's convention (OpenAI's):
 * transparent where the image is to change, opaque everywhere else.
 */

/** An ImageData-like RGBA picture: `data` holds width*height*4 bytes. */
export interface Rgba {
  width: number;
  height: number;
  data: Uint8ClampedArray;
}

export interface Mask {
  width: number;
  height: number;
  /** One byte per pixel: 255 painted (change), 0 not. */
  alpha: Uint8ClampedArray;
}

export interface Point {
  x: number;
  y: number;
}

export type BrushMode = 'paint' | 'erase';

export function createMask(width: number, height: number): Mask {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new Error(`a mask needs a positive whole size, not ${width}x${height}`);
  }
  return { width, height, alpha: new Uint8ClampedArray(width * height) };
}

export function cloneMask(mask: Mask): Mask {
  return { width: mask.width, height: mask.height, alpha: mask.alpha.slice() };
}

export function clearMask(mask: Mask): void {
  mask.alpha.fill(0);
}

/** Painted becomes unpainted and the other way round. */
export function invertMask(mask: Mask): void {
  const a = mask.alpha;
  for (let i = 0; i < a.length; i++) a[i] = a[i]! >= 128 ? 0 : 255;
}

/** How many pixels are painted. */
export function paintedCount(mask: Mask): number {
  let n = 0;
  for (const v of mask.alpha) if (v >= 128) n++;
  return n;
}

/** The squared distance from pixel centre p to the segment a-b. */
function distanceSquaredToSegment(px: number, py: number, a: Point, b: Point): number {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const lengthSquared = dx * dx + dy * dy;
  let t = lengthSquared === 0 ? 0 : ((px - a.x) * dx + (py - a.y) * dy) / lengthSquared;
  t = Math.max(0, Math.min(1, t));
  const cx = a.x + t * dx - px;
  const cy = a.y + t * dy - py;
  return cx * cx + cy * cy;
}

/**
 * Rasterises a stroke of round brush `radius` (image pixels) through `points` into the mask: every
 * pixel whose centre lies within `radius` of the polyline is painted (or erased). One point paints a disc.
 * Answers whether any pixel changed.
 */
export function strokeMask(mask: Mask, points: readonly Point[], radius: number, mode: BrushMode = 'paint'): boolean {
  if (points.length === 0 || !(radius > 0)) return false;
  const value = mode === 'paint' ? 255 : 0;
  const r2 = radius * radius;
  let changed = false;
  const segments: Array<[Point, Point]> = points.length === 1 ? [[points[0]!, points[0]!]] : [];
  for (let i = 1; i < points.length; i++) segments.push([points[i - 1]!, points[i]!]);
  for (const [a, b] of segments) {
    const x0 = Math.max(0, Math.floor(Math.min(a.x, b.x) - radius));
    const x1 = Math.min(mask.width - 1, Math.ceil(Math.max(a.x, b.x) + radius));
    const y0 = Math.max(0, Math.floor(Math.min(a.y, b.y) - radius));
    const y1 = Math.min(mask.height - 1, Math.ceil(Math.max(a.y, b.y) + radius));
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        if (distanceSquaredToSegment(x + 0.5, y + 0.5, a, b) > r2) continue;
        const i = y * mask.width + x;
        if (mask.alpha[i] !== value) {
          mask.alpha[i] = value;
          changed = true;
        }
      }
    }
  }
  return changed;
}

/**
 * The mask as the gateway takes it, at the image's natural size: painted pixels transparent
 * (alpha 0, the area to change), every other pixel opaque white. Encode it as a PNG (canvas.toBlob).
 */
export function exportMaskRgba(mask: Mask): Rgba {
  const data = new Uint8ClampedArray(mask.width * mask.height * 4);
  for (let i = 0; i < mask.alpha.length; i++) {
    const painted = mask.alpha[i]! >= 128;
    const o = i * 4;
    data[o] = 255;
    data[o + 1] = 255;
    data[o + 2] = 255;
    data[o + 3] = painted ? 0 : 255;
  }
  return { width: mask.width, height: mask.height, data };
}

/** The alpha channel of an exported (or any) RGBA mask: 0 where the image is to change. */
export function alphaOf(rgba: Rgba): Uint8ClampedArray {
  const out = new Uint8ClampedArray(rgba.width * rgba.height);
  for (let i = 0; i < out.length; i++) out[i] = rgba.data[i * 4 + 3]!;
  return out;
}

/** A mask read back from an RGBA mask in the gateway's convention (transparent = change). */
export function maskFromRgba(rgba: Rgba): Mask {
  const mask = createMask(rgba.width, rgba.height);
  for (let i = 0; i < mask.alpha.length; i++) mask.alpha[i] = rgba.data[i * 4 + 3]! < 128 ? 255 : 0;
  return mask;
}

/** What the editor draws over the image: painted pixels in a translucent colour, the rest clear. */
export function overlayRgba(mask: Mask, colour: { r: number; g: number; b: number; a: number } = { r: 255, g: 0, b: 96, a: 140 }): Rgba {
  const data = new Uint8ClampedArray(mask.width * mask.height * 4);
  for (let i = 0; i < mask.alpha.length; i++) {
    if (mask.alpha[i]! < 128) continue;
    const o = i * 4;
    data[o] = colour.r;
    data[o + 1] = colour.g;
    data[o + 2] = colour.b;
    data[o + 3] = colour.a;
  }
  return { width: mask.width, height: mask.height, data };
}

/**
 * A pointer position on the displayed canvas (CSS pixels from its top-left, shown `shownWidth` x
 * `shownHeight`) in the image's own pixels.
 */
export function toImagePoint(offsetX: number, offsetY: number, shownWidth: number, shownHeight: number, mask: { width: number; height: number }): Point {
  const sx = shownWidth > 0 ? mask.width / shownWidth : 1;
  const sy = shownHeight > 0 ? mask.height / shownHeight : 1;
  return { x: offsetX * sx, y: offsetY * sy };
}

/** A brush `screenRadius` CSS pixels wide on screen, in image pixels (the mask is at the image's size). */
export function brushRadiusInImage(screenRadius: number, shownWidth: number, imageWidth: number): number {
  return shownWidth > 0 ? (screenRadius * imageWidth) / shownWidth : screenRadius;
}

/**
 * Undo and redo as snapshots of the mask: `record()` before each change (a stroke, clear, invert),
 * `undo()`/`redo()` answer the mask to show. A new change after undoing drops the redo steps.
 */
export class MaskHistory {
  private readonly past: Uint8ClampedArray[] = [];
  private future: Uint8ClampedArray[] = [];

  constructor(
    readonly mask: Mask,
    private readonly limit = 50,
  ) {}

  get canUndo(): boolean {
    return this.past.length > 0;
  }

  get canRedo(): boolean {
    return this.future.length > 0;
  }

  /** Keeps the mask as it is now, to come back to; call it before changing the mask. */
  record(): void {
    this.past.push(this.mask.alpha.slice());
    if (this.past.length > this.limit) this.past.shift();
    this.future = [];
  }

  /** Drops the snapshot record() just took, for a change that changed nothing. */
  discardLast(): void {
    this.past.pop();
  }

  undo(): boolean {
    const previous = this.past.pop();
    if (!previous) return false;
    this.future.push(this.mask.alpha.slice());
    this.mask.alpha.set(previous);
    return true;
  }

  redo(): boolean {
    const next = this.future.pop();
    if (!next) return false;
    this.past.push(this.mask.alpha.slice());
    this.mask.alpha.set(next);
    return true;
  }
}
