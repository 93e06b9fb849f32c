import type { SpanContext } from '@opentelemetry/api';
import type { Logger } from '../observability/logger.js';
import { activeSpanContext } from '../observability/tracing.js';
import { sqlByRowCount, valuesPlaceholders, type BatchStatement, type Database, type SqlValue, type Statements } from '../storage/database.js';
import { GroupCommit, type CommitShare, type CommitSource } from '../storage/group-commit.js';

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
  /** The browser token the request came with (keyId and team are then its parent key's). */
  tokenId?: string | null;
  /** With fallback_models: the models tried, in order (the record's `model` is the one that served). */
  modelsTried?: string[] | null;
  /**
   * A synchronous request whose job another replica finished: that replica wrote a record standing
   * for it (its request id the job's). This record takes its place, in the same transaction: what the
   * job made and cost is taken from it, and it is deleted, so the request is one record.
   */
  replacesStandIn?: boolean;
}

/**
 * What a finished async job adds to the record of the request that started it; with a fallback
 * chain, also the model that served (or failed last) and the models tried.
 */
export type JobOutcome = Pick<
  UsageRecord,
  'status' | 'errorCode' | 'imagesReturned' | 'bytesStored' | 'estimatedCostUsd' | 'upstreamStatus' | 'upstreamMs' | 'upstreamTokens'
> & { model?: string; modelsTried?: string[] };

const COLUMNS = [
  'time_ms', 'day', 'request_id', 'key_id', 'team', 'method', 'route', 'model', 'operation', 'images_requested',
  'images_returned', 'status', 'error_code', 'upstream_status', 'upstream_ms', 'total_ms', 'bytes_stored', 'cost_usd',
  'upstream_tokens', 'prompt', 'job_id', 'token_id', 'models_tried',
] as const;

function rowOf(r: UsageRecord): SqlValue[] {
  return [
    r.timeMs, new Date(r.timeMs).toISOString().slice(0, 10), r.requestId, r.keyId, r.team, r.method, r.route, r.model,
    r.operation, r.imagesRequested, r.imagesReturned, r.status, r.errorCode, r.upstreamStatus, r.upstreamMs, r.totalMs,
    r.bytesStored, r.estimatedCostUsd, r.upstreamTokens ? JSON.stringify(r.upstreamTokens) : null, r.prompt, r.jobId,
    r.tokenId ?? null, r.modelsTried && r.modelsTried.length > 0 ? r.modelsTried.join(',') : null,
  ];
}

/** Rows per INSERT statement. */
const INSERT_ROWS = 50;
const insertSql = sqlByRowCount((rows) => `INSERT INTO usage_records (${COLUMNS.join(', ')}) VALUES ${valuesPlaceholders(rows, COLUMNS.length)}`);
/**
 * The statuses of a starting request's record that its job's outcome completes: 202 (accepted
 * async) and 499 (its client left a synchronous request). Any other status is an answer that
 * carried the outcome already.
 */
const AWAITING_OUTCOME = '(202, 499)';
const COMPLETE_JOB_SQL = `UPDATE usage_records SET status = $1, error_code = $2, images_returned = $3, bytes_stored = $4, cost_usd = $5,
   upstream_status = $6, upstream_ms = $7, upstream_tokens = $8, model = COALESCE($10, model), models_tried = COALESCE($11, models_tried)
 WHERE job_id = $9 AND status IN ${AWAITING_OUTCOME}`;

/**
 * The record of a synchronous request that a graceful stop answered 503 while its job went on (it
 * keeps its job id): what the job made and cost is added to it when the job ends elsewhere, its
 * status (the answer it had) kept.
 */
const COMPLETE_STOP_ANSWERED_SQL = `UPDATE usage_records SET images_returned = $1, bytes_stored = $2, cost_usd = $3,
   upstream_status = $4, upstream_ms = $5, upstream_tokens = $6, model = COALESCE($8, model), models_tried = COALESCE($9, models_tried)
 WHERE job_id = $7 AND status = 503 AND error_code = 'service_unavailable' AND request_id <> $7`;

/**
 * A record (`$1`, its request id) that takes the place of the stand-in of its job (`$2`, whose
 * request id is the job's): the job's outcome, as the replica that finished it wrote it, then the
 * stand-in deleted. Both through the job_id index.
 */
const STAND_IN = 'SELECT 1 FROM usage_records s WHERE s.job_id = $2 AND s.request_id = $2';
const OUTCOME_COLUMNS = 'images_returned, bytes_stored, cost_usd, upstream_status, upstream_ms, upstream_tokens, model, models_tried';
const TAKE_STAND_IN_OUTCOME_SQL = `UPDATE usage_records SET (${OUTCOME_COLUMNS}) =
   (SELECT ${OUTCOME_COLUMNS.split(', ').map((c) => `s.${c}`).join(', ')} FROM usage_records s WHERE s.job_id = $2 AND s.request_id = $2)
 WHERE job_id = $2 AND request_id = $1 AND EXISTS (${STAND_IN})`;
const DELETE_STAND_IN_SQL = 'DELETE FROM usage_records WHERE job_id = $1 AND request_id = $1';

const completeJobParams = (jobId: string, outcome: JobOutcome): SqlValue[] => [
  outcome.status,
  outcome.errorCode,
  outcome.imagesReturned,
  outcome.bytesStored,
  outcome.estimatedCostUsd,
  outcome.upstreamStatus,
  outcome.upstreamMs,
  outcome.upstreamTokens ? JSON.stringify(outcome.upstreamTokens) : null,
  jobId,
  outcome.model ?? null,
  outcome.modelsTried && outcome.modelsTried.length > 0 ? outcome.modelsTried.join(',') : null,
];

export interface UsageLogOptions {
  /**
   * How long record() holds an answer for its commit. Past it the answer goes out anyway (a
   * warning says so) and the record stays queued, retried until the database takes it.
   */
  maxWaitMs?: number;
  /** How long after a failed write the next try starts. */
  retryMs?: number;
  /** Records per transaction: the rest go in the next one. */
  groupSize?: number;
  /** Records held while the database is failing; past it the oldest are dropped (and logged). */
  maxQueued?: number;
  /** Told of each failed commit (a full disk marks storage full); the records stay queued either way. */
  onWriteFailure?: (err: unknown) => void;
  /** The group commit shared with the database's other repositories (one of its own if none). */
  commits?: GroupCommit;
}

/** A record waiting for its commit, and who hears of it. */
interface Entry {
  record: UsageRecord;
  committed: Promise<void>;
  /** Resolves `committed` (also when the record is dropped: nobody waits forever). */
  settle: () => void;
  /** The span of the request the record is of (while traces are on): its commit's span links to it. */
  span?: SpanContext;
}

/**
 * Every API call's record, committed before its answer goes out (record()), by a group commit
 * (GroupCommit): the records that arrive while a commit is in flight (or in the same turn of the
 * event loop) are written together by the next one, in one transaction of multi-row INSERTs with
 * the image rows of that turn, so the cost per request stays small. A failed write keeps its
 * records and is retried; close() writes whatever is left, so a graceful stop loses nothing either.
 */
/**
 * A fault of the rows themselves, which no retry mends: PostgreSQL's data exceptions and integrity
 * violations (SQLSTATE classes 22 and 23), SQLite's constraint and type mismatch. Any other failure
 * (the database away, the disk full) is retried as it is.
 */
export function isRowFault(err: unknown): boolean {
  const { code, errcode } = (err ?? {}) as { code?: unknown; errcode?: unknown };
  if (typeof code === 'string' && /^2[23][0-9A-Z]{3}$/.test(code)) return true;
  // node:sqlite gives the extended code (a NOT NULL violation is 1299): its low byte is the primary one.
  return typeof errcode === 'number' && ((errcode & 0xff) === 19 || (errcode & 0xff) === 20);
}

export class UsageLog implements CommitSource {
  private queue: Entry[] = [];
  /**
   * How many records to write one at a time, after a group the database refused for its rows: one bad
   * record is found and dropped, not retried forever with every record queued behind it.
   */
  private writeAlone = 0;
  /** The group being committed now. */
  private inFlight: Entry[] = [];
  private readonly commits: GroupCommit;
  /** Outcomes of jobs being written over records just committed (applyLateOutcomes). */
  private readonly lateOutcomes = new Set<Promise<void>>();
  private retryTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly maxWaitMs: number;
  private readonly retryMs: number;
  private readonly groupSize: number;
  private readonly maxQueued: number;

  constructor(
    private readonly db: Database,
    private readonly log: Logger,
    options: UsageLogOptions = {},
  ) {
    this.maxWaitMs = options.maxWaitMs ?? 2000;
    this.retryMs = options.retryMs ?? 500;
    this.groupSize = options.groupSize ?? 200;
    this.maxQueued = options.maxQueued ?? 100_000;
    this.onWriteFailure = options.onWriteFailure;
    this.commits = options.commits ?? new GroupCommit(db, (err) => log.error({ err }, 'a write of the group commit failed in its own code'));
    this.commits.register(this);
  }

  private readonly onWriteFailure: ((err: unknown) => void) | undefined;

  /** Outcomes of async jobs that finished before their accepting request's record arrived (or was committed). */
  private readonly earlyOutcomes = new Map<string, JobOutcome>();

  /** Records not yet committed. */
  get pending(): number {
    return this.queue.length + this.inFlight.length;
  }

  /**
   * Queues a record and resolves once it is committed, or after `maxWaitMs` if the database has
   * not taken it by then (it stays queued and is retried; a warning says so), or at once while the
   * database is known to be unreachable. Never rejects.
   */
  record(record: UsageRecord): Promise<void> {
    const entry = this.enqueue(record);
    if (!entry) return Promise.resolve();
    // A database known to be out of reach would only hold the answer for maxWaitMs: it goes out at
    // once (a 503 refusal, mostly), and the record stays queued, retried until the database is back.
    if (!this.db.reachable) return Promise.resolve();
    return this.capped(entry.committed, () =>
      this.log.warn({ request_id: record.requestId, pending: this.pending }, `usage record not committed within ${this.maxWaitMs} ms; answering anyway, it stays queued and is retried`),
    );
  }

  /** Queues a record without waiting for its commit: for a request that can no longer be answered (499). */
  add(record: UsageRecord): void {
    this.enqueue(record);
  }

  private enqueue(record: UsageRecord): Entry | undefined {
    if (this.closed) {
      this.log.error({ request_id: record.requestId }, 'usage record arrived after the usage log closed; it is not kept');
      return undefined;
    }
    const early = record.jobId ? this.earlyOutcomes.get(record.jobId) : undefined;
    if (early) {
      this.earlyOutcomes.delete(record.jobId!);
      Object.assign(record, early);
    }
    let settle!: () => void;
    const committed = new Promise<void>((resolve) => (settle = resolve));
    const span = activeSpanContext();
    const entry: Entry = { record, committed, settle, ...(span ? { span } : {}) };
    this.queue.push(entry);
    if (this.queue.length > this.maxQueued) {
      const dropped = this.queue.splice(0, this.queue.length - this.maxQueued);
      for (const d of dropped) d.settle();
      this.log.error({ dropped: dropped.length }, 'usage records dropped: the database has not accepted writes for too long');
    }
    this.kick(false);
    return entry;
  }

  private capped(committed: Promise<void>, onTimeout: () => void): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        onTimeout();
        resolve();
      }, this.maxWaitMs);
      timer.unref();
      void committed.then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Asks for a commit unless a retry is pending; `now` also cuts a pending retry's wait. */
  private kick(now: boolean): void {
    if (this.retryTimer) {
      if (!now) return;
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
    }
    if (this.queue.length > 0) this.commits.wake();
  }

  /**
   * Resolves once the record of `jobId` (the request that started the job) is committed, if it is
   * waiting for its commit; at most `maxWaitMs`. A job's outcome is written over the committed record.
   */
  async whenCommitted(jobId: string): Promise<void> {
    const entry = this.inFlight.find((e) => e.record.jobId === jobId) ?? this.queue.find((e) => e.record.jobId === jobId);
    if (entry) await this.capped(entry.committed, () => this.log.warn({ job_id: jobId }, 'the record of the request that started this job is not committed yet'));
  }

  /**
   * An async request is recorded when it is accepted (202); what its job made, cost or failed with
   * is known only later. This completes that record, wherever it is: queued (it is committed with
   * it), written (updated through `tx`, the transaction that marks the job finished), or not yet here.
   */
  async completeJob(jobId: string, outcome: JobOutcome, tx: Statements = this.db): Promise<void> {
    const queued = this.queue.find((e) => e.record.jobId === jobId);
    if (queued) {
      Object.assign(queued.record, outcome);
      return;
    }
    const changed = await tx.run(COMPLETE_JOB_SQL, completeJobParams(jobId, outcome));
    // Not here yet, or in a commit now: applied when it arrives, or once that commit is done.
    if (changed === 0 && this.earlyOutcomes.size < 10_000) this.earlyOutcomes.set(jobId, outcome);
  }

  /**
   * A job carried on from another process (its replica died, or this one restarted) ends: the
   * record of the request that started it is completed if that process wrote one; a synchronous
   * request in flight when its process died left none, and `record` (built from the job) stands
   * for it, so what the job made and cost is counted. Through `tx`, the transaction that marks the job finished.
   */
  async completeJobFromElsewhere(outcome: JobOutcome, record: UsageRecord & { jobId: string }, tx: Statements): Promise<void> {
    const params = completeJobParams(record.jobId, outcome);
    if ((await tx.run(COMPLETE_JOB_SQL, params)) > 0) return;
    // Without status and error code: the answer the stop gave is kept.
    if ((await tx.run(COMPLETE_STOP_ANSWERED_SQL, params.slice(2))) > 0) return;
    if (await tx.get('SELECT id FROM usage_records WHERE job_id = $1', [record.jobId])) return;
    await tx.run(insertSql(1), rowOf(record));
  }

  /** Writes everything queued so far; resolves once it is in the database (or the write failed and was logged). */
  async flush(): Promise<void> {
    // A commit in flight now may have taken its group before the latest records arrived: the group
    // commit goes on until the queue is empty, or stops at a failure.
    this.kick(true);
    await this.commits.flush();
    // And the outcomes of jobs written over the records just committed.
    await Promise.all(this.lateOutcomes);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.flush();
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (this.pending > 0) {
      this.log.error({ lost: this.pending }, 'usage records could not be written before shutdown');
      for (const e of this.queue.splice(0)) e.settle();
    }
  }

  /** The records waiting, as the next group commit's INSERTs: at most `groupSize`, the rest in the one after. */
  take(): CommitShare | undefined {
    if (this.retryTimer || this.queue.length === 0) return undefined;
    const taken = this.queue.splice(0, this.writeAlone > 0 ? 1 : this.groupSize);
    if (this.writeAlone > 0) this.writeAlone--;
    if (this.queue.length > 0) this.commits.wake();
    // A record that cannot be written (its time is not a date, say) is dropped alone, not retried forever.
    const group: Entry[] = [];
    const rows: SqlValue[][] = [];
    for (const e of taken) {
      try {
        rows.push(rowOf(e.record));
        group.push(e);
      } catch (err) {
        this.log.error({ err, request_id: e.record.requestId }, 'a usage record could not be written; it is dropped');
        e.settle();
      }
    }
    if (group.length === 0) return undefined;
    this.inFlight = group;
    const statements: BatchStatement[] = [];
    for (let i = 0; i < rows.length; i += INSERT_ROWS) {
      const some = rows.slice(i, i + INSERT_ROWS);
      statements.push({ sql: insertSql(some.length), params: some.flat() });
    }
    for (const { record } of group) {
      if (!record.replacesStandIn || !record.jobId) continue;
      statements.push({ sql: TAKE_STAND_IN_OUTCOME_SQL, params: [record.requestId, record.jobId] }, { sql: DELETE_STAND_IN_SQL, params: [record.jobId] });
    }
    return {
      statements,
      spans: group.flatMap((e) => (e.span ? [e.span] : [])),
      count: { attribute: 'gateway.usage.records', value: group.length },
      committed: () => {
        this.inFlight = [];
        for (const e of group) e.settle();
        const late = this.applyLateOutcomes(group);
        this.lateOutcomes.add(late);
        void late.finally(() => this.lateOutcomes.delete(late));
      },
      failed: (err) => {
        this.inFlight = [];
        if (isRowFault(err) && group.length === 1) {
          // Written alone and refused for what it holds: kept in the log line, so nothing else waits on it.
          const { prompt: _prompt, ...kept } = group[0]!.record;
          this.log.error({ err, record: kept }, 'a usage record was refused by the database for its values; it is dropped (its fields are in this line)');
          group[0]!.settle();
          this.kick(true);
          return;
        }
        if (isRowFault(err)) {
          this.writeAlone = group.length;
          this.queue.unshift(...group);
          this.log.error({ err, pending: this.queue.length }, 'writing usage records failed for their values; writing them one at a time to find the one refused');
          this.kick(true);
          return;
        }
        this.queue.unshift(...group);
        // Closed: no retry, and whole groups again, so that the queue is not taken one record at a time without end.
        if (this.closed) this.writeAlone = 0;
        this.log.error({ err, pending: this.queue.length }, 'writing usage records failed; retrying');
        try {
          this.onWriteFailure?.(err);
        } catch {
          // A listener's fault does not stop the retry.
        }
        if (this.closed) return;
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          this.kick(true);
        }, this.retryMs);
        this.retryTimer.unref();
      },
    };
  }

  /** Outcomes of jobs that finished while their record was in the commit just made. */
  private async applyLateOutcomes(group: Entry[]): Promise<void> {
    if (this.earlyOutcomes.size === 0) return;
    for (const { record } of group) {
      const outcome = record.jobId ? this.earlyOutcomes.get(record.jobId) : undefined;
      if (!outcome) continue;
      this.earlyOutcomes.delete(record.jobId!);
      await this.db.run(COMPLETE_JOB_SQL, completeJobParams(record.jobId!, outcome)).catch((err) => this.log.error({ err, job_id: record.jobId }, 'completing a job’s usage record failed'));
    }
  }
}
