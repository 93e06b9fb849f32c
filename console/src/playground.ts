import type { ConsoleContext } from './api.js';
import { h } from './ui.js';

/** Placeholder: replaced by the Playground page. */
export function render(root: HTMLElement, _ctx: ConsoleContext): void {
  root.replaceChildren(h('h1', null, 'Playground'));
}
