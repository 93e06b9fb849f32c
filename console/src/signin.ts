import { errorMessage, signIn } from './api.js';
import { h, replaceChildren } from './ui.js';

/**
 * The sign-in form: the key is posted once, the field is cleared at once, and the key is kept
 * nowhere in the page (the gateway answers with an HttpOnly session cookie).
 */
export function renderSignIn(root: HTMLElement, onSignedIn: () => void | Promise<void>, notice?: string): void {
  const input = h('input', { id: 'api-key', name: 'api-key', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true });
  const error = h('p', { class: 'form-error', role: 'alert' });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h(
    'form',
    { class: 'signin-form', method: 'post', novalidate: true },
    h('label', { for: 'api-key' }, 'API key'),
    input,
    h('p', { class: 'hint' }, 'Your client key, or the admin key. It is sent once; the console keeps only a session cookie that scripts cannot read.'),
    button,
    error,
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    input.value = '';
    if (!key) {
      error.textContent = 'Enter an API key.';
      input.focus();
      return;
    }
    button.disabled = true;
    error.textContent = '';
    try {
      const res = await signIn(key);
      if (res.ok) {
        await onSignedIn();
        return;
      }
      if (res.status === 401) error.textContent = 'That key is not valid.';
      else if (res.status === 429) {
        const wait = res.headers.get('retry-after');
        error.textContent = `Too many failed sign-ins from this address${wait ? `; try again in ${wait} s` : '; try again later'}.`;
      } else error.textContent = await errorMessage(res);
    } catch {
      error.textContent = 'The gateway could not be reached.';
    } finally {
      button.disabled = false;
    }
    input.focus();
  });
  replaceChildren(
    root,
    h(
      'main',
      { class: 'signin', id: 'main' },
      h('h1', null, 'Image Gateway console'),
      notice ? h('p', { class: 'notice', role: 'status' }, notice) : null,
      form,
    ),
  );
  input.focus();
}
