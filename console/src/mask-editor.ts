/**
 * Paint a mask over an image: a canvas at the image's natural size (shown scaled to fit), a round
 * brush of a chosen size, an eraser, undo/redo, clear and invert. The painted area is the area to
 * change; exported as a PNG in the gateway's convention (transparent = change). The pixel work is
 * mask.ts's.
 */
import {
  MaskHistory,
  brushRadiusInImage,
  clearMask,
  createMask,
  exportMaskRgba,
  invertMask,
  overlayRgba,
  paintedCount,
  strokeMask,
  toImagePoint,
  type Point,
} from './mask.js';
import { h } from './ui.js';

export interface MaskEditor {
  element: HTMLElement;
  width: number;
  height: number;
  /** Whether anything is painted. */
  hasPaint(): boolean;
  /** The mask as a PNG at the image's size: transparent where painted. */
  toBlob(): Promise<Blob>;
  /** Frees the image's object URL. */
  destroy(): void;
}

function loadImage(blob: Blob): Promise<{ image: HTMLImageElement; url: string }> {
  const url = URL.createObjectURL(blob);
  const image = new Image();
  image.decoding = 'async';
  image.src = url;
  return image.decode().then(
    () => ({ image, url }),
    () => {
      URL.revokeObjectURL(url);
      throw new Error('the image cannot be read by this browser');
    },
  );
}

function canvas2d(canvas: HTMLCanvasElement): CanvasRenderingContext2D {
  const ctx = canvas.getContext('2d');
  if (!ctx) throw new Error('this browser has no 2D canvas');
  return ctx;
}

let editors = 0;

export async function createMaskEditor(source: Blob, opts: { required?: boolean } = {}): Promise<MaskEditor> {
  const { image, url } = await loadImage(source);
  const width = image.naturalWidth;
  const height = image.naturalHeight;
  const mask = createMask(width, height);
  const history = new MaskHistory(mask);
  const id = `mask-${++editors}`;

  const view = h('canvas', {
    width,
    height,
    class: 'mask-canvas',
    tabindex: '0',
    role: 'img',
    'aria-label': 'Mask: paint over the area to change',
  });
  view.style.setProperty('width', '100%');
  view.style.setProperty('max-width', '768px');
  view.style.setProperty('height', 'auto');
  view.style.setProperty('display', 'block');
  view.style.setProperty('cursor', 'crosshair');
  // Painting with a finger draws instead of scrolling the page.
  view.style.setProperty('touch-action', 'none');
  view.style.setProperty('border-radius', 'var(--radius, 8px)');
  const ctx = canvas2d(view);
  const overlay = h('canvas', { width, height });
  const overlayCtx = canvas2d(overlay);

  let frame = 0;
  const draw = () => {
    frame = 0;
    ctx.clearRect(0, 0, width, height);
    ctx.drawImage(image, 0, 0);
    const rgba = overlayRgba(mask);
    overlayCtx.putImageData(new ImageData(rgba.data as Uint8ClampedArray<ArrayBuffer>, width, height), 0, 0);
    ctx.drawImage(overlay, 0, 0);
    undo.disabled = !history.canUndo;
    redo.disabled = !history.canRedo;
    status.textContent = paintedCount(mask) > 0 ? `${Math.round((paintedCount(mask) / (width * height)) * 100)}% of the image will change.` : opts.required ? 'Paint the area to change (this mode needs a mask).' : 'Nothing painted: the whole image may change.';
  };
  const redraw = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };
  /** Runs a change to the whole mask as one undoable step. */
  const change = (fn: () => void) => {
    history.record();
    fn();
    draw();
  };

  const size = h('input', { id: `${id}-size`, type: 'range', min: 2, max: 200, step: 1, value: 40 });
  const eraser = h('button', { type: 'button', 'aria-pressed': 'false' }, 'Eraser');
  const undo = h('button', { type: 'button', disabled: true, onclick: () => history.undo() && draw() }, 'Undo');
  const redo = h('button', { type: 'button', disabled: true, onclick: () => history.redo() && draw() }, 'Redo');
  const status = h('p', { class: 'hint', 'aria-live': 'polite' });
  const erasing = () => eraser.getAttribute('aria-pressed') === 'true';
  eraser.addEventListener('click', () => eraser.setAttribute('aria-pressed', String(!erasing())));

  // Strokes: the brush size is a diameter in screen pixels, painted in the image's pixels.
  let last: Point | undefined;
  let strokeChanged = false;
  const pointAt = (event: PointerEvent): Point => {
    const box = view.getBoundingClientRect();
    return toImagePoint(event.clientX - box.left, event.clientY - box.top, box.width, box.height, mask);
  };
  const radius = () => brushRadiusInImage(Number(size.value) / 2, view.getBoundingClientRect().width, width);
  const paint = (points: Point[]) => {
    if (strokeMask(mask, points, radius(), erasing() ? 'erase' : 'paint')) strokeChanged = true;
    redraw();
  };
  view.addEventListener('pointerdown', (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    view.setPointerCapture(event.pointerId);
    view.focus();
    history.record();
    strokeChanged = false;
    last = pointAt(event);
    paint([last]);
  });
  view.addEventListener('pointermove', (event) => {
    if (!last) return;
    const next = pointAt(event);
    paint([last, next]);
    last = next;
  });
  const end = () => {
    if (!last) return;
    last = undefined;
    if (!strokeChanged) history.discardLast();
    draw();
  };
  view.addEventListener('pointerup', end);
  view.addEventListener('pointercancel', end);

  const element = h(
    'div',
    { class: 'mask-editor', role: 'group', 'aria-label': 'Mask editor' },
    h(
      'div',
      { class: 'row mask-tools' },
      h('label', { for: `${id}-size` }, 'Brush size'),
      size,
      eraser,
      undo,
      redo,
      h('button', { type: 'button', onclick: () => change(() => clearMask(mask)) }, 'Clear'),
      h('button', { type: 'button', onclick: () => change(() => invertMask(mask)) }, 'Invert'),
    ),
    view,
    status,
    h('p', { class: 'hint' }, 'Paint over what should change. Keys: Ctrl+Z undo, Ctrl+Shift+Z redo, E eraser, [ and ] brush size.'),
  );
  element.addEventListener('keydown', (event) => {
    if (event.target instanceof HTMLInputElement && event.target !== size) return;
    const mod = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    if (mod && key === 'z') {
      if (event.shiftKey ? history.redo() : history.undo()) draw();
    } else if (mod && key === 'y') {
      if (history.redo()) draw();
    } else if (!mod && key === 'e') eraser.click();
    else if (!mod && (key === '[' || key === ']')) size.value = String(Number(size.value) + (key === '[' ? -5 : 5));
    else return;
    event.preventDefault();
  });
  draw();

  return {
    element,
    width,
    height,
    hasPaint: () => paintedCount(mask) > 0,
    toBlob() {
      const out = h('canvas', { width, height });
      const rgba = exportMaskRgba(mask);
      canvas2d(out).putImageData(new ImageData(rgba.data as Uint8ClampedArray<ArrayBuffer>, width, height), 0, 0);
      return new Promise((resolve, reject) => out.toBlob((blob) => (blob ? resolve(blob) : reject(new Error('the mask could not be encoded'))), 'image/png'));
    },
    destroy() {
      if (frame) cancelAnimationFrame(frame);
      URL.revokeObjectURL(url);
    },
  };
}
