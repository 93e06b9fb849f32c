/**
 * The gallery: the team's stored images (the admin's: every team's), newest first, as thumbnails,
 * a page at a time (GET /v1/images, next_cursor), filtered by model, date range, prompt text and
 * key (and team, for the admin). One image opens in a dialog with its prompt, parameters and the
 * rest, and the actions Reuse settings, Edit this image, Download and Delete.
 */
import type { ConsoleContext } from './api.js';
import { PAGE_CSS, addStyles, apiJson, dayAfter, el, errorMessage, formatBytes, formatTime, formatUsd, statusLine } from './page-kit.js';

/** One stored image as GET /v1/images answers it. */
export interface Image {
  id: string;
  url: string;
  thumbnail_url: string;
  mime_type: string;
  bytes: number;
  width: number;
  height: number;
  sha256: string;
  model: string;
  operation: 'generate' | 'edit' | 'upscale';
  key_id: string;
  team: string;
  prompt: string | null;
  parameters: Record<string, unknown> | null;
  seed: number | null;
  cost_usd: number | null;
  created_at: string;
  expires_at: string | null;
}

interface ImagePage {
  data: Image[];
  next_cursor: string | null;
}

const PAGE_SIZE = 30;

const EXTENSIONS: Record<string, string> = { 'image/png': 'png', 'image/jpeg': 'jpg', 'image/webp': 'webp', 'image/gif': 'gif' };

export async function render(root: HTMLElement, ctx: ConsoleContext): Promise<void> {
  addStyles('page-kit', PAGE_CSS);
  root.replaceChildren();
  const admin = ctx.session.admin;

  const model = el('select', { id: 'gallery-model', name: 'model' }, el('option', { value: '' }, 'All models'));
  const from = el('input', { id: 'gallery-from', name: 'from', type: 'date' });
  const to = el('input', { id: 'gallery-to', name: 'to', type: 'date' });
  const q = el('input', { id: 'gallery-q', name: 'q', type: 'search', placeholder: 'words in the prompt', autocomplete: 'off' });
  const key = el('input', { id: 'gallery-key', name: 'key', type: 'text', placeholder: 'key id', autocomplete: 'off', list: admin ? 'gallery-key-ids' : null });
  const keyIds = el('datalist', { id: 'gallery-key-ids' });
  const team = el('select', { id: 'gallery-team', name: 'team' }, el('option', { value: '' }, 'All teams'));

  const filters = el(
    'form',
    { class: 'page-filters', role: 'search', 'aria-label': 'Filter images' },
    el('label', { for: 'gallery-model' }, 'Model', model),
    el('label', { for: 'gallery-from' }, 'From', from),
    el('label', { for: 'gallery-to' }, 'To', to),
    el('label', { for: 'gallery-q', class: 'field-wide' }, 'Prompt contains', q),
    el('label', { for: 'gallery-key' }, 'Key', key),
    admin ? keyIds : null,
    admin ? el('label', { for: 'gallery-team' }, 'Team', team) : null,
    el('button', { type: 'submit' }, 'Apply'),
  );
  const status = statusLine();
  const grid = el('ul', { class: 'gallery-grid', 'aria-label': 'Images' });
  const more = el('button', { type: 'button', hidden: true }, 'Load more');
  root.append(
    el('h1', {}, 'Gallery'),
    el('p', {}, admin ? 'Every team’s stored images, newest first.' : `The stored images of team ${ctx.session.team}, newest first.`),
    filters,
    status,
    grid,
    el('div', { class: 'gallery-more' }, more),
  );

  const dialog = el('dialog', { class: 'image-dialog', 'aria-labelledby': 'image-dialog-title' });
  root.append(dialog);

  // The filter choices: the key's models, and for the admin the keys and their teams.
  void apiJson<{ data: Array<{ id: string }> }>(ctx, '/v1/models')
    .then((body) => model.append(...body.data.map((m) => el('option', { value: m.id }, m.id))))
    .catch(() => undefined);
  if (admin) {
    void apiJson<{ data: Array<{ id: string; team: string }> }>(ctx, '/v1/keys')
      .then((body) => {
        keyIds.append(...body.data.map((k) => el('option', { value: k.id }, `${k.id} (${k.team})`)));
        const teams = [...new Set(body.data.map((k) => k.team))].sort();
        team.append(...teams.map((t) => el('option', { value: t }, t)));
      })
      .catch(() => undefined);
  }

  let cursor: string | null = null;
  let generation = 0;
  let loading = false;
  let shown = 0;

  function query(): string {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (model.value) params.set('model', model.value);
    if (from.value) params.set('from', from.value);
    if (to.value) params.set('to', dayAfter(to.value));
    if (q.value.trim()) params.set('q', q.value.trim());
    if (key.value.trim()) params.set('key', key.value.trim());
    if (admin && team.value) params.set('team', team.value);
    if (cursor) params.set('cursor', cursor);
    return params.toString();
  }

  async function load(reset: boolean): Promise<void> {
    if (reset) {
      generation++;
      cursor = null;
      shown = 0;
      grid.replaceChildren();
    } else if (loading || !cursor) return;
    const mine = generation;
    loading = true;
    more.disabled = true;
    status.classList.remove('error');
    status.textContent = 'Loading…';
    let loaded = false;
    try {
      const page = await apiJson<ImagePage>(ctx, `/v1/images?${query()}`);
      if (mine !== generation) return;
      loaded = true;
      grid.append(...page.data.map((image) => tile(image)));
      shown += page.data.length;
      cursor = page.next_cursor;
      more.hidden = cursor === null;
      // With more to load, the count is of those shown so far, not of all that match: said so.
      const count = `${shown} image${shown === 1 ? '' : 's'}`;
      status.textContent = shown === 0 ? 'No images match.' : cursor ? `Showing the newest ${count}; more load as you scroll.` : `${count}.`;
    } catch (err) {
      if (mine !== generation) return;
      status.classList.add('error');
      status.textContent = `Could not load images: ${(err as Error).message}`;
    } finally {
      if (mine === generation) {
        loading = false;
        more.disabled = false;
      }
    }
    // A page that did not fill the screen leaves "Load more" in view, where the observer sees no change: go on.
    if (loaded && mine === generation && cursor && root.isConnected && more.getBoundingClientRect().top < window.innerHeight) void load(false);
  }

  function tile(image: Image): HTMLLIElement {
    const label = image.prompt ? `Open image: ${image.prompt}` : `Open image ${image.id}`;
    const img = el('img', { src: image.thumbnail_url, alt: image.prompt ?? `image ${image.id}`, loading: 'lazy', decoding: 'async', width: 256, height: 256 });
    const button = el('button', { type: 'button', 'aria-label': label, title: image.prompt ?? image.id, onclick: () => open(image, item) }, img);
    const item = el('li', { 'data-image-id': image.id }, button);
    return item;
  }

  function open(image: Image, item: HTMLLIElement): void {
    const detailStatus = statusLine();
    const close = el('button', { type: 'button', onclick: () => dialog.close() }, 'Close');
    const ext = EXTENSIONS[image.mime_type] ?? 'img';
    const rows: Array<[string, Node | string]> = [
      ['Prompt', image.prompt ?? '(not kept)'],
      ['Model', image.model],
      ['Operation', image.operation],
      ['Parameters', !image.parameters ? '(not kept)' : Object.keys(image.parameters).length === 0 ? 'none' : el('pre', {}, JSON.stringify(image.parameters, null, 2))],
      ['Seed', image.seed === null ? '—' : String(image.seed)],
      ['Cost', formatUsd(image.cost_usd)],
      ['Size', `${image.width}×${image.height} px, ${formatBytes(image.bytes)}`],
      ['Key', image.key_id],
      ['Team', image.team],
      ['Created', formatTime(image.created_at)],
      ['Expires', image.expires_at ? formatTime(image.expires_at) : 'never'],
    ];
    const details = el('dl', { 'aria-label': 'Image details' });
    for (const [name, value] of rows) details.append(el('dt', {}, name), el('dd', {}, value));

    const reuse = el('button', { type: 'button', onclick: () => {
      dialog.close();
      ctx.navigate('#/playground', { reuse: { model: image.model, prompt: image.prompt ?? '', parameters: image.parameters ?? {} } });
    } }, 'Reuse settings');
    const edit = el('button', { type: 'button', onclick: () => {
      dialog.close();
      ctx.navigate('#/playground', { editImage: { url: image.url, id: image.id, model: image.model } });
    } }, 'Edit this image');
    const download = el('a', { href: image.url, download: /\.[a-z0-9]{2,5}$/i.test(image.id) ? image.id : `${image.id}.${ext}` }, 'Download');
    const remove = el('button', { type: 'button', class: 'danger', onclick: async () => {
      if (!window.confirm('Delete this image? Its links stop working, and it cannot be undone.')) return;
      remove.disabled = true;
      detailStatus.classList.remove('error');
      detailStatus.textContent = 'Deleting…';
      try {
        const res = await ctx.api(`/v1/images/${encodeURIComponent(image.id)}`, { method: 'DELETE' });
        if (!res.ok && res.status !== 404) throw new Error(await errorMessage(res));
        dialog.close();
        // The admin's delete removes the image for every team: each team's tile of the same bytes goes.
        const tiles = admin ? [...grid.querySelectorAll<HTMLLIElement>(`li[data-image-id="${CSS.escape(image.id)}"]`)] : [item];
        const next = (item.nextElementSibling ?? item.previousElementSibling)?.querySelector('button');
        for (const tile of tiles) tile.remove();
        shown = Math.max(0, shown - tiles.length);
        // Keyboard users stay in the grid: on the next image (or the previous, after the last).
        if (next?.isConnected) next.focus();
        status.classList.remove('error');
        status.textContent = 'Image deleted.';
      } catch (err) {
        remove.disabled = false;
        detailStatus.classList.add('error');
        detailStatus.textContent = `Could not delete: ${(err as Error).message}`;
      }
    } }, 'Delete');

    dialog.replaceChildren(
      el('div', { class: 'dialog-head' }, el('h2', { id: 'image-dialog-title' }, `${image.model} · ${formatTime(image.created_at)}`), close),
      el(
        'div',
        { class: 'dialog-body' },
        el('img', { src: image.url, alt: image.prompt ?? `image ${image.id}`, width: image.width, height: image.height }),
        el('div', {}, details, el('div', { class: 'page-actions' }, reuse, edit, download, remove), detailStatus),
      ),
    );
    if (!dialog.open) dialog.showModal();
    reuse.focus();
  }

  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    void load(true);
  });
  for (const input of [model, from, to, team]) input.addEventListener('change', () => void load(true));
  let typing: ReturnType<typeof setTimeout> | undefined;
  for (const input of [q, key]) {
    input.addEventListener('input', () => {
      clearTimeout(typing);
      typing = setTimeout(() => void load(true), 400);
    });
  }
  more.addEventListener('click', () => void load(false));
  // Infinite scroll: the next page loads as the "Load more" button comes into view.
  if ('IntersectionObserver' in window) {
    const observer = new IntersectionObserver((entries) => {
      if (!root.isConnected) return observer.disconnect();
      if (entries.some((e) => e.isIntersecting) && !more.hidden) void load(false);
    });
    observer.observe(more);
  }

  await load(true);
}
