/**
 * The console's gallery, usage and keys pages in headless Chromium, signed in through the console
 * like a person: each team sees its own images and not the other's; an image opens with its
 * details; "Reuse settings" carries its settings to the playground; Delete removes it from the grid
 * and its URL stops answering; the admin's usage chart draws the days; a minted key is shown once
 * and works, and revoking it removes it. Screenshots for the docs are written as it goes.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { chromiumProblem, launchChromium, SCREENSHOTS } from './browser.js';
import { ADMIN_KEY, CLIENT_KEY, OTHER_CLIENT_KEY, startListening, type ListeningHarness } from './harness.js';


// Oldest first; the gallery shows them newest first.
const DESIGN_PROMPTS = [
  'a red lighthouse at dusk, oil painting',
  'a paper crane on a desk, studio light',
  'a teal armchair in an empty room',
  'mountains at sunrise, watercolour',
  'a bowl of lemons, flat illustration',
  'a city street in the rain at night',
];
// Four requests of ten images: more than the gallery's first page (30), so the rest come on scrolling.
const ADS_PROMPTS = ['a banner for a summer sale, take 1', 'a banner for a summer sale, take 2', 'a banner for a summer sale, take 3', 'a banner for a summer sale, take 4'];
const ADS_IMAGES = ADS_PROMPTS.length * 10;
const GALLERY_PAGE = 30;

describe.skipIf(chromiumProblem !== undefined)('console gallery, usage and keys in Chromium (skipped when Chromium is absent and REQUIRE_SERVICES is unset)', () => {
  let browser: Browser;
  let h: ListeningHarness;

  async function generate(key: string, prompt: string, extra: Record<string, unknown> = {}): Promise<void> {
    const res = await h.fetch(`${h.base}/v1/generate`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-image-1', prompt, ...extra }),
    });
    expect(res.status, await res.clone().text()).toBe(200);
    await res.arrayBuffer();
  }

  /**
   * A fresh browser profile signed in with `key` through the console's own form, opened at `route`
   * (the console shows the page the address names once signed in).
   */
  async function signIn(key: string, route: string, viewport = { width: 1100, height: 800 }): Promise<{ context: BrowserContext; page: Page }> {
    const context = await browser.newContext({ viewport });
    // A step that cannot happen fails naming its locator, well within the test's own timeout.
    context.setDefaultTimeout(8000);
    const page = await context.newPage();
    // Every page of the console talks only to the gateway and breaks no rule of its CSP.
    page.on('request', (request) => {
      const url = request.url();
      if (!url.startsWith(`${h.base}/`) && !/^(data|blob):/.test(url)) offences.push(`request to ${url}`);
    });
    page.on('console', (message) => {
      if (/Content Security Policy|Refused to/i.test(message.text())) offences.push(`CSP: ${message.text()}`);
    });
    page.on('pageerror', (err) => offences.push(`page error: ${err.message}`));
    await page.goto(`${h.base}/console#/${route}`);
    await page.getByLabel('API key').fill(key);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('link', { name: 'Gallery' }).waitFor();
    return { context, page };
  }

  async function openGallery(page: Page): Promise<void> {
    await page.getByRole('link', { name: 'Gallery' }).click();
    await page.getByRole('heading', { name: 'Gallery' }).waitFor();
    await expect.poll(() => page.getByRole('status').first().textContent()).toMatch(/image|match/);
  }

  const tiles = (page: Page) => page.getByRole('list', { name: 'Images' }).getByRole('button');

  /** What a page did that it must not: a request elsewhere, a CSP violation, an uncaught error. */
  const offences: string[] = [];
  afterEach(() => {
    expect(offences.splice(0)).toEqual([]);
  });

  beforeAll(async () => {
    mkdirSync(SCREENSHOTS, { recursive: true });
    h = await startListening();
    for (const prompt of DESIGN_PROMPTS) await generate(CLIENT_KEY, prompt, { size: '1024x1024' });
    for (const prompt of ADS_PROMPTS) await generate(OTHER_CLIENT_KEY, prompt, { n: 10 });
    browser = await launchChromium();
  });

  afterAll(async () => {
    await browser?.close();
    await h?.close();
  });

  it('shows each team its own images only, newest first, and filters by prompt text', async () => {
    const design = await signIn(CLIENT_KEY, 'gallery');
    await openGallery(design.page);
    await expect.poll(() => tiles(design.page).count()).toBe(DESIGN_PROMPTS.length);
    const names = await tiles(design.page).evaluateAll((buttons) => buttons.map((b) => b.getAttribute('aria-label')));
    expect(names).toEqual(DESIGN_PROMPTS.map((p) => `Open image: ${p}`).reverse());
    // The thumbnails load (the console's image URLs answer in this browser).
    await expect
      .poll(() => design.page.locator('.gallery-grid img').evaluateAll((imgs) => imgs.map((i) => (i as unknown as { naturalWidth: number }).naturalWidth > 0)))
      .toEqual(DESIGN_PROMPTS.map(() => true));

    await design.page.getByLabel('Prompt contains').fill('crane');
    await expect.poll(() => tiles(design.page).count()).toBe(1);
    await expect(tiles(design.page).first().getAttribute('aria-label')).resolves.toBe(`Open image: ${DESIGN_PROMPTS[1]}`);
    await design.context.close();

    // The other team: its own images only, a page first, the rest when "Load more" scrolls into view.
    const ads = await signIn(OTHER_CLIENT_KEY, 'gallery');
    await openGallery(ads.page);
    await expect.poll(() => tiles(ads.page).count()).toBe(GALLERY_PAGE);
    // A page of many: the count is of those shown so far, not read as the total.
    expect(await ads.page.getByRole('status').first().textContent()).toBe(`Showing the newest ${GALLERY_PAGE} images; more load as you scroll.`);
    const more = ads.page.getByRole('button', { name: 'Load more' });
    await more.scrollIntoViewIfNeeded();
    await expect.poll(() => tiles(ads.page).count()).toBe(ADS_IMAGES);
    await expect.poll(() => ads.page.getByRole('status').first().textContent()).toBe(`${ADS_IMAGES} images.`);
    await expect.poll(() => more.isHidden()).toBe(true);
    const adsNames = await tiles(ads.page).evaluateAll((buttons) => buttons.map((b) => b.getAttribute('aria-label')));
    expect(new Set(adsNames)).toEqual(new Set(ADS_PROMPTS.map((p) => `Open image: ${p}`)));
    await ads.page.evaluate('window.scrollTo(0, 0)');
    await ads.page.screenshot({ path: `${SCREENSHOTS}console-gallery.png` });
    await ads.context.close();
  });

  it('opens an image with its details, and "Reuse settings" takes its prompt to the playground', async () => {
    const { context, page } = await signIn(CLIENT_KEY, 'gallery');
    await openGallery(page);
    await page.getByRole('button', { name: `Open image: ${DESIGN_PROMPTS[0]}` }).click();
    const dialog = page.getByRole('dialog');
    await dialog.waitFor();
    const details = dialog.getByLabel('Image details');
    await expect(details.textContent()).resolves.toContain(DESIGN_PROMPTS[0]);
    await expect(details.textContent()).resolves.toContain('gpt-image-1');
    await expect(details.textContent()).resolves.toMatch(/\d+×\d+ px, [\d.]+ (B|KB|MB)/);
    await expect(details.textContent()).resolves.toContain('1024x1024'); // the kept parameters
    await expect(dialog.getByRole('link', { name: 'Download' }).getAttribute('download')).resolves.toMatch(/\.png$/);
    await page.screenshot({ path: `${SCREENSHOTS}console-gallery-image.png` });

    await dialog.getByRole('button', { name: 'Reuse settings' }).click();
    await page.waitForURL(/#\/playground/);
    const prompt = page.getByLabel('Prompt', { exact: true });
    await prompt.waitFor();
    await expect.poll(() => prompt.inputValue()).toBe(DESIGN_PROMPTS[0]);

    // "Edit this image" opens the playground's edit with the image loaded.
    await page.getByRole('link', { name: 'Gallery' }).click();
    await page.getByRole('button', { name: `Open image: ${DESIGN_PROMPTS[0]}` }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Edit this image' }).click();
    await page.waitForURL(/#\/playground/);
    await expect.poll(() => page.getByLabel('Edit an image').isChecked()).toBe(true);
    await expect.poll(() => page.locator('.source-images img').count()).toBe(1);
    await context.close();
  });

  it('deletes an image: it leaves the grid and its URL answers 404', async () => {
    const { context, page } = await signIn(CLIENT_KEY, 'gallery');
    await openGallery(page);
    await page.getByRole('button', { name: `Open image: ${DESIGN_PROMPTS[1]}` }).click();
    const dialog = page.getByRole('dialog');
    const href = await dialog.getByRole('link', { name: 'Download' }).evaluate((a) => (a as unknown as { href: string }).href);
    expect((await context.request.get(href)).status()).toBe(200);

    page.once('dialog', (confirm) => void confirm.accept());
    await dialog.getByRole('button', { name: 'Delete' }).click();
    await expect.poll(() => tiles(page).count()).toBe(DESIGN_PROMPTS.length - 1);
    expect(await page.getByRole('button', { name: `Open image: ${DESIGN_PROMPTS[1]}` }).count()).toBe(0);
    // The keyboard's place is the next image in the grid (the older one), not lost to the page.
    expect(await page.evaluate<string | null>("document.activeElement?.getAttribute('aria-label') ?? null")).toBe(`Open image: ${DESIGN_PROMPTS[0]}`);
    expect((await context.request.get(href)).status()).toBe(404);

    // A fresh listing agrees: the image is gone for good, not just from this page.
    await page.reload();
    await openGallery(page);
    await expect.poll(() => tiles(page).count()).toBe(DESIGN_PROMPTS.length - 1);
    await context.close();
  });

  it("fits a phone: no sideways scrolling at 375 px on the gallery and usage pages; a team's usage is its own", async () => {
    const { context, page } = await signIn(CLIENT_KEY, 'gallery', { width: 375, height: 740 });
    await openGallery(page);
    expect(await page.evaluate<number>('document.documentElement.scrollWidth')).toBeLessThanOrEqual(375);
    await page.getByRole('link', { name: 'Usage' }).click();
    await page.locator('.usage-chart canvas').waitFor();
    expect(await page.evaluate<number>('document.documentElement.scrollWidth')).toBeLessThanOrEqual(375);
    // A team key's usage is its own team's only.
    await expect.poll(() => page.locator('.page-table tbody tr td:first-child').allTextContents()).toContain('design');
    expect(new Set(await page.locator('.page-table tbody tr td:first-child').allTextContents())).toEqual(new Set(['design']));
    expect(Number(await page.locator('.usage-chart').getAttribute('data-images'))).toBe(DESIGN_PROMPTS.length);
    await context.close();
  });

  it("draws the admin's usage per day and lists every team", async () => {
    const { context, page } = await signIn(ADMIN_KEY, 'usage');
    await page.getByRole('link', { name: 'Usage' }).click();
    const chart = page.locator('.usage-chart');
    await chart.locator('canvas').waitFor();
    // One point a day, from the range's first day to its last (by default this month so far).
    const from = await page.getByLabel('From').inputValue();
    const to = await page.getByLabel('To').inputValue();
    expect(from).toMatch(/^\d{4}-\d{2}-01$/);
    expect(Number(await chart.getAttribute('data-days'))).toBe((Date.parse(to) - Date.parse(from)) / 86_400_000 + 1);
    // Every generation's image (and more requests: the listings and the deletion are requests too).
    const generations = DESIGN_PROMPTS.length + ADS_PROMPTS.length;
    expect(Number(await chart.getAttribute('data-images'))).toBe(DESIGN_PROMPTS.length + ADS_IMAGES);
    expect(Number(await chart.getAttribute('data-requests'))).toBeGreaterThan(generations);
    const canvasSize = await chart.locator('canvas').evaluate((c) => (c as unknown as { width: number }).width);
    expect(canvasSize).toBeGreaterThan(200);
    const teams = await page.locator('.page-table tbody tr td:first-child').allTextContents();
    expect(teams).toEqual(expect.arrayContaining(['design', 'ads']));
    // Requests that named no model (the listings, the deletion) say so in words, not with a dash.
    const models = await page.locator('.page-table tbody tr td:nth-child(2)').allTextContents();
    expect(models).toContain('no model');
    expect(models).not.toContain('—');
    // The legend says "no value" one way: —, for the counts as for the day and the cost (not uPlot's "--").
    const legend = await chart.locator('.u-legend').innerText();
    expect(legend).not.toContain('--');
    expect(legend.match(/—/g)).toHaveLength(5);
    await page.screenshot({ path: `${SCREENSHOTS}console-usage.png`, fullPage: true });

    // The CSV download is the records of the range, through the console's API.
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download CSV' }).click()]);
    const path = await download.path();
    const csv = readFileSync(path, 'utf8');
    expect(csv.split('\n')[0]).toContain('request_id');
    expect(csv).toContain('design');
    await context.close();
  });

  it("mints a key shown once (copy puts it on the clipboard; it works), and revokes it", async () => {
    const { context, page } = await signIn(ADMIN_KEY, 'keys');
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: h.base });
    await page.getByRole('link', { name: 'Keys' }).click();
    await page.getByLabel('Team', { exact: true }).fill('studio');
    await page.getByLabel('Images per day').fill('20');
    await page.getByRole('button', { name: 'Mint key' }).click();
    const shown = page.locator('#minted-key');
    await shown.waitFor();
    const key = (await shown.textContent()) ?? '';
    expect(key).toMatch(/^gk-/);
    await page.getByRole('button', { name: 'Copy' }).click();
    await expect.poll(() => page.evaluate<string>('navigator.clipboard.readText()')).toBe(key);
    const works = await h.fetch(`${h.base}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    expect(works.status).toBe(200);
    await works.arrayBuffer();

    const row = page.locator('tr', { hasText: 'studio' });
    await row.waitFor();
    const id = (await row.locator('td').first().textContent()) ?? '';
    expect(id).toMatch(/^studio-/);
    await page.screenshot({ path: `${SCREENSHOTS}console-keys.png`, fullPage: true });

    // Leaving the page drops the key: coming back shows the list, never the key again.
    await page.getByRole('link', { name: 'Gallery' }).click();
    await page.getByRole('heading', { name: 'Gallery' }).waitFor();
    await page.getByRole('link', { name: 'Keys' }).click();
    await page.locator('tr', { hasText: id }).waitFor();
    expect(await page.locator('#minted-key').count()).toBe(0);
    expect(await page.content()).not.toContain(key);

    page.once('dialog', (confirm) => void confirm.accept());
    await page.getByRole('button', { name: `Revoke key ${id}` }).click();
    await expect.poll(() => page.locator('tr', { hasText: id }).count()).toBe(0);
    const refused = await h.fetch(`${h.base}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    expect(refused.status).toBe(401);
    await refused.arrayBuffer();
    // The admin key's team is said once: "admin", not "admin (admin)".
    expect(await page.locator('tr[data-key-id="admin"] td').nth(1).textContent()).toBe('admin');
    // Configured keys cannot be revoked here: their buttons are disabled.
    await expect(page.getByRole('button', { name: 'Revoke key admin' }).isDisabled()).resolves.toBe(true);
    // ... and say why, in words beside the button that describe it.
    const why = page.locator('tr[data-key-id="admin"] .revoke-why');
    expect(await why.textContent()).toBe('Set in GATEWAY_ADMIN_KEY');
    expect(await page.getByRole('button', { name: 'Revoke key admin' }).getAttribute('aria-describedby')).toBe(await why.getAttribute('id'));
    expect(await page.locator('tr[data-key-id="design"] .revoke-why').textContent()).toBe('Set in GATEWAY_API_KEYS');
    // On a phone the table scrolls inside its box; the page itself does not scroll sideways.
    await page.setViewportSize({ width: 375, height: 740 });
    expect(await page.evaluate<number>('document.documentElement.scrollWidth')).toBeLessThanOrEqual(375);
    await context.close();
  });

  it('lines up the filter labels (the dates with the rest); an image kept without parameters says "none", not "{}"', async () => {
    // Made by the admin's own key, so the counts above are the teams' alone.
    await generate(ADMIN_KEY, 'a plain grey square');
    const { context, page } = await signIn(ADMIN_KEY, 'gallery');
    await openGallery(page);
    // Where each label's text sits: From and To with Model, Prompt contains, Key and Team.
    const tops = await page.evaluate(`[...document.querySelectorAll('.page-filters label')].map((label) => {
      const range = document.createRange();
      range.selectNodeContents(label.firstChild);
      return [label.firstChild.textContent, range.getBoundingClientRect().top];
    })`) as Array<[string, number]>;
    expect(tops.map(([name]) => name)).toEqual(['Model', 'From', 'To', 'Prompt contains', 'Key', 'Team']);
    for (const [name, top] of tops) expect(Math.abs(top - tops[0]![1]), name).toBeLessThan(0.5);
    await page.locator('.page-filters').screenshot({ path: `${SCREENSHOTS}console-gallery-filters.png` });

    await page.getByLabel('Prompt contains').fill('grey square');
    await expect.poll(() => tiles(page).count()).toBe(1);
    await tiles(page).first().click();
    const details = page.getByRole('dialog').getByLabel('Image details');
    await details.waitFor();
    expect(await details.locator('dt:text-is("Parameters") + dd').textContent()).toBe('none');
    expect(await details.textContent()).not.toContain('{}');
    await context.close();
  });
});
