/**
 * The Grafana dashboard (docker/grafana/gateway-dashboard.json) and the Prometheus alert rules
 * (docker/alerts.yaml): every expression is PromQL that parses, every metric they name exists in a
 * live gateway's /metrics, every topic an operator must be told of has an alert, and the compose
 * file loads both. Also the two metrics added for them: the upstream queue wait and finished jobs.
 */
import { readFileSync } from 'node:fs';
import { parser } from '@prometheus-io/lezer-promql';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FairQueue, type QueueWaitOutcome } from '../src/upstream/fair-queue.js';
import { ADMIN_KEY, jobWhenFinished, startHarness, type Harness } from './harness.js';

const docker = (path: string) => new URL(`../docker/${path}`, import.meta.url).pathname;
type Json = Record<string, any>;

const dashboard = JSON.parse(readFileSync(docker('grafana/gateway-dashboard.json'), 'utf8')) as Json;
const alerts = parseYaml(readFileSync(docker('alerts.yaml'), 'utf8')) as Json;
const rules = (alerts.groups as Json[]).flatMap((g) => g.rules as Json[]);

/** Every panel, rows' nested panels included. */
const panelsOf = (panels: Json[]): Json[] => panels.flatMap((p) => [p, ...panelsOf(p.panels ?? [])]);
const panels = panelsOf(dashboard.panels);
const dashboardExprs: Array<{ where: string; expr: string }> = panels.flatMap((p) => (p.targets ?? []).map((t: Json) => ({ where: `panel "${p.title}"`, expr: String(t.expr) })));
const alertExprs = rules.map((r) => ({ where: `alert ${r.alert}`, expr: String(r.expr) }));

/** Grafana's variables, as Prometheus would see them once Grafana has put in their values. */
const asPromQL = (expr: string) => expr.replaceAll('$__rate_interval', '5m').replaceAll('$__interval', '1m').replaceAll('$__range', '1h');

/** The syntax errors of a PromQL expression (the parser Prometheus's own UI uses), as the text they cover. */
function syntaxErrors(expr: string): string[] {
  const errors: string[] = [];
  parser.parse(expr).iterate({
    enter(node) {
      if (node.type.isError) errors.push(`at ${node.from}: "${expr.slice(Math.max(0, node.from - 10), node.to + 10)}"`);
    },
  });
  return errors;
}

/**
 * The metric names an expression reads: the parser's vector selectors, and, as a second net, every
 * identifier of the gateway's families (gateway_, process_, nodejs_) anywhere in the text.
 */
function metricNames(expr: string): Set<string> {
  const names = new Set<string>();
  parser.parse(expr).iterate({
    enter(node) {
      if (node.name === 'Identifier' && node.node.parent?.name === 'VectorSelector') names.add(expr.slice(node.from, node.to));
    },
  });
  for (const m of expr.matchAll(/\b(?:gateway|process|nodejs)_[a-zA-Z0-9_]+\b/g)) names.add(m[0]);
  return names;
}

/** `# TYPE name kind` of an exposition. */
function typesOf(exposition: string): Map<string, string> {
  return new Map([...exposition.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
}

/** Prometheus's own series (not in any /metrics): `up`, of the scrape job prometheus.yaml defines. */
const PROMETHEUS_OWN = new Set(['up']);

/** The names of `names` that the exposition does not have: a histogram's or summary's _bucket/_sum/_count are its own. */
function missingFrom(types: Map<string, string>, names: Iterable<string>): string[] {
  return [...names].filter((name) => {
    if (PROMETHEUS_OWN.has(name) || types.has(name)) return false;
    const m = /^(.*)_(bucket|sum|count)$/.exec(name);
    const kind = m ? types.get(m[1]!) : undefined;
    return !(kind === 'histogram' || (kind === 'summary' && m![2] !== 'bucket'));
  });
}

describe('the dashboard and the alert rules', () => {
  it('are PromQL that parses', () => {
    expect(dashboardExprs.length).toBeGreaterThan(15);
    expect(alertExprs.length).toBeGreaterThan(5);
    for (const { where, expr } of [...dashboardExprs, ...alertExprs]) expect(syntaxErrors(asPromQL(expr)), `${where}: ${expr}`).toEqual([]);
    // The check itself sees a broken expression.
    expect(syntaxErrors('sum by (model) (rate(gateway_upstream_errors_total[5m])')).not.toEqual([]);
  });

  it('every alert has a name, a severity, a summary and a valid `for`', () => {
    const names = rules.map((r) => r.alert);
    expect(new Set(names).size).toBe(names.length);
    for (const rule of rules) {
      expect(rule.alert, JSON.stringify(rule)).toMatch(/^[A-Z]\w+$/);
      expect(['critical', 'warning']).toContain(rule.labels?.severity);
      expect(String(rule.annotations?.summary ?? '')).not.toBe('');
      if (rule.for !== undefined) expect(rule.for).toMatch(/^\d+[smh]$/);
    }
  });

  it('has an alert for every topic an operator must hear of', () => {
    /** The rules whose expression reads `metric` (matchers included, e.g. {status="failed"}) and, if given, groups by `by`. */
    const alertsOn = (metric: RegExp, by?: string) =>
      rules.filter((r) => metric.test(String(r.expr)) && (by === undefined || new RegExp(`by \\(([^)]*\\b)?${by}\\b`).test(String(r.expr)))).map((r) => r.alert);
    const topics: Record<string, string[]> = {
      'upstream error rate by model': alertsOn(/\bgateway_upstream_errors_total\b/, 'model'),
      'upstream queue wait': alertsOn(/\bgateway_upstream_queue_wait_seconds_(bucket|count)\b/),
      'storage pressure': alertsOn(/\bgateway_storage_refusing\b/),
      'limit refusals': alertsOn(/\bgateway_limit_refusals_total\b/),
      'job failures': alertsOn(/\bgateway_jobs_finished_total\{status="failed"\}/),
      'a replica down': alertsOn(/\bup\{job="image-gateway"\} == 0/),
    };
    for (const [topic, names] of Object.entries(topics)) expect(names, topic).not.toEqual([]);
  });

  it('the dashboard shows traffic, upstream errors and latency, the queue, storage, limits, jobs and connections', () => {
    const named = new Set(dashboardExprs.flatMap(({ expr }) => [...metricNames(asPromQL(expr))]));
    for (const metric of [
      'gateway_http_requests_total',
      'gateway_upstream_errors_total',
      'gateway_upstream_duration_seconds_bucket',
      'gateway_upstream_queue_depth',
      'gateway_upstream_queue_wait_seconds_bucket',
      'gateway_storage_refusing',
      'gateway_storage_free_bytes',
      'gateway_limit_refusals_total',
      'gateway_jobs',
      'gateway_jobs_finished_total',
      'gateway_open_connections',
    ]) {
      expect(named, metric).toContain(metric);
    }
    // Panels do not overlap, and ids are unique.
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const cells = new Set<string>();
    for (const p of panels) {
      const { x, y, w, h } = p.gridPos;
      expect(x + w, p.title).toBeLessThanOrEqual(24);
      for (let i = x; i < x + w; i++) for (let j = y; j < y + h; j++) {
        expect(cells.has(`${i},${j}`), `panel "${p.title}" overlaps another`).toBe(false);
        cells.add(`${i},${j}`);
      }
    }
  });

  it('are loaded by the compose file: the rules by Prometheus, the dashboard by Grafana', () => {
    const compose = parseYaml(readFileSync(docker('compose.yaml'), 'utf8')) as Json;
    const prometheus = parseYaml(readFileSync(docker('prometheus.yaml'), 'utf8')) as Json;
    expect(prometheus.rule_files).toContain('/etc/prometheus/alerts.yaml');
    expect(compose.services.prometheus.volumes).toContain('./alerts.yaml:/etc/prometheus/alerts.yaml:ro');
    // `up{job="image-gateway"}` names the scrape job prometheus.yaml defines.
    expect((prometheus.scrape_configs as Json[]).map((j) => j.job_name)).toContain('image-gateway');

    const grafana = compose.services.grafana;
    expect(grafana.profiles).toEqual(['monitoring']);
    for (const port of grafana.ports as string[]) expect(port).toMatch(/^127\.0\.0\.1:/);
    const mount = (grafana.volumes as string[]).find((v) => v.startsWith('./grafana/gateway-dashboard.json:'))!;
    const provider = parseYaml(readFileSync(docker('grafana/provisioning/dashboards/gateway.yaml'), 'utf8')) as Json;
    expect(mount.split(':')[1]!.startsWith(`${provider.providers[0].options.path}/`)).toBe(true);
    expect(grafana.volumes).toContain('./grafana/provisioning:/etc/grafana/provisioning:ro');
    const sources = parseYaml(readFileSync(docker('grafana/provisioning/datasources/prometheus.yaml'), 'utf8')) as Json;
    expect(sources.datasources[0]).toMatchObject({ type: 'prometheus', url: 'http://prometheus:9090' });
    // Every panel reads the dashboard's data source variable, so it imports into any Grafana.
    for (const p of panels.filter((p) => p.type !== 'row')) expect(p.datasource?.uid, p.title).toBe('${datasource}');
  });
});

describe('every metric the dashboard and the alerts name', () => {
  let h: Harness;
  let types: Map<string, string>;
  beforeAll(async () => {
    h = await startHarness({ RATE_LIMIT_RPM: '1000' });
    // A few requests of every kind, so that the labelled series exist too.
    const generate = (payload: Json, headers: Json = h.auth) => h.app.inject({ method: 'POST', url: '/v1/generate', headers, payload });
    expect((await generate({ model: 'gpt-image-1', prompt: 'ok' })).statusCode).toBe(200);
    expect((await h.app.inject({ method: 'POST', url: '/v1/generate', payload: { model: 'gpt-image-1', prompt: 'no key' } })).statusCode).toBe(401);
    h.simulator.failNext('http500');
    expect((await generate({ model: 'gpt-image-1', prompt: 'upstream fails' })).statusCode).toBeGreaterThanOrEqual(500);
    const minted = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'limited', images_per_day: 1 } });
    const limited = { authorization: `Bearer ${minted.json().key}` };
    expect((await generate({ model: 'gpt-image-1', prompt: 'x', n: 2 }, limited)).statusCode).toBe(429);
    const job = await generate({ model: 'gpt-image-1', prompt: 'a job', async: true });
    expect((await jobWhenFinished(h, job.json().id)).status).toBe('succeeded');
    const res = await h.app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    types = typesOf(res.body);
  });
  afterAll(async () => h.close());

  it('exists in /metrics', () => {
    const named = new Map<string, string[]>();
    for (const { where, expr } of [...dashboardExprs, ...alertExprs]) {
      for (const name of metricNames(asPromQL(expr))) named.set(name, [...(named.get(name) ?? []), where]);
    }
    // Template variables (label_values(metric, label)) and alert texts name metrics too.
    for (const variable of dashboard.templating.list as Json[]) {
      for (const m of JSON.stringify(variable.query ?? '').matchAll(/label_values\((\w+)/g)) named.set(m[1]!, [`variable ${variable.name}`]);
    }
    for (const rule of rules) for (const name of metricNames(JSON.stringify(rule.annotations))) named.set(name, [`alert ${rule.alert} (annotations)`]);

    expect(named.size).toBeGreaterThan(12);
    const missing = missingFrom(types, named.keys()).map((name) => `${name} (${named.get(name)!.join(', ')})`);
    expect(missing, 'metrics named by the dashboard or alerts that /metrics does not have').toEqual([]);
  });

  it('the check fails for a metric that does not exist', () => {
    expect(missingFrom(types, metricNames('sum by (model) (rate(gateway_upstream_failures_total[5m]))'))).toEqual(['gateway_upstream_failures_total']);
    expect(missingFrom(types, metricNames('histogram_quantile(0.9, rate(gateway_jobs_bucket[5m]))'))).toEqual(['gateway_jobs_bucket']);
    expect(missingFrom(types, ['gateway_upstream_queue_wait_seconds_bucket', 'gateway_upstream_queue_wait_seconds_count', 'up'])).toEqual([]);
  });
});

describe('the upstream queue wait and finished jobs', () => {
  it('the fair queue tells how each wait ended: granted at once, granted after a wait, abandoned, timed out', async () => {
    const seen: Array<[QueueWaitOutcome, boolean]> = [];
    const queue = new FairQueue(1, 60_000, (seconds, outcome) => seen.push([outcome, seconds >= 0]));
    const never = new AbortController().signal;
    await queue.acquire('a', never);
    const second = queue.acquire('b', never);
    const leaving = new AbortController();
    const third = queue.acquire('c', leaving.signal);
    leaving.abort(new Error('client gone'));
    await expect(third).rejects.toThrow('client gone');
    queue.release();
    await second;
    expect(seen).toEqual([
      ['granted', true],
      ['abandoned', true],
      ['granted', true],
    ]);
    const short = new FairQueue(1, 1, (_seconds, outcome) => seen.push([outcome, true]));
    await short.acquire('a', never);
    await expect(short.acquire('b', never)).rejects.toMatchObject({ code: 'service_unavailable' });
    expect(seen.at(-1)).toEqual(['timed_out', true]);
  });

  it('/metrics counts queue waits by outcome and finished jobs by status and code', async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let holding = true;
    // One upstream slot; the simulator holds the first submission until released, so the second waits.
    const h = await startHarness({ UPSTREAM_MAX_CONCURRENCY: '1', RATE_LIMIT_RPM: '1000' }, { latencyMs: 1, wait: () => (holding ? held : Promise.resolve()) });
    try {
      const generate = (prompt: string) => h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt } });
      const first = generate('holds the slot');
      while (h.simulator.received.length === 0) await new Promise((r) => setTimeout(r, 5));
      const second = generate('waits for it');
      while (h.app.upstream.queueDepth === 0) await new Promise((r) => setTimeout(r, 5));
      holding = false;
      release();
      expect((await first).statusCode).toBe(200);
      expect((await second).statusCode).toBe(200);

      const accepted = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'job ok', async: true } });
      expect((await jobWhenFinished(h, accepted.json().id)).status).toBe('succeeded');
      h.simulator.failNext('http400');
      const failing = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'job fails', async: true } });
      const failed = await jobWhenFinished(h, failing.json().id);
      expect(failed.status).toBe('failed');

      const body = (await h.app.inject({ method: 'GET', url: '/metrics' })).body;
      const value = (series: string) => Number(new RegExp(`^${series.replace(/[{}"]/g, (c) => `\\${c}`)} (\\S+)$`, 'm').exec(body)?.[1]);
      expect(typesOf(body).get('gateway_upstream_queue_wait_seconds')).toBe('histogram');
      // Four submissions, each granted a slot: two at once, one after waiting, the jobs' two at once.
      expect(value('gateway_upstream_queue_wait_seconds_count{outcome="granted"}')).toBe(4);
      expect(value('gateway_jobs_finished_total{status="succeeded",code=""}')).toBe(1);
      expect(value(`gateway_jobs_finished_total{status="failed",code="${failed.error.code}"}`)).toBe(1);
    } finally {
      release();
      await h.close();
    }
  });
});
