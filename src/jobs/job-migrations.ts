import { migration, type Migration } from '../storage/database.js';

export const JOB_MIGRATIONS: Migration[] = [
  migration('jobs-001', (t) => [
    `CREATE TABLE jobs (
      id TEXT PRIMARY KEY,
      key_id TEXT NOT NULL,
      team TEXT NOT NULL,
      status TEXT NOT NULL,
      operation TEXT NOT NULL,
      model TEXT NOT NULL,
      request_json TEXT,
      upstream_task_id TEXT,
      upstream_key_tag TEXT,
      result_json TEXT,
      error_json TEXT,
      callback_url TEXT,
      callback_status TEXT,
      public_base_url TEXT NOT NULL,
      is_async INTEGER NOT NULL DEFAULT 0,
      lease_owner TEXT,
      lease_until ${t.bigint} NOT NULL DEFAULT 0,
      created_at ${t.bigint} NOT NULL,
      updated_at ${t.bigint} NOT NULL,
      expires_at ${t.bigint} NOT NULL
    )`,
    'CREATE INDEX jobs_unfinished ON jobs (status, lease_until)',
    'CREATE INDEX jobs_expiry ON jobs (expires_at)',
    `CREATE TABLE idempotency_keys (
      scope TEXT PRIMARY KEY,
      request_hash TEXT NOT NULL,
      job_id TEXT NOT NULL,
      created_at ${t.bigint} NOT NULL,
      expires_at ${t.bigint} NOT NULL
    )`,
    'CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at)',
  ]),
  // The browser token that started the job (POST /v1/tokens): such a token sees only its own jobs.
  migration('jobs-002-token', () => ['ALTER TABLE jobs ADD COLUMN token_id TEXT']),
  // The model's declaration (its catalogue data entry) when the job was created: a resumed job runs
  // with it, whatever CATALOGUE_FILE says by then. Older rows have none and use the catalogue.
  migration('jobs-003-model-declaration', () => ['ALTER TABLE jobs ADD COLUMN model_json TEXT']),
  // A job's fallback chain (JSON, see JobChain): the model asked for, those tried, and the models
  // still to try with their declarations, so a job resumed after a restart goes on along it.
  migration('jobs-004-fallback-chain', () => ['ALTER TABLE jobs ADD COLUMN chain_json TEXT']),
  // The route the starting request came in on (/v1/generate, /v1/images/generations, ...), for the
  // usage record that stands for it if its replica dies before it answers. Older rows have none.
  migration('jobs-005-route', () => ['ALTER TABLE jobs ADD COLUMN route TEXT']),
  // What the starting request reserved of its key's limits (StoredReservation as JSON): the replica
  // that finishes the job, whichever it is, settles it. Older rows have none (left as reserved).
  migration('jobs-006-reservation', () => ['ALTER TABLE jobs ADD COLUMN reservation_json TEXT']),
];
