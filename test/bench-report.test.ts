// The benchmark's verdicts (bench/report.js) and its statistics (bench/measure.js), from figures
// given here: nothing is timed in the test suite, but a wrong ratio or an off-by-one quantile would
// print a PASS the measurements do not support.
import { describe, expect, it } from 'vitest';
import { median, quantile } from '../bench/measure.js';
import { printReport } from '../bench/report.js';

interface Figures {
  p50Ms: number | null;
  p99Ms: number | null;
  requestsPerSecond: number | null;
  cpuPerRequestMs?: number;
  peakRssMb: number;
  errors: number;
  inFlight?: { connections: number; peakRssMb: number; requestsPerSecond: number };
}

const figures = (f: Partial<Figures>): Figures => ({ p50Ms: 1, p99Ms: 2, requestsPerSecond: 1000, cpuPerRequestMs: 0.1, peakRssMb: 200, errors: 0, ...f });

/** A run's report as bench/run.js builds it, with the three scenarios the targets read. */
function reportOf(small: { passthrough: Figures; gateway: Figures }, large: { passthrough: Figures; gateway: Figures }, serve: { static: Figures; gateway: Figures }) {
  return {
    machine: { cpu: 'test CPU', cores: 2, memoryGb: 4, os: 'linux', node: 'v24' },
    settings: { rounds: 3, seconds: 4, throughputConnections: 32 },
    date: '2026-11-24T00:00:00.000Z',
    loadAverage: { atStart: [0.1], atEnd: [0.2] },
    gatewayErrorLogLines: 0,
    scenarios: [
      { name: 'small', title: 'small image', baseline: 'passthrough', targets: small },
      { name: '4mib', title: '4 MiB image', baseline: 'passthrough', targets: large },
      { name: 'serve', title: 'serving', baseline: 'static', targets: serve },
    ],
  };
}

const verdicts = (report: ReturnType<typeof reportOf>) => Object.fromEntries(printReport(report).targets.map((t: { what: string; result: string }) => [t.what, t.result]));

describe('bench report', () => {
  it('passes each target at its limit and misses it just past', () => {
    const atLimits = reportOf(
      // added p50 0.5 ms, added p99 2 ms, 60 % of the pass-through's requests per second
      { passthrough: figures({ p50Ms: 0.25, p99Ms: 1, requestsPerSecond: 10_000 }), gateway: figures({ p50Ms: 0.75, p99Ms: 3, requestsPerSecond: 6000 }) },
      // 1.3× the pass-through's p50, 300 MB with 16 in flight
      { passthrough: figures({ p50Ms: 10 }), gateway: figures({ p50Ms: 13, inFlight: { connections: 16, peakRssMb: 300, requestsPerSecond: 50 } }) },
      // 80 % of @fastify/static's requests per second
      { static: figures({ requestsPerSecond: 500 }), gateway: figures({ requestsPerSecond: 400 }) },
    );
    expect(Object.values(verdicts(atLimits))).toEqual(['PASS', 'PASS', 'PASS', 'PASS', 'PASS', 'PASS']);

    const pastLimits = reportOf(
      { passthrough: figures({ p50Ms: 0.25, p99Ms: 1, requestsPerSecond: 10_000 }), gateway: figures({ p50Ms: 0.76, p99Ms: 3.01, requestsPerSecond: 5999 }) },
      { passthrough: figures({ p50Ms: 10 }), gateway: figures({ p50Ms: 13.01, inFlight: { connections: 16, peakRssMb: 301, requestsPerSecond: 50 } }) },
      { static: figures({ requestsPerSecond: 500 }), gateway: figures({ requestsPerSecond: 399 }) },
    );
    expect(verdicts(pastLimits)).toEqual({
      'small image: added p50 latency at c=1': 'MISS',
      'small image: added p99 latency at c=1': 'MISS',
      'small image: throughput at c=32 vs pass-through': 'MISS',
      '4 MiB image: p50 latency at c=1 vs pass-through': 'MISS',
      '4 MiB image: gateway peak RSS, 16 requests in flight (fresh process)': 'MISS',
      'serving a stored image: throughput at c=32 vs @fastify/static': 'MISS',
    });
  });

  it('reads the memory target from the fresh process with 16 in flight, not the long-lived one', () => {
    const report = reportOf(
      { passthrough: figures({}), gateway: figures({}) },
      { passthrough: figures({}), gateway: figures({ peakRssMb: 450, inFlight: { connections: 16, peakRssMb: 280, requestsPerSecond: 50 } }) },
      { static: figures({}), gateway: figures({}) },
    );
    const memory = printReport(report).targets.find((t: { what: string }) => t.what.startsWith('4 MiB image: gateway peak RSS'));
    expect(memory).toMatchObject({ value: 280, measured: '280 MB', result: 'PASS' });
  });

  it('runs no target on a measurement that got no answer, and counts every error', () => {
    const report = reportOf(
      // The baseline stalled (no answer, so no rate): no division by null may make a PASS.
      { passthrough: figures({ requestsPerSecond: null, errors: 1 }), gateway: figures({ requestsPerSecond: 9000, errors: 2 }) },
      // No p50 for the gateway at all.
      { passthrough: figures({ p50Ms: 10 }), gateway: figures({ p50Ms: null }) },
      { static: figures({ requestsPerSecond: 0 }), gateway: figures({ requestsPerSecond: 400, errors: 4 }) },
    );
    const { targets, text } = printReport(report);
    const result = (what: string) => targets.find((t: { what: string }) => t.what === what)?.result;
    expect(result('small image: throughput at c=32 vs pass-through')).toBe('NOT RUN');
    expect(result('4 MiB image: p50 latency at c=1 vs pass-through')).toBe('NOT RUN');
    expect(result('serving a stored image: throughput at c=32 vs @fastify/static')).toBe('NOT RUN');
    // The figures the run has still give their verdicts.
    expect(result('small image: added p50 latency at c=1')).toBe('PASS');
    expect(text).toContain('over all measurements: 7;');
  });

  it('prints the ratios to the baseline bench/README.md carries', () => {
    const report = reportOf(
      { passthrough: figures({ p50Ms: 0.2, p99Ms: 0.3, requestsPerSecond: 20_000 }), gateway: figures({ p50Ms: 0.4, p99Ms: 1.5, requestsPerSecond: 9000 }) },
      { passthrough: figures({ p50Ms: 4 }), gateway: figures({ p50Ms: 7 }) },
      { static: figures({ requestsPerSecond: 1000 }), gateway: figures({ requestsPerSecond: 870 }) },
    );
    const { text } = printReport(report);
    expect(text).toContain('| small image | undici pass-through | 0.200 | 1.200 | 2.00× | 45.0 % |');
    expect(text).toContain('| 4 MiB image | undici pass-through | 3.000 |');
    expect(text).toContain('| 1.75× |');
    expect(text).toContain('| serving | @fastify/static |');
    expect(text).toContain('| 87.0 % |');
    expect(text).toContain('| small image: throughput at c=32 vs pass-through | 45.0 % | ≥ 60 % | MISS |');
  });
});

describe('bench statistics', () => {
  it('takes quantiles by the nearest rank', () => {
    const sorted = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(quantile(sorted, 0.5)).toBe(50);
    expect(quantile(sorted, 0.99)).toBe(99);
    expect(quantile(sorted, 1)).toBe(100);
    // The rank is rounded up: the 0.51-quantile of ten values is the sixth.
    expect(quantile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.51)).toBe(6);
    expect(quantile([7], 0.99)).toBe(7);
    expect(quantile([], 0.5)).toBeNull();
  });

  it('takes the median of the rounds that answered', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    // A round with no answer (null) is left out, not counted as 0.
    expect(median([null, 5000, 9000])).toBe(7000);
    expect(median([null])).toBeNull();
  });
});
