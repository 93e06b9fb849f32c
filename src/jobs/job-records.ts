import type { Database, SqlValue, Statements } from '../storage/database.js';
import { JOB_MIGRATIONS } from './job-migrations.js';

export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed';

export interface JobRow {
  id: string;
  key_id: string;
  team: string;
  status: JobStatus;
  operation: string;
  model: string;
  request_json: string | null;
  upstream_task_id: string | null;
  /** Which upstream key submitted the task (a short hash), so a resumed job polls with it. */
  upstream_key_tag: string | null;
  result_json: string | null;
  error_json: string | null;
  callback_url: string | null;
  callback_status: string | null;
  public_base_url: string;
  /** 1 for an async request (answered 202): its usage record is completed when the job ends. */
  is_async: number;
  lease_owner: string | null;
  lease_until: number | string;
  created_at: number | string;
  updated_at: number | string;
  expires_at: number | string;
  /** The browser token that started it, if one did. */
  token_id: string | null;
  /** The model's catalogue data entry when the job was created (JSON); null on rows older than it. */
  model_json: string | null;
  /** With fallback models: the chain (JobChain as JSON); null without one and on older rows. */
  chain_json: string | null;
  /** The route pattern the starting request came in on (`/v1/images/generations`); null on older rows. */
  route: string | null;
  /** What the starting request reserved of its key's limits (StoredReservation as JSON); null without limits and on older rows. */
  reservation_json: string | null;
}

/** A job as first written: queued, leased to the replica that runs it. */
export interface NewJob {
  id: string;
  keyId: string;
  team: string;
  operation: string;
  model: string;
  requestJson: string;
  callbackUrl: string | null;
  publicBaseUrl: string;
  leaseOwner: string;
  leaseUntil: number;
  createdAt: number;
  expiresAt: number;
  isAsync: boolean;
  tokenId: string | null;
  /** The model's catalogue data entry (JSON), to resume with; null when it has none. */
  modelJson?: string | null;
  /** The fallback chain (JobChain as JSON), when the request has one. */
  chainJson?: string | null;
  /** The route pattern the starting request came in on. */
  route?: string | null;
  /** What the starting request reserved (StoredReservation as JSON). */
  reservationJson?: string | null;
}

/** Where a page of jobs starts: after this one, newest first. */
export interface JobCursor {
  createdAt: number;
  id: string;
}

export interface JobQuery {
  limit: number;
  team?: string | undefined;
  keyId?: string | undefined;
  status?: JobStatus | undefined;
  model?: string | undefined;
  /** Unix milliseconds, inclusive. */
  from?: number | undefined;
  /** Unix milliseconds, exclusive. */
  to?: number | undefined;
  /** Unix milliseconds: expired jobs are not listed. */
  now: number;
  after?: JobCursor | undefined;
}

/**
 * The `jobs` and `idempotency_keys` tables, in SQLite or PostgreSQL: every statement the job
 * runner makes, so no SQL lives with the runner or the routes.
 */
export class JobRecords {
  constructor(private readonly db: Database) {}

  migrate(): Promise<void> {
    return this.db.migrate(JOB_MIGRATIONS);
  }

  async insert(job: NewJob): Promise<void> {
    await this.db.run(
      `INSERT INTO jobs (id, key_id, team, status, operation, model, request_json, callback_url, public_base_url,
         lease_owner, lease_until, created_at, updated_at, expires_at, is_async, token_id, model_json, chain_json, route, reservation_json)
       VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14, $15, $16, $17, $18)`,
      [
        job.id,
        job.keyId,
        job.team,
        job.operation,
        job.model,
        job.requestJson,
        job.callbackUrl,
        job.publicBaseUrl,
        job.leaseOwner,
        job.leaseUntil,
        job.createdAt,
        job.expiresAt,
        job.isAsync ? 1 : 0,
        job.tokenId,
        job.modelJson ?? null,
        job.chainJson ?? null,
        job.route ?? null,
        job.reservationJson ?? null,
      ],
    );
  }

  /** Keeps what the starting request reserved, once it is known (reserved as the first claimant of an Idempotency-Key). */
  async setReservation(id: string, reservationJson: string | null): Promise<void> {
    await this.db.run('UPDATE jobs SET reservation_json = $2 WHERE id = $1', [id, reservationJson]);
  }

  async remove(id: string): Promise<void> {
    await this.db.run('DELETE FROM jobs WHERE id = $1', [id]);
  }

  /** A job by id, expired or not. */
  find(id: string): Promise<JobRow | undefined> {
    return this.db.get<JobRow>('SELECT * FROM jobs WHERE id = $1', [id]);
  }

  async counts(): Promise<Record<JobStatus, number>> {
    const rows = await this.db.all<{ status: JobStatus; n: number | string }>('SELECT status, COUNT(*) AS n FROM jobs GROUP BY status');
    const counts: Record<JobStatus, number> = { queued: 0, running: 0, succeeded: 0, failed: 0 };
    for (const r of rows) counts[r.status] = Number(r.n);
    return counts;
  }

  /** Jobs, newest first, filtered; `limit` rows at most (pass one more than a page to learn whether another follows). */
  list(query: JobQuery): Promise<JobRow[]> {
    const where = ['expires_at >= $1'];
    const params: SqlValue[] = [query.now];
    const param = (value: SqlValue) => {
      params.push(value);
      return `$${params.length}`;
    };
    if (query.team !== undefined) where.push(`team = ${param(query.team)}`);
    if (query.keyId !== undefined) where.push(`key_id = ${param(query.keyId)}`);
    if (query.status !== undefined) where.push(`status = ${param(query.status)}`);
    if (query.model !== undefined) where.push(`model = ${param(query.model)}`);
    if (query.from !== undefined) where.push(`created_at >= ${param(query.from)}`);
    if (query.to !== undefined) where.push(`created_at < ${param(query.to)}`);
    if (query.after) where.push(`(created_at, id) < (${param(query.after.createdAt)}, ${param(query.after.id)})`);
    return this.db.all<JobRow>(`SELECT * FROM jobs WHERE ${where.join(' AND ')} ORDER BY created_at DESC, id DESC LIMIT ${param(query.limit)}`, params);
  }

  /** Gives up this replica's leases on its unfinished jobs (a graceful stop): another takes them over at once. */
  async releaseLeases(owner: string): Promise<void> {
    await this.db.run('UPDATE jobs SET lease_until = 0 WHERE lease_owner = $1 AND status IN ($2, $3)', [owner, 'queued', 'running']);
  }

  /** Marks a job running, only while `owner`'s lease holds; 1 if it did. */
  markRunning(id: string, owner: string, now: number, leaseUntil: number): Promise<number> {
    return this.db.run("UPDATE jobs SET status = 'running', lease_until = $1, updated_at = $2 WHERE id = $3 AND lease_owner = $4 AND lease_until > $2", [
      leaseUntil,
      now,
      id,
      owner,
    ]);
  }

  /**
   * Moves a job on to its next fallback model, fenced by `owner`'s lease: queued again with no
   * upstream task (the model that failed was not billed), so a replica that takes it over after a
   * restart sends it to the new model. 1 if it did.
   */
  advanceChain(id: string, owner: string, next: { model: string; modelJson: string | null; chainJson: string }, now: number): Promise<number> {
    return this.db.run(
      `UPDATE jobs SET model = $1, model_json = $2, chain_json = $3, status = 'queued', upstream_task_id = NULL, upstream_key_tag = NULL, updated_at = $4
       WHERE id = $5 AND lease_owner = $6 AND status IN ('queued', 'running')`,
      [next.model, next.modelJson, next.chainJson, now, id, owner],
    );
  }

  async setUpstreamTask(id: string, taskId: string, keyTag: string | null, now: number): Promise<void> {
    await this.db.run('UPDATE jobs SET upstream_task_id = $1, upstream_key_tag = $2, updated_at = $3 WHERE id = $4', [taskId, keyTag, now, id]);
  }

  /** Ends a job, fenced by `owner`'s lease, inside the caller's transaction; 1 if it did. */
  finish(
    tx: Statements,
    id: string,
    owner: string,
    outcome: { status: 'succeeded' | 'failed'; resultJson: string | null; errorJson: string | null; now: number },
  ): Promise<number> {
    return tx.run(
      `UPDATE jobs SET status = $1, result_json = $2, error_json = $3, request_json = NULL, lease_owner = NULL, lease_until = 0, updated_at = $4
       WHERE id = $5 AND lease_owner = $6 AND status IN ('queued', 'running')`,
      [outcome.status, outcome.resultJson, outcome.errorJson, outcome.now, id, owner],
    );
  }

  renewLease(id: string, owner: string, until: number): Promise<number> {
    return this.db.run('UPDATE jobs SET lease_until = $1 WHERE id = $2 AND lease_owner = $3', [until, id, owner]);
  }

  /** Unfinished jobs whose lease has run out, oldest first. */
  abandoned(now: number, limit: number): Promise<JobRow[]> {
    return this.db.all<JobRow>("SELECT * FROM jobs WHERE status IN ('queued', 'running') AND lease_until < $1 ORDER BY created_at LIMIT $2", [now, limit]);
  }

  /** Takes over an abandoned job as it was read (its status and task unchanged since); 1 if it did. */
  claim(job: JobRow, owner: string, now: number, leaseUntil: number): Promise<number> {
    return this.db.run(
      "UPDATE jobs SET lease_owner = $1, lease_until = $2, updated_at = $3 WHERE id = $4 AND status = $5 AND COALESCE(upstream_task_id, '') = $6 AND lease_until < $3",
      [owner, leaseUntil, now, job.id, job.status, job.upstream_task_id ?? ''],
    );
  }

  async setCallbackStatus(id: string, status: string): Promise<void> {
    await this.db.run('UPDATE jobs SET callback_status = $1 WHERE id = $2', [status, id]);
  }

  /** Finished jobs and Idempotency-Keys past their expiry go. */
  async forgetExpired(now: number): Promise<void> {
    await this.db.run("DELETE FROM jobs WHERE expires_at < $1 AND status IN ('succeeded', 'failed')", [now]);
    await this.db.run('DELETE FROM idempotency_keys WHERE expires_at < $1', [now]);
  }

  async idempotencyKeyLive(scope: string, now: number): Promise<boolean> {
    return (await this.db.get('SELECT job_id FROM idempotency_keys WHERE scope = $1 AND expires_at >= $2', [scope, now])) !== undefined;
  }

  /** Claims an Idempotency-Key scope for a job (an expired claim of it is dropped first); true if this claim won. */
  async claimIdempotencyKey(scope: string, fingerprint: string, jobId: string, now: number, expiresAt: number): Promise<boolean> {
    await this.db.run('DELETE FROM idempotency_keys WHERE scope = $1 AND expires_at < $2', [scope, now]);
    const inserted = await this.db.run(
      'INSERT INTO idempotency_keys (scope, request_hash, job_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope) DO NOTHING',
      [scope, fingerprint, jobId, now, expiresAt],
    );
    return inserted === 1;
  }

  idempotencyClaim(scope: string): Promise<{ request_hash: string; job_id: string } | undefined> {
    return this.db.get<{ request_hash: string; job_id: string }>('SELECT request_hash, job_id FROM idempotency_keys WHERE scope = $1', [scope]);
  }

  /** Frees the Idempotency-Keys of a job that cost nothing, so a retry tries again. */
  async releaseIdempotencyKeysOf(jobId: string): Promise<void> {
    await this.db.run('DELETE FROM idempotency_keys WHERE job_id = $1', [jobId]);
  }
}
