// The benchmark's tables (Markdown, so bench/README.md can carry them as printed) and its targets.

const BASELINE_NAMES = { passthrough: 'undici pass-through', static: '@fastify/static' };

const fixed = (value, digits) => (value === null || value === undefined || Number.isNaN(value) ? '-' : value.toFixed(digits));

// A measurement that got no answer has no figure (null): a target built on one is not run, never
// a PASS by a division by null.
const known = (...values) => values.every((v) => typeof v === 'number' && Number.isFinite(v));
const difference = (a, b) => (known(a, b) ? a - b : null);
const ratio = (a, b) => (known(a, b) && b > 0 ? a / b : null);
const percentOf = (a, b) => (known(a, b) && b > 0 ? (100 * a) / b : null);

/** A target on the gateway's p50 at c=1 as a multiple of its baseline's. */
const p50AtMost = (scenario, what, times) => ({
  scenario,
  what,
  limit: `≤ ${times}×`,
  value: (gw, base) => ratio(gw.p50Ms, base.p50Ms),
  show: (v, gw, base) => `${fixed(v, 2)}× (${fixed(gw.p50Ms, 2)} vs ${fixed(base.p50Ms, 2)} ms)`,
  pass: (v) => v <= times,
});

/**
 * The targets, each read from one scenario's gateway and baseline figures of the same run: first
 * issue 19's (the honest baseline), then the earlier ones it did not replace.
 */
const TARGETS = [
  {
    scenario: 'small',
    what: 'small image: added p50 latency at c=1',
    limit: '≤ 0.5 ms',
    value: (gw, base) => difference(gw.p50Ms, base.p50Ms),
    show: (v, gw, base) => `${fixed(v, 3)} ms (${fixed(gw.p50Ms, 3)} vs ${fixed(base.p50Ms, 3)})`,
    pass: (v) => v <= 0.5,
  },
  {
    scenario: 'small',
    what: 'small image: throughput at c=32 vs pass-through',
    limit: '≥ 50 %',
    value: (gw, base) => percentOf(gw.requestsPerSecond, base.requestsPerSecond),
    show: (v, gw, base) => `${fixed(v, 1)} % (${fixed(gw.requestsPerSecond, 0)} vs ${fixed(base.requestsPerSecond, 0)} req/s)`,
    pass: (v) => v >= 50,
  },
  // The target is the b64_json answer (decoded, hashed, stored, then encoded again).
  p50AtMost('4mib-b64json', '4 MiB image answered as b64_json: p50 latency at c=1 vs pass-through', 1.5),
  p50AtMost('4mib', 'also: 4 MiB image answered as a URL: p50 latency at c=1 vs pass-through', 1.5),
  {
    scenario: 'held',
    what: 'held (400 clients, 2 s upstream, 1 MiB): throughput vs pass-through',
    limit: '≥ 80 %',
    value: (gw, base) => percentOf(gw.requestsPerSecond, base.requestsPerSecond),
    show: (v, gw, base) => `${fixed(v, 1)} % (${fixed(gw.requestsPerSecond, 1)} vs ${fixed(base.requestsPerSecond, 1)} req/s)`,
    pass: (v) => v >= 80,
  },
  {
    scenario: 'held',
    what: 'held: gateway errors',
    limit: '0',
    value: (gw) => gw.errors,
    show: (v) => String(v),
    pass: (v) => v === 0,
  },
  {
    scenario: 'held',
    what: 'held: gateway peak RSS (process tree)',
    limit: '≤ 400 MB',
    // The peak of a run that answered nothing says nothing of the load it was to carry.
    value: (gw) => (known(gw.requestsPerSecond) ? gw.peakRssMb : null),
    show: (v, gw, base) => `${fixed(v, 0)} MB (pass-through ${fixed(base.peakRssMb, 0)} MB)`,
    pass: (v) => v <= 400,
  },
  {
    scenario: 'small',
    what: 'earlier: small image: added p99 latency at c=1',
    limit: '≤ 2 ms',
    value: (gw, base) => difference(gw.p99Ms, base.p99Ms),
    show: (v) => `${fixed(v, 3)} ms`,
    pass: (v) => v <= 2,
  },
  {
    scenario: '4mib',
    what: 'earlier: 4 MiB image: gateway peak RSS, 16 requests in flight (fresh process)',
    limit: '≤ 300 MB',
    value: (gw) => gw.inFlight?.peakRssMb ?? null,
    show: (v) => `${fixed(v, 0)} MB`,
    pass: (v) => v <= 300,
  },
  {
    scenario: 'serve',
    what: 'earlier: serving a stored image: throughput at c=32 vs @fastify/static',
    limit: '≥ 80 %',
    value: (gw, base) => percentOf(gw.requestsPerSecond, base.requestsPerSecond),
    show: (v) => `${fixed(v, 1)} %`,
    pass: (v) => v >= 80,
  },
];

function table(header, rows) {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

/** Text for stdout (and bench/README.md), and the targets with PASS/MISS for the JSON. */
export function printReport(report) {
  const { machine, settings } = report;
  const out = [];
  out.push('');
  out.push(
    `Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGb} GB, ${machine.os}, Node ${machine.node}; ` +
      `${settings.rounds} round(s), ${settings.seconds} s per measurement, ${report.date}; ` +
      `load average ${report.loadAverage.atStart[0]} at start, ${report.loadAverage.atEnd[0]} at end`,
  );
  out.push('');
  out.push(
    table(
      ['scenario', 'target', 'p50 ms (c=1)', 'p99 ms (c=1)', `req/s (c=${settings.throughputConnections})`, 'CPU ms/req', 'CPU cores', 'peak RSS MB', 'errors'],
      report.scenarios
        .filter((s) => !s.held)
        .flatMap((s) =>
          Object.entries(s.targets).map(([name, t]) => [
            s.title,
            name,
            fixed(t.p50Ms, 3),
            fixed(t.p99Ms, 3),
            fixed(t.requestsPerSecond, 0),
            fixed(t.cpuPerRequestMs, 2),
            fixed(t.cores, 2),
            t.inFlight ? `${t.peakRssMb} (fresh, c=${t.inFlight.connections}: ${t.inFlight.peakRssMb})` : fixed(t.peakRssMb, 0),
            String(t.errors),
          ]),
      ),
    ),
  );
  for (const s of report.scenarios.filter((s) => s.held)) {
    out.push('');
    out.push(
      table(
        [s.title, `req/s (c=${s.connections})`, 'p50 ms', 'p99 ms', 'CPU cores', 'CPU ms/req', 'peak RSS MB', 'errors'],
        Object.entries(s.targets).map(([name, t]) => [
          name,
          fixed(t.requestsPerSecond, 1),
          fixed(t.p50Ms, 0),
          fixed(t.p99Ms, 0),
          fixed(t.cores, 2),
          fixed(t.cpuPerRequestMs, 2),
          fixed(t.peakRssMb, 0),
          String(t.errors),
        ]),
      ),
    );
  }
  out.push('');
  out.push(
    table(
      ['scenario', 'gateway vs', 'added p50 ms', 'added p99 ms', 'p50 ratio', 'throughput %', 'peak RSS MB (baseline → gateway)'],
      report.scenarios
        .filter((s) => s.targets.gateway && s.targets[s.baseline])
        .map((s) => {
          const gw = s.targets.gateway;
          const base = s.targets[s.baseline];
          return [
            s.title,
            BASELINE_NAMES[s.baseline],
            fixed(difference(gw.p50Ms, base.p50Ms), 3),
            fixed(difference(gw.p99Ms, base.p99Ms), 3),
            `${fixed(ratio(gw.p50Ms, base.p50Ms), 2)}×`,
            `${fixed(percentOf(gw.requestsPerSecond, base.requestsPerSecond), 1)} %`,
            `${fixed(base.peakRssMb, 0)} → ${fixed(gw.peakRssMb, 0)}`,
          ];
        }),
    ),
  );
  const targets = TARGETS.map((t) => {
    const scenario = report.scenarios.find((s) => s.name === t.scenario);
    const gw = scenario?.targets.gateway;
    const base = scenario?.targets[scenario.baseline];
    const value = gw && base ? t.value(gw, base) : null;
    const result = value === null || value === undefined || Number.isNaN(value) ? 'NOT RUN' : t.pass(value) ? 'PASS' : 'MISS';
    return { what: t.what, limit: t.limit, value, measured: value === null ? '-' : t.show(value, gw, base), result };
  });
  out.push('');
  out.push(table(['target', 'measured', 'limit', 'result'], targets.map((t) => [t.what, t.measured, t.limit, t.result])));
  out.push('');
  const errors = report.scenarios.reduce((sum, s) => sum + Object.values(s.targets).reduce((n, t) => n + t.errors, 0), 0);
  out.push(`errors (non-2xx, socket errors, timeouts, short answers, measurements with no answer) over all measurements: ${errors}; gateway error log lines: ${report.gatewayErrorLogLines}`);
  return { targets, text: out.join('\n') };
}
