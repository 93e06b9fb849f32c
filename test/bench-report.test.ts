// The benchmark's verdicts (bench/report.js) and its statistics (bench/measure.js), from figures
// given here: nothing is timed in the test suite, but a wrong ratio or an off-by-one quantile would
// print a PASS the measurements do not support.
import { describe, expect, it } from 'vitest';
import { median, quantile } from '../bench/measure.js';
import { printReport } from '../bench/report.js';
import { coresUsed, parseStat, treeOf } from '../bench/proc.js';

interface Figures {
  p50Ms: number | null;
  p99Ms: number | null;
  requestsPerSecond: number | null;
  cpuPerRequestMs?: number;
  cores?: number;
  peakRssMb: number;
  errors: number;
  inFlight?: { connections: number; peakRssMb: number; requestsPerSecond: number };
}

const figures = (f: Partial<Figures>): Figures => ({ p50Ms: 1, p99Ms: 2, requestsPerSecond: 1000, cpuPerRequestMs: 0.1, peakRssMb: 200, errors: 0, ...f });

type Pair = { passthrough: Figures; gateway: Figures };
const heldDefault: Pair = { passthrough: figures({ requestsPerSecond: 100 }), gateway: figures({ requestsPerSecond: 90, peakRssMb: 300 }) };

/** A run's report as bench/run.js builds it, with the five scenarios the targets read. */
function reportOf(small: Pair, large: Pair, serve: { static: Figures; gateway: Figures }, held: Pair = heldDefault, largeBase64: Pair = large) {
  return {
    machine: { cpu: 'test CPU', cores: 2, memoryGb: 4, os: 'linux', node: 'v24' },
    settings: { rounds: 3, seconds: 4, throughputConnections: 32 },
    date: '2026-11-24T00:00:00.000Z',
    loadAverage: { atStart: [0.1], atEnd: [0.2] },
    gatewayErrorLogLines: 0,
    scenarios: [
      { name: 'small', title: 'small image', baseline: 'passthrough', targets: small },
      { name: '4mib', title: '4 MiB image', baseline: 'passthrough', targets: large },
      { name: '4mib-b64json', title: '4 MiB image, answered as b64_json', baseline: 'passthrough', targets: largeBase64 },
      { name: 'serve', title: 'serving', baseline: 'static', targets: serve },
      { name: 'held', title: 'held load', baseline: 'passthrough', held: true, connections: 400, targets: held },
    ],
  };
}

const verdicts = (report: ReturnType<typeof reportOf>) => Object.fromEntries(printReport(report).targets.map((t: { what: string; result: string }) => [t.what, t.result]));

describe('bench report', () => {
  it('passes each target at its limit and misses it just past', () => {
    const atLimits = reportOf(
      // added p50 0.5 ms, added p99 2 ms, 50 % of the pass-through's requests per second
      { passthrough: figures({ p50Ms: 0.25, p99Ms: 1, requestsPerSecond: 10_000 }), gateway: figures({ p50Ms: 0.75, p99Ms: 3, requestsPerSecond: 5000 }) },
      // 1.5× the pass-through's p50, 300 MB with 16 in flight
      { passthrough: figures({ p50Ms: 10 }), gateway: figures({ p50Ms: 15, inFlight: { connections: 16, peakRssMb: 300, requestsPerSecond: 50 } }) },
      // 80 % of @fastify/static's requests per second
      { static: figures({ requestsPerSecond: 500 }), gateway: figures({ requestsPerSecond: 400 }) },
      // held: 80 % of the pass-through's requests per second, no error, 400 MB
      { passthrough: figures({ requestsPerSecond: 130 }), gateway: figures({ requestsPerSecond: 104, errors: 0, peakRssMb: 400 }) },
    );
    expect(Object.values(verdicts(atLimits))).toEqual(['PASS', 'PASS', 'PASS', 'PASS', 'PASS', 'PASS', 'PASS', 'PASS', 'PASS', 'PASS']);

    const pastLimits = reportOf(
      { passthrough: figures({ p50Ms: 0.25, p99Ms: 1, requestsPerSecond: 10_000 }), gateway: figures({ p50Ms: 0.76, p99Ms: 3.01, requestsPerSecond: 4999 }) },
      { passthrough: figures({ p50Ms: 10 }), gateway: figures({ p50Ms: 15.01, inFlight: { connections: 16, peakRssMb: 301, requestsPerSecond: 50 } }) },
      { static: figures({ requestsPerSecond: 500 }), gateway: figures({ requestsPerSecond: 399 }) },
      { passthrough: figures({ requestsPerSecond: 130 }), gateway: figures({ requestsPerSecond: 103.9, errors: 1, peakRssMb: 401 }) },
    );
    expect(verdicts(pastLimits)).toEqual({
      'small image: added p50 latency at c=1': 'MISS',
      'small image: throughput at c=32 vs pass-through': 'MISS',
      '4 MiB image answered as b64_json: p50 latency at c=1 vs pass-through': 'MISS',
      'also: 4 MiB image answered as a URL: p50 latency at c=1 vs pass-through': 'MISS',
      'held (400 clients, 2 s upstream, 1 MiB): throughput vs pass-through': 'MISS',
      'held: gateway errors': 'MISS',
      'held: gateway peak RSS (process tree)': 'MISS',
      'earlier: small image: added p99 latency at c=1': 'MISS',
      'earlier: 4 MiB image: gateway peak RSS, 16 requests in flight (fresh process)': 'MISS',
      'earlier: serving a stored image: throughput at c=32 vs @fastify/static': 'MISS',
    });
  });

  it("judges the 4 MiB latency target on the b64_json answer (the issue's), not on the URL answer", () => {
    const report = reportOf(
      { passthrough: figures({}), gateway: figures({}) },
      { passthrough: figures({ p50Ms: 10 }), gateway: figures({ p50Ms: 12 }) },
      { static: figures({}), gateway: figures({}) },
      heldDefault,
      { passthrough: figures({ p50Ms: 10 }), gateway: figures({ p50Ms: 30 }) },
    );
    const { targets } = printReport(report);
    expect(targets.find((t: { what: string }) => t.what.startsWith('4 MiB image answered as b64_json'))).toMatchObject({ measured: '3.00× (30.00 vs 10.00 ms)', result: 'MISS' });
    expect(targets.find((t: { what: string }) => t.what.startsWith('also: 4 MiB image answered as a URL'))).toMatchObject({ result: 'PASS' });
  });

  it('prints the held scenario in a table of its own, with the cores and the peak of each target', () => {
    const report = reportOf(
      { passthrough: figures({}), gateway: figures({}) },
      { passthrough: figures({}), gateway: figures({}) },
      { static: figures({}), gateway: figures({}) },
      {
        passthrough: figures({ requestsPerSecond: 130.4, p50Ms: 2003, p99Ms: 2950, cores: 0.61, cpuPerRequestMs: 4.7, peakRssMb: 190 }),
        gateway: figures({ requestsPerSecond: 27.1, p50Ms: 11161, p99Ms: 11618, cores: 1.04, cpuPerRequestMs: 19.6, peakRssMb: 805, errors: 0 }),
      },
    );
    const { text, targets } = printReport(report);
    expect(text).toContain('| held load | req/s (c=400) | p50 ms | p99 ms | CPU cores | CPU ms/req | peak RSS MB | errors |');
    expect(text).toContain('| passthrough | 130.4 | 2003 | 2950 | 0.61 | 4.70 | 190 | 0 |');
    expect(text).toContain('| gateway | 27.1 | 11161 | 11618 | 1.04 | 19.60 | 805 | 0 |');
    // Its latencies are at c=400, so it has no row in the c=1 table.
    expect(text).not.toMatch(/\| held load \| gateway \| 11161/);
    const held = targets.find((t: { what: string }) => t.what.startsWith('held (400 clients'));
    expect(held).toMatchObject({ measured: '20.8 % (27.1 vs 130.4 req/s)', result: 'MISS' });
    expect(targets.find((t: { what: string }) => t.what === 'held: gateway peak RSS (process tree)')).toMatchObject({
      measured: '805 MB (pass-through 190 MB)',
      result: 'MISS',
    });
  });

  it('reads the memory target from the fresh process with 16 in flight, not the long-lived one', () => {
    const report = reportOf(
      { passthrough: figures({}), gateway: figures({}) },
      { passthrough: figures({}), gateway: figures({ peakRssMb: 450, inFlight: { connections: 16, peakRssMb: 280, requestsPerSecond: 50 } }) },
      { static: figures({}), gateway: figures({}) },
    );
    const memory = printReport(report).targets.find((t: { what: string }) => t.what.startsWith('earlier: 4 MiB image: gateway peak RSS'));
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
    expect(result('4 MiB image answered as b64_json: p50 latency at c=1 vs pass-through')).toBe('NOT RUN');
    expect(result('earlier: serving a stored image: throughput at c=32 vs @fastify/static')).toBe('NOT RUN');
    // A held run with no answer: its errors count, and its memory proves nothing either way.
    const stalled = printReport(
      reportOf(
        { passthrough: figures({}), gateway: figures({}) },
        { passthrough: figures({}), gateway: figures({}) },
        { static: figures({}), gateway: figures({}) },
        { passthrough: figures({ requestsPerSecond: 120 }), gateway: figures({ requestsPerSecond: null, errors: 1, peakRssMb: 250 }) },
      ),
    ).targets;
    const stalledResult = (what: string) => stalled.find((t: { what: string }) => t.what === what)?.result;
    expect(stalledResult('held: gateway errors')).toBe('MISS');
    expect(stalledResult('held: gateway peak RSS (process tree)')).toBe('NOT RUN');
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
    expect(text).toContain('| small image: throughput at c=32 vs pass-through | 45.0 % (9000 vs 20000 req/s) | ≥ 50 % | MISS |');
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

describe('bench process figures', () => {
  it('reads the parent and the CPU time of a /proc stat line, a command name with spaces and parentheses included', () => {
    // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime ...
    const line = '4242 (node (worker) x) S 4200 4242 4242 0 -1 4194560 100 0 0 0 250 50 30 20 20 0 11 0 1000 0 0';
    // (250 + 50 + 30 + 20) ticks of 10 ms: the threads' time and the reaped children's.
    expect(parseStat(line)).toEqual({ ppid: 4200, cpuMs: 3500 });
  });

  it('takes a process and all its descendants, and nothing else', () => {
    const parents: [number, number][] = [
      [1, 0],
      [10, 1],
      [11, 10],
      [12, 10],
      [13, 12],
      [20, 1],
      [21, 20],
    ];
    expect(treeOf(10, parents).sort((a, b) => a - b)).toEqual([10, 11, 12, 13]);
    expect(treeOf(21, parents)).toEqual([21]);
  });

  it('gives cores as CPU time over wall time, and none when a figure is missing', () => {
    expect(coresUsed(1000, 3000, 1000)).toBe(2);
    expect(coresUsed(1000, 1500, 2000)).toBe(0.25);
    expect(coresUsed(null, 1500, 2000)).toBeNull();
    expect(coresUsed(1000, 1500, 0)).toBeNull();
  });
});
