/** Durations in words for the playground's result cards; free of the DOM, so it runs (and is tested) in Node. */

/** How long something took: `230 ms` under a second (`<1 ms` for less), `1.4 s` under ten, then `12 s`. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '—';
  if (ms < 1) return '<1 ms';
  if (ms < 999.5) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 9_950 ? 1 : 0)} s`;
}
