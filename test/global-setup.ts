import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Builds dist/ (the gateway and the console) once, before any test file runs: the tests that start the gateway or the CLI as a
 * user does (child processes of dist/) then never race a build of another file.
 */
export default function buildOnce(): void {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..');
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'pipe' });
  // The built-in catalogue's data file, read next to dist/catalogue/.
  execFileSync(process.execPath, ['scripts/copy-catalogue.mjs'], { cwd: root, stdio: 'pipe' });
  // The console (dist/console), served by every gateway the tests start: its modules, then its static and vendored files.
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.console.json'], { cwd: root, stdio: 'pipe' });
  execFileSync(process.execPath, ['scripts/build-console.mjs'], { cwd: root, stdio: 'pipe' });
  // As `npm run build` ends: dist/ is fresh, so `npm start` in a test does not build it again under the others.
  execFileSync(process.execPath, ['scripts/build-if-stale.mjs', '--stamp'], { cwd: root, stdio: 'pipe' });
}
