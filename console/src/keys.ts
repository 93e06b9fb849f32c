import type { ConsoleContext } from './api.js';
import { h } from './ui.js';

/** Placeholder: replaced by the Keys page. */
export function render(root: HTMLElement, _ctx: ConsoleContext): void {
  root.replaceChildren(h('h1', null, 'Keys'));
}
