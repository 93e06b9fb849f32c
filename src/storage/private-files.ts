import { chmodSync, closeSync, mkdirSync, openSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { mkdir, stat } from 'node:fs/promises';

/**
 * DATA_DIR holds usage records, stored images and the URL-signing secret: readable by the gateway's
 * own user only. Directories it creates are 0700 and files 0600, whatever the umask leaves.
 */
export const PRIVATE_DIR_MODE = 0o700;
export const PRIVATE_FILE_MODE = 0o600;

/**
 * Creates a directory (and its missing parents) 0700; one that exists is left as it is. Not Node's
 * recursive mkdir: where a parent exists but answers ENOENT for a new entry (under /proc), that one
 * retries forever at full CPU. Here a directory is tried once more after its parent, then the error stands.
 */
export function makePrivateDirSync(path: string): void {
  try {
    mkdirSync(path, { mode: PRIVATE_DIR_MODE });
  } catch (err) {
    if (isDirectorySync(path)) return;
    const parent = dirname(path);
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || parent === path) throw err;
    makePrivateDirSync(parent);
    try {
      mkdirSync(path, { mode: PRIVATE_DIR_MODE });
    } catch (again) {
      if (!isDirectorySync(path)) throw again;
    }
  }
}

/** As makePrivateDirSync, without blocking. */
export async function makePrivateDir(path: string): Promise<void> {
  try {
    await mkdir(path, { mode: PRIVATE_DIR_MODE });
  } catch (err) {
    if (await isDirectory(path)) return;
    const parent = dirname(path);
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || parent === path) throw err;
    await makePrivateDir(parent);
    try {
      await mkdir(path, { mode: PRIVATE_DIR_MODE });
    } catch (again) {
      if (!(await isDirectory(path))) throw again;
    }
  }
}

/** A directory there now (made by another process meanwhile, or before); false for anything else, or when it cannot be asked. */
function isDirectorySync(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

async function isDirectory(path: string): Promise<boolean> {
  return stat(path).then((s) => s.isDirectory(), () => false);
}

/**
 * The gateway's own file made private before anything opens it: created empty 0600 when missing,
 * set to 0600 when it exists (a file an older version left 0644). SQLite then creates the database's
 * -wal and -shm files with the database file's mode.
 */
export function makePrivateFileSync(path: string): void {
  closeSync(openSync(path, 'a', PRIVATE_FILE_MODE));
  tightenIfPresent(path, PRIVATE_FILE_MODE);
}

/**
 * Sets an existing file or directory of the gateway's to `mode`. A missing one is no error, nor one
 * another user owns (EPERM: only its owner may change its mode; the gateway can still use it).
 */
export function tightenIfPresent(path: string, mode: number): void {
  try {
    chmodSync(path, mode);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'EPERM') throw err;
  }
}

/** DATA_DIR's files that hold secrets or records, tightened to 0600 at start when present. */
const SECRET_FILES = ['url-signing.key', 'gateway.sqlite', 'gateway.sqlite-wal', 'gateway.sqlite-shm', 'gateway.sqlite-journal'];

/**
 * Tightens an existing DATA_DIR (0700) and its secret files (0600) that an older version, or an
 * operator, left readable by others. Best effort: returns what stays looser than it should (owned
 * by another user, so only its owner may change its mode), for a warning.
 */
export function tightenDataDirSync(dataDir: string): string[] {
  const loose: string[] = [];
  const entries: Array<[string, number]> = [[dataDir, PRIVATE_DIR_MODE], ...SECRET_FILES.map((f): [string, number] => [join(dataDir, f), PRIVATE_FILE_MODE])];
  for (const [path, wanted] of entries) {
    let current: number;
    try {
      current = statSync(path).mode & 0o777;
    } catch {
      continue;
    }
    if ((current & ~wanted) === 0) continue;
    tightenIfPresent(path, wanted);
    try {
      if ((statSync(path).mode & 0o777 & ~wanted) !== 0) loose.push(path);
    } catch {
      // removed meanwhile
    }
  }
  return loose;
}
