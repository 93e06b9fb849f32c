/**
 * `npm start` and `npm run demo` build first only when dist/ is older than what it is built from:
 * a start after a checkout, a pull or an edit builds; any other start does not (and needs no
 * TypeScript, so an install without devDependencies starts from the dist/ it was given).
 * `--stamp` (the end of `npm run build`) records that dist/ is fresh.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const STAMP = join(root, 'dist', '.built');
/** What dist/ is built from. */
const SOURCES = ['src', 'console', 'scripts', 'openapi.yaml', 'tsconfig.json', 'tsconfig.build.json', 'tsconfig.console.json', 'package.json', 'package-lock.json'];

/** The newest modification time under `path` (0 when it does not exist). */
function newest(path) {
  const stat = statSync(path, { throwIfNoEntry: false });
  if (!stat) return 0;
  if (!stat.isDirectory()) return stat.mtimeMs;
  return readdirSync(path).reduce((latest, entry) => Math.max(latest, newest(join(path, entry))), stat.mtimeMs);
}

if (process.argv.includes('--stamp')) {
  writeFileSync(STAMP, `${new Date().toISOString()}\n`);
} else {
  const built = statSync(STAMP, { throwIfNoEntry: false })?.mtimeMs ?? 0;
  const changed = Math.max(...SOURCES.map((source) => newest(join(root, source))));
  if (built < changed) {
    // The npm that runs this script (npm start), else the PATH's.
    const npm = process.env.npm_execpath;
    const build = npm ? spawnSync(process.execPath, [npm, 'run', 'build'], { cwd: root, stdio: 'inherit' }) : spawnSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' });
    process.exit(build.status ?? 1);
  }
}
