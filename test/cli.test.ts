/**
 * The command-line client as users run it: the built dist/cli.js in a child process, configured by
 * GATEWAY_URL and GATEWAY_KEY, against a gateway listening on a real port.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, CLIENT_KEY, makeHalfTransparentMask, makePng, startHarness, type Harness } from './harness.js';

const root = new URL('..', import.meta.url).pathname;
const PNG_MAGIC = '89504e470d0a1a0a';

let h: Harness;
let gatewayUrl: string;
let workDir: string;

interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface CliOptions {
  key?: string | undefined;
  url?: string;
  /** Called with the stderr seen so far, each time more arrives. */
  onStderr?: (stderr: string) => void;
}

function cli(args: string[], options: CliOptions = {}): Promise<CliRun> {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '', GATEWAY_URL: options.url ?? gatewayUrl };
  const key = 'key' in options ? options.key : CLIENT_KEY;
  if (key !== undefined) env.GATEWAY_KEY = key;
  const child = spawn(process.execPath, [join(root, 'dist/cli.js'), ...args], { cwd: workDir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
    options.onStderr?.(stderr);
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
const submissions = () => h.simulator.received.filter((r) => r.method === 'POST');

beforeAll(async () => {
  h = await startHarness({ RATE_LIMIT_RPM: '1000' });
  gatewayUrl = await h.app.listen({ port: 0, host: '127.0.0.1' });
  workDir = mkdtempSync(join(tmpdir(), 'gw-cli-'));
}, 60_000);

afterAll(async () => {
  await h?.close();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

beforeEach(() => h.simulator.reset());

describe('help', () => {
  it('lists the commands and the environment it reads', async () => {
    const run = await cli(['--help'], { key: undefined });
    expect(run.code).toBe(0);
    for (const command of ['generate', 'edit', 'upscale', 'describe', 'models', 'usage', 'keys']) expect(run.stdout).toContain(`  ${command}`);
    expect(run.stdout).toMatch(/GATEWAY_URL/);
    expect(run.stdout).toMatch(/GATEWAY_KEY/);
  });

  it.each(['generate', 'edit', 'upscale', 'describe', 'models', 'usage', 'keys'])('%s --help explains the command without calling the gateway', async (command) => {
    const run = await cli([command, '--help'], { key: undefined });
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(new RegExp(`^Usage: image-gateway ${command}`));
  });
});

describe('generate', () => {
  it('saves n images as numbered files, printing their paths, with the job status on stderr', async () => {
    const run = await cli(['generate', '-m', 'gpt-image-1', '-n', '2', '--size', '1024x1024', '-o', 'deer.png', 'A deer drinking in the lake']);
    expect(run.stderr).toMatch(/^job_\S+: (queued|running) \(\d+\.\d s\)\n[\s\S]*job_\S+: succeeded/);
    expect(run.code).toBe(0);
    expect(run.stdout.trim().split('\n')).toEqual(['deer-1.png', 'deer-2.png']);
    for (const file of ['deer-1.png', 'deer-2.png']) {
      expect(readFileSync(join(workDir, file)).subarray(0, 8).toString('hex')).toBe(PNG_MAGIC);
    }
    expect(submissions()).toHaveLength(1);
    expect(submissions()[0]!.json).toEqual({ input: { prompt: 'A deer drinking in the lake', n: 2, size: '1024x1024' } });
  });

  it('without -o, names the file after the image', async () => {
    const run = await cli(['generate', '-m', 'dall-e-3', '--prompt', 'a lighthouse']);
    expect(run.code).toBe(0);
    const file = run.stdout.trim();
    expect(file).toMatch(/^img_([0-9a-f]{64})\.png$/);
    expect(sha256(readFileSync(join(workDir, file)))).toBe(file.slice(4, 68));
  });

  it('shows the job running while an asynchronous upstream task is pending', async () => {
    h.simulator.holdTasks = true;
    let released = false;
    const run = await cli(['generate', '-m', 'flux-kontext-pro', '--aspect-ratio', '16:9', '--option', 'safety_tolerance=2', '-o', 'flux.png', 'a lighthouse at dusk'], {
      onStderr: (stderr) => {
        if (!released && /: running/.test(stderr)) {
          released = true;
          h.simulator.holdTasks = false;
        }
      },
    });
    expect(released).toBe(true);
    expect(run.stderr).toMatch(/: running[\s\S]*: succeeded/);
    expect(run.code).toBe(0);
    expect(run.stdout.trim()).toBe('flux.png');
    expect(submissions()[0]!.json).toMatchObject({ input: { aspect_ratio: '16:9', safety_tolerance: 2 } });
  });

  it('stops waiting after --timeout, saying the job goes on at the gateway', async () => {
    h.simulator.holdTasks = true;
    try {
      const run = await cli(['generate', '-m', 'flux-kontext-pro', '--timeout', '1', '-o', 'late.png', 'held']);
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(/image-gateway: (job_\S+) is still running after 1 s; it goes on at the gateway: GET \/v1\/jobs\/\1/);
      expect(existsSync(join(workDir, 'late.png'))).toBe(false);
    } finally {
      h.simulator.holdTasks = false;
    }
  });

  it('an -o folder that does not exist is refused before anything is sent', async () => {
    const run = await cli(['generate', '-m', 'gpt-image-1', '-o', 'nowhere/deer.png', 'A deer']);
    expect(run.code).toBe(2);
    expect(run.stderr).toBe('image-gateway: cannot save to nowhere/deer.png: the folder nowhere does not exist\n');
    expect(submissions()).toHaveLength(0);
  });

  it('-o folder/ saves into that folder under the images’ own names, and refuses one that does not exist before sending', async () => {
    const missing = await cli(['generate', '-m', 'gpt-image-1', '-o', 'renders/', 'A deer']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toBe('image-gateway: cannot save to renders/: the folder renders/ does not exist\n');
    expect(submissions()).toHaveLength(0);
    mkdirSync(join(workDir, 'renders'));
    try {
      const run = await cli(['generate', '-m', 'gpt-image-1', '-n', '2', '-o', 'renders/', 'A deer']);
      expect(run.code).toBe(0);
      const files = run.stdout.trim().split('\n');
      expect(files).toHaveLength(2);
      for (const file of files) {
        expect(file).toMatch(/^renders\/img_[0-9a-f]{64}\.png$/);
        expect(readFileSync(join(workDir, file)).subarray(0, 8).toString('hex')).toBe(PNG_MAGIC);
      }
    } finally {
      rmSync(join(workDir, 'renders'), { recursive: true, force: true });
    }
  });

  it('an image that cannot be written is reported with its URL, not a stack trace', async () => {
    mkdirSync(join(workDir, 'taken.png'));
    try {
      const run = await cli(['generate', '-m', 'gpt-image-1', '-o', 'taken.png', 'A deer']);
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(/^(job_\S+: \w+ \(\d+\.\d s\)\n)*image-gateway: cannot write taken\.png: EISDIR; the image is at http:\/\/\S+\/v1\/images\/img_\S+\n$/);
      expect(submissions()).toHaveLength(1);
    } finally {
      rmSync(join(workDir, 'taken.png'), { recursive: true, force: true });
    }
  });

  it('a job that fails upstream ends with the gateway’s reason and exit code 1', async () => {
    h.simulator.failNext('http500');
    const run = await cli(['generate', '-m', 'gpt-image-1', '-o', 'never.png', 'x']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/image-gateway: job_\S+ failed: upstream_error: /);
    expect(existsSync(join(workDir, 'never.png'))).toBe(false);
  });

  it('a value the model does not take is refused with the gateway’s message naming the field', async () => {
    const run = await cli(['generate', '-m', 'gpt-image-1', '--size', '640x480', 'x']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^image-gateway: 400 invalid_request: size: must be one of/);
    expect(run.stderr).toMatch(/request id: req_/);
    expect(submissions()).toHaveLength(0);
  });

  it('a wrong command line is exit code 2 with a pointer to --help', async () => {
    const missing = await cli(['generate', 'no model']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--model is required\nSee: image-gateway generate --help/);
    const badN = await cli(['generate', '-m', 'gpt-image-1', '-n', 'two', 'x']);
    expect(badN.code).toBe(2);
    expect(badN.stderr).toMatch(/--n must be an integer/);
  });
});

describe('edit', () => {
  it('uploads the image and the mask and saves the result', async () => {
    writeFileSync(join(workDir, 'cat.png'), await makePng());
    writeFileSync(join(workDir, 'mask.png'), await makeHalfTransparentMask());
    const run = await cli(['edit', '-m', 'gpt-image-1', '-i', 'cat.png', '--mask', 'mask.png', '-o', 'hat.png', 'Put a red hat on the cat']);
    expect(run.code).toBe(0);
    expect(run.stdout.trim()).toBe('hat.png');
    expect(readFileSync(join(workDir, 'hat.png')).subarray(0, 8).toString('hex')).toBe(PNG_MAGIC);
    const upstream = submissions()[0]!;
    expect(upstream.path).toBe('/v1/images/edits');
    expect(upstream.files?.map((f) => f.field)).toEqual(['image', 'mask']);
    expect(upstream.fields).toMatchObject({ prompt: 'Put a red hat on the cat' });
  });

  it('reframes with no prompt, and remixes with style reference files (ideogram-v3)', async () => {
    writeFileSync(join(workDir, 'square.png'), await makePng(64, 64));
    writeFileSync(join(workDir, 'style.png'), await makePng(16, 16, { r: 0, g: 0, b: 255 }));
    const reframe = await cli(['edit', '-m', 'ideogram-v3', '--mode', 'reframe', '--size', '1280x768', '-i', 'square.png', '-o', 'wide.png']);
    expect(reframe.code, reframe.stderr).toBe(0);
    expect(submissions()[0]!).toMatchObject({ path: '/ideogram/v1/ideogram-v3/reframe', fields: { resolution: '1280x768' } });
    expect(submissions()[0]!.fields).not.toHaveProperty('prompt');
    h.simulator.reset();
    const remix = await cli(['edit', '-m', 'ideogram-v3', '-i', 'square.png', '--style-ref', 'style.png', '--style-ref', 'style.png', '-o', 'remix.png', 'the same, in winter']);
    expect(remix.code, remix.stderr).toBe(0);
    expect(submissions()[0]!.path).toBe('/ideogram/v1/ideogram-v3/remix');
    expect(submissions()[0]!.files?.map((f) => f.field)).toEqual(['image', 'style_reference_images', 'style_reference_images']);
  });

  it('reframes with a legacy model, with no prompt (ideogram-v2: /ideogram/reframe)', async () => {
    writeFileSync(join(workDir, 'square.png'), await makePng(64, 64));
    const reframe = await cli(['edit', '-m', 'ideogram-v2', '--mode', 'reframe', '--size', '1024x768', '-i', 'square.png', '-o', 'wide.png']);
    expect(reframe.code, reframe.stderr).toBe(0);
    expect(submissions()[0]!).toMatchObject({ path: '/ideogram/reframe', fields: { model: 'V_2', resolution: 'RESOLUTION_1024_768' } });
    expect(submissions()[0]!.files?.map((f) => f.field)).toEqual(['image_file']);
    expect(reframe.stdout.trim()).toMatch(/wide\.png$/);
  });

  it('a missing input file is a clear error', async () => {
    const run = await cli(['edit', '-m', 'gpt-image-1', '-i', 'nope.png', 'x']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/cannot read the image file nope\.png/);
  });
});

describe('upscale', () => {
  it('uploads the image with its fields as image_file and image_request upstream, and saves the results', async () => {
    const source = await makePng(40, 24);
    writeFileSync(join(workDir, 'poster.png'), source);
    const run = await cli(['upscale', '-m', 'ideogram-upscale', '-i', 'poster.png', '--resemblance', '80', '--detail', '30', '-n', '2', '--option', 'magic_prompt_option=OFF', '-o', 'large.png', 'sharper letters']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout.trim().split('\n')).toEqual(['large-1.png', 'large-2.png']);
    expect(readFileSync(join(workDir, 'large-1.png')).subarray(0, 8).toString('hex')).toBe(PNG_MAGIC);
    const upstream = submissions()[0]!;
    expect(upstream.path).toBe('/ideogram/upscale');
    expect(upstream.files?.map((f) => [f.field, f.sha256])).toEqual([['image_file', sha256(source)]]);
    expect(JSON.parse(upstream.fields!.image_request as string)).toEqual({ prompt: 'sharper letters', resemblance: 80, detail: 30, num_images: 2, magic_prompt_option: 'OFF' });
  });

  it('a value out of the model’s range is the gateway’s 400 naming the field, and nothing goes upstream', async () => {
    writeFileSync(join(workDir, 'poster.png'), await makePng());
    const run = await cli(['upscale', '-m', 'ideogram-upscale', '-i', 'poster.png', '--resemblance', '101']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/400 invalid_request: resemblance: must be an integer from 1 to 100/);
    expect(submissions()).toHaveLength(0);
  });

  it('without --image is exit code 2', async () => {
    const run = await cli(['upscale', '-m', 'ideogram-upscale']);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/--image is required/);
  });
});

describe('describe', () => {
  it('prints the descriptions, sending the image and the option upstream', async () => {
    const source = await makePng(20, 20);
    writeFileSync(join(workDir, 'photo.png'), source);
    const run = await cli(['describe', '-m', 'ideogram-describe', '-i', 'photo.png', '--option', 'describe_model_version=V_2']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^A simulated description \(V_2\)/);
    const upstream = submissions()[0]!;
    expect(upstream.path).toBe('/ideogram/describe');
    expect(upstream.fields).toEqual({ describe_model_version: 'V_2' });
    expect(upstream.files?.map((f) => [f.field, f.sha256])).toEqual([['image_file', sha256(source)]]);
  });

  it('a model that does not describe is the gateway’s 400', async () => {
    writeFileSync(join(workDir, 'photo.png'), await makePng());
    const run = await cli(['describe', '-m', 'gpt-image-1', '-i', 'photo.png']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/gpt-image-1 does not describe images/);
    expect(submissions()).toHaveLength(0);
  });
});

describe('models', () => {
  it('prints the catalogue as a table', async () => {
    const run = await cli(['models']);
    expect(run.code).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^ID\s+OPERATIONS\s+MAX N\s+SIZES\s+ASPECT RATIOS\s+ASYNC\s+USD\/IMAGE$/);
    const ids = (await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })).json().data.map((m: { id: string }) => m.id);
    expect(lines.slice(1).map((l) => l.split(/\s+/)[0])).toEqual(ids);
    expect(lines.find((l) => l.startsWith('ideogram-v3 '))).toMatch(/generate,edit\s+8\s/);
  });

  it('describes one model by id or alias', async () => {
    const run = await cli(['models', 'bfl/FLUX-1.1-pro']);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^id\s+FLUX-1\.1-pro$/m);
    expect(run.stdout).toMatch(/^options\.safety_tolerance\s+an integer from 0 to 6$/m);
    // No price in AiHubMix's documents for Flux: the row says so.
    expect(run.stdout).toMatch(/^USD \/ image\s+-$/m);
  });

  it('gives a model priced by tokens its token prices, where the list says "by tokens"', async () => {
    const model = (await h.app.inject({ method: 'GET', url: '/v1/models/gpt-image-1', headers: h.auth })).json();
    const run = await cli(['models', 'gpt-image-1']);
    expect(run.code).toBe(0);
    expect(run.stdout).not.toMatch(/^USD \/ image/m);
    expect(run.stdout).toMatch(new RegExp(`^USD / 1M text input tokens\\s+${model.price_per_million_tokens_usd.text_input}$`, 'm'));
    expect(run.stdout).toMatch(new RegExp(`^USD / 1M image output tokens\\s+${model.price_per_million_tokens_usd.image_output}$`, 'm'));
    expect(run.stdout).toMatch(/^output tokens \/ image\s+low 408,medium 1584,high 6240$/m);
  });

  it('gives a model whose price an option picks each value\'s price (ideogram-v3, rendering_speed)', async () => {
    const run = await cli(['models', 'ideogram-v3']);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^USD \/ image by rendering_speed\s+TURBO 0\.03,DEFAULT 0\.06 \(default\),QUALITY 0\.09$/m);
  });
});

describe('usage', () => {
  it('prints GET /v1/usage as a table, grouped as asked', async () => {
    await cli(['generate', '-m', 'imagen-4.0-generate-001', '-n', '3', '-o', 'usage.png', 'counted']);
    const report = (await h.app.inject({ method: 'GET', url: '/v1/usage?group_by=model', headers: h.auth })).json();
    const imagen = report.data.find((r: { model: string }) => r.model === 'imagen-4.0-generate-001');
    const run = await cli(['usage', '-g', 'model']);
    expect(run.code).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines[0]).toBe(`usage from ${report.from} to ${report.to}`);
    expect(lines[1]).toMatch(/^MODEL\s+REQUESTS\s+IMAGES\s+ERRORS\s+ESTIMATED_COST_USD/);
    expect(lines.find((l) => l.startsWith('imagen-4.0-generate-001 '))!.split(/\s+/).slice(1, 4)).toEqual([String(imagen.requests), String(imagen.images), String(imagen.errors)]);
  });

  it('a bad group is the gateway’s 400', async () => {
    const run = await cli(['usage', '-g', 'colour']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/400 invalid_request: .*group_by/);
  });
});

describe('keys', () => {
  it('creates, lists and revokes a key with the admin key', async () => {
    const admin = { key: ADMIN_KEY };
    const created = await cli(['keys', 'create', '--team', 'cli', '--id', 'cli-test', '--rpm', '5', '--models', 'gpt-image-*,imagen-*'], admin);
    expect(created.code).toBe(0);
    const key = /^key\s+(gk-\S+)$/m.exec(created.stdout)?.[1];
    expect(key).toBeDefined();
    expect(created.stdout).toMatch(/^models\s+gpt-image-\*,imagen-\*$/m);
    expect(created.stderr).toMatch(/shown only this once/);

    expect((await cli(['models'], { key })).code).toBe(0);
    const list = await cli(['keys', 'list'], admin);
    expect(list.stdout).toMatch(/^cli-test\s+cli\s+5\s/m);
    expect(list.stdout).not.toContain(key);

    const revoked = await cli(['keys', 'revoke', 'cli-test'], admin);
    expect(revoked.code).toBe(0);
    const refused = await cli(['models'], { key });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/401 unauthorized/);
  });

  it('a team key is refused with the gateway’s 403', async () => {
    const run = await cli(['keys', 'list']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^image-gateway: 403 forbidden: only the admin key may manage keys/);
  });
});

describe('configuration', () => {
  it('without GATEWAY_KEY says what to set, exit code 2', async () => {
    const run = await cli(['models'], { key: undefined });
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/GATEWAY_KEY is not set/);
  });

  it('an unreachable gateway names GATEWAY_URL, exit code 1', async () => {
    const run = await cli(['models'], { url: 'http://127.0.0.1:9' });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/cannot reach the gateway at http:\/\/127\.0\.0\.1:9 \(GATEWAY_URL\)/);
  });

  it('an unknown command is exit code 2', async () => {
    const run = await cli(['paint']);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/unknown command "paint"/);
  });
});
