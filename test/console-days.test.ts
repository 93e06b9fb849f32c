/**
 * The usage page's and gallery's UTC days: a picked range is inclusive, the API's `to` exclusive;
 * the chart has one point per day of the range, 0 on a day with no record.
 */
import { describe, expect, it } from 'vitest';
import { dailySeries, dayAfter, monthToDate } from '../console/src/days.js';

describe('console days', () => {
  it('gives the day after, across month, year and leap-day ends', () => {
    expect(dayAfter('2026-11-30')).toBe('2026-12-01');
    expect(dayAfter('2026-12-31')).toBe('2027-01-01');
    expect(dayAfter('2028-02-28')).toBe('2028-02-29');
    expect(dayAfter('2027-02-28')).toBe('2027-03-01');
  });

  it('starts the default range on the first of the UTC month and ends it today', () => {
    expect(monthToDate(Date.parse('2026-12-03T07:00:00Z'))).toEqual({ from: '2026-12-01', to: '2026-12-03' });
    // 23:30 on the last day of November in UTC is still November, whatever the local zone.
    expect(monthToDate(Date.parse('2026-11-30T23:30:00Z'))).toEqual({ from: '2026-11-01', to: '2026-11-30' });
    expect(monthToDate(Date.parse('2026-12-01T00:00:00Z'))).toEqual({ from: '2026-12-01', to: '2026-12-01' });
  });

  it('has one point per day of [from, to), zeros where nothing was recorded, rows outside ignored', () => {
    const rows = [
      { day: '2026-01-31', requests: 4, images: 3, errors: 1, estimated_cost_usd: 0.12 },
      { day: '2026-02-02', requests: 2, images: 2, errors: 0, estimated_cost_usd: 0.08 },
      { day: '2026-02-03', requests: 9, images: 9, errors: 9, estimated_cost_usd: 9 }, // the day `to` names: outside
    ];
    const [days, requests, images, errors, cost] = dailySeries(rows, '2026-01-30', '2026-02-03');
    expect(days).toEqual(['2026-01-30', '2026-01-31', '2026-02-01', '2026-02-02'].map((d) => Date.parse(`${d}T00:00:00Z`) / 1000));
    expect(requests).toEqual([0, 4, 0, 2]);
    expect(images).toEqual([0, 3, 0, 2]);
    expect(errors).toEqual([0, 1, 0, 0]);
    expect(cost).toEqual([0, 0.12, 0, 0.08]);
  });

  it('has one point for a one-day range and none for an empty one', () => {
    expect(dailySeries([], '2026-12-03', dayAfter('2026-12-03'))[0]).toHaveLength(1);
    expect(dailySeries([], '2026-12-03', '2026-12-03')[0]).toHaveLength(0);
  });
});
