import { clipName, invalidField } from '../errors.js';
import type { Database, SqlValue } from '../storage/database.js';

export const USAGE_DIMENSIONS = ['team', 'model', 'key', 'day'] as const;
export type UsageDimension = (typeof USAGE_DIMENSIONS)[number];

const DIMENSION_COLUMN: Record<UsageDimension, string> = { team: 'team', model: 'model', key: 'key_id', day: 'day' };

/** The half-open window `[from, to)` in Unix ms. */
export interface UsageWindow {
  fromMs: number;
  toMs: number;
}

/** Which records a caller may see: a team key its own team's, the admin key everyone's (`team` undefined). */
export interface UsageScope {
  team?: string;
}

export type Query = Record<string, string | string[] | undefined>;

/** Refuses query parameters the route does not take, naming the ones it does. */
export function checkQueryNames(query: Query, allowed: readonly string[]): void {
  for (const name of Object.keys(query)) {
    if (!allowed.includes(name)) throw invalidField(clipName(name), `is not a parameter of this route`, allowed);
  }
}

export function single(query: Query, name: string): string | undefined {
  const value = query[name];
  if (Array.isArray(value)) throw invalidField(name, 'is given more than once');
  return value === undefined || value === '' ? undefined : value;
}

const ISO_INSTANT = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2}))?$/i;
const ISO_ALLOWED = 'an ISO 8601 date (2026-11-01, read as UTC midnight) or date-time with a zone (2026-11-01T09:30:00Z, 2026-11-01T10:30:00+01:00)';

export function parseInstant(name: string, value: string): number {
  // An unencoded `+` in a query string arrives as a space.
  const text = value.replace(/ (\d{2}:\d{2})$/, '+$1');
  const m = ISO_INSTANT.exec(text);
  if (m) {
    const [year, month, day, hour, minute, second] = m.slice(1, 7).map((v) => Number(v ?? 0)) as [number, number, number, number, number, number];
    // Date.parse rolls 2026-02-30 over into March; a date that does not exist is refused instead.
    const date = new Date(Date.UTC(year, month - 1, day));
    if (date.getUTCMonth() === month - 1 && date.getUTCDate() === day && hour < 24 && minute < 60 && second < 60) return Date.parse(text);
  }
  throw invalidField(name, `"${clipName(value)}" is not ${ISO_ALLOWED}`, ISO_ALLOWED);
}

const startOfUtcMonth = (ms: number, monthsAhead = 0) => {
  const d = new Date(ms);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + monthsAhead, 1);
};

/**
 * `from` and `to`; by default the current UTC calendar month. With only `to`, `from` is the start
 * of the month `to` falls in (the month before, when `to` is a month's first instant).
 */
export function parseWindow(query: Query, now = Date.now()): UsageWindow {
  const fromText = single(query, 'from');
  const toText = single(query, 'to');
  const toMs = toText !== undefined ? parseInstant('to', toText) : startOfUtcMonth(now, 1);
  const fromMs = fromText !== undefined ? parseInstant('from', fromText) : startOfUtcMonth(toMs - 1);
  if (toMs <= fromMs) {
    throw invalidField('to', `must be after from (${new Date(fromMs).toISOString()}); the window is [from, to)`);
  }
  return { fromMs, toMs };
}

export function parseGroupBy(query: Query): UsageDimension[] {
  const raw = query.group_by;
  const names = (Array.isArray(raw) ? raw.join(',') : (raw ?? '')).split(',').map((n) => n.trim()).filter(Boolean);
  const dimensions: UsageDimension[] = [];
  for (const name of names) {
    if (!(USAGE_DIMENSIONS as readonly string[]).includes(name)) {
      throw invalidField('group_by', `"${name}" is not a grouping; use a comma-separated list of ${USAGE_DIMENSIONS.join(', ')}`, USAGE_DIMENSIONS);
    }
    if (dimensions.includes(name as UsageDimension)) throw invalidField('group_by', `"${name}" is given twice`, USAGE_DIMENSIONS);
    dimensions.push(name as UsageDimension);
  }
  return dimensions;
}

export type ReportFormat = 'json' | 'csv';

export function parseFormat(query: Query): ReportFormat {
  const format = single(query, 'format') ?? 'json';
  if (format !== 'json' && format !== 'csv') throw invalidField('format', `"${format}" is not a format of this route`, ['json', 'csv']);
  return format;
}

export const RECORDS_PAGE_DEFAULT = 100;
export const RECORDS_PAGE_MAX = 1000;

export function parseLimit(query: Query): number {
  const text = single(query, 'limit');
  if (text === undefined) return RECORDS_PAGE_DEFAULT;
  const limit = Number(text);
  if (!/^\d+$/.test(text) || limit < 1 || limit > RECORDS_PAGE_MAX) {
    throw invalidField('limit', `must be an integer from 1 to ${RECORDS_PAGE_MAX}, got "${text}"`, { min: 1, max: RECORDS_PAGE_MAX });
  }
  return limit;
}

// A cursor is the id of the last record of the page before, opaque to callers.
const encodeCursor = (id: number) => Buffer.from(`r${id}`, 'utf8').toString('base64url');

export function parseCursor(query: Query): number | undefined {
  const text = single(query, 'cursor');
  if (text === undefined) return undefined;
  const m = /^r(\d{1,15})$/.exec(Buffer.from(text, 'base64url').toString('utf8'));
  if (!m) throw invalidField('cursor', 'is not a cursor this gateway issued; pass next_cursor from the page before');
  return Number(m[1]);
}

function scopeFilter(window: UsageWindow, scope: UsageScope): { where: string; params: SqlValue[] } {
  const params: SqlValue[] = [window.fromMs, window.toMs];
  let where = 'time_ms >= $1 AND time_ms < $2';
  if (scope.team !== undefined) {
    params.push(scope.team);
    where += ` AND team = $${params.length}`;
  }
  return { where, params };
}

export interface UsageRow {
  team?: string | null;
  model?: string | null;
  key?: string | null;
  day?: string;
  requests: number;
  images: number;
  errors: number;
  estimated_cost_usd: number;
  /** Images whose price is unknown: they count as 0 in estimated_cost_usd. */
  unpriced_images: number;
}

const roundUsd = (usd: number) => Math.round(usd * 1e6) / 1e6;

/** Requests, images, errors (any non-2xx answer) and known cost in the window, grouped by `dimensions`. */
export async function usageReport(db: Database, window: UsageWindow, scope: UsageScope, dimensions: UsageDimension[]): Promise<UsageRow[]> {
  const { where, params } = scopeFilter(window, scope);
  const columns = dimensions.map((d) => DIMENSION_COLUMN[d]);
  const select = dimensions.map((d) => `${DIMENSION_COLUMN[d]} AS dim_${d}, `).join('');
  // `col IS NULL` first keeps NULL groups last in both dialects.
  const grouping = columns.length > 0
    ? ` GROUP BY ${columns.join(', ')} ORDER BY ${columns.map((c) => `(${c} IS NULL), ${c}`).join(', ')}`
    : '';
  const rows = await db.all<Record<string, unknown>>(
    `SELECT ${select}COUNT(*) AS requests,
       COALESCE(SUM(images_returned), 0) AS images,
       COALESCE(SUM(CASE WHEN status >= 200 AND status < 300 THEN 0 ELSE 1 END), 0) AS errors,
       COALESCE(SUM(COALESCE(cost_usd, 0)), 0) AS cost,
       COALESCE(SUM(CASE WHEN cost_usd IS NULL THEN images_returned ELSE 0 END), 0) AS unpriced_images
     FROM usage_records WHERE ${where}${grouping}`,
    params,
  );
  return rows.map((row) => {
    const out: Record<string, unknown> = {};
    for (const d of dimensions) out[d] = row[`dim_${d}`] ?? null;
    return {
      ...out,
      requests: Number(row.requests),
      images: Number(row.images),
      errors: Number(row.errors),
      estimated_cost_usd: roundUsd(Number(row.cost)),
      unpriced_images: Number(row.unpriced_images),
    } as UsageRow;
  });
}

/** One record as GET /v1/usage/records answers it. */
export interface UsageRecordView {
  id: number;
  time: string;
  request_id: string;
  key_id: string | null;
  team: string | null;
  method: string;
  route: string | null;
  model: string | null;
  operation: string | null;
  status: number;
  error_code: string | null;
  images_requested: number | null;
  images_returned: number;
  bytes_stored: number;
  estimated_cost_usd: number | null;
  upstream_status: number | null;
  upstream_ms: number | null;
  total_ms: number;
  upstream_tokens: Record<string, unknown> | null;
  prompt: string | null;
  /** The browser token the request came with; key_id and team are its parent key's. */
  token_id: string | null;
  /** With fallback_models: the models tried, in order; `model` is the one that served. */
  models_tried: string[] | null;
}

const numberOrNull = (v: unknown) => (v === null || v === undefined ? null : Number(v));

function viewOf(row: Record<string, unknown>): UsageRecordView {
  return {
    id: Number(row.id),
    time: new Date(Number(row.time_ms)).toISOString(),
    request_id: String(row.request_id),
    key_id: (row.key_id as string | null) ?? null,
    team: (row.team as string | null) ?? null,
    method: String(row.method),
    route: (row.route as string | null) ?? null,
    model: (row.model as string | null) ?? null,
    operation: (row.operation as string | null) ?? null,
    status: Number(row.status),
    error_code: (row.error_code as string | null) ?? null,
    images_requested: numberOrNull(row.images_requested),
    images_returned: Number(row.images_returned),
    bytes_stored: Number(row.bytes_stored),
    estimated_cost_usd: numberOrNull(row.cost_usd),
    upstream_status: numberOrNull(row.upstream_status),
    upstream_ms: numberOrNull(row.upstream_ms),
    total_ms: Number(row.total_ms),
    upstream_tokens: typeof row.upstream_tokens === 'string' ? (JSON.parse(row.upstream_tokens) as Record<string, unknown>) : null,
    prompt: (row.prompt as string | null) ?? null,
    token_id: (row.token_id as string | null) ?? null,
    models_tried: typeof row.models_tried === 'string' && row.models_tried !== '' ? row.models_tried.split(',') : null,
  };
}

export interface UsageRecordPage {
  data: UsageRecordView[];
  next_cursor: string | null;
}

/** Raw records in the window, oldest first, `limit` at a time. */
export async function usageRecords(db: Database, window: UsageWindow, scope: UsageScope, page: { limit: number; after?: number | undefined }): Promise<UsageRecordPage> {
  const { where, params } = scopeFilter(window, scope);
  let sql = `SELECT * FROM usage_records WHERE ${where}`;
  if (page.after !== undefined) {
    params.push(page.after);
    sql += ` AND id > $${params.length}`;
  }
  params.push(page.limit + 1);
  sql += ` ORDER BY id LIMIT $${params.length}`;
  const rows = (await db.all<Record<string, unknown>>(sql, params)).map(viewOf);
  const more = rows.length > page.limit;
  const data = more ? rows.slice(0, page.limit) : rows;
  return { data, next_cursor: more ? encodeCursor(data[data.length - 1]!.id) : null };
}

/** What a spreadsheet reads as the start of a formula (=, +, -, @) or may strip before one (tab, CR). */
const FORMULA_START = /^[=+\-@\t\r]/;

function csvField(value: unknown): string {
  if (value === null || value === undefined) return '';
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value);
  let text = typeof value === 'object' ? JSON.stringify(value) : String(value);
  // A text cell never opens as a formula in the spreadsheet an admin loads the export into.
  if (FORMULA_START.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/**
 * RFC 4180 CSV with a header row; null is an empty field, objects are JSON. A text cell starting
 * with =, +, -, @, tab or CR is prefixed with ' (CSV injection); numbers are written as they are.
 */
export function toCsv(columns: readonly string[], rows: ReadonlyArray<Record<string, unknown>>): string {
  const lines = [columns.join(',')];
  for (const row of rows) lines.push(columns.map((c) => csvField(row[c])).join(','));
  return `${lines.join('\r\n')}\r\n`;
}

export const RECORD_COLUMNS: readonly (keyof UsageRecordView)[] = [
  'id', 'time', 'request_id', 'key_id', 'team', 'method', 'route', 'model', 'operation', 'status', 'error_code',
  'images_requested', 'images_returned', 'bytes_stored', 'estimated_cost_usd', 'upstream_status', 'upstream_ms',
  'total_ms', 'upstream_tokens', 'prompt', 'token_id', 'models_tried',
];

export const REPORT_METRIC_COLUMNS = ['requests', 'images', 'errors', 'estimated_cost_usd', 'unpriced_images'] as const;
