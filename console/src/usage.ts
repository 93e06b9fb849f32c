/**
 * Usage: for a team key its team, for the admin every team. Requests, images, errors and cost per
 * day as a uPlot chart (served from /console/vendor, nothing fetched elsewhere), a table by team,
 * model and key (GET /v1/usage?group_by=...), a date range, and the raw records as CSV.
 */
import uPlot from '../vendor/uPlot.esm.js';
import type { ConsoleContext } from './api.js';
import { DAY_MS, dailySeries, dayAfter, isoDay, monthToDate, type DayTotals } from './days.js';
import { PAGE_CSS, addStyles, apiJson, el, errorMessage, formatUsd, saveBlob, scrollingTable, statusLine } from './page-kit.js';

interface UsageRow extends DayTotals {
  team?: string | null;
  model?: string | null;
  key?: string | null;
  unpriced_images: number;
}

interface UsageReport {
  from: string;
  to: string;
  data: UsageRow[];
}

/** The most records one CSV request asks for; the download follows next cursors until the end. */
const CSV_PAGE = 1000;

export async function render(root: HTMLElement, ctx: ConsoleContext): Promise<void> {
  addStyles('page-kit', PAGE_CSS);
  root.replaceChildren();
  const initial = monthToDate(Date.now());
  const from = el('input', { id: 'usage-from', type: 'date', value: initial.from, required: true });
  const to = el('input', { id: 'usage-to', type: 'date', value: initial.to, required: true });
  const csv = el('button', { type: 'button' }, 'Download CSV');
  const form = el(
    'form',
    { class: 'page-filters', 'aria-label': 'Date range' },
    el('label', { for: 'usage-from' }, 'From', from),
    el('label', { for: 'usage-to' }, 'To', to),
    el('button', { type: 'submit' }, 'Show'),
    csv,
  );
  const status = statusLine();
  const chartBox = el('div', { class: 'usage-chart', role: 'img', 'aria-label': 'Requests, images, errors and cost per day' });
  const tableBody = el('tbody');
  const table = el(
    'table',
    { class: 'page-table' },
    el('caption', { class: 'visually-hidden' }, 'Usage by team, model and key'),
    el(
      'thead',
      {},
      el(
        'tr',
        {},
        el('th', { scope: 'col' }, 'Team'),
        el('th', { scope: 'col' }, 'Model'),
        el('th', { scope: 'col' }, 'Key'),
        el('th', { scope: 'col', class: 'num' }, 'Requests'),
        el('th', { scope: 'col', class: 'num' }, 'Images'),
        el('th', { scope: 'col', class: 'num' }, 'Errors'),
        el('th', { scope: 'col', class: 'num' }, 'Cost'),
      ),
    ),
    tableBody,
  );
  root.append(
    el('h1', {}, 'Usage'),
    el('p', {}, ctx.session.admin ? 'Every team’s requests, images, errors and estimated cost.' : `Requests, images, errors and estimated cost of team ${ctx.session.team}.`),
    form,
    status,
    el('h2', {}, 'Per day'),
    chartBox,
    el('h2', {}, 'By team, model and key'),
    scrollingTable(table, 'Usage by team, model and key'),
  );

  let chart: uPlot | undefined;
  let generation = 0;

  function chosenRange(): { from: string; to: string } | undefined {
    if (!from.value || !to.value || to.value < from.value) return undefined;
    return { from: from.value, to: dayAfter(to.value) };
  }

  async function show(): Promise<void> {
    const range = chosenRange();
    if (!range) {
      status.classList.add('error');
      status.textContent = 'Choose a From date on or before the To date.';
      return;
    }
    const mine = ++generation;
    status.classList.remove('error');
    status.textContent = 'Loading…';
    const span = `from=${range.from}&to=${range.to}`;
    try {
      const [daily, grouped] = await Promise.all([
        apiJson<UsageReport>(ctx, `/v1/usage?group_by=day&${span}`),
        apiJson<UsageReport>(ctx, `/v1/usage?group_by=team,model,key&${span}`),
      ]);
      if (mine !== generation) return;
      drawChart(dailySeries(daily.data, range.from, range.to));
      fillTable(grouped.data);
      const total = grouped.data.reduce((sum, r) => sum + r.estimated_cost_usd, 0);
      const requests = grouped.data.reduce((sum, r) => sum + r.requests, 0);
      status.textContent = `${requests} request${requests === 1 ? '' : 's'}, ${formatUsd(total)} estimated, ${range.from} to ${to.value}.`;
    } catch (err) {
      if (mine !== generation) return;
      status.classList.add('error');
      status.textContent = `Could not load usage: ${(err as Error).message}`;
    }
  }

  /** The legend's value of a count: one placeholder (—) for none, as the day and cost say it, not uPlot's "--". */
  const countValue = (_u: uPlot, v: number | null) => (v == null ? '—' : v.toLocaleString());

  function drawChart(data: number[][]): void {
    const width = Math.max(280, chartBox.clientWidth || root.clientWidth || 320);
    const height = width < 500 ? 240 : 300;
    chart?.destroy();
    // What the chart shows, for a reader of the page's markup (and the tests): days and totals.
    chartBox.dataset.days = String(data[0]!.length);
    chartBox.dataset.requests = String(data[1]!.reduce((a, b) => a + b, 0));
    chartBox.dataset.images = String(data[2]!.reduce((a, b) => a + b, 0));
    chart = new uPlot(
      {
        width,
        height,
        // Days are UTC days, labelled as such whatever the browser's zone.
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
        scales: { x: { time: true }, count: { auto: true }, usd: { auto: true } },
        series: [
          { label: 'Day', value: (_u, v) => (v === null ? '—' : isoDay(v * 1000)) },
          { label: 'Requests', scale: 'count', stroke: '#1a73e8', width: 2, value: countValue },
          { label: 'Images', scale: 'count', stroke: '#188038', width: 2, value: countValue },
          { label: 'Errors', scale: 'count', stroke: '#d93025', width: 2, value: countValue },
          { label: 'Cost (USD)', scale: 'usd', stroke: '#e37400', width: 2, dash: [6, 4], value: (_u, v) => (v === null ? '—' : formatUsd(v)) },
        ],
        axes: [
          { incrs: [DAY_MS / 1000, (2 * DAY_MS) / 1000, (7 * DAY_MS) / 1000, (14 * DAY_MS) / 1000, (28 * DAY_MS) / 1000], values: (_u, ticks) => ticks.map((t) => isoDay(t * 1000).slice(5)) },
          { scale: 'count', label: 'count' },
          { scale: 'usd', side: 1, size: 70, grid: { show: false }, values: (_u, ticks) => ticks.map((t) => `$${t}`) },
        ],
      },
      data as unknown as uPlot.AlignedData,
      chartBox,
    );
  }

  function fillTable(rows: UsageRow[]): void {
    tableBody.replaceChildren();
    if (rows.length === 0) {
      tableBody.append(el('tr', {}, el('td', { colspan: 7 }, 'No requests in this range.')));
      return;
    }
    for (const r of rows) {
      tableBody.append(
        el(
          'tr',
          {},
          el('td', {}, r.team ?? '—'),
          // Listings, job polls, usage queries, refusals before the body was read: requests that named no model.
          r.model == null ? el('td', { class: 'muted', title: 'Requests that named no model: listings, job polls, usage queries, refusals' }, 'no model') : el('td', {}, r.model),
          r.key == null ? el('td', { class: 'muted', title: 'Requests without a valid key' }, 'no key') : el('td', {}, r.key),
          el('td', { class: 'num' }, r.requests),
          el('td', { class: 'num' }, r.images),
          el('td', { class: 'num' }, r.errors),
          el('td', { class: 'num' }, formatUsd(r.estimated_cost_usd) + (r.unpriced_images > 0 ? ` (+${r.unpriced_images} unpriced)` : '')),
        ),
      );
    }
  }

  /** Every record of the range as one CSV file (pages joined, one header). */
  async function downloadCsv(): Promise<void> {
    const range = chosenRange();
    if (!range) return void show();
    csv.disabled = true;
    status.classList.remove('error');
    status.textContent = 'Preparing CSV…';
    try {
      const parts: string[] = [];
      let cursor: string | null = null;
      do {
        const params = new URLSearchParams({ format: 'csv', limit: String(CSV_PAGE), from: range.from, to: range.to });
        if (cursor) params.set('cursor', cursor);
        const res = await ctx.api(`/v1/usage/records?${params}`);
        if (!res.ok) throw new Error(await errorMessage(res));
        let text = await res.text();
        if (parts.length > 0) text = text.slice(text.indexOf('\n') + 1);
        if (text && !text.endsWith('\n')) text += '\n';
        parts.push(text);
        cursor = res.headers.get('x-next-cursor');
      } while (cursor);
      saveBlob(new Blob(parts, { type: 'text/csv' }), `usage-${range.from}-to-${to.value}.csv`);
      status.textContent = 'CSV downloaded.';
    } catch (err) {
      status.classList.add('error');
      status.textContent = `Could not download CSV: ${(err as Error).message}`;
    } finally {
      csv.disabled = false;
    }
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    void show();
  });
  csv.addEventListener('click', () => void downloadCsv());
  // The chart follows the page's width (a phone turned, a window resized).
  if ('ResizeObserver' in globalThis) {
    const resized = new ResizeObserver(() => {
      if (!root.isConnected) return resized.disconnect();
      const width = Math.max(280, chartBox.clientWidth);
      if (chart && Math.abs(chart.width - width) > 4) chart.setSize({ width, height: width < 500 ? 240 : 300 });
    });
    resized.observe(chartBox);
  }
  await show();
}
