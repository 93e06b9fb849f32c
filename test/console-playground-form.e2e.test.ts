/**
 * The playground's form against the catalogue, in headless Chromium: what a model does not take is
 * never carried over from another model nor sent; the prompt's limit, required fields and edit
 * models come from GET /v1/models; one click is one request; result cards say what happened.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import sharp from 'sharp';
import { chromiumProblem, launchChromium, SCREENSHOTS } from './browser.js';
import { CLIENT_KEY, startListening, type ListeningHarness } from './harness.js';

interface FieldSchema {
  required?: boolean;
  values?: unknown[];
}
interface CatalogueModel {
  id: string;
  operations: string[];
  input_schema: {
    generate?: { prompt: { max_length: number }; parameters: Record<string, FieldSchema>; options: Record<string, FieldSchema> };
    edit?: Record<string, { prompt: { max_length: number }; parameters: Record<string, FieldSchema>; options: Record<string, FieldSchema> }>;
  };
}

describe.skipIf(chromiumProblem !== undefined)('the playground form follows the selected model (skipped when Chromium is absent and REQUIRE_SERVICES is unset)', () => {
  let browser: Browser;
  let h: ListeningHarness;
  let page: Page;
  let catalogue: CatalogueModel[];
  /** The JSON bodies the page sent to POST /console/api/v1/generate. */
  const generateBodies: Array<Record<string, unknown>> = [];
  /** How many multipart POST /console/api/v1/edit the page sent. */
  let edits = 0;
  const errors: string[] = [];

  const modelSelect = () => page.getByLabel('Model', { exact: true });
  const promptBox = () => page.getByLabel('Prompt', { exact: true });
  const cards = () => page.locator('.result-card');
  const catalogueModel = (id: string) => catalogue.find((m) => m.id === id)!;

  beforeAll(async () => {
    // Upstream tasks (flux-kontext-pro) stay pending for a while, so a running generation can be watched.
    h = await startListening({}, { taskReadyAfterMs: 1500 });
    const res = await h.fetch(`${h.base}/v1/models`, { headers: h.auth });
    catalogue = ((await res.json()) as { data: CatalogueModel[] }).data;
    browser = await launchChromium();
    const context = await browser.newContext({ viewport: { width: 1100, height: 900 }, permissions: ['clipboard-read', 'clipboard-write'] });
    page = await context.newPage();
    page.on('request', (r) => {
      if (r.method() === 'POST' && new URL(r.url()).pathname === '/console/api/v1/generate') generateBodies.push(JSON.parse(r.postData() ?? '{}'));
      if (r.method() === 'POST' && new URL(r.url()).pathname === '/console/api/v1/edit') edits++;
    });
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(m.text());
    });
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${h.base}/console/`);
    await page.getByLabel('API key').fill(CLIENT_KEY);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await modelSelect().waitFor();
  });
  afterAll(async () => {
    await browser?.close();
    await h?.close();
  });
  beforeEach(async () => {
    // Each test starts from a fresh playground: a reload (the session cookie stays). Going to
    // another page and back would find the playground as it was left.
    await page.goto(`${h.base}/console/#/playground`);
    await page.reload();
    await modelSelect().waitFor();
  });

  it('switching model keeps the values the new model takes, clears the rest, and sends only fields the model declares', async () => {
    await modelSelect().selectOption('gpt-image-1');
    await page.getByLabel('Number of images').fill('5');
    await page.getByLabel('Quality', { exact: true }).selectOption('high');
    await page.getByLabel('Size', { exact: true }).selectOption('1536x1024');
    // A model with the same fields and rules keeps them all.
    await modelSelect().selectOption('gpt-image-1.5');
    expect(await page.getByLabel('Number of images').inputValue()).toBe('5');
    expect(await page.getByLabel('Quality', { exact: true }).inputValue()).toBe('high');
    expect(await page.getByLabel('Size', { exact: true }).inputValue()).toBe('1536x1024');
    // dall-e-3 makes one image at a time, and has neither that quality nor that size: all three go back to the default.
    await modelSelect().selectOption('dall-e-3');
    expect(await page.getByLabel('Number of images').inputValue()).toBe('');
    expect(await page.getByLabel('Quality', { exact: true }).inputValue()).toBe('');
    expect(await page.getByLabel('Size', { exact: true }).inputValue()).toBe('');
    await promptBox().fill('a paper boat');
    await page.getByRole('button', { name: 'Generate' }).click();
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(1);
    expect(generateBodies.at(-1)).toEqual({ model: 'dall-e-3', prompt: 'a paper boat', stream: true });

    // ideogram-v3 makes up to 8, imagen-4.0-generate-001 up to 4: n=5 is cleared, n=3 is kept and sent.
    await modelSelect().selectOption('ideogram-v3');
    await page.getByLabel('Number of images').fill('5');
    await page.getByLabel('Seed').fill('42');
    await modelSelect().selectOption('imagen-4.0-generate-001');
    expect(await page.getByLabel('Number of images').inputValue()).toBe('');
    // imagen declares no seed: the field is gone, and coming back does not bring it.
    expect(await page.getByLabel('Seed').count()).toBe(0);
    await page.getByLabel('Number of images').fill('3');
    await promptBox().fill('a field of poppies');
    await page.getByRole('button', { name: 'Generate' }).click();
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(4);
    const sent = generateBodies.at(-1)!;
    expect(sent).toEqual({ model: 'imagen-4.0-generate-001', prompt: 'a field of poppies', n: 3, stream: true });
    // Every field sent is one the catalogue declares for the model.
    const declared = catalogueModel('imagen-4.0-generate-001').input_schema.generate!;
    for (const name of Object.keys(sent).filter((k) => !['model', 'prompt', 'stream'].includes(k))) expect(Object.keys(declared.parameters)).toContain(name);
  });

  it("limits the prompt to the selected model's max_length from the catalogue, and refuses a longer one kept from another model", async () => {
    const limitOf = (id: string) => catalogueModel(id).input_schema.generate!.prompt.max_length;
    for (const id of ['gpt-image-1', 'dall-e-3', 'wan2.7-image']) {
      await modelSelect().selectOption(id);
      expect(await promptBox().getAttribute('maxlength'), id).toBe(String(limitOf(id)));
      expect(await page.locator('#pg-prompt-help').textContent(), id).toBe(`Up to ${limitOf(id)} characters.`);
    }
    expect(limitOf('wan2.7-image')).toBeLessThan(limitOf('gpt-image-1'));
    // A prompt written for gpt-image-1, longer than wan2.7-image takes: refused in the page, naming the limit.
    await modelSelect().selectOption('gpt-image-1');
    await promptBox().fill('a quiet harbour at dawn, '.repeat(40));
    await modelSelect().selectOption('wan2.7-image');
    const sent = generateBodies.length;
    await page.getByRole('button', { name: 'Generate' }).click();
    await expect.poll(() => page.locator('.playground-form > .form-error').textContent()).toBe(`Prompt must be at most ${limitOf('wan2.7-image')} characters for wan2.7-image (it has 1000).`);
    expect(generateBodies.length).toBe(sent);
    // A longer text pasted is cut to the limit by the browser: the hint says how much was left out.
    const limit = limitOf('wan2.7-image');
    await promptBox().fill('a lighthouse. ');
    await page.evaluate(`navigator.clipboard.writeText(${JSON.stringify('x'.repeat(limit))})`);
    await promptBox().press('End');
    await promptBox().press('ControlOrMeta+V');
    await expect.poll(() => promptBox().inputValue()).toHaveLength(limit);
    expect(await page.locator('#pg-prompt-help').textContent()).toBe(`Up to ${limit} characters. The pasted text was cut to fit: its last 14 characters were left out.`);
    // The next edit puts the hint back.
    await promptBox().press('Backspace');
    expect(await page.locator('#pg-prompt-help').textContent()).toBe(`Up to ${limit} characters.`);
    // So does a paste that fits, right after one that was cut; a line break counts once, as the textarea keeps it.
    await promptBox().press('ControlOrMeta+V');
    await expect.poll(() => page.locator('#pg-prompt-help').textContent()).toMatch(new RegExp(`last ${limit - 1} characters were left out`));
    const fitting = `${'y'.repeat(limit - 2)}\r\nz`;
    await page.evaluate(`navigator.clipboard.writeText(${JSON.stringify(fitting)})`);
    await promptBox().press('ControlOrMeta+A');
    await promptBox().press('ControlOrMeta+V');
    await expect.poll(() => promptBox().inputValue()).toBe(`${'y'.repeat(limit - 2)}\nz`);
    expect(await page.locator('#pg-prompt-help').textContent()).toBe(`Up to ${limit} characters.`);
    // A mode that takes no prompt (Ideogram's reframe) shows no limit.
    await modelSelect().selectOption('ideogram-v3');
    await page.getByLabel('Edit an image').check();
    await page.getByLabel('Mode', { exact: true }).selectOption('reframe');
    expect(await promptBox().isDisabled()).toBe(true);
    expect(await page.locator('#pg-prompt-help').textContent()).toBe('');
  });

  it('disables Generate while a generation runs: a second click or Enter sends nothing more', async () => {
    await modelSelect().selectOption('flux-kontext-pro');
    await promptBox().fill('a lighthouse in fog');
    const before = generateBodies.length;
    const upstreamBefore = h.simulator.received.length;
    const button = page.getByRole('button', { name: 'Generate' });
    await button.click();
    await expect.poll(() => button.isDisabled()).toBe(true);
    // A forced click, and Enter in a field (the form's own submission), while the task is still pending upstream.
    await button.click({ force: true });
    await page.getByLabel('Seed').press('Enter');
    await page.locator('form.playground-form').evaluate((form) => (form as unknown as { requestSubmit(): void }).requestSubmit());
    expect(await page.locator('.result-pending').count()).toBe(1);
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(1);
    expect(await button.isDisabled()).toBe(false);
    expect(generateBodies.length - before).toBe(1);
    // One task submitted upstream (the rest are its polls).
    expect(h.simulator.received.slice(upstreamBefore).filter((r) => r.method === 'POST')).toHaveLength(1);
  });

  it('starts a required select (reframe\'s size) at "Choose a size…", says how many options it has, and asks for one before sending', async () => {
    const sizes = catalogueModel('ideogram-v3').input_schema.edit!.reframe!.parameters.size!;
    expect(sizes.required).toBe(true);
    await modelSelect().selectOption('ideogram-v3');
    await page.getByLabel('Edit an image').check();
    await page.getByLabel('Mode', { exact: true }).selectOption('reframe');
    const size = page.getByLabel('Size', { exact: true });
    expect(await size.inputValue()).toBe('');
    expect(await size.locator('option').first().textContent()).toBe('Choose a size…');
    expect(await size.locator('option').allTextContents()).not.toContain('Default');
    expect(await size.getAttribute('aria-required')).toBe('true');
    expect(await page.locator('#pg-size-help').textContent()).toBe(`Required: choose one of the ${sizes.values!.length} options.`);
    const png = await sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 30, g: 120, b: 200 } } }).png().toBuffer();
    await page.getByLabel('Image', { exact: true }).setInputFiles({ name: 'sea.png', mimeType: 'image/png', buffer: png });
    await expect.poll(() => page.getByRole('img', { name: 'Source image 1' }).count()).toBe(1);
    const sent = edits;
    await page.getByRole('button', { name: 'Reframe' }).click();
    await expect.poll(() => page.locator('.playground-form > .form-error').textContent()).toBe(`Size is required: choose one of the ${sizes.values!.length} options.`);
    expect(await size.getAttribute('aria-invalid')).toBe('true');
    expect(edits).toBe(sent);
    await page.screenshot({ path: `${SCREENSHOTS}console-required-size.png`, fullPage: true });
    // Chosen, it is sent (as Ideogram v3's resolution); the message and the mark go at once.
    await size.selectOption('1024x1024');
    expect(await page.locator('.playground-form > .form-error').textContent()).toBe('');
    expect(await size.getAttribute('aria-invalid')).not.toBe('true');
    const upstreamBefore = h.simulator.received.length;
    await page.getByRole('button', { name: 'Reframe' }).click();
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBeGreaterThan(0);
    expect(edits).toBe(sent + 1);
    expect(h.simulator.received.slice(upstreamBefore).find((r) => r.path.endsWith('/reframe'))?.fields).toMatchObject({ resolution: '1024x1024' });
    // A field that is not required keeps its "Default".
    await page.getByLabel('Generate from text').check();
    expect(await page.getByLabel('Style', { exact: true }).locator('option').first().textContent()).toBe('Default');
  });

  it('what a refused Edit named follows the form as it is fixed: the image chosen, the mask painted, a model that needs none', async () => {
    const formError = page.locator('.playground-form > .form-error');
    await modelSelect().selectOption('ideogram-v3');
    await page.getByLabel('Edit an image').check();
    await promptBox().fill('a boat');
    const sent = edits;
    await page.getByRole('button', { name: 'Edit', exact: true }).click();
    await expect.poll(() => formError.textContent()).toBe('Image: choose the image to edit. Mask: this mode needs a mask; paint the area to change.');
    const png = await sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 30, g: 120, b: 200 } } }).png().toBuffer();
    await page.getByLabel('Image', { exact: true }).setInputFiles({ name: 'sea.png', mimeType: 'image/png', buffer: png });
    await expect.poll(() => formError.textContent()).toBe('Mask: this mode needs a mask; paint the area to change.');
    // A stroke on the mask: nothing left to fix.
    const canvas = page.getByRole('img', { name: /^Mask/ });
    await canvas.waitFor();
    const box = (await canvas.boundingBox())!;
    await page.mouse.move(box.x + box.width * 0.2, box.y + box.height * 0.5);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.5, { steps: 6 });
    await page.mouse.up();
    await expect.poll(() => formError.textContent()).toBe('');
    // Cleared, the mask is needed again; a model whose edit takes no mask needs nothing.
    await page.getByRole('button', { name: 'Clear' }).click();
    await page.getByRole('button', { name: 'Edit', exact: true }).click();
    await expect.poll(() => formError.textContent()).toBe('Mask: this mode needs a mask; paint the area to change.');
    await modelSelect().selectOption('doubao-seedream-4-0');
    await expect.poll(() => formError.textContent()).toBe('');
    expect(edits).toBe(sent);
  });

  it('settings filled in by "Reuse settings" clear what a refused Generate named', async () => {
    const formError = page.locator('.playground-form > .form-error');
    await modelSelect().selectOption('dall-e-3');
    await promptBox().fill('a paper boat');
    await page.getByRole('button', { name: 'Generate' }).click();
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(1);
    await promptBox().fill('');
    const sent = generateBodies.length;
    await page.getByRole('button', { name: 'Generate' }).click();
    await expect.poll(() => formError.textContent()).toBe('Prompt must not be empty.');
    await cards().first().getByRole('button', { name: 'Reuse settings' }).click();
    expect(await promptBox().inputValue()).toBe('a paper boat');
    expect(await formError.textContent()).toBe('');
    expect(generateBodies.length).toBe(sent);
  });

  it('gives focus back to Generate when a run it started from the keyboard ends (disabled, it had lost it)', async () => {
    await modelSelect().selectOption('dall-e-3');
    await promptBox().fill('a kite');
    const button = page.getByRole('button', { name: 'Generate' });
    await button.focus();
    await page.keyboard.press('Enter');
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(1);
    await expect.poll(() => page.evaluate<string>("document.activeElement?.textContent ?? ''")).toBe('Generate');
  });

  it('result cards show only what is known: a seed where the model reports one, no "·" left dangling', async () => {
    await modelSelect().selectOption('gpt-image-1');
    await promptBox().fill('a teapot');
    await page.getByRole('button', { name: 'Generate' }).click();
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(1);
    // gpt-image-1 reports no seed.
    const gptFacts = (await page.locator('.result-facts').first().textContent())!;
    expect(gptFacts).not.toMatch(/seed/);
    // ideogram-v3 does: the seed asked for, echoed.
    await modelSelect().selectOption('ideogram-v3');
    await page.getByLabel('Seed').fill('4242');
    await page.getByRole('button', { name: 'Generate' }).click();
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(2);
    expect(await page.locator('.result-facts').first().textContent()).toMatch(/^seed 4242 · /);
    // dall-e-3's cost is not known in advance: said in words.
    await modelSelect().selectOption('dall-e-3');
    await page.getByRole('button', { name: 'Generate' }).click();
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(3);
    expect(await page.locator('.result-facts').first().textContent()).toMatch(/^\d+ ms · cost unknown · \d+×\d+$/);
    // Reframe takes no prompt: the caption is the model alone.
    await modelSelect().selectOption('ideogram-v3');
    await page.getByLabel('Edit an image').check();
    await page.getByLabel('Mode', { exact: true }).selectOption('reframe');
    await page.getByLabel('Size', { exact: true }).selectOption('1024x1024');
    const png = await sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 200, g: 120, b: 30 } } }).png().toBuffer();
    await page.getByLabel('Image', { exact: true }).setInputFiles({ name: 'dune.png', mimeType: 'image/png', buffer: png });
    await expect.poll(() => page.getByRole('img', { name: 'Source image 1' }).count()).toBe(1);
    await page.getByRole('button', { name: 'Reframe' }).click();
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(4);
    expect(await page.locator('.result-model').first().textContent()).toBe('ideogram-v3');
    for (const text of [...(await page.locator('.result-facts').allTextContents()), ...(await page.locator('.result-model').allTextContents())]) {
      expect(text).not.toMatch(/^\s*·|·\s*$|·\s*·|—/);
    }
  });

  it('a running generation shows a clock that ticks', async () => {
    await modelSelect().selectOption('flux-kontext-pro');
    await promptBox().fill('a windmill at noon');
    await page.getByRole('button', { name: 'Generate' }).click();
    const clock = page.locator('.result-pending .result-elapsed');
    await expect.poll(() => clock.textContent()).toMatch(/^Elapsed \d+\.\d s$/);
    const first = await clock.textContent();
    await expect.poll(() => clock.textContent(), { timeout: 5_000 }).not.toBe(first);
    await page.screenshot({ path: `${SCREENSHOTS}console-running.png`, fullPage: true });
    expect(Number(/([\d.]+) s/.exec((await clock.textContent()) ?? '')?.[1])).toBeGreaterThan(Number(/([\d.]+) s/.exec(first ?? '')?.[1]));
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(1);
    expect(await page.locator('.result-pending').count()).toBe(0);
  });

  it('a failed card says what went wrong and which field allows what, with Retry and "Edit settings", and no "Elapsed 0.0 s"', async () => {
    // flux-2-pro takes sizes within limits the console leaves to the gateway to judge.
    await modelSelect().selectOption('flux-2-pro');
    await page.getByLabel('Size', { exact: true }).fill('12x12');
    await promptBox().fill('a tiny stamp');
    const before = generateBodies.length;
    const upstreamBefore = h.simulator.received.length;
    await page.getByRole('button', { name: 'Generate' }).click();
    const failed = page.locator('.result-failed');
    await failed.waitFor();
    expect(await failed.locator('.result-headline').textContent()).toBe('The gateway refused these settings');
    expect(await failed.locator('.result-model').textContent()).toBe('flux-2-pro · a tiny stamp');
    const problems = await failed.locator('.result-problems li').allTextContents();
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^size: must be .*WIDTHxHEIGHT with each side \d+\.\.\d+/);
    expect(await failed.textContent()).not.toMatch(/Elapsed|0\.0 s/);
    await page.locator('.results').screenshot({ path: `${SCREENSHOTS}console-failed-card.png` });
    // Nothing reached upstream.
    expect(h.simulator.received.length).toBe(upstreamBefore);

    // Retry sends the same request again; it fails the same way, in the same card.
    await failed.getByRole('button', { name: 'Retry' }).click();
    await expect.poll(() => generateBodies.length).toBe(before + 2);
    expect(generateBodies.at(-1)).toEqual(generateBodies.at(-2));
    await expect.poll(() => page.locator('.result-pending').count()).toBe(0);
    expect(await failed.count()).toBe(1);
    // Focus, lost when Retry was disabled and its card replaced, is on the new card's Retry.
    await expect.poll(() => page.evaluate<boolean>("document.activeElement?.classList.contains('result-retry') === true && document.activeElement.isConnected")).toBe(true);

    // "Edit settings" brings them back into the form with the size marked and focused.
    await modelSelect().selectOption('gpt-image-1');
    await failed.getByRole('button', { name: 'Edit settings' }).click();
    expect(await modelSelect().inputValue()).toBe('flux-2-pro');
    const size = page.getByLabel('Size', { exact: true });
    expect(await size.inputValue()).toBe('12x12');
    expect(await size.getAttribute('aria-invalid')).toBe('true');
    expect(await size.evaluate((el) => el === (globalThis as unknown as { document: { activeElement: unknown } }).document.activeElement)).toBe(true);
  });

  it('"Edit this image" keeps the result\'s own model where it edits, else takes the first that does and says so', async () => {
    // A flux-kontext-pro result, edited while the form shows another model: flux-kontext-pro edits it.
    await modelSelect().selectOption('flux-kontext-pro');
    await promptBox().fill('a red kite');
    await page.getByRole('button', { name: 'Generate' }).click();
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(1);
    await modelSelect().selectOption('gpt-image-1');
    await cards().first().getByRole('button', { name: 'Edit this image' }).click();
    await expect.poll(() => page.getByRole('img', { name: 'Source image 1' }).count()).toBe(1);
    expect(await modelSelect().inputValue()).toBe('flux-kontext-pro');
    expect(await page.getByLabel('Edit an image').isChecked()).toBe(true);
    // The picker holds it as chosen, not "No file chosen" beside the preview.
    expect(await page.locator('#pg-image').evaluate((input) => Array.from((input as unknown as { files: ArrayLike<{ name: string }> }).files, (f) => f.name))).toEqual(['image-to-edit.png']);
    expect(await page.locator('#pg-model-note').textContent()).toBe('');

    // A dall-e-3 result (dall-e-3 only generates): the catalogue's first model that edits, with a note.
    await page.getByLabel('Generate from text').check();
    await modelSelect().selectOption('dall-e-3');
    await promptBox().fill('a blue kite');
    await page.getByRole('button', { name: 'Generate' }).click();
    await expect.poll(() => cards().count(), { timeout: 15_000 }).toBe(2);
    await cards().first().getByRole('button', { name: 'Edit this image' }).click();
    const firstEditor = catalogue.find((m) => m.operations.includes('edit'))!.id;
    await expect.poll(() => modelSelect().inputValue()).toBe(firstEditor);
    await expect.poll(() => page.getByRole('img', { name: 'Source image 1' }).count()).toBe(1);
    expect(await page.locator('#pg-model-note').textContent()).toBe(`dall-e-3 does not edit images, so ${firstEditor} is selected.`);
    expect(await page.locator('#pg-model-note').isVisible()).toBe(true);
    await page.screenshot({ path: `${SCREENSHOTS}console-edit-note.png`, fullPage: true });
    // Choosing a model oneself clears the note.
    await modelSelect().selectOption('flux-kontext-pro');
    expect(await page.locator('#pg-model-note').textContent()).toBe('');
    expect(await page.locator('#pg-model-note').isVisible()).toBe(false);
  });

  it('logged no error', () => {
    // The expected ones: the session probe's 401 before signing in, and the refused size's 400s (the failed card's).
    expect(errors.filter((e) => !/status of 40[01]/.test(e))).toEqual([]);
  });
});
