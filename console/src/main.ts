/**
 * The console's shell: signs in (or finds the session), then shows the navigation and the page
 * named by location.hash (#/playground, #/gallery, #/usage, #/keys), loaded on demand.
 */
import { api, currentSession, signOut, whenUnauthorized, type ConsoleContext, type Session } from './api.js';
import { renderSignIn } from './signin.js';
import { h, replaceChildren, toast } from './ui.js';

interface Page {
  /** A page that returns a KeptPage keeps its view for the session: shown again as it was left. */
  render(root: HTMLElement, ctx: ConsoleContext): void | KeptPage | Promise<void | KeptPage>;
}

/** A page kept across navigation (the playground: its form, results and a request still running). */
interface KeptPage {
  /** Takes what navigate() hands the page when its kept view is shown again. */
  receive(state: unknown): void | Promise<void>;
}

/** The route table: one line per page (`#/<name>`), each module loaded when first shown. */
const pages: Record<string, () => Promise<Page>> = {
  playground: () => import('./playground.js'),
  gallery: () => import('./gallery.js'),
  usage: () => import('./usage.js'),
  keys: () => import('./keys.js'),
};

const NAV: Array<{ route: string; label: string; adminOnly?: boolean }> = [
  { route: 'playground', label: 'Playground' },
  { route: 'gallery', label: 'Gallery' },
  { route: 'usage', label: 'Usage' },
  { route: 'keys', label: 'Keys', adminOnly: true },
];

const DEFAULT_ROUTE = 'playground';

const app = document.getElementById('app')!;

let session: Session | undefined;
/** State handed to the next page by navigate(). */
let pendingState: unknown;
/** Bumped on every render, so a slow page load that was navigated away from does not draw. */
let renderSeq = 0;
let pageRoot: HTMLElement | undefined;
/** The views of kept pages, by route, until sign-out: the next session may be another key's. */
const keptViews = new Map<string, { view: HTMLElement; page: KeptPage }>();
let navLinks = new Map<string, HTMLAnchorElement>();
/**
 * Set by a sign-in: the form that had focus is gone, so the first page drawn takes it to its
 * heading (keyboard and screen-reader users land on the content, not on the document's top).
 */
let focusAfterSignIn = false;

function routeOf(hash: string): string {
  const name = hash.replace(/^#\/?/, '').split(/[/?]/, 1)[0] ?? '';
  return name;
}

function allowed(route: string): boolean {
  const entry = NAV.find((n) => n.route === route);
  return route in pages && (!entry?.adminOnly || session?.admin === true);
}

function navigate(hash: string, state?: unknown): void {
  pendingState = state;
  if (location.hash === hash) void showRoute(true);
  else location.hash = hash;
}

/** `followed`: the user went to the page (a link, a page's button), so its heading takes focus once drawn. */
async function showRoute(followed = false): Promise<void> {
  if (!session || !pageRoot) return;
  // Focus still here when the page is drawn was not moved by the user meanwhile.
  const focusFrom = followed ? document.activeElement : null;
  let route = routeOf(location.hash);
  if (!allowed(route)) {
    route = DEFAULT_ROUTE;
    if (location.hash !== `#/${route}`) {
      history.replaceState(null, '', `#/${route}`);
    }
  }
  for (const [name, link] of navLinks) {
    if (name === route) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const label = NAV.find((n) => n.route === route)?.label ?? route;
  document.title = `${label} · Image Gateway console`;
  const seq = ++renderSeq;
  const moveFocus = focusAfterSignIn || followed;
  focusAfterSignIn = false;
  const state = pendingState;
  pendingState = undefined;
  const root = pageRoot;
  const kept = keptViews.get(route);
  if (kept) {
    root.replaceChildren(kept.view);
    try {
      if (state !== undefined) await kept.page.receive(state);
    } finally {
      if (moveFocus && seq === renderSeq) focusHeading(kept.view, focusFrom);
    }
    return;
  }
  replaceChildren(root, h('p', { class: 'loading' }, 'Loading…'));
  try {
    const page = await pages[route]!();
    if (seq !== renderSeq) return;
    // Each render draws into a view of its own: a page still loading when the user moves on
    // keeps drawing into its detached view, never into the next page's.
    const view = h('div', { class: 'view' });
    root.replaceChildren(view);
    const ctx: ConsoleContext = { api, session, navigate, ...(state === undefined ? {} : { state }) };
    const keeps = await page.render(view, ctx);
    // Kept only when drawn for the session still signed in, as the page the user is on.
    if (keeps && seq === renderSeq && pageRoot === root) keptViews.set(route, { view, page: keeps });
    if (moveFocus && seq === renderSeq) focusHeading(view, focusFrom);
  } catch (err) {
    if (seq !== renderSeq) return;
    replaceChildren(root, h('p', { class: 'form-error', role: 'alert' }, `This page could not be shown: ${(err as Error).message}`));
    if (moveFocus) focusHeading(root, focusFrom);
  }
}

/**
 * Focuses the page's <h1> (focusable by script only: tabindex="-1"), or the main element when it
 * has none, unless the user has already moved focus somewhere while the page loaded: focus still
 * on `from` (the link followed) or on nothing was not moved.
 */
function focusHeading(container: HTMLElement, from: Element | null): void {
  const active = document.activeElement;
  if (active && active !== document.body && active !== pageRoot && active !== from) return;
  const heading = container.querySelector('h1');
  if (heading && !heading.hasAttribute('tabindex')) heading.setAttribute('tabindex', '-1');
  (heading ?? pageRoot)?.focus();
}

function showShell(current: Session, signedIn = false): void {
  session = current;
  focusAfterSignIn = signedIn;
  navLinks = new Map(
    NAV.filter((n) => !n.adminOnly || current.admin).map((n) => [n.route, h('a', { href: `#/${n.route}`, class: 'nav-link' }, n.label)]),
  );
  const signOutButton = h('button', { type: 'button', class: 'secondary', onclick: () => void doSignOut() }, 'Sign out');
  pageRoot = h('main', { id: 'main', class: 'page', tabindex: '-1' });
  replaceChildren(
    app,
    h('a', { href: '#main', class: 'skip-link', onclick: (e: Event) => (e.preventDefault(), pageRoot?.focus()) }, 'Skip to content'),
    h(
      'header',
      { class: 'topbar' },
      h('span', { class: 'brand' }, 'Image Gateway'),
      h('nav', { 'aria-label': 'Console' }, h('ul', { class: 'nav' }, [...navLinks.values()].map((a) => h('li', null, a)))),
      h(
        'div',
        { class: 'who' },
        h('span', { class: 'team', title: `key ${current.key_id}` }, current.admin ? 'Admin' : `Team ${current.team}`),
        signOutButton,
      ),
    ),
    pageRoot,
  );
  if (!location.hash || !allowed(routeOf(location.hash))) history.replaceState(null, '', `#/${DEFAULT_ROUTE}`);
  // The sign-in form had focus and is gone: hold it on <main> until the page's heading is drawn.
  if (signedIn) pageRoot.focus();
  void showRoute();
}

function showSignIn(notice?: string): void {
  session = undefined;
  pageRoot = undefined;
  keptViews.clear();
  navLinks = new Map();
  renderSeq++;
  document.title = 'Sign in · Image Gateway console';
  renderSignIn(app, afterSignIn, notice);
}

async function doSignOut(): Promise<void> {
  try {
    await signOut();
  } catch {
    toast('The gateway could not be reached; the session may still be open.', 'error');
  }
  showSignIn();
}

async function start(): Promise<void> {
  let current: Awaited<ReturnType<typeof currentSession>>;
  try {
    current = await currentSession();
  } catch {
    replaceChildren(app, h('main', { class: 'signin' }, h('p', { class: 'form-error', role: 'alert' }, 'The gateway could not be reached.')));
    return;
  }
  if (current.session) showShell(current.session);
  else showSignIn();
}

/** After a 204 from sign-in: the cookie is there unless the browser refused it (a Secure cookie over plain HTTP). */
async function afterSignIn(): Promise<void> {
  const current = await currentSession();
  if (current.session) showShell(current.session, true);
  else
    showSignIn(
      'The gateway accepted the key, but this browser did not keep the session cookie. Open the console at the gateway’s public address (over HTTPS when PUBLIC_BASE_URL is https://).',
    );
}

whenUnauthorized(() => {
  if (session) showSignIn('Your session ended (it expired, was signed out, or its key was revoked). Sign in again.');
});
window.addEventListener('hashchange', () => void showRoute(true));
void start();
