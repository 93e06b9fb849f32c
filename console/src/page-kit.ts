/**
 * Small helpers shared by the gallery, usage and keys pages: safe element creation (text only
 * ever through textContent), gateway error messages, formatting, and the pages' stylesheet (added
 * through the CSSOM, which the console's CSP allows, never as an inline <style>).
 */
import type { ConsoleContext } from './api.js';

type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>;
type Child = Node | string | number | null | undefined | false;

/** An element with attributes (`on*` functions become listeners) and children; strings become text nodes. */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === 'function') node.addEventListener(name.replace(/^on/, ''), value);
    else if (value === true) node.setAttribute(name, '');
    else node.setAttribute(name, String(value));
  }
  append(node, ...children);
  return node;
}

export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child);
  }
}

/** The gateway's error message for a failed answer (its JSON `error.message`), else the status. */
export async function errorMessage(res: Response): Promise<string> {
  try {
    const body = (await res.json()) as { error?: { message?: string } };
    if (body.error?.message) return body.error.message;
  } catch {
    // not JSON
  }
  return `${res.status} ${res.statusText}`.trim();
}

/** GET (or another method) a console API path and read JSON; a failed answer throws its message. */
export async function apiJson<T>(ctx: ConsoleContext, path: string, init?: RequestInit): Promise<T> {
  const res = await ctx.api(path, init);
  if (!res.ok) throw new Error(await errorMessage(res));
  return (await res.json()) as T;
}

export function formatUsd(usd: number | null | undefined): string {
  if (usd === null || usd === undefined) return '—';
  return `$${usd !== 0 && Math.abs(usd) < 0.01 ? usd.toFixed(4) : usd.toFixed(2)}`;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** YYYY-MM-DD of a UTC instant (what a date input holds). */
export function isoDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** The day after a YYYY-MM-DD: a "to" date input is inclusive, the API's `to` exclusive. */
export function dayAfter(day: string): string {
  return isoDay(Date.parse(`${day}T00:00:00Z`) + 86_400_000);
}

/** A status line announced to screen readers. */
export function statusLine(): HTMLParagraphElement {
  return el('p', { class: 'page-status', role: 'status', 'aria-live': 'polite' });
}

/** Lets a Blob be saved under `filename` (a temporary object URL on a clicked <a download>). */
export function saveBlob(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const a = el('a', { href: url, download: filename, class: 'visually-hidden' });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

const added = new Set<string>();

/** Adds the pages' rules once, as a constructed stylesheet (CSP style-src 'self' forbids <style>). */
export function addStyles(id: string, css: string): void {
  if (added.has(id)) return;
  added.add(id);
  const sheet = new CSSStyleSheet();
  sheet.replaceSync(css);
  document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
}

/** Rules the three pages share: readable and usable down to a 375 px wide screen. */
export const PAGE_CSS = `
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
.page-filters { display: flex; flex-wrap: wrap; gap: .5rem .75rem; align-items: flex-end; margin: 0 0 1rem; }
.page-filters label { display: flex; flex-direction: column; font-size: .85rem; gap: .2rem; }
.page-filters input, .page-filters select { min-width: 0; max-width: 100%; font: inherit; padding: .3rem .4rem; }
.page-filters .field-wide input { width: 14rem; max-width: calc(100vw - 3rem); }
.page-status { min-height: 1.2em; font-size: .9rem; }
.page-status.error { color: #b00020; }
.table-wrap { overflow-x: auto; max-width: 100%; position: relative; }
.page-table { border-collapse: collapse; width: 100%; font-size: .9rem; }
.page-table th, .page-table td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #ddd; white-space: nowrap; }
.page-table td.num, .page-table th.num { text-align: right; font-variant-numeric: tabular-nums; }
.page-actions { display: flex; flex-wrap: wrap; gap: .5rem; margin: .75rem 0; }
.page-actions a, .page-actions button, .page-button { font: inherit; padding: .4rem .75rem; border: 1px solid #888; border-radius: 4px; background: #f4f4f4; color: inherit; text-decoration: none; cursor: pointer; }
.page-button.danger, .page-actions .danger { border-color: #b00020; color: #b00020; }
.gallery-grid { list-style: none; margin: 0; padding: 0; display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap: .5rem; }
.gallery-grid li { margin: 0; }
.gallery-grid button { display: block; width: 100%; padding: 0; border: 1px solid #ccc; border-radius: 4px; background: #eee; cursor: pointer; aspect-ratio: 1; overflow: hidden; }
.gallery-grid button:focus-visible { outline: 3px solid #1a73e8; outline-offset: 2px; }
.gallery-grid img { width: 100%; height: 100%; object-fit: cover; display: block; }
.gallery-more { margin: 1rem 0; text-align: center; }
.image-dialog { width: min(56rem, calc(100vw - 1rem)); max-height: calc(100vh - 1rem); padding: 1rem; border: 1px solid #888; border-radius: 6px; box-sizing: border-box; }
.image-dialog::backdrop { background: rgba(0, 0, 0, .6); }
.image-dialog .dialog-body { display: grid; grid-template-columns: minmax(0, 3fr) minmax(15rem, 2fr); gap: 1rem; align-items: start; margin-top: .75rem; }
@media (max-width: 700px) { .image-dialog .dialog-body { grid-template-columns: minmax(0, 1fr); } }
.image-dialog img { max-width: 100%; max-height: 70vh; width: auto; height: auto; display: block; margin: 0 auto; background: #eee; }
.image-dialog dl { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: .25rem .75rem; font-size: .9rem; margin: 0 0 .75rem; }
.image-dialog dt { font-weight: 600; }
.image-dialog dd { margin: 0; overflow-wrap: anywhere; }
.image-dialog pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; font-size: .85rem; }
.image-dialog .dialog-head { display: flex; justify-content: space-between; align-items: center; gap: .5rem; }
.image-dialog .dialog-head h2 { margin: 0; font-size: 1.1rem; }
.usage-chart { width: 100%; min-height: 300px; margin: 0 0 1rem; }
.key-once { border: 2px solid #1a73e8; border-radius: 6px; padding: .75rem; margin: 1rem 0; }
.key-once code { display: block; overflow-wrap: anywhere; font-size: 1rem; margin: .5rem 0; }
.page-form { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(12rem, 100%), 1fr)); gap: .5rem .75rem; align-items: end; margin: 0 0 1rem; }
.page-form label { display: flex; flex-direction: column; font-size: .85rem; gap: .2rem; }
.page-form input { font: inherit; padding: .3rem .4rem; min-width: 0; }
`;
