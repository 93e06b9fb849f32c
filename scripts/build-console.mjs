// Copies the console's static files and vendored browser code next to its compiled modules
// (tsc -p tsconfig.console.json writes dist/console/src/*.js): nothing is fetched at run time.
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist', 'console');
const files = [
  ['console/index.html', 'index.html'],
  ['console/styles.css', 'styles.css'],
  // uPlot (the usage chart): its ES module and stylesheet.
  ['node_modules/uplot/dist/uPlot.esm.js', 'vendor/uPlot.esm.js'],
  ['node_modules/uplot/dist/uPlot.min.css', 'vendor/uPlot.min.css'],
];
for (const [from, to] of files) {
  mkdirSync(dirname(join(out, to)), { recursive: true });
  copyFileSync(join(root, from), join(out, to));
}
