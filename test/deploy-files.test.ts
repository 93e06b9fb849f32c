/**
 * The deployment files under docker/ parse, and are wired the way several replicas need: one
 * environment (IMAGE_URL_SECRET, REDIS_URL, DATABASE_URL, S3) for every replica, a valid gateway
 * configuration, health checks on /healthz and /readyz, and names that point at each other.
 * No container engine runs here, so this is what can be checked without one.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';

const dockerDir = new URL('../docker/', import.meta.url).pathname;

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return yamlFiles(path);
    return /\.ya?ml$/.test(entry.name) ? [path] : [];
  });
}

type Json = Record<string, any>;

function documents(path: string): Json[] {
  return parseAllDocuments(readFileSync(path, 'utf8')).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`${relative(dockerDir, path)}: ${doc.errors.map((e) => e.message).join('; ')}`);
    return doc.toJS() as Json;
  });
}

/** Compose's `${NAME:-default}` becomes the default, `${NAME:?message}` (must be set) a valid stand-in. */
function interpolate(value: string): string {
  return value
    .replace(/\$\{(\w+):-([^}]*)\}/g, (_, _name, fallback: string) => fallback)
    .replace(/\$\{(\w+):\?[^}]*\}/g, (_, name: string) => `set-${name.toLowerCase()}-0123456789abcdef0123456789`);
}

/** Every variable is one the gateway reads, and together they are a configuration it starts with. */
function expectValidGatewayConfig(env: Record<string, string>): void {
  const config = loadConfig(env, { requireUpstreamKey: true }) as Record<string, unknown>;
  const unknown = Object.keys(env).filter((name) => !(name in config));
  expect(unknown, 'variables the gateway does not read').toEqual([]);
}

describe('every YAML file under docker/', () => {
  const files = yamlFiles(dockerDir);

  it('includes the compose file and the Kubernetes manifests', () => {
    const names = files.map((f) => relative(dockerDir, f)).sort();
    expect(names).toEqual(expect.arrayContaining(['compose.yaml', 'prometheus.yaml', 'k8s/deployment.yaml', 'k8s/service.yaml', 'k8s/secret.yaml', 'k8s/configmap.yaml', 'k8s/hpa.yaml']));
  });

  it.each(files.map((f) => [relative(dockerDir, f), f]))('%s parses', (_name, path) => {
    const docs = documents(path);
    expect(docs.length).toBeGreaterThan(0);
    for (const doc of docs) expect(typeof doc).toBe('object');
  });
});

describe('docker/compose.yaml', () => {
  const compose = documents(join(dockerDir, 'compose.yaml'))[0]!;
  const services = compose.services as Record<string, Json>;
  const replicas = ['gateway-1', 'gateway-2'];
  const envOf = (service: string): Record<string, string> =>
    Object.fromEntries(Object.entries(services[service]!.environment as Record<string, unknown>).map(([k, v]) => [k, interpolate(String(v))]));

  it('runs nginx, two gateway replicas, Redis, PostgreSQL and MinIO', () => {
    expect(Object.keys(services)).toEqual(expect.arrayContaining(['nginx', ...replicas, 'redis', 'postgres', 'minio']));
  });

  it('gives both replicas the same environment: secret, Redis, PostgreSQL and S3', () => {
    const [first, second] = replicas.map(envOf);
    expect(second).toEqual(first);
    expect(first!.IMAGE_URL_SECRET).toBeDefined();
    expect(compose.services['gateway-1'].environment.IMAGE_URL_SECRET).toMatch(/^\$\{IMAGE_URL_SECRET:\?/);
    expect(new URL(first!.REDIS_URL!).host).toBe('redis:6379');
    expect(new URL(first!.DATABASE_URL!).host).toBe('postgres:5432');
    expect(new URL(first!.S3_ENDPOINT!).host).toBe('minio:9000');
    expect(first!.S3_FORCE_PATH_STYLE).toBe('1');
    expect(first!.AWS_SECRET_ACCESS_KEY).toBe(interpolate(String(services.minio!.environment.MINIO_ROOT_PASSWORD)));
    expect(new URL(first!.DATABASE_URL!).password).toBe(interpolate(String(services.postgres!.environment.POSTGRES_PASSWORD)));
  });

  it('is a configuration the gateway starts with', () => {
    expectValidGatewayConfig(envOf('gateway-1'));
  });

  it('checks each replica’s readiness and waits for the shared services to be healthy', () => {
    for (const replica of replicas) {
      const service = services[replica]!;
      expect(service.healthcheck.test.join(' ')).toContain('/readyz');
      for (const dependency of ['redis', 'postgres']) expect(service.depends_on[dependency].condition).toBe('service_healthy');
    }
    for (const name of ['nginx', 'redis', 'postgres', 'minio']) expect(services[name]!.healthcheck?.test).toBeDefined();
  });

  it('serves /metrics on each replica’s own metrics port, published nowhere, which Prometheus scrapes', () => {
    for (const replica of replicas) {
      expect(envOf(replica).METRICS_PORT).toBe('9464');
      // Bound on the compose network (Prometheus is another container), yet no port is published.
      expect(envOf(replica).METRICS_HOST).toBe('0.0.0.0');
      expect(services[replica]!.ports).toBeUndefined();
    }
    const prometheus = documents(join(dockerDir, 'prometheus.yaml'))[0]!;
    const job = (prometheus.scrape_configs as Json[]).find((j) => j.job_name === 'image-gateway')!;
    expect(job.metrics_path ?? '/metrics').toBe('/metrics');
    expect(job.static_configs.flatMap((c: Json) => c.targets).sort()).toEqual(replicas.map((r) => `${r}:9464`));
    expect(services.prometheus!.volumes).toContain('./prometheus.yaml:/etc/prometheus/prometheus.yaml:ro');
    expect(services.prometheus!.command.join(' ')).toContain('--config.file=/etc/prometheus/prometheus.yaml');
    // Not published beyond this machine.
    for (const port of services.prometheus!.ports as string[]) expect(interpolate(port)).toMatch(/^127\.0\.0\.1:/);
  });

  it('nginx round-robins over both replicas on the gateway port', () => {
    const conf = readFileSync(join(dockerDir, 'nginx.conf'), 'utf8');
    const upstream = /upstream gateway \{([^}]*)\}/.exec(conf)?.[1] ?? '';
    const servers = [...upstream.matchAll(/^\s*server\s+([\w.-]+):(\d+)/gm)].map((m) => `${m[1]}:${m[2]}`);
    expect(servers).toEqual(replicas.map((r) => `${r}:8080`));
    // Round-robin is nginx's default: no other balancing method may be named.
    expect(upstream).not.toMatch(/\b(least_conn|ip_hash|hash|random)\b/);
    expect(conf).toMatch(/proxy_pass http:\/\/gateway;/);
    expect(services.nginx!.volumes).toContain('./nginx.conf:/etc/nginx/nginx.conf:ro');
  });

  it('nginx sets X-Forwarded-For, -Host and -Proto itself, overwriting what the client sent', () => {
    const conf = readFileSync(join(dockerDir, 'nginx.conf'), 'utf8');
    const header = (name: string) => new RegExp(`^\\s*proxy_set_header ${name} (\\S+);`, 'mi').exec(conf)?.[1];
    // $proxy_add_x_forwarded_for appends to the client's list; with one trusted hop the gateway reads its last entry, nginx's.
    expect(['$remote_addr', '$proxy_add_x_forwarded_for']).toContain(header('X-Forwarded-For'));
    expect(header('X-Forwarded-Host')).toBe('$host');
    expect(header('X-Forwarded-Proto')).toBe('$scheme');
    // The replicas trust exactly that one hop, never every hop.
    expect(replicas.map((r) => services[r]!.environment.TRUST_PROXY)).toEqual(replicas.map(() => '1'));
  });

  it('nginx passes event streams on unbuffered and outlasts a long render', () => {
    const conf = readFileSync(join(dockerDir, 'nginx.conf'), 'utf8');
    // Streams are unbuffered by the gateway's own X-Accel-Buffering: no, which nginx must not ignore.
    expect(conf).not.toMatch(/proxy_ignore_headers[^;]*X-Accel-Buffering/i);
    expect(conf).not.toMatch(/^\s*proxy_buffering on;/m);
    expect(conf).not.toMatch(/^\s*gzip on;/m);
    // Longer than UPSTREAM_TIMEOUT_MS's default (180 s) and than the longest long-poll (60 s).
    const seconds = (name: string) => Number(new RegExp(`^\\s*${name} (\\d+)s;`, 'm').exec(conf)?.[1]);
    expect(seconds('proxy_read_timeout')).toBeGreaterThan(180);
    expect(seconds('proxy_send_timeout')).toBeGreaterThan(180);
  });
});

describe('docker/k8s', () => {
  const k8s = (file: string) => documents(join(dockerDir, 'k8s', file))[0]!;
  const deployment = k8s('deployment.yaml');
  const configMap = k8s('configmap.yaml');
  const secret = k8s('secret.yaml');
  const container = deployment.spec.template.spec.containers[0];

  it('probes liveness at /healthz and readiness at /readyz on the container’s port', () => {
    const port = container.ports.find((p: Json) => p.name === container.livenessProbe.httpGet.port);
    expect(port.containerPort).toBe(8080);
    expect(container.livenessProbe.httpGet.path).toBe('/healthz');
    expect(container.readinessProbe.httpGet.path).toBe('/readyz');
  });

  it('serves /metrics on a port of its own, annotated for Prometheus and not exposed by the Service', () => {
    expect(configMap.data.METRICS_PORT).toBe('9464');
    const metricsPort = container.ports.find((p: Json) => p.name === 'metrics');
    expect(metricsPort.containerPort).toBe(9464);
    const annotations = deployment.spec.template.metadata.annotations;
    expect(annotations['prometheus.io/port']).toBe('9464');
    expect(annotations['prometheus.io/path']).toBe('/metrics');
    const service = k8s('service.yaml');
    expect(service.spec.ports.map((p: Json) => p.targetPort)).not.toContain('metrics');
    expect(service.spec.ports.map((p: Json) => p.targetPort)).not.toContain(9464);
  });

  it('feeds every pod the ConfigMap and the Secret, which hold the shared settings', () => {
    expect(container.envFrom).toEqual([{ configMapRef: { name: configMap.metadata.name } }, { secretRef: { name: secret.metadata.name } }]);
    for (const name of ['IMAGE_URL_SECRET', 'REDIS_URL', 'DATABASE_URL', 'AWS_SECRET_ACCESS_KEY']) expect(secret.stringData[name]).toBeDefined();
    expect(configMap.data.S3_BUCKET).toBeDefined();
  });

  it('ConfigMap and Secret together are a configuration the gateway starts with, once the secrets are real', () => {
    const env = Object.fromEntries(container.env.map((e: Json) => [e.name, e.value]));
    const real = Object.fromEntries(
      Object.entries(secret.stringData as Record<string, string>).map(([name, value]) => [name, value.replace(/replace-me/g, 'r3al-s3cret')]),
    );
    expectValidGatewayConfig({ ...configMap.data, ...real, ...env });
  });

  it('the Secret’s example values are refused by a real start, naming them', () => {
    const env = Object.fromEntries(container.env.map((e: Json) => [e.name, e.value]));
    expect(() => loadConfig({ ...configMap.data, ...secret.stringData, ...env }, { requireUpstreamKey: true })).toThrow(/AIHUBMIX_API_KEY.*still hold the example value/);
  });

  it('the Service selects the Deployment’s pods, and the autoscaler scales the Deployment', () => {
    const service = k8s('service.yaml');
    const labels = deployment.spec.template.metadata.labels;
    for (const [k, v] of Object.entries(service.spec.selector)) expect(labels[k]).toBe(v);
    expect(service.spec.ports[0].targetPort).toBe('http');
    const hpa = k8s('hpa.yaml');
    expect(hpa.spec.scaleTargetRef).toMatchObject({ kind: 'Deployment', name: deployment.metadata.name });
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2);
    // A CPU utilization target needs a CPU request to measure against.
    expect(container.resources.requests.cpu).toBeDefined();
  });

  it('the kustomization lists every manifest', () => {
    const listed = k8s('kustomization.yaml').resources as string[];
    const manifests = readdirSync(join(dockerDir, 'k8s')).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
    expect([...listed].sort()).toEqual(manifests.sort());
  });
});

describe('the image build context (.dockerignore)', () => {
  it('leaves out secrets and local state wherever they lie: docker/.env (the compose passwords), the data and demo folders', () => {
    const repo = new URL('../', import.meta.url).pathname;
    const ignored = readFileSync(join(repo, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    expect(ignored).toEqual(expect.arrayContaining(['**/.env', '**/.env.*', 'data', 'data-demo', 'node_modules', '.git']));
  });
});

describe('how the gateway process is started', () => {
  const repo = new URL('../', import.meta.url).pathname;
  // `exec`: the shell npm runs the script in gives way to node (npm's signals reach it); the image runs node itself.
  const startScript = (JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.start!.replace(/^exec /, '');
  const cmdLine = /^CMD (\[.*\])$/m.exec(readFileSync(join(repo, 'Dockerfile'), 'utf8'))?.[1];

  it('the image runs the server with the same Node flags as `npm start`', () => {
    expect(cmdLine).toBeDefined();
    const cmd = JSON.parse(cmdLine!) as string[];
    expect(cmd.join(' ')).toBe(startScript);
  });

  it('sets V8’s young generation to 16 MB, which Node sizes from the machine’s memory otherwise', () => {
    expect(startScript).toMatch(/--max-semi-space-size=16 dist\/server\.js$/);
  });
});
