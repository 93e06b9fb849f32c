// The thread behind SqliteCheckpointer: its own connection to the gateway's SQLite file, copying
// the write-ahead log back into the database every `intervalMs`. Node loads this file on its own
// (as .js from dist/, or as .ts with the types stripped under the tests): node: imports only.
import { DatabaseSync } from 'node:sqlite';
import { parentPort, workerData } from 'node:worker_threads';

const { path, intervalMs } = workerData as { path: string; intervalMs: number };
const db = new DatabaseSync(path);
db.exec('PRAGMA busy_timeout = 1000');
// PASSIVE: copies what no reader still needs and never waits for a lock (the writer goes on).
const checkpoint = db.prepare('PRAGMA wal_checkpoint(PASSIVE)');

const timer = setInterval(() => {
  try {
    checkpoint.get();
  } catch {
    // A busy or locked database: the next tick tries again, and the writer's own backstop holds.
  }
}, intervalMs);

parentPort!.once('message', () => {
  clearInterval(timer);
  db.close();
  parentPort!.close();
});
