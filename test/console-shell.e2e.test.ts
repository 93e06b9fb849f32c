/**
 * The console's shell in headless Chromium: / leads to the sign-in form, a key signs in (and is
 * kept nowhere the page's scripts can read), the navigation shows, the page talks to no other
 * origin and logs no error, and sign-out returns to the form. Makes docs/images/console-signin.png.
 */
import { mkdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { chromiumProblem, launchChromium, SCREENSHOTS } from './browser.js';
import { ADMIN_KEY, CLIENT_KEY, startListening, type ListeningHarness } from './harness.js';


/** A page that records every request it makes and every error it logs. */
async function watchedPage(browser: Browser, viewport = { width: 1000, height: 700 }) {
  const page = await browser.newPage({ viewport });
  const requests: string[] = [];
  const errors: string[] = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  page.on('pageerror', (e) => errors.push(String(e)));
  return { page, requests, errors };
}

async function signIn(page: Page, key: string) {
  await page.getByLabel('API key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

/** The element that has focus: its tag, id and text. */
const focused = (page: Page) =>
  page.evaluate<{ tag: string; id: string; text: string }>(
    "(() => { const el = document.activeElement; return { tag: el?.tagName.toLowerCase() ?? '', id: el?.id ?? '', text: el?.textContent?.trim() ?? '' }; })()",
  );

/** The gateway's "request completed" log lines that answered 404 (a page asking for something the gateway does not serve). */
const notFoundLogs = (h: ListeningHarness) => h.logs.filter((line) => line.includes('"request completed"') && /"status":404\b/.test(line));

/** What the page's scripts can read that could hold a key or the session. */
const readable = (page: Page) => page.evaluate<string>('JSON.stringify([document.cookie, Object.entries(localStorage), Object.entries(sessionStorage)])');

describe.skipIf(chromiumProblem !== undefined)('the console shell in Chromium (skipped when Chromium is absent and REQUIRE_SERVICES is unset)', () => {
  let browser: Browser;
  let h: ListeningHarness;

  beforeAll(async () => {
    h = await startListening();
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await h?.close();
  });

  it('signs in from /, shows the navigation, keeps the key unreadable, talks only to the gateway, and signs out', async () => {
    const { page, requests, errors } = await watchedPage(browser);
    const first = await page.goto(`${h.base}/`);
    expect(new URL(page.url()).pathname).toBe('/console/');
    expect(first!.status()).toBe(200);
    const csp = (await first!.allHeaders())['content-security-policy'];
    expect(csp).toBe("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'");

    await expect.poll(() => page.getByLabel('API key').isVisible()).toBe(true);
    mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: `${SCREENSHOTS}console-signin.png` });

    await signIn(page, CLIENT_KEY);
    await page.getByRole('navigation').waitFor();
    // Focus leaves the gone form for the page's heading, which only a script can focus.
    await expect.poll(() => focused(page)).toEqual({ tag: 'h1', id: '', text: 'Playground' });
    expect(await page.getByRole('heading', { name: 'Playground', level: 1 }).getAttribute('tabindex')).toBe('-1');
    for (const name of ['Playground', 'Gallery', 'Usage']) expect(await page.getByRole('link', { name }).isVisible()).toBe(true);
    expect(await page.getByRole('link', { name: 'Keys' }).count()).toBe(0);
    expect(await page.getByText('Team design').isVisible()).toBe(true);
    expect(new URL(page.url()).hash).toBe('#/playground');
    expect(await page.getByRole('link', { name: 'Playground' }).getAttribute('aria-current')).toBe('page');

    // The session is an HttpOnly cookie for /console; nothing a script can read holds it or the key.
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === 'gw_console');
    expect(session).toMatchObject({ httpOnly: true, sameSite: 'Strict', path: '/console' });
    const visible = await readable(page);
    expect(visible).not.toContain(CLIENT_KEY);
    expect(visible).not.toContain(session!.value);
    expect(visible).not.toContain('gw_console');

    // The pages follow the hash.
    await page.getByRole('link', { name: 'Gallery' }).click();
    expect(new URL(page.url()).hash).toBe('#/gallery');
    // The hash changes with the click; the page marks its link when it handles hashchange, a moment later.
    await expect.poll(() => page.getByRole('link', { name: 'Gallery' }).getAttribute('aria-current')).toBe('page');
    // A team key cannot open #/keys: back to the playground.
    await page.goto(`${h.base}/console/#/keys`);
    await expect.poll(() => new URL(page.url()).hash).toBe('#/playground');

    // A reload keeps the session.
    await page.reload();
    await page.getByRole('button', { name: 'Sign out' }).waitFor();
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('API key').waitFor();
    expect(await page.getByRole('navigation').count()).toBe(0);
    // Focus goes back to the key field.
    await expect.poll(() => focused(page)).toMatchObject({ tag: 'input', id: 'api-key' });
    // Ended on the server too: a reload shows the form again.
    await page.reload();
    await page.getByLabel('API key').waitFor();

    const origins = new Set(requests.filter((u) => !u.startsWith('data:')).map((u) => new URL(u).origin));
    expect([...origins]).toEqual([h.base]);
    expect(errors).toEqual([]);
    await page.close();
  });

  it('signs in from the keyboard alone: Enter in the key field, then focus is on the page’s heading', async () => {
    const { page, errors } = await watchedPage(browser);
    await page.goto(`${h.base}/console/#/gallery`);
    await page.getByLabel('API key').waitFor();
    // The form focuses its field; typing and Enter are all it takes.
    expect(await focused(page)).toMatchObject({ tag: 'input', id: 'api-key' });
    await page.keyboard.type(CLIENT_KEY);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Gallery', level: 1 }).waitFor();
    await expect.poll(() => focused(page)).toEqual({ tag: 'h1', id: '', text: 'Gallery' });
    // From the heading, Tab goes on into the page's own controls, not back to the top bar.
    await page.keyboard.press('Tab');
    expect(await focused(page)).toMatchObject({ tag: 'select', id: 'gallery-model' });
    expect(await page.evaluate<string>("document.activeElement?.closest('main')?.id ?? ''")).toBe('main');
    // A reload that finds the session leaves focus alone: nothing was taken from the user.
    await page.reload();
    await page.getByRole('heading', { name: 'Gallery', level: 1 }).waitFor();
    await page.waitForLoadState('networkidle');
    expect((await focused(page)).tag).toBe('body');
    await page.getByRole('button', { name: 'Sign out' }).click();
    await expect.poll(() => focused(page)).toMatchObject({ tag: 'input', id: 'api-key' });
    expect(errors).toEqual([]);
    await page.close();
  });

  it('the console and /docs carry an inline icon: the browser asks for no /favicon.ico, nothing answers 404, no console error', async () => {
    const before = notFoundLogs(h).length;
    const icons: string[] = [];
    for (const path of ['/console/', '/docs']) {
      const { page, requests, errors } = await watchedPage(browser);
      const notFound: string[] = [];
      page.on('response', (r) => {
        if (r.status() === 404) notFound.push(r.url());
      });
      const res = await page.goto(`${h.base}${path}`);
      expect(res!.status()).toBe(200);
      expect(await page.locator('link[rel="icon"]').count(), path).toBe(1);
      const icon = await page.locator('link[rel="icon"]').getAttribute('href');
      expect(icon).toMatch(/^data:image\/svg\+xml;base64,/);
      icons.push(icon!);
      // The icon is a picture Chromium can draw, and the page's CSP lets it (img-src data:).
      type Img = { onload: () => void; onerror: () => void; src: string; naturalWidth: number };
      const drawn = await page.evaluate(
        (href: string) =>
          new Promise<number>((resolve) => {
            const img = new (globalThis as unknown as { Image: new () => Img }).Image();
            img.onload = () => resolve(img.naturalWidth);
            img.onerror = () => resolve(0);
            img.src = href;
          }),
        icon!,
      );
      expect(drawn, path).toBeGreaterThan(0);
      if (path === '/console/') {
        await signIn(page, CLIENT_KEY);
        await page.getByRole('navigation').waitFor();
      }
      // Chromium asks for a page's icon once it has loaded; give it the time to.
      await page.waitForLoadState('networkidle');
      await page.waitForTimeout(500);
      expect(requests.filter((u) => new URL(u).pathname === '/favicon.ico'), path).toEqual([]);
      expect(notFound, path).toEqual([]);
      expect(errors, path).toEqual([]);
      await page.close();
    }
    expect(icons[0]).toBe(icons[1]);
    // The gateway saw no request it answered 404 (Chromium's icon requests do not all show as page requests).
    expect(notFoundLogs(h).slice(before)).toEqual([]);
  });

  it('says so when the key is wrong, and clears the field', async () => {
    const { page, requests } = await watchedPage(browser);
    await page.goto(`${h.base}/console/`);
    await signIn(page, 'gk-not-a-real-key-0123456789');
    await page.getByRole('alert').filter({ hasText: 'not valid' }).waitFor();
    expect(await page.getByLabel('API key').inputValue()).toBe('');
    expect(await page.getByRole('navigation').count()).toBe(0);
    expect(requests.every((u) => u.startsWith('data:') || u.startsWith(h.base))).toBe(true);
    await page.close();
  });

  it('shows Keys to the admin, and fits a 375 px phone without sideways scrolling', async () => {
    const { page, errors } = await watchedPage(browser, { width: 375, height: 720 });
    await page.goto(`${h.base}/console/`);
    await signIn(page, ADMIN_KEY);
    await page.getByRole('link', { name: 'Keys' }).click();
    expect(new URL(page.url()).hash).toBe('#/keys');
    await page.reload();
    await page.getByRole('navigation').waitFor();
    expect(await page.getByText('Admin', { exact: true }).isVisible()).toBe(true);
    const overflow = await page.evaluate<number>('document.documentElement.scrollWidth - document.documentElement.clientWidth');
    expect(overflow).toBeLessThanOrEqual(0);
    // Keyboard: Tab from the top reaches the navigation links.
    const focused: string[] = [];
    for (let i = 0; i < 7; i++) {
      await page.keyboard.press('Tab');
      focused.push(await page.evaluate<string>("document.activeElement?.textContent ?? ''"));
    }
    expect(focused).toEqual(expect.arrayContaining(['Playground', 'Gallery', 'Usage', 'Keys', 'Sign out']));
    // The keys table is wider than the phone: it scrolls in a box of its own, a named region the
    // keyboard reaches, and arrow keys bring its last column (Revoke) into view.
    const table = page.getByRole('region', { name: 'Keys' });
    const revoke = page.getByRole('button', { name: 'Revoke key admin' });
    await revoke.waitFor({ state: 'attached' });
    const right = async () => (await revoke.boundingBox())!.x + (await revoke.boundingBox())!.width;
    expect(await right()).toBeGreaterThan(375);
    await table.screenshot({ path: `${SCREENSHOTS}console-keys-phone-table.png` });
    await table.focus();
    for (let i = 0; i < 30; i++) await page.keyboard.press('ArrowRight');
    // Chromium scrolls smoothly: the last press lands a moment later.
    await expect.poll(right).toBeLessThanOrEqual(375);
    await table.screenshot({ path: `${SCREENSHOTS}console-keys-phone-table-scrolled.png` });
    expect(errors).toEqual([]);
    expect(await readable(page)).not.toContain(ADMIN_KEY);
    await page.close();
  });

  it('/docs fits a 375 px phone: long code wraps, and the models table scrolls in its own box', async () => {
    const { page, errors } = await watchedPage(browser, { width: 375, height: 720 });
    await page.goto(`${h.base}/docs`);
    const overflow = await page.evaluate<number>('document.documentElement.scrollWidth - document.documentElement.clientWidth');
    expect(overflow).toBeLessThanOrEqual(0);
    const models = page.getByRole('region', { name: 'Models' });
    expect(await models.evaluate((el) => el.scrollWidth > el.clientWidth)).toBe(true);
    await page.screenshot({ path: `${SCREENSHOTS}docs-phone.png` });
    expect(errors).toEqual([]);
    await page.close();
  });
  it('a page still loading when the user moves on never draws over the next one', async () => {
    const { page } = await watchedPage(browser);
    // Hold the playground's model list back until the user has gone to the gallery.
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    await page.route('**/console/api/v1/models', async (route) => {
      await held;
      await route.continue();
    });
    await page.goto(`${h.base}/console/`);
    await signIn(page, CLIENT_KEY);
    await page.getByRole('navigation').waitFor();
    expect(new URL(page.url()).hash).toBe('#/playground');
    await page.getByRole('link', { name: 'Gallery' }).click();
    await page.getByRole('heading', { name: 'Gallery', level: 1 }).waitFor();
    release();
    // The playground's late render has nowhere to go: the gallery stays, alone.
    await page.waitForLoadState('networkidle');
    expect(await page.getByRole('heading', { name: 'Gallery', level: 1 }).isVisible()).toBe(true);
    expect(await page.getByRole('heading', { name: 'Playground', level: 1 }).count()).toBe(0);
    await page.close();
  });
});
