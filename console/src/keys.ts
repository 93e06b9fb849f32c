/**
 * Keys (admin only): the client keys (GET /v1/keys), minting one (POST /v1/keys; the key is shown
 * once, with a Copy button, and dropped from the page when the page is left) and revoking one
 * (DELETE /v1/keys/{id}, after a confirmation).
 */
import type { ConsoleContext } from './api.js';
import { PAGE_CSS, addStyles, apiJson, el, errorMessage, formatUsd, scrollingTable, statusLine } from './page-kit.js';

interface KeyEntry {
  id: string;
  team: string;
  rpm?: number;
  images_per_day?: number;
  monthly_budget_usd?: number;
  models?: string[];
  admin: boolean;
  source: string;
}

interface Minted extends KeyEntry {
  key: string;
}

export async function render(root: HTMLElement, ctx: ConsoleContext): Promise<void> {
  addStyles('page-kit', PAGE_CSS);
  root.replaceChildren(el('h1', {}, 'Keys'));
  if (!ctx.session.admin) {
    root.append(el('p', {}, 'Only the admin key may list, mint and revoke keys.'));
    return;
  }

  const team = el('input', { id: 'mint-team', name: 'team', type: 'text', required: true, pattern: '[A-Za-z0-9_.\\-]{1,64}', autocomplete: 'off' });
  const id = el('input', { id: 'mint-id', name: 'id', type: 'text', pattern: '[A-Za-z0-9_.\\-]{1,64}', placeholder: 'generated', autocomplete: 'off' });
  const rpm = el('input', { id: 'mint-rpm', name: 'rpm', type: 'number', min: 1, step: 1, inputmode: 'numeric' });
  const perDay = el('input', { id: 'mint-images-per-day', name: 'images_per_day', type: 'number', min: 0, step: 1, inputmode: 'numeric' });
  const budget = el('input', { id: 'mint-budget', name: 'monthly_budget_usd', type: 'number', min: 0, step: 0.01, inputmode: 'decimal' });
  const models = el('input', { id: 'mint-models', name: 'models', type: 'text', placeholder: 'all, or gpt-image-*, flux-*', autocomplete: 'off' });
  const mintForm = el(
    'form',
    { class: 'page-form', 'aria-label': 'Mint a key' },
    el('label', { for: 'mint-team' }, 'Team', team),
    el('label', { for: 'mint-id' }, 'Key id (optional)', id),
    el('label', { for: 'mint-rpm' }, 'Requests per minute', rpm),
    el('label', { for: 'mint-images-per-day' }, 'Images per day', perDay),
    el('label', { for: 'mint-budget' }, 'Monthly budget (USD)', budget),
    el('label', { for: 'mint-models' }, 'Allowed models', models),
    el('button', { type: 'submit', class: 'primary' }, 'Mint key'),
  );
  const once = el('section', { class: 'key-once', 'aria-labelledby': 'key-once-title', hidden: true });
  const status = statusLine();
  const tableBody = el('tbody');
  const table = el(
    'table',
    { class: 'page-table' },
    el('caption', { class: 'visually-hidden' }, 'Client keys'),
    el(
      'thead',
      {},
      el(
        'tr',
        {},
        ...['Id', 'Team', 'RPM', 'Images/day', 'Budget/month', 'Models', 'Source'].map((name) => el('th', { scope: 'col' }, name)),
        el('th', { scope: 'col' }, el('span', { class: 'visually-hidden' }, 'Actions')),
      ),
    ),
    tableBody,
  );
  root.append(el('h2', {}, 'Mint a key'), mintForm, once, status, el('h2', {}, 'Keys'), scrollingTable(table, 'Keys'));

  // The minted key lives only in this element's text: gone when the console leaves this page.
  const forget = () => {
    once.replaceChildren();
    delete once.dataset.keyId;
    once.hidden = true;
  };
  const onLeave = () => {
    if (location.hash.startsWith('#/keys')) return;
    forget();
    window.removeEventListener('hashchange', onLeave);
  };
  window.addEventListener('hashchange', onLeave);

  function showOnce(minted: Minted): void {
    const code = el('code', { id: 'minted-key' }, minted.key);
    const copyStatus = el('span', { role: 'status', 'aria-live': 'polite' });
    const copy = el('button', { type: 'button', 'aria-describedby': 'minted-key', onclick: async () => {
      try {
        await navigator.clipboard.writeText(code.textContent ?? '');
        copyStatus.textContent = ' Copied.';
      } catch {
        copyStatus.textContent = ' Copying was refused; select the key and copy it.';
      }
    } }, 'Copy');
    const done = el('button', { type: 'button', onclick: forget }, 'Done');
    once.replaceChildren(
      el('h3', { id: 'key-once-title' }, `New key ${minted.id}`),
      el('p', {}, `For team ${minted.team}. This key is shown once: copy it now, it cannot be shown again.`),
      code,
      el('div', { class: 'page-actions' }, copy, done, copyStatus),
    );
    once.hidden = false;
    once.dataset.keyId = minted.id;
    copy.focus();
  }

  let whyIds = 0;
  function row(key: KeyEntry): HTMLTableRowElement {
    const revoke = el('button', { type: 'button', class: 'danger', 'aria-label': `Revoke key ${key.id}` }, 'Revoke');
    // A configured key is revoked where it is set: said beside the disabled button (a title shows
    // only to a mouse, and a disabled button takes no focus).
    let why: HTMLElement | null = null;
    if (key.source !== 'api') {
      revoke.disabled = true;
      const where = key.source === 'file' ? 'GATEWAY_KEYS_FILE' : key.admin && key.id === 'admin' ? 'GATEWAY_ADMIN_KEY' : 'GATEWAY_API_KEYS';
      why = el('span', { class: 'revoke-why', id: `revoke-why-${++whyIds}` }, `Set in ${where}`);
      revoke.setAttribute('aria-describedby', why.id);
    }
    revoke.addEventListener('click', async () => {
      if (!window.confirm(`Revoke key ${key.id} (team ${key.team})? Calls with it are refused from now on.`)) return;
      revoke.disabled = true;
      try {
        const res = await ctx.api(`/v1/keys/${encodeURIComponent(key.id)}`, { method: 'DELETE' });
        if (!res.ok) throw new Error(await errorMessage(res));
        tr.remove();
        if (once.dataset.keyId === key.id) forget();
        status.classList.remove('error');
        status.textContent = `Key ${key.id} revoked.`;
      } catch (err) {
        revoke.disabled = false;
        status.classList.add('error');
        status.textContent = `Could not revoke ${key.id}: ${(err as Error).message}`;
      }
    });
    const tr = el(
      'tr',
      { 'data-key-id': key.id },
      el('td', {}, key.id),
      // The admin key's team is "admin" already: said once, not "admin (admin)".
      el('td', {}, key.admin && key.team !== 'admin' ? `${key.team} (admin)` : key.team),
      el('td', {}, key.rpm ?? 'default'),
      el('td', {}, key.images_per_day ?? '—'),
      el('td', {}, key.monthly_budget_usd === undefined ? '—' : formatUsd(key.monthly_budget_usd)),
      el('td', {}, key.models ? key.models.join(', ') : 'all'),
      el('td', {}, key.source),
      el('td', {}, revoke, why),
    );
    return tr;
  }

  async function list(): Promise<void> {
    try {
      const body = await apiJson<{ data: KeyEntry[] }>(ctx, '/v1/keys');
      tableBody.replaceChildren(...body.data.map(row));
    } catch (err) {
      status.classList.add('error');
      status.textContent = `Could not list keys: ${(err as Error).message}`;
    }
  }

  mintForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body: Record<string, unknown> = { team: team.value.trim() };
    if (id.value.trim()) body.id = id.value.trim();
    if (rpm.value) body.rpm = Number(rpm.value);
    if (perDay.value) body.images_per_day = Number(perDay.value);
    if (budget.value) body.monthly_budget_usd = Number(budget.value);
    const allowed = models.value.split(',').map((m) => m.trim()).filter(Boolean);
    if (allowed.length > 0) body.models = allowed;
    const submit = mintForm.querySelector('button[type=submit]') as HTMLButtonElement;
    submit.disabled = true;
    status.classList.remove('error');
    status.textContent = 'Minting…';
    try {
      const minted = await apiJson<Minted>(ctx, '/v1/keys', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      mintForm.reset();
      status.textContent = `Key ${minted.id} minted.`;
      showOnce(minted);
      await list();
    } catch (err) {
      status.classList.add('error');
      status.textContent = `Could not mint: ${(err as Error).message}`;
    } finally {
      submit.disabled = false;
    }
  });

  await list();
}
