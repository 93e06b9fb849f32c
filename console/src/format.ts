/** Formatting the pages share, pure (no DOM), so Node's tests run it too. */

/** `$0.04`, `$12.50`, `$0.0025` (small amounts keep their significant digits); null/undefined: `—`. */
export function formatUsd(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  const abs = Math.abs(n);
  const digits = abs !== 0 && abs < 0.01 ? 4 : 2;
  return `${n < 0 ? '-' : ''}$${abs.toFixed(digits)}`;
}
