/**
 * The console's mask editor, without a browser: strokes rasterised into the mask, eraser, invert,
 * clear, undo/redo, and the export at the image's size in the gateway's convention
 * (transparent = change), which the gateway's own mask conversion reads as meant.
 */
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import {
  MaskHistory,
  alphaOf,
  brushRadiusInImage,
  clearMask,
  createMask,
  exportMaskRgba,
  invertMask,
  maskFromRgba,
  overlayRgba,
  paintedCount,
  strokeMask,
  toImagePoint,
  type Mask,
} from '../console/src/mask.js';
import { toBlackMeansChangeMask } from '../src/images/mask.js';

const at = (mask: Mask, x: number, y: number) => mask.alpha[y * mask.width + x];

describe('mask strokes', () => {
  it('paints a disc for a single point: pixels whose centre is within the radius, nothing else', () => {
    const mask = createMask(20, 10);
    expect(strokeMask(mask, [{ x: 10, y: 5 }], 2)).toBe(true);
    // Centres (9.5,4.5), (11.5,5.5)... lie within 2 of (10,5); (11.5,6.5) and (12.5,5.5) do not.
    expect(at(mask, 9, 4)).toBe(255);
    expect(at(mask, 10, 5)).toBe(255);
    expect(at(mask, 11, 5)).toBe(255);
    expect(at(mask, 11, 6)).toBe(0);
    expect(at(mask, 12, 5)).toBe(0);
    expect(at(mask, 0, 0)).toBe(0);
    // The 12 pixel centres within radius 2 of a point on a pixel corner.
    expect(paintedCount(mask)).toBe(12);
  });

  it('paints the whole segment between points (a capsule), clipped to the image', () => {
    const mask = createMask(30, 9);
    strokeMask(mask, [{ x: -5, y: 4.5 }, { x: 35, y: 4.5 }], 1);
    // Rows 4 (centre 4.5) and the ones whose centre is exactly within 1 (3.5 and 5.5) across the full width.
    for (let x = 0; x < 30; x++) {
      expect([at(mask, x, 3), at(mask, x, 4), at(mask, x, 5)]).toEqual([255, 255, 255]);
      expect([at(mask, x, 2), at(mask, x, 6)]).toEqual([0, 0]);
    }
    expect(paintedCount(mask)).toBe(90);
  });

  it('erases with the same brush, and reports whether anything changed', () => {
    const mask = createMask(16, 16);
    strokeMask(mask, [{ x: 2, y: 8 }, { x: 14, y: 8 }], 3);
    const before = paintedCount(mask);
    expect(strokeMask(mask, [{ x: 8, y: 8 }], 2, 'erase')).toBe(true);
    expect(at(mask, 8, 8)).toBe(0);
    expect(at(mask, 3, 8)).toBe(255);
    expect(paintedCount(mask)).toBe(before - 12);
    // Erasing where nothing is painted, or a stroke with no points or no radius, changes nothing.
    expect(strokeMask(mask, [{ x: 8, y: 1 }], 0.5, 'erase')).toBe(false);
    expect(strokeMask(mask, [], 4)).toBe(false);
    expect(strokeMask(mask, [{ x: 4, y: 4 }], 0)).toBe(false);
  });

  it('inverts and clears', () => {
    const mask = createMask(4, 4);
    strokeMask(mask, [{ x: 0.5, y: 0.5 }], 0.5);
    expect(paintedCount(mask)).toBe(1);
    invertMask(mask);
    expect(paintedCount(mask)).toBe(15);
    expect(at(mask, 0, 0)).toBe(0);
    clearMask(mask);
    expect(paintedCount(mask)).toBe(0);
  });

  it('maps pointer positions and brush sizes from the shown canvas to the image pixels', () => {
    const mask = createMask(2048, 1024);
    // Shown at 512x256: a quarter of the size.
    expect(toImagePoint(100, 50, 512, 256, mask)).toEqual({ x: 400, y: 200 });
    expect(brushRadiusInImage(10, 512, 2048)).toBe(40);
    expect(() => createMask(0, 5)).toThrow(/positive whole size/);
  });
});

describe('mask history', () => {
  it('undoes and redoes strokes, clear and invert; a new change drops what could be redone', () => {
    const mask = createMask(10, 10);
    const history = new MaskHistory(mask);
    expect(history.canUndo).toBe(false);
    history.record();
    strokeMask(mask, [{ x: 2, y: 2 }], 1.5);
    const afterFirst = mask.alpha.slice();
    history.record();
    strokeMask(mask, [{ x: 7, y: 7 }], 1.5);
    const afterSecond = mask.alpha.slice();
    history.record();
    invertMask(mask);

    expect(history.undo()).toBe(true);
    expect(mask.alpha).toEqual(afterSecond);
    expect(history.undo()).toBe(true);
    expect(mask.alpha).toEqual(afterFirst);
    expect(history.canRedo).toBe(true);
    expect(history.redo()).toBe(true);
    expect(mask.alpha).toEqual(afterSecond);

    history.record();
    clearMask(mask);
    expect(history.canRedo).toBe(false);
    expect(history.redo()).toBe(false);
    expect(history.undo()).toBe(true);
    expect(mask.alpha).toEqual(afterSecond);
    history.undo();
    history.undo();
    expect(paintedCount(mask)).toBe(0);
    expect(history.undo()).toBe(false);
  });

  it('keeps at most its limit of steps', () => {
    const mask = createMask(8, 1);
    const history = new MaskHistory(mask, 3);
    for (let x = 0; x < 6; x++) {
      history.record();
      strokeMask(mask, [{ x: x + 0.5, y: 0.5 }], 0.5);
    }
    let undone = 0;
    while (history.undo()) undone++;
    expect(undone).toBe(3);
    expect(paintedCount(mask)).toBe(3);
  });
});

describe('mask export', () => {
  it('is transparent where painted and opaque elsewhere, at the mask size', () => {
    const mask = createMask(6, 4);
    strokeMask(mask, [{ x: 1, y: 1 }], 1);
    const rgba = exportMaskRgba(mask);
    expect(rgba.width).toBe(6);
    expect(rgba.height).toBe(4);
    expect(rgba.data).toHaveLength(6 * 4 * 4);
    const alpha = alphaOf(rgba);
    for (let i = 0; i < alpha.length; i++) expect(alpha[i]).toBe(mask.alpha[i] === 255 ? 0 : 255);
    expect(maskFromRgba(rgba).alpha).toEqual(mask.alpha);
    // The overlay shows the painted pixels only.
    const overlay = alphaOf(overlayRgba(mask));
    expect(overlay.filter((v) => v > 0)).toHaveLength(paintedCount(mask));
  });

  it('encoded as a PNG, is read by the gateway as "change the painted area" at the image size', async () => {
    const width = 64;
    const height = 48;
    const mask = createMask(width, height);
    // Paint the left half.
    strokeMask(mask, [{ x: 0, y: 0 }, { x: 0, y: height }], width / 2);
    const rgba = exportMaskRgba(mask);
    const png = await sharp(Buffer.from(rgba.data.buffer), { raw: { width, height, channels: 4 } }).png().toBuffer();
    const image = await sharp({ create: { width, height, channels: 3, background: { r: 20, g: 120, b: 200 } } }).png().toBuffer();

    // Ideogram's black-means-change mask, made by the gateway from ours: black on the left, white on the right.
    const converted = await toBlackMeansChangeMask({ bytes: png, mime: 'image/png', filename: 'mask.png' }, { bytes: image, mime: 'image/png', filename: 'image.png' });
    const { data, info } = await sharp(converted.bytes).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height]).toEqual([width, height]);
    expect(data[10 * width + 5]).toBe(0);
    expect(data[10 * width + width - 5]).toBe(255);

    // Nothing painted: the gateway refuses it, as nothing would change.
    const empty = exportMaskRgba(createMask(width, height));
    const emptyPng = await sharp(Buffer.from(empty.data.buffer), { raw: { width, height, channels: 4 } }).png().toBuffer();
    await expect(
      toBlackMeansChangeMask({ bytes: emptyPng, mime: 'image/png', filename: 'mask.png' }, { bytes: image, mime: 'image/png', filename: 'image.png' }),
    ).rejects.toThrow(/no transparent pixels/);
  });
});
