import { migration, type Migration } from '../storage/database.js';

/**
 * One row per /v1 request. `time_ms` is when the request arrived (Unix ms); `day` is its UTC date,
 * kept as text so both dialects group by it the same way. Reports filter by time (admin) or by
 * team and time (team keys); paging walks `id`; a finished async job finds the record of the request that started it by job id.
 */
export const USAGE_MIGRATIONS: Migration[] = [
  migration('usage-001-records', (t) => [
    `CREATE TABLE usage_records (
      id ${t.serialKey},
      time_ms ${t.bigint} NOT NULL,
      day TEXT NOT NULL,
      request_id TEXT NOT NULL,
      key_id TEXT,
      team TEXT,
      method TEXT NOT NULL,
      route TEXT,
      model TEXT,
      operation TEXT,
      images_requested INTEGER,
      images_returned INTEGER NOT NULL,
      status INTEGER NOT NULL,
      error_code TEXT,
      upstream_status INTEGER,
      upstream_ms INTEGER,
      total_ms INTEGER NOT NULL,
      bytes_stored ${t.bigint} NOT NULL,
      cost_usd ${t.double},
      upstream_tokens TEXT,
      prompt TEXT,
      job_id TEXT
    )`,
    'CREATE INDEX usage_records_time ON usage_records (time_ms)',
    'CREATE INDEX usage_records_team_time ON usage_records (team, time_ms)',
    'CREATE INDEX usage_records_job ON usage_records (job_id)',
  ]),
  // The browser token a request came with (POST /v1/tokens); key_id and team are its parent key's.
  migration('usage-002-token-id', () => [
    'ALTER TABLE usage_records ADD COLUMN token_id TEXT',
    // A token's counts start from its records after a restart without Redis (limits-plugin.ts).
    'CREATE INDEX usage_records_token ON usage_records (token_id)',
  ]),
  // fallback_models: the models a request tried, in order, comma-separated (catalogue ids); null without fallbacks.
  migration('usage-003-models-tried', () => ['ALTER TABLE usage_records ADD COLUMN models_tried TEXT']),
  // SQLite: most requests have neither a job nor a token, so their rows stay out of these two
  // indexes and a usage commit writes two index pages fewer to the log (each page a write of its
  // own; bench/README.md). Both lookups (`job_id = $1`, `token_id = $1`) imply IS NOT NULL, so
  // they still use them. Not on PostgreSQL: rebuilding an index there inside the migration's
  // transaction would lock usage_records (every replica's writes) for as long as the build takes.
  {
    id: 'usage-004-partial-indexes',
    sqlite: [
      'DROP INDEX usage_records_job',
      'CREATE INDEX usage_records_job ON usage_records (job_id) WHERE job_id IS NOT NULL',
      'DROP INDEX usage_records_token',
      'CREATE INDEX usage_records_token ON usage_records (token_id) WHERE token_id IS NOT NULL',
    ],
    postgres: [],
  },
];
