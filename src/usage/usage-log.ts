import type { Logger } from '../observability/logger.js';
import { sqlByRowCount, valuesPlaceholders, type Database, type SqlValue } from '../storage/database.js';

/** What one /v1 request did, as kept in `usage_records`. Never image bytes; the prompt only with LOG_PROMPTS. */
export interface UsageRecord {
  /** When the request arrived, Unix ms. */
  timeMs: number;
  requestId: string;
  /** Null when no valid key was presented (401). */
  keyId: string | null;
  team: string | null;
  method: string;
  /** The route pattern (`/v1/models/:id`); null when no route matched (404). */
  route: string | null;
  model: string | null;
  /** generate or edit; null for the other routes. */
  operation: string | null;
  imagesRequested: number | null;
  imagesReturned: number;
  status: number;
  errorCode: string | null;
  upstreamStatus: number | null;
  upstreamMs: number | null;
  totalMs: number;
  bytesStored: number;
  estimatedCostUsd: number | null;
  upstreamTokens: Record<string, unknown> | null;
  prompt: string | null;
  /** The job an async request started; its outcome completes this record. */
  jobId: string | null;
}

/** What a finished async job adds to the record of the request that started it. */
export type JobOutcome = Pick<
  UsageRecord,
  'status' | 'errorCode' | 'imagesReturned' | 'bytesStored' | 'estimatedCostUsd' | 'upstreamStatus' | 'upstreamMs' | 'upstreamTokens'
>;

const COLUMNS = [
  'time_ms', 'day', 'request_id', 'key_id', 'team', 'method', 'route', 'model', 'operation', 'images_requested',
  'images_returned', 'status', 'error_code', 'upstream_status', 'upstream_ms', 'total_ms', 'bytes_stored', 'cost_usd',
  'upstream_tokens', 'prompt', 'job_id',
] as const;

function rowOf(r: UsageRecord): SqlValue[] {
  return [
    r.timeMs, new Date(r.timeMs).toISOString().slice(0, 10), r.requestId, r.keyId, r.team, r.method, r.route, r.model,
    r.operation, r.imagesRequested, r.imagesReturned, r.status, r.errorCode, r.upstreamStatus, r.upstreamMs, r.totalMs,
    r.bytesStored, r.estimatedCostUsd, r.upstreamTokens ? JSON.stringify(r.upstreamTokens) : null, r.prompt, r.jobId,
  ];
}

/** Rows per INSERT statement. */
const INSERT_ROWS = 50;
const insertSql = sqlByRowCount((rows) => `INSERT INTO usage_records (${COLUMNS.join(', ')}) VALUES ${valuesPlaceholders(rows, COLUMNS.length)}`);

export interface UsageLogOptions {
  flushIntervalMs?: number;
  batchSize?: number;
  /** Records held while the database is failing; past it the oldest are dropped (and logged). */
  maxQueued?: number;
}

/**
 * Records are queued in memory and written in batches, one multi-row INSERT each, so a request
 * never waits on the database. A failed write keeps its records for the next try; close() writes
 * whatever is left, so a graceful stop loses nothing.
 */
export class UsageLog {
  private queue: UsageRecord[] = [];
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly flushIntervalMs: number;
  private readonly batchSize: number;
  private readonly maxQueued: number;

  constructor(
    private readonly db: Database,
    private readonly log: Logger,
    options: UsageLogOptions = {},
  ) {
    this.flushIntervalMs = options.flushIntervalMs ?? 250;
    this.batchSize = options.batchSize ?? 200;
    this.maxQueued = options.maxQueued ?? 100_000;
  }

  /** Outcomes of async jobs that finished before their accepting request's record arrived. */
  private readonly earlyOutcomes = new Map<string, JobOutcome>();

  /** Records waiting to be written. */
  get pending(): number {
    return this.queue.length;
  }

  add(record: UsageRecord): void {
    if (this.closed) {
      this.log.error({ request_id: record.requestId }, 'usage record arrived after the usage log closed; it is not kept');
      return;
    }
    const early = record.jobId ? this.earlyOutcomes.get(record.jobId) : undefined;
    if (early) {
      this.earlyOutcomes.delete(record.jobId!);
      Object.assign(record, early);
    }
    this.queue.push(record);
    if (this.queue.length > this.maxQueued) {
      const dropped = this.queue.splice(0, this.queue.length - this.maxQueued);
      this.log.error({ dropped: dropped.length }, 'usage records dropped: the database has not accepted writes for too long');
    }
    if (this.queue.length >= this.batchSize) void this.flush();
    else this.schedule(this.flushIntervalMs);
  }

  /**
   * An async request is recorded when it is accepted (202); what its job made, cost or failed with
   * is known only later. This completes that record, wherever it is: queued, written, or not yet here.
   */
  async completeJob(jobId: string, outcome: JobOutcome): Promise<void> {
    await this.writing;
    const queued = this.queue.find((r) => r.jobId === jobId);
    if (queued) {
      Object.assign(queued, outcome);
      return;
    }
    const changed = await this.db.run(
      `UPDATE usage_records SET status = $1, error_code = $2, images_returned = $3, bytes_stored = $4, cost_usd = $5,
         upstream_status = $6, upstream_ms = $7, upstream_tokens = $8
       WHERE job_id = $9 AND status = 202`,
      [
        outcome.status,
        outcome.errorCode,
        outcome.imagesReturned,
        outcome.bytesStored,
        outcome.estimatedCostUsd,
        outcome.upstreamStatus,
        outcome.upstreamMs,
        outcome.upstreamTokens ? JSON.stringify(outcome.upstreamTokens) : null,
        jobId,
      ],
    );
    if (changed === 0 && this.earlyOutcomes.size < 10_000) this.earlyOutcomes.set(jobId, outcome);
  }

  /** Writes everything queued so far; resolves once it is in the database (or the write failed and was logged). */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.writing = this.writing.then(() => this.writeQueued());
    return this.writing;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.flush();
    clearTimeout(this.timer);
    if (this.queue.length > 0) this.log.error({ lost: this.queue.length }, 'usage records could not be written before shutdown');
  }

  private schedule(delayMs: number): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => void this.flush(), delayMs);
    this.timer.unref();
  }

  private async writeQueued(): Promise<void> {
    let first = true;
    while (this.queue.length > 0) {
      // SQLite writes on the event loop: 200 rows at once held it for 2-4 ms (a request's p99 here);
      // 50 at a time, with requests served in between, about a quarter of that.
      if (!first) await new Promise((resolve) => setImmediate(resolve));
      first = false;
      const batch = this.queue.splice(0, INSERT_ROWS);
      try {
        await this.insert(batch);
      } catch (err) {
        this.queue.unshift(...batch);
        this.log.error({ err, pending: this.queue.length }, 'writing usage records failed; retrying');
        this.schedule(Math.max(1000, this.flushIntervalMs));
        return;
      }
    }
  }

  private async insert(batch: UsageRecord[]): Promise<void> {
    await this.db.run(insertSql(batch.length), batch.flatMap(rowOf));
  }
}
