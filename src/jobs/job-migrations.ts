import type { Migration } from '../storage/database.js';

export const JOB_MIGRATIONS: Migration[] = [
  {
    id: 'jobs-001',
    sqlite: [
      `CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        team TEXT NOT NULL,
        status TEXT NOT NULL,
        operation TEXT NOT NULL,
        model TEXT NOT NULL,
        request_json TEXT,
        upstream_task_id TEXT,
        result_json TEXT,
        error_json TEXT,
        callback_url TEXT,
        callback_status TEXT,
        public_base_url TEXT NOT NULL,
        async_request_id TEXT,
        lease_owner TEXT,
        lease_until INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
      )`,
      'CREATE INDEX jobs_unfinished ON jobs (status, lease_until)',
      'CREATE INDEX jobs_expiry ON jobs (expires_at)',
      `CREATE TABLE idempotency_keys (
        scope TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        job_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
      )`,
      'CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at)',
    ],
    postgres: [
      `CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        team TEXT NOT NULL,
        status TEXT NOT NULL,
        operation TEXT NOT NULL,
        model TEXT NOT NULL,
        request_json TEXT,
        upstream_task_id TEXT,
        result_json TEXT,
        error_json TEXT,
        callback_url TEXT,
        callback_status TEXT,
        public_base_url TEXT NOT NULL,
        async_request_id TEXT,
        lease_owner TEXT,
        lease_until BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
      )`,
      'CREATE INDEX jobs_unfinished ON jobs (status, lease_until)',
      'CREATE INDEX jobs_expiry ON jobs (expires_at)',
      `CREATE TABLE idempotency_keys (
        scope TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        job_id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
      )`,
      'CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at)',
    ],
  },
];
