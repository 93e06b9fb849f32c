/**
 * UTC days for the gallery's and usage's date ranges, and the usage chart's series: no DOM here
 * (unit-tested in Node). A range the user picks is inclusive of both days; the API's `to` is
 * exclusive, so it gets the day after.
 */

export const DAY_MS = 86_400_000;

/** YYYY-MM-DD of a UTC instant (what a date input holds). */
export function isoDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** The day after a YYYY-MM-DD: a "to" date input is inclusive, the API's `to` exclusive. */
export function dayAfter(day: string): string {
  return isoDay(Date.parse(`${day}T00:00:00Z`) + DAY_MS);
}

/** This UTC month so far: its first day to today, both included. */
export function monthToDate(nowMs: number): { from: string; to: string } {
  const today = isoDay(nowMs);
  return { from: `${today.slice(0, 8)}01`, to: today };
}

/** One day's totals as GET /v1/usage?group_by=day answers them. */
export interface DayTotals {
  day?: string;
  requests: number;
  images: number;
  errors: number;
  estimated_cost_usd: number;
}

/**
 * uPlot's aligned data for [from, to) (YYYY-MM-DD, `to` exclusive): the days (Unix seconds at UTC
 * midnight), then requests, images, errors and cost, 0 on a day with no record.
 */
export function dailySeries(rows: DayTotals[], from: string, to: string): number[][] {
  const byDay = new Map(rows.map((r) => [r.day, r]));
  const xs: number[] = [];
  const requests: number[] = [];
  const images: number[] = [];
  const errors: number[] = [];
  const cost: number[] = [];
  const end = Date.parse(`${to}T00:00:00Z`);
  for (let t = Date.parse(`${from}T00:00:00Z`); t < end; t += DAY_MS) {
    const row = byDay.get(isoDay(t));
    xs.push(t / 1000);
    requests.push(row?.requests ?? 0);
    images.push(row?.images ?? 0);
    errors.push(row?.errors ?? 0);
    cost.push(row?.estimated_cost_usd ?? 0);
  }
  return [xs, requests, images, errors, cost];
}
