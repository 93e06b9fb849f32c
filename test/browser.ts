/**
 * Headless Chromium for the browser tests: Debian's `chromium` package driven by playwright-core,
 * never a downloaded browser. Without it, those tests skip and say why, unless REQUIRE_SERVICES=1
 * (CI, whose `.ci/run` installs it), where a missing browser is a failure.
 */
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser } from 'playwright-core';
import { requireServices } from './services.js';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

export const chromiumProblem = existsSync(CHROMIUM_PATH)
  ? undefined
  : `${CHROMIUM_PATH} is missing (apt-get install chromium)`;

if (requireServices && chromiumProblem) throw new Error(`REQUIRE_SERVICES=1 but Chromium is unavailable: ${chromiumProblem}`);
if (chromiumProblem) console.warn(`skipping browser tests: ${chromiumProblem}; set REQUIRE_SERVICES=1 to make this a failure`);

/** A fresh headless Chromium; Playwright gives each launch an empty temporary profile. */
export async function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * Where the end-to-end runs put their screenshots: docs/images/ (the README's pictures) when
 * UPDATE_SCREENSHOTS=1, else a scratch directory, so a test run leaves the checkout clean.
 */
export const SCREENSHOTS =
  process.env.UPDATE_SCREENSHOTS === '1'
    ? fileURLToPath(new URL('../docs/images/', import.meta.url))
    : `${mkdtempSync(join(tmpdir(), 'gw-screenshots-'))}/`;
