/**
 * The console's playground in headless Chromium: sign in, pick a model from the form built out of
 * GET /v1/models, generate and see the image; upload a PNG through the "Image" input, paint a mask
 * with the mouse, edit, and find the image and the painted mask (transparent where painted, at the
 * image's size) in the upstream request; results accumulate side by side; "Reuse settings" and
 * "Edit this image" fill the form. Makes docs/images/console-playground.png and console-mask.png.
 */
import { mkdirSync } from 'node:fs';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { chromiumProblem, launchChromium, SCREENSHOTS } from './browser.js';
import { CLIENT_KEY, startListening, type ListeningHarness } from './harness.js';


/** What the checks read of an <img> and a <canvas> in the page (the tests are typed without the DOM). */
interface LoadedImage {
  complete: boolean;
  naturalWidth: number;
}
interface Sized {
  width: number;
  height: number;
}

const cards = (page: Page) => page.locator('.result-card');

/** A PNG with something to look at: sky and sea in gradients, and a sun. */
async function landscape(width: number, height: number): Promise<Buffer> {
  const raw = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      const sea = y > height * 0.6;
      const sun = (x - width * 0.7) ** 2 + (y - height * 0.35) ** 2 < (height * 0.12) ** 2;
      const t = y / height;
      raw[i] = sun ? 255 : sea ? 20 : Math.round(120 + 120 * t);
      raw[i + 1] = sun ? 200 : sea ? Math.round(80 + 60 * t) : Math.round(150 + 60 * t);
      raw[i + 2] = sun ? 60 : sea ? 140 : 235;
    }
  }
  return sharp(raw, { raw: { width, height, channels: 3 } }).png().toBuffer();
}

/** Waits until `count` result cards show, each image loaded. */
async function waitForResults(page: Page, count: number): Promise<void> {
  await expect.poll(() => cards(page).count(), { timeout: 15_000 }).toBe(count);
  await expect
    .poll(() => page.locator('.result-card img').evaluateAll((imgs) => imgs.every((img) => (img as unknown as LoadedImage).complete && (img as unknown as LoadedImage).naturalWidth > 0)), { timeout: 15_000 })
    .toBe(true);
}

describe.skipIf(chromiumProblem !== undefined)('the console playground in Chromium (skipped when Chromium is absent and REQUIRE_SERVICES is unset)', () => {
  let browser: Browser;
  let h: ListeningHarness;
  let page: Page;
  const requests: string[] = [];
  const errors: string[] = [];
  /** The content type of each answer to a generate or edit. */
  const answers: string[] = [];

  beforeAll(async () => {
    // An upstream task stays pending for a while (polled every 10 ms), so its progress shows.
    h = await startListening({}, { taskReadyAfterMs: 1500 });
    browser = await launchChromium();
    const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
    page = await context.newPage();
    page.on('request', (r) => requests.push(r.url()));
    page.on('response', (r) => {
      if (/\/console\/api\/v1\/(generate|edit)$/.test(new URL(r.url()).pathname)) answers.push(`${new URL(r.url()).pathname} ${r.headers()['content-type']}`);
    });
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(m.text());
    });
    page.on('pageerror', (e) => errors.push(String(e)));
    mkdirSync(SCREENSHOTS, { recursive: true });
  });
  afterAll(async () => {
    await browser?.close();
    await h?.close();
  });

  it('signs in, picks a model from the generated form, generates, and shows the image with its facts', async () => {
    await page.goto(`${h.base}/console/`);
    await page.getByLabel('API key').fill(CLIENT_KEY);
    await page.getByRole('button', { name: 'Sign in' }).click();
    const model = page.getByLabel('Model', { exact: true });
    await model.waitFor();
    // The key's models, from GET /v1/models.
    const offered = await model.locator('option').allTextContents();
    expect(offered).toContain('gpt-image-1');
    expect(offered).toContain('ideogram-v3');
    await model.selectOption('gpt-image-1');
    // The form follows the catalogue: gpt-image-1's sizes and count.
    expect(await page.getByLabel('Size', { exact: true }).locator('option').allTextContents()).toEqual(['Default', 'auto', '1024x1024', '1536x1024', '1024x1536']);
    await page.getByLabel('Number of images').fill('2');
    await page.getByLabel('Prompt', { exact: true }).fill('a lighthouse at dusk');
    await page.getByRole('button', { name: 'Generate' }).click();
    await waitForResults(page, 2);

    const sent = h.simulator.received.filter((r) => r.path.endsWith('/predictions'));
    expect(sent).toHaveLength(1);
    expect((sent[0]!.json as { input: Record<string, unknown> }).input).toMatchObject({ prompt: 'a lighthouse at dusk', n: 2 });
    const facts = await page.locator('.result-facts').first().textContent();
    // Duration (milliseconds under a second, never "0.0 s"), cost; gpt-image-1 reports no seed, so none is shown.
    expect(facts).toMatch(/^(\d+ ms|\d+(\.\d)? s) · /);
    expect(facts).not.toMatch(/ 0(\.0)? s /);
    expect(await cards(page).first().getByRole('link', { name: 'Download' }).getAttribute('download')).toMatch(/^gen_.+-1\.png$/);
    // It asked for the event stream (progress as it comes), through the console's API.
    expect(answers).toEqual(['/console/api/v1/generate text/event-stream; charset=utf-8']);
  });

  it('draws the Operation group like the fields beside it: no browser frame, its legend a field label, its choices plain text', async () => {
    const looks = await page.evaluate(() => {
      // The page's DOM as far as this check reads it (the tests are typed without the DOM).
      interface Box { top: number; bottom: number; left: number }
      interface El { closest(selector: string): El | null; querySelector(selector: string): El | null; getBoundingClientRect(): Box }
      interface Style { borderTopStyle: string; paddingLeft: string; fontWeight: string; fontSize: string }
      const w = globalThis as unknown as { document: El; getComputedStyle(el: El): Style };
      const $ = (selector: string, from: El = w.document) => from.querySelector(selector)!;
      const css = (el: El) => w.getComputedStyle(el);
      const fieldset = $('#pg-op-generate').closest('fieldset')!;
      const legend = $('legend', fieldset);
      const modelLabel = $('label[for="pg-model"]');
      const promptLabel = $('label[for="pg-prompt"]');
      const choice = $('label[for="pg-op-generate"]');
      return {
        fieldsetBorder: css(fieldset).borderTopStyle,
        fieldsetPadding: css(fieldset).paddingLeft,
        legend: { weight: css(legend).fontWeight, size: css(legend).fontSize, left: legend.getBoundingClientRect().left },
        label: { weight: css(modelLabel).fontWeight, size: css(modelLabel).fontSize, left: modelLabel.getBoundingClientRect().left },
        choiceWeight: css(choice).fontWeight,
        // The gap below the group matches the gap below the Model field.
        gapBelow: promptLabel.getBoundingClientRect().top - fieldset.getBoundingClientRect().bottom,
        modelGapBelow: fieldset.getBoundingClientRect().top - $('#pg-model').closest('.field')!.getBoundingClientRect().bottom,
      };
    });
    expect(looks.fieldsetBorder).toBe('none');
    expect(looks.fieldsetPadding).toBe('0px');
    expect(looks.legend.weight).toBe(looks.label.weight);
    expect(looks.legend.size).toBe(looks.label.size);
    expect(looks.legend.left).toBe(looks.label.left);
    expect(looks.choiceWeight).toBe('400');
    expect(looks.gapBelow).toBeCloseTo(looks.modelGapBelow, 0);
  });

  it('generates again with another model: results accumulate, the earlier ones stay', async () => {
    await page.getByLabel('Model', { exact: true }).selectOption('ideogram-v3');
    await page.getByLabel('Aspect ratio').selectOption('16:9');
    await page.getByLabel('Number of images').fill('1');
    await page.getByLabel('Prompt', { exact: true }).fill('a red door in a white wall');
    await page.getByRole('button', { name: 'Generate' }).click();
    await waitForResults(page, 3);
    const models = await page.locator('.result-model').allTextContents();
    expect(models.map((m) => m.split(' · ')[0])).toEqual(['ideogram-v3', 'gpt-image-1', 'gpt-image-1']);
    const sent = h.simulator.received.at(-1)!;
    expect(sent.path).toBe('/ideogram/v1/ideogram-v3/generate');
    expect(sent.fields).toMatchObject({ aspect_ratio: '16x9' });
    await page.screenshot({ path: `${SCREENSHOTS}console-playground.png`, fullPage: true });
  });

  it('shows an upstream task\'s progress while it runs, from the event stream, then its result', async () => {
    await page.getByLabel('Model', { exact: true }).selectOption('flux-kontext-pro');
    await page.getByLabel('Prompt', { exact: true }).fill('a harbour at night');
    await page.getByRole('button', { name: 'Generate' }).click();
    const status = page.locator('.result-pending .result-status');
    await expect.poll(() => status.textContent(), { timeout: 10_000 }).toMatch(/^Running: \w+/);
    // Upstream's progress (0 to 1) as a percentage that moves: past 1 %, never past 100 %.
    await expect.poll(async () => Number(/ (\d+)%…$/.exec((await status.textContent()) ?? '')?.[1] ?? 0), { timeout: 10_000 }).toBeGreaterThan(1);
    expect(Number(/ (\d+)%…$/.exec((await status.textContent()) ?? '')?.[1] ?? 0)).toBeLessThanOrEqual(100);
    await waitForResults(page, 4);
    expect((await page.locator('.result-model').first().textContent())!.startsWith('flux-kontext-pro')).toBe(true);
  });

  it('"Reuse settings" fills the form with a result\'s model, prompt and parameters', async () => {
    await page.getByLabel('Model', { exact: true }).selectOption('gpt-image-1');
    await page.getByLabel('Prompt', { exact: true }).fill('something else');
    await cards(page).nth(1).getByRole('button', { name: 'Reuse settings' }).click();
    expect(await page.getByLabel('Model', { exact: true }).inputValue()).toBe('ideogram-v3');
    expect(await page.getByLabel('Prompt', { exact: true }).inputValue()).toBe('a red door in a white wall');
    expect(await page.getByLabel('Aspect ratio').inputValue()).toBe('16:9');
  });

  it('edits an uploaded PNG with a mask painted with the mouse; the upstream request carries the image and the mask', async () => {
    await page.getByLabel('Model', { exact: true }).selectOption('gpt-image-1');
    await page.getByLabel('Edit an image').check();
    // The submit button says what it will do.
    expect(await page.locator('.submit-row button').textContent()).toBe('Edit');
    const source = await landscape(200, 120);
    await page.getByLabel('Image', { exact: true }).setInputFiles({ name: 'source.png', mimeType: 'image/png', buffer: source });
    const canvas = page.getByRole('img', { name: /^Mask/ });
    await canvas.waitFor();
    expect(await canvas.evaluate((c) => [(c as unknown as Sized).width, (c as unknown as Sized).height])).toEqual([200, 120]);

    // A stroke across the left part of the image, then one undone, then redone.
    await canvas.scrollIntoViewIfNeeded();
    const box = (await canvas.boundingBox())!;
    const at = (fx: number, fy: number) => [box.x + box.width * fx, box.y + box.height * fy] as const;
    await page.mouse.move(...at(0.1, 0.5));
    await page.mouse.down();
    await page.mouse.move(...at(0.4, 0.5), { steps: 12 });
    await page.mouse.up();
    await page.mouse.move(...at(0.8, 0.2));
    await page.mouse.down();
    await page.mouse.move(...at(0.9, 0.2), { steps: 4 });
    await page.mouse.up();
    await page.getByRole('button', { name: 'Undo' }).click();
    await page.getByRole('button', { name: 'Redo' }).click();
    await page.getByRole('button', { name: 'Undo' }).click();
    // Another model that takes the same image and an optional mask keeps what was painted.
    await page.getByLabel('Model', { exact: true }).selectOption('gpt-image-1.5');
    await page.getByLabel('Model', { exact: true }).selectOption('gpt-image-1');
    expect(await page.locator('.mask-editor').getByText(/% of the image will change/).count()).toBe(1);
    await page.getByLabel('Prompt', { exact: true }).fill('a boat on the water');
    await page.locator('.mask-editor').screenshot({ path: `${SCREENSHOTS}console-mask.png` });

    const before = h.simulator.received.length;
    await page.getByRole('button', { name: 'Edit', exact: true }).click();
    await waitForResults(page, 5);

    const edit = h.simulator.received.slice(before).find((r) => r.path === '/v1/images/edits')!;
    expect(edit).toBeDefined();
    expect(edit.fields).toMatchObject({ prompt: 'a boat on the water' });
    const image = edit.files!.find((f) => f.field === 'image')!;
    const mask = edit.files!.find((f) => f.field === 'mask')!;
    expect(edit.files!.map((f) => f.field)).toEqual(['image', 'mask']);
    expect(image.data!.equals(source)).toBe(true);
    expect(answers.at(-1)).toBe('/console/api/v1/edit text/event-stream; charset=utf-8');
    // The mask: the image's size, transparent where the mouse painted, opaque elsewhere (the undone stroke too).
    const { data, info } = await sharp(mask.data!).ensureAlpha().raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height]).toEqual([200, 120]);
    const alpha = (x: number, y: number) => data[(y * info.width + x) * info.channels + 3];
    expect(alpha(50, 60)).toBe(0);
    expect(alpha(25, 60)).toBe(0);
    expect(alpha(75, 60)).toBe(0);
    expect(alpha(5, 5)).toBe(255);
    expect(alpha(170, 24)).toBe(255);
    expect(alpha(190, 110)).toBe(255);
  });

  it('"Edit this image" loads a result as the source to edit', async () => {
    await page.getByLabel('Generate from text').check();
    expect(await page.locator('.submit-row button').textContent()).toBe('Generate');
    await cards(page).last().getByRole('button', { name: 'Edit this image' }).click();
    await expect.poll(() => page.getByLabel('Edit an image').isChecked()).toBe(true);
    await page.getByRole('img', { name: /^Mask/ }).waitFor();
    expect(await page.getByRole('img', { name: 'Source image 1' }).count()).toBe(1);
  });

  it('takes images dropped on the box, as many as the model takes; a mode without a mask shows no mask editor', async () => {
    await page.getByLabel('Model', { exact: true }).selectOption('doubao-seedream-4-0');
    await page.getByLabel('Edit an image').check();
    expect(await page.getByLabel('Image', { exact: true }).evaluate((i) => (i as unknown as { multiple: boolean }).multiple)).toBe(true);
    const png = (await landscape(40, 30)).toString('base64');
    // A DataTransfer holding two PNG files, made in the page (the tests are typed without the DOM).
    const drop = await page.evaluateHandle(`(() => {
      const bytes = Uint8Array.from(atob('${png}'), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      for (const name of ['one.png', 'two.png']) transfer.items.add(new File([bytes], name, { type: 'image/png' }));
      return transfer;
    })()`);
    await page.locator('.drop-zone').dispatchEvent('drop', { dataTransfer: drop });
    await expect.poll(() => page.getByRole('img', { name: /^Source image/ }).count()).toBe(2);
    expect(await page.getByRole('img', { name: /^Mask/ }).count()).toBe(0);
  });

  it('names the submit button after the edit mode: Remix, Reframe, Replace background', async () => {
    await page.getByLabel('Model', { exact: true }).selectOption('ideogram-v3');
    await page.getByLabel('Edit an image').check();
    const submit = page.locator('.submit-row button');
    expect(await submit.textContent()).toBe('Edit');
    const modeSelect = page.getByLabel('Mode', { exact: true });
    await modeSelect.selectOption('remix');
    expect(await submit.textContent()).toBe('Remix');
    await modeSelect.selectOption('reframe');
    expect(await submit.textContent()).toBe('Reframe');
    await modeSelect.selectOption('replace_background');
    expect(await submit.textContent()).toBe('Replace background');
    await page.getByLabel('Generate from text').check();
    expect(await submit.textContent()).toBe('Generate');
  });

  it('refuses a file that is not a PNG, JPEG or WebP image as it is chosen: says so there, shows no thumbnail, uploads nothing', async () => {
    await page.getByLabel('Model', { exact: true }).selectOption('gpt-image-1');
    await page.getByLabel('Edit an image').check();
    // Start from no source image: remove what the earlier tests left.
    while ((await page.getByRole('button', { name: /^Remove source image/ }).count()) > 0) await page.getByRole('button', { name: /^Remove source image/ }).first().click();
    const input = page.getByLabel('Image', { exact: true });
    const error = page.locator('#pg-image-error');
    // A text file whose name and declared type say PNG: its first bytes say otherwise.
    await input.setInputFiles({ name: 'notimg.png', mimeType: 'image/png', buffer: Buffer.from('this is just text, not a picture\n') });
    await expect.poll(() => error.textContent()).toBe('notimg.png is not a PNG, JPEG or WebP image; choose another file.');
    expect(await error.getAttribute('role')).toBe('alert');
    expect(await input.inputValue()).toBe('');
    expect(await page.locator('.source-images img').count()).toBe(0);
    expect(await page.getByRole('img', { name: /^Mask/ }).count()).toBe(0);
    await page.locator('.edit-section').screenshot({ path: `${SCREENSHOTS}console-refused-file.png` });
    // Nothing is sent: the form asks for an image instead.
    const sent = answers.length;
    await page.getByLabel('Prompt', { exact: true }).fill('a boat');
    await page.getByRole('button', { name: 'Edit', exact: true }).click();
    await expect.poll(() => page.locator('.playground-form > .form-error').textContent()).toContain('Image: choose the image to edit.');
    expect(answers.length).toBe(sent);

    // A file of another declared type is refused too; a real PNG then clears the message.
    await input.setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('hello') });
    await expect.poll(() => error.textContent()).toBe('notes.txt is not a PNG, JPEG or WebP image; choose another file.');
    await input.setInputFiles({ name: 'real.png', mimeType: 'image/png', buffer: await landscape(40, 30) });
    await page.getByRole('img', { name: /^Mask/ }).waitFor();
    expect(await error.textContent()).toBe('');
    expect(await page.getByRole('img', { name: 'Source image 1' }).count()).toBe(1);

    // Dropped files are checked the same way: the image (typed by its bytes) is kept, the other named.
    await page.getByLabel('Model', { exact: true }).selectOption('doubao-seedream-4-0');
    const png = (await landscape(40, 30)).toString('base64');
    const drop = await page.evaluateHandle(`(() => {
      const bytes = Uint8Array.from(atob('${png}'), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      transfer.items.add(new File([bytes], 'untyped'));
      transfer.items.add(new File(['GIF89a'], 'anim.gif', { type: 'image/gif' }));
      return transfer;
    })()`);
    await page.locator('.drop-zone').dispatchEvent('drop', { dataTransfer: drop });
    await expect.poll(() => error.textContent()).toBe('anim.gif is not a PNG, JPEG or WebP image; choose another file.');
    await expect.poll(() => page.getByRole('img', { name: /^Source image/ }).count()).toBe(1);
    expect(await page.locator('.source-images img').evaluate((img) => (img as unknown as LoadedImage).naturalWidth)).toBe(40);
  });

  it('keeps the form and the results across a visit to another page, a request still running included; a followed link takes focus to the heading', async () => {
    const heading = () => page.evaluate<string>("document.activeElement?.tagName === 'H1' ? document.activeElement.textContent : ''");
    await page.getByLabel('Model', { exact: true }).selectOption('flux-kontext-pro');
    await page.getByLabel('Generate from text').check();
    await page.getByLabel('Prompt', { exact: true }).fill('a lantern kept across pages');
    const before = await cards(page).count();
    expect(before).toBeGreaterThan(0);
    await page.getByRole('button', { name: 'Generate' }).click();
    // The upstream task takes 1.5 s: the page is left while it runs.
    await page.locator('.result-pending').waitFor();
    await page.getByRole('link', { name: 'Gallery' }).click();
    await expect.poll(heading).toBe('Gallery');
    await page.getByRole('link', { name: 'Playground' }).click();
    await expect.poll(heading).toBe('Playground');
    await waitForResults(page, before + 1);
    expect((await page.locator('.result-model').first().textContent())!).toBe('flux-kontext-pro · a lantern kept across pages');
    expect(await page.getByLabel('Model', { exact: true }).inputValue()).toBe('flux-kontext-pro');
    expect(await page.getByLabel('Prompt', { exact: true }).inputValue()).toBe('a lantern kept across pages');
    // One run: the kept page was not drawn again, nor its request sent twice.
    expect(await page.locator('h1').count()).toBe(1);
    expect(await page.getByRole('button', { name: 'Generate' }).isEnabled()).toBe(true);
  });

  it("fits a phone's width: nothing wider than 375 px, the mask canvas included", async () => {
    // Same browser context: the session cookie signs this page in too.
    const phone = await page.context().newPage();
    await phone.setViewportSize({ width: 375, height: 740 });
    await phone.goto(`${h.base}/console/#/playground`);
    await phone.getByLabel('Model', { exact: true }).selectOption('gpt-image-1');
    await phone.getByLabel('Edit an image').check();
    await phone.getByLabel('Image', { exact: true }).setInputFiles({ name: 'wide.png', mimeType: 'image/png', buffer: await landscape(1600, 400) });
    await phone.getByRole('img', { name: /^Mask/ }).waitFor();
    expect(await phone.evaluate('[document.documentElement.scrollWidth, document.documentElement.clientWidth]')).toEqual([375, 375]);
    await phone.close();
  });

  it('talked to no other origin and logged no error', () => {
    const origin = new URL(h.base).origin;
    expect(requests.filter((u) => !u.startsWith(origin) && !u.startsWith('data:') && !u.startsWith('blob:'))).toEqual([]);
    // The one error: the session probe's 401 before signing in.
    expect(errors.filter((e) => !/status of 401/.test(e))).toEqual([]);
  });
});
