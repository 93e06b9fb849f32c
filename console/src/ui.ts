/**
 * Small DOM helpers shared by the console's pages. Text always goes in as text (textContent),
 * never as HTML: nothing a user or the API wrote can become markup. No inline styles either
 * (the page's CSP forbids them): use classes, or element.style.setProperty from code.
 */

export { formatUsd } from './format.js';

export type Child = Node | string | number | null | undefined | false | Child[];
export type AttrValue = string | number | boolean | null | undefined | ((event: any) => void);
export type Attrs = Record<string, AttrValue>;

function append(parent: Node, child: Child): void {
  if (child === null || child === undefined || child === false) return;
  if (Array.isArray(child)) {
    for (const c of child) append(parent, c);
    return;
  }
  parent.appendChild(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child);
}

/**
 * Creates an element: `h('button', { class: 'primary', type: 'button', onclick: () => ... }, 'Generate')`.
 * Attributes: `on*` functions become event listeners; `true` sets a boolean attribute, `false`,
 * null and undefined leave it out; `value` and `checked` set the property. Children: nodes,
 * strings and numbers (as text), arrays of them; null/undefined/false are skipped.
 */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs?: Attrs | null, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === 'function') {
      if (!name.startsWith('on')) throw new Error(`h(): attribute ${name} is a function; only on* event listeners may be`);
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === 'style') {
      throw new Error('h(): no style attribute (the console CSP forbids inline styles); use a class');
    } else if (name === 'value' || name === 'checked') {
      (el as any)[name] = name === 'checked' ? Boolean(value) : String(value);
    } else {
      el.setAttribute(name === 'className' ? 'class' : name, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

/** Removes every child of `el`, then appends `children`. */
export function replaceChildren(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

let toastRegion: HTMLElement | undefined;

/** A short message at the bottom of the screen, read out by screen readers, gone after a few seconds. */
export function toast(message: string, kind: 'info' | 'error' = 'info', ms = 4000): void {
  if (!toastRegion || !toastRegion.isConnected) {
    toastRegion = document.getElementById('toasts') ?? document.body.appendChild(h('div', { id: 'toasts', class: 'toasts', 'aria-live': 'polite' }));
  }
  const item = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  toastRegion.appendChild(item);
  setTimeout(() => item.remove(), ms);
}

/** `512 B`, `1.5 KiB`, `2.3 MiB`, `1.1 GiB`; null/undefined: `—`. */
export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** A date-time in the browser's locale, or `—`. */
export function formatTime(iso: string | number | null | undefined): string {
  if (iso === null || iso === undefined) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '—' : d.toLocaleString();
}
