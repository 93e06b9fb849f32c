// What each durable write of a request costs SQLite, through the gateway's own repositories and
// group commit (dist/): a usage record, an image's row, its row with its owner's entry (what a
// small image writes before its answer), and all three in one commit. Each commit waits for the
// last, as a lone request's do (c=1), over a file already holding BENCH_PREFILL images. The
// baseline is an empty commit (BEGIN IMMEDIATE; COMMIT) in the same run.
//
//   npm run build && node bench/commit-cost.js
//   BENCH_COMMITS=3000 BENCH_ROUNDS=3 BENCH_PREFILL=30000 node bench/commit-cost.js
//
// Two setups, each on a fresh file:
// - `gateway`: SqliteDatabase as the gateway opens it, its checkpoint thread copying the log back
//   every 100 ms, its statements on the event loop (as a lone request's are: the loop is idle
//   between requests): wall time and the process's CPU (every thread) per commit.
// - `log`: one connection, not checkpointed during a measurement, so the log only grows: the log
//   frames (pages) each commit writes (each frame is two writes to the log file).
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pino from 'pino';

const dist = new URL('../dist/', import.meta.url);
const { SqliteDatabase } = await import(new URL('storage/database.js', dist).href);
const { SqliteConnection } = await import(new URL('storage/sqlite-connection.js', dist).href);
const { GroupCommit } = await import(new URL('storage/group-commit.js', dist).href);
const { ImageRecords, IMAGE_MIGRATIONS } = await import(new URL('images/image-records.js', dist).href);
const { UsageLog } = await import(new URL('usage/usage-log.js', dist).href);
const { USAGE_MIGRATIONS } = await import(new URL('usage/usage-migrations.js', dist).href);

const COMMITS = Number(process.env.BENCH_COMMITS ?? 3000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const PREFILL = Number(process.env.BENCH_PREFILL ?? 30000);

// What the bench's small image writes: a ~380 B PNG kept in its row, one team, a short prompt.
function image() {
  const sha256 = randomBytes(32).toString('hex');
  const now = Date.now();
  const expiresAt = Math.floor(now / 1000) + 86400;
  const name = `img_${sha256}.png`;
  return {
    record: { name, sha256, mimeType: 'image/png', bytes: 380, width: 64, height: 64, keyId: 'bench', team: 'bench', createdAt: now, expiresAt, inlineBytes: randomBytes(380) },
    owner: { name, team: 'bench', keyId: 'bench', model: 'gpt-image-1', operation: 'generate', prompt: 'bench small', parameters: { size: '1024x1024' }, seed: null, costUsd: 0.04, createdAt: now, expiresAt },
  };
}

const usageRecord = () => ({
  timeMs: Date.now(), requestId: randomBytes(8).toString('hex'), keyId: 'bench', team: 'bench', method: 'POST', route: '/v1/generate',
  model: 'gpt-image-1', operation: 'generate', imagesRequested: 1, imagesReturned: 1, status: 200, errorCode: null, upstreamStatus: 200,
  upstreamMs: 1, totalMs: 2, bytesStored: 380, estimatedCostUsd: 0.04, upstreamTokens: null, prompt: 'bench small', jobId: null,
});

/** A source for the group commit whose share has no statements: BEGIN IMMEDIATE and COMMIT, by the same path as the writes. */
class EmptyWrites {
  waiting = [];
  constructor(commits) {
    this.commits = commits;
    commits.register(this);
  }
  commit() {
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.commits.wake();
    });
  }
  take() {
    if (this.waiting.length === 0) return undefined;
    const waiting = this.waiting.splice(0);
    return { statements: [], committed: () => waiting.forEach((w) => w.resolve()), failed: (err) => waiting.forEach((w) => w.reject(err)) };
  }
}

/**
 * The repositories over `db` (anything with `batch`), sharing one group commit as in the gateway,
 * and each kind of write: `count` made up front, so the timed loop only commits them.
 */
function repositories(db) {
  const commits = new GroupCommit(db);
  const empty = new EmptyWrites(commits);
  const images = new ImageRecords(db, commits);
  const usage = new UsageLog(db, pino({ level: 'silent' }), { commits });
  const writes = {
    'empty commit (baseline)': (count) => Array.from({ length: count }, () => () => empty.commit()),
    'usage record': (count) => Array.from({ length: count }, () => {
      const record = usageRecord();
      return () => usage.record(record);
    }),
    'image row': (count) => Array.from({ length: count }, () => {
      const { record } = image();
      return () => images.save(record);
    }),
    'image row + owner entry': (count) => Array.from({ length: count }, () => {
      const { record, owner } = image();
      return () => images.save(record, owner);
    }),
    'image row + owner + usage, one commit': (count) => Array.from({ length: count }, () => {
      const { record, owner } = image();
      const used = usageRecord();
      return () => Promise.all([images.save(record, owner), usage.record(used)]);
    }),
  };
  return { usage, writes };
}

async function prefill(writes) {
  for (let done = 0; done < PREFILL; done += 100) {
    await Promise.all(writes['image row + owner + usage, one commit'](100).map((write) => write()));
  }
}

async function commitEach(writes) {
  for (const write of writes) await write();
}

const dir = mkdtempSync(join(tmpdir(), 'commit-cost-'));
// The second file's log, not checkpointed during the prefill, can reach hundreds of MB: removed however the run ends.
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const results = {};
const add = (setup, write, figures) => ((results[write] ??= {})[setup] ??= []).push(figures);

// The gateway's own database, checkpoint thread and all.
const gatewayDb = new SqliteDatabase(join(dir, 'gateway.db'));
// Commits back to back keep the event loop busy, which would send them to the SQLite thread; a
// lone request's run on the loop, which is idle between requests. Kept there (private fields).
clearInterval(gatewayDb.loopSampler);
gatewayDb.loopSaturated = false;
await gatewayDb.migrate(IMAGE_MIGRATIONS);
await gatewayDb.migrate(USAGE_MIGRATIONS);
const gateway = repositories(gatewayDb);
await prefill(gateway.writes);

// One connection, checkpointed only before each measurement: the log grows by each commit's frames.
const logFile = join(dir, 'log.db');
const connection = new SqliteConnection(logFile, 1_000_000_000);
connection.migrate(IMAGE_MIGRATIONS);
connection.migrate(USAGE_MIGRATIONS);
// These writes bind no booleans (which SqliteDatabase turns into 0 and 1): their parameters go as they are.
const logDb = { dialect: 'sqlite', batch: async (statements) => connection.batch(statements.map(({ sql, params, rows }) => ({ sql, params, ...(rows ? { rows } : {}) }))) };
const frameBytes = connection.get('PRAGMA page_size', []).page_size + 24;
const WAL_HEADER_BYTES = 32;
const log = repositories(logDb);
await prefill(log.writes);

for (let round = 1; round <= ROUNDS; round++) {
  for (const [write, make] of Object.entries(gateway.writes)) {
    await commitEach(make(200));
    const writes = make(COMMITS);
    const started = process.hrtime.bigint();
    const cpu = process.cpuUsage();
    await commitEach(writes);
    const wallUs = Number(process.hrtime.bigint() - started) / 1000 / COMMITS;
    const used = process.cpuUsage(cpu);
    add('gateway', write, { wallUs, cpuUs: (used.user + used.system) / COMMITS });
  }
  for (const [write, make] of Object.entries(log.writes)) {
    const writes = make(COMMITS);
    connection.exec('PRAGMA wal_checkpoint(TRUNCATE)');
    const before = statSync(`${logFile}-wal`).size;
    if (before !== 0) throw new Error(`the log was not emptied before "${write}" (${before} bytes)`);
    await commitEach(writes);
    // An empty commit writes no frame, and the log no header.
    const grown = Math.max(statSync(`${logFile}-wal`).size, WAL_HEADER_BYTES) - WAL_HEADER_BYTES;
    add('log', write, { frames: grown / frameBytes / COMMITS });
  }
  console.error(`round ${round} of ${ROUNDS} done`);
}
// Private fields again: a rename would otherwise quietly put the commits back on the thread.
if (gatewayDb.thread) throw new Error('the SQLite thread was used: the commits were not all on the event loop');

const median = (values) => values.slice().sort((a, b) => a - b)[Math.floor(values.length / 2)];
const range = (values, digits) => `${Math.min(...values).toFixed(digits)}-${Math.max(...values).toFixed(digits)}`;
const baseline = median(results['empty commit (baseline)'].gateway.map((r) => r.cpuUs));
console.log(`\n${COMMITS} commits per round, ${ROUNDS} rounds, over ${PREFILL} images already stored; Node ${process.version}\n`);
console.log('| write | wall µs per commit | CPU µs per commit (every thread) | CPU over the empty commit | log frames per commit |');
console.log('|---|---:|---:|---:|---:|');
for (const [write, { gateway: timed, log: logged }] of Object.entries(results)) {
  const cpu = timed.map((r) => r.cpuUs);
  console.log(`| ${write} | ${range(timed.map((r) => r.wallUs), 1)} | ${range(cpu, 1)} | +${(median(cpu) - baseline).toFixed(1)} | ${median(logged.map((r) => r.frames)).toFixed(2)} |`);
}

// The database's threads are unref'd: this keeps the process up until they have stopped.
const keepAlive = setInterval(() => {}, 1000);
await gateway.usage.close();
await log.usage.close();
await gatewayDb.close();
clearInterval(keepAlive);
connection.close();
