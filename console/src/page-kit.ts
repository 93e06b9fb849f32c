/**
 * Helpers shared by the gallery, usage and keys pages, on top of the shell's ui.ts (elements made
 * with text only ever through textContent) and api.ts: JSON calls whose failures carry the
 * gateway's message, UTC days, downloads, and the pages' stylesheet (added through the CSSOM,
 * which the console's CSP allows, never as an inline <style>).
 */
import { errorMessage, type ConsoleContext } from './api.js';
import { h } from './ui.js';

export { errorMessage } from './api.js';
export { dayAfter, isoDay } from './days.js';
export { formatBytes, formatTime, formatUsd, h as el } from './ui.js';

/** GET (or another method) a console API path and read JSON; a failed answer throws the gateway's message. */
export async function apiJson<T>(ctx: ConsoleContext, path: string, init?: RequestInit): Promise<T> {
  const res = await ctx.api(path, init);
  if (!res.ok) throw new Error(await errorMessage(res));
  return (await res.json()) as T;
}

/**
 * A table in a box that scrolls sideways where the screen is narrower (a phone): a region named
 * `label` that takes the keyboard's focus, so arrow keys scroll it too.
 */
export function scrollingTable(table: HTMLTableElement, label: string): HTMLDivElement {
  return h('div', { class: 'table-wrap', role: 'region', 'aria-label': label, tabindex: '0' }, table);
}

/** A status line announced to screen readers. */
export function statusLine(): HTMLParagraphElement {
  return h('p', { class: 'page-status', role: 'status', 'aria-live': 'polite' });
}

/** Lets a Blob be saved under `filename` (a temporary object URL on a clicked <a download>). */
export function saveBlob(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: filename, class: 'visually-hidden' });
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

/** Rules the three pages share (colours from the shell's theme): usable down to a 375 px wide screen. */
export const PAGE_CSS = `
.page-filters { display: flex; flex-wrap: wrap; gap: .5rem .75rem; align-items: flex-end; margin: 0 0 1rem; }
.page-filters label { display: flex; flex-direction: column; gap: .2rem; margin: 0; font-size: .875rem; flex: 1 1 9rem; min-width: 0; max-width: 16rem; }
.page-filters label.field-wide { flex-basis: 14rem; max-width: 24rem; }
.page-filters button { flex: 0 0 auto; }
/* Every control of a row the same height (a date input is taller than a text one, a select shorter): the labels above them line up. */
.page-filters input, .page-filters select { height: 2.5rem; }
.page-status { min-height: 1.5em; margin: .25rem 0 .75rem; color: var(--muted); }
.page-status.error { color: var(--danger); }
.table-wrap { max-width: 100%; position: relative; }
/* A table wider than its box: a shadow at an edge with more beyond it (the covers scroll with the table and hide it at either end). */
.table-wrap {
  background:
    linear-gradient(to right, var(--bg) 40%, transparent) left / 2.5rem 100% no-repeat local,
    linear-gradient(to left, var(--bg) 40%, transparent) right / 2.5rem 100% no-repeat local,
    radial-gradient(farthest-side at 0 50%, color-mix(in srgb, var(--text) 30%, transparent), transparent) left / .9rem 100% no-repeat scroll,
    radial-gradient(farthest-side at 100% 50%, color-mix(in srgb, var(--text) 30%, transparent), transparent) right / .9rem 100% no-repeat scroll;
}
.table-wrap:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.page-actions { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem; margin: .75rem 0; }
.page-actions a { display: inline-block; padding: .5rem 1rem; border: 1px solid var(--border); border-radius: var(--radius); background: var(--surface); color: inherit; text-decoration: none; }
.page-actions a:hover { border-color: var(--accent); }
.gallery-grid { list-style: none; margin: 0; padding: 0; display: grid; grid-template-columns: repeat(auto-fill, minmax(min(140px, 40vw), 1fr)); gap: .5rem; }
.gallery-grid li { margin: 0; min-width: 0; }
.gallery-grid button { display: block; width: 100%; padding: 0; border: 1px solid var(--border); border-radius: var(--radius); background: var(--surface); aspect-ratio: 1; overflow: hidden; }
.gallery-grid img { width: 100%; height: 100%; object-fit: cover; display: block; }
.gallery-more { margin: 1rem 0; text-align: center; }
.image-dialog { width: min(60rem, calc(100vw - 1rem)); max-width: none; max-height: calc(100vh - 1rem); padding: 1rem; border: 1px solid var(--border); border-radius: var(--radius); background: var(--surface); color: var(--text); }
.image-dialog::backdrop { background: rgb(0 0 0 / .6); }
.image-dialog .dialog-head { display: flex; justify-content: space-between; align-items: center; gap: .5rem; }
.image-dialog .dialog-head h2 { margin: 0; font-size: 1.1rem; overflow-wrap: anywhere; }
.image-dialog .dialog-body { display: grid; grid-template-columns: minmax(0, 3fr) minmax(15rem, 2fr); gap: 1rem; align-items: start; margin-top: .75rem; }
@media (max-width: 700px) { .image-dialog .dialog-body { grid-template-columns: minmax(0, 1fr); } }
.image-dialog img { width: 100%; height: auto; max-height: 70vh; object-fit: contain; display: block; background: var(--bg); }
.image-dialog dl { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: .25rem .75rem; font-size: .9rem; margin: 0 0 .75rem; }
.image-dialog dt { font-weight: 600; color: var(--muted); }
.image-dialog dd { margin: 0; overflow-wrap: anywhere; }
.image-dialog pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
.usage-chart { width: 100%; min-height: 260px; margin: 0 0 1rem; overflow: hidden; }
.usage-chart .u-legend { font-size: .85rem; }
/* The legend is a table too: not ruled as the pages' tables are. */
.usage-chart .u-legend th, .usage-chart .u-legend td { border-bottom: 0; }
.key-once { border: 2px solid var(--accent); border-radius: var(--radius); background: var(--surface); padding: .75rem 1rem; margin: 1rem 0; }
.key-once h3 { margin: 0 0 .25rem; font-size: 1rem; }
.key-once code { display: block; overflow-wrap: anywhere; font-size: 1rem; margin: .5rem 0; user-select: all; }
.page-form { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(12rem, 100%), 1fr)); gap: .5rem .75rem; align-items: end; margin: 0 0 1rem; }
.page-form label { display: flex; flex-direction: column; gap: .2rem; margin: 0; font-size: .875rem; }
.revoke-why { display: block; margin-top: .2rem; font-size: .8rem; color: var(--muted); }
`;
