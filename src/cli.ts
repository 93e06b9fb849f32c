#!/usr/bin/env node
/**
 * image-gateway: the gateway's command-line client (`npx image-gateway <command>`), configured by
 * GATEWAY_URL and GATEWAY_KEY. Node built-ins only (util.parseArgs, fetch), so the built dist/cli.js
 * runs without loading anything of the server.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { access, constants, readFile, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, extname, join, sep } from 'node:path';
import { parseArgs } from 'node:util';

const PROGRAM = 'image-gateway';

/** A failure to report: the message, and the exit code (1: the gateway or the machine said no; 2: the command line is wrong). */
class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

const usageError = (message: string, command?: string) =>
  new CliError(`${message}\nSee: ${PROGRAM} ${command ? `${command} ` : ''}--help`, 2);

// ---------------------------------------------------------------- talking to the gateway

interface Gateway {
  url: string;
  key: string;
}

function gatewayFromEnv(): Gateway {
  // The OpenAI SDK's base URL ends in /v1; accept it here too.
  const url = (process.env.GATEWAY_URL ?? 'http://localhost:8080').replace(/\/+$/, '').replace(/\/v1$/, '');
  if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) {
    throw new CliError(`GATEWAY_URL must be an http(s) URL such as http://localhost:8080, got "${url}"`, 2);
  }
  const key = process.env.GATEWAY_KEY?.trim();
  if (!key) throw new CliError('GATEWAY_KEY is not set: export GATEWAY_KEY=<your client key (gk-...)>', 2);
  return { url, key };
}

type Json = Record<string, any>;

/** The gateway's error body as one readable message: status, code, message, the fields at fault, the request id. */
function describeError(status: number, body: unknown): string {
  const error = (body as { error?: Json } | undefined)?.error;
  if (!error || typeof error.message !== 'string') return `the gateway answered ${status}`;
  const lines = [`${status} ${error.code}: ${error.message}`];
  for (const detail of (error.details ?? []) as Json[]) {
    if (detail.allowed === undefined) continue;
    const allowed = Array.isArray(detail.allowed) ? detail.allowed.join(', ') : String(detail.allowed);
    lines.push(`  ${detail.field ?? '(body)'}: allowed ${allowed}`);
  }
  if (error.request_id) lines.push(`  request id: ${error.request_id}`);
  return lines.join('\n');
}

async function call(gateway: Gateway, method: string, path: string, body?: { json: unknown } | { form: FormData }): Promise<Json | undefined> {
  const headers: Record<string, string> = { authorization: `Bearer ${gateway.key}` };
  let payload: string | FormData | undefined;
  if (body && 'json' in body) {
    headers['content-type'] = 'application/json';
    payload = JSON.stringify(body.json);
  } else if (body) {
    payload = body.form;
  }
  let res: Response;
  try {
    res = await fetch(`${gateway.url}${path}`, { method, headers, ...(payload !== undefined ? { body: payload } : {}) });
  } catch (err) {
    const cause = (err as { cause?: { message?: string } }).cause?.message ?? (err as Error).message;
    throw new CliError(`cannot reach the gateway at ${gateway.url} (GATEWAY_URL): ${cause}`);
  }
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text === '' ? undefined : JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (!res.ok) throw new CliError(describeError(res.status, parsed));
  return parsed as Json | undefined;
}

// ---------------------------------------------------------------- output

/** A plain text table: a header row, then the rows, columns padded to their widest cell. */
function table(headers: string[], rows: unknown[][]): string {
  const MAX_CELL = 60;
  const cell = (v: unknown) => {
    const s = v === null || v === undefined || v === '' ? '-' : Array.isArray(v) ? v.join(',') : String(v);
    return s.length > MAX_CELL ? `${s.slice(0, MAX_CELL - 1)}…` : s;
  };
  const cells = [headers, ...rows.map((r) => r.map(cell))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

const EXTENSION_OF: Record<string, string> = { 'image/png': '.png', 'image/jpeg': '.jpg', 'image/webp': '.webp' };
const MIME_OF: Record<string, string> = { '.png': 'image/png', '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.webp': 'image/webp' };

/** Where image i of n goes: `-o out.png` as is for one image, `out-1.png`, `out-2.png`, ... for several; else the image's own name. */
function outputPath(output: string | undefined, index: number, count: number, image: Json): string {
  if (output === undefined || isFolder(output)) {
    // An image answered only inline (storage full) has no URL: named by its hash.
    const name = image.url === undefined ? `img_${image.sha256}${EXTENSION_OF[image.mime_type] ?? ''}` : basename(new URL(image.url).pathname);
    return output === undefined ? name : join(output, name);
  }
  const ext = extname(output);
  const stem = ext ? output.slice(0, -ext.length) : output;
  const suffix = ext || (EXTENSION_OF[image.mime_type] ?? '');
  return count === 1 ? `${stem}${suffix}` : `${stem}-${index + 1}${suffix}`;
}

/** `-o renders/`: a folder, where the images keep their own names. */
function isFolder(output: string): boolean {
  return output.endsWith('/') || output.endsWith(sep);
}

/** Checked before anything is sent: an image paid for must have somewhere to go. */
async function checkOutputFolder(output: string | undefined): Promise<void> {
  const folder = output !== undefined && isFolder(output) ? output : dirname(output ?? 'image');
  const exists = await stat(folder).then((s) => s.isDirectory(), () => false);
  if (!exists) throw new CliError(`cannot save to ${output ?? folder}: the folder ${folder} does not exist`, 2);
  await access(folder, constants.W_OK).catch(() => {
    throw new CliError(`cannot save to ${output ?? folder}: the folder ${folder} is not writable`, 2);
  });
}

async function saveImages(result: Json, output: string | undefined): Promise<void> {
  const images = result.images as Json[];
  // The images are paid for: a file that cannot be written says where the image still is.
  const save = (path: string, bytes: Buffer, url: unknown) =>
    writeFile(path, bytes).catch((err: NodeJS.ErrnoException) => {
      throw new CliError(`cannot write ${path}: ${err.code ?? err.message}${typeof url === 'string' ? `; the image is at ${url}` : ''}`);
    });
  for (const [i, image] of images.entries()) {
    const path = outputPath(output, i, images.length, image);
    if (image.url === undefined && typeof image.b64_json === 'string') {
      // Not stored by the gateway (its storage was full): the bytes came inline.
      await save(path, Buffer.from(image.b64_json, 'base64'), undefined);
      process.stdout.write(`${path}\n`);
      continue;
    }
    // Signed capability URLs: no key needed.
    const res = await fetch(image.url).catch((err: Error) => {
      throw new CliError(`cannot download ${image.url}: ${err.message}`);
    });
    if (!res.ok) throw new CliError(`downloading image ${i + 1} answered ${res.status}`);
    await save(path, Buffer.from(await res.arrayBuffer()), image.url);
    process.stdout.write(`${path}\n`);
  }
}

// ---------------------------------------------------------------- jobs

/** The events of a `text/event-stream` body: `event:` and `data:` lines, blocks apart by a blank line; comments give `null`. */
async function* serverSentEvents(body: AsyncIterable<Uint8Array>): AsyncGenerator<{ event: string; data: string } | null> {
  const decoder = new TextDecoder();
  let pending = '';
  for await (const chunk of body) {
    pending += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = pending.indexOf('\n\n')) >= 0) {
      const lines = pending.slice(0, end).split('\n');
      pending = pending.slice(end + 2);
      const event = lines.find((l) => l.startsWith('event: '))?.slice('event: '.length);
      const data = lines.filter((l) => l.startsWith('data: ')).map((l) => l.slice('data: '.length)).join('\n');
      yield event === undefined ? null : { event, data };
    }
  }
}

/**
 * Follows a job's events (GET /v1/jobs/{id}/events) to its end, showing where it stands on stderr,
 * and answers the success body. A stream that breaks off is opened again: it replays the job's state.
 */
async function waitForJob(gateway: Gateway, accepted: Json, timeoutSeconds: number): Promise<Json> {
  const started = Date.now();
  const live = process.stderr.isTTY === true;
  const id = String(accepted.id);
  let shown = '';
  const show = (status: string) => {
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    if (live) process.stderr.write(`\r\x1b[K${id}: ${status} (${seconds} s)`);
    else if (status.split(' ')[0] !== shown) process.stderr.write(`${id}: ${status} (${seconds} s)\n`);
    shown = status.split(' ')[0]!;
  };
  const end = (line: string) => {
    if (live) process.stderr.write('\n');
    return line;
  };
  const timeout = AbortSignal.timeout(timeoutSeconds * 1000);
  const tooLong = () => new CliError(end(`${id} is still ${shown} after ${timeoutSeconds} s; it goes on at the gateway: GET /v1/jobs/${id}`));
  let status = String(accepted.status);
  show(status);
  for (;;) {
    let res: Response;
    try {
      res = await fetch(`${gateway.url}/v1/jobs/${encodeURIComponent(id)}/events`, { headers: { authorization: `Bearer ${gateway.key}` }, signal: timeout });
    } catch (err) {
      if (timeout.aborted) throw tooLong();
      const cause = (err as { cause?: { message?: string } }).cause?.message ?? (err as Error).message;
      throw new CliError(end(`cannot reach the gateway at ${gateway.url} (GATEWAY_URL): ${cause}`));
    }
    if (!res.ok) {
      const text = await res.text();
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      throw new CliError(end(describeError(res.status, parsed)));
    }
    try {
      for await (const message of serverSentEvents(res.body as unknown as AsyncIterable<Uint8Array>)) {
        // A keep-alive (null) only moves the clock on.
        if (message?.event === 'succeeded') {
          show('succeeded');
          end('');
          return JSON.parse(message.data) as Json;
        }
        if (message?.event === 'failed') {
          show('failed');
          const error = (JSON.parse(message.data) as Json) ?? {};
          throw new CliError(end(`${id} failed: ${error.code ?? 'error'}: ${error.message ?? 'no reason given'}`));
        }
        // Following broke off at the gateway (a replica stopping, say), not the job: follow again.
        if (message?.event === 'error') break;
        if (message?.event === 'queued' || message?.event === 'running') status = message.event;
        const progress = message?.event === 'progress' ? (JSON.parse(message.data) as Json).progress : undefined;
        show(typeof progress === 'number' ? `${status} ${Math.round(progress * 100)} %` : status);
      }
    } catch (err) {
      if (err instanceof CliError) throw err;
      if (timeout.aborted) throw tooLong();
      // The stream broke off (a proxy, a restart): open it again.
    }
    if (timeout.aborted) throw tooLong();
    await sleep(500);
  }
}

// ---------------------------------------------------------------- commands

interface Command {
  summary: string;
  help: string;
  run(args: string[]): Promise<void>;
}

function parse<T extends Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }>>(command: string, args: string[], options: T) {
  try {
    return parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  } catch (err) {
    throw usageError((err as Error).message, command);
  }
}

function integer(name: string, value: string | undefined, command: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^-?\d+$/.test(value)) throw usageError(`--${name} must be an integer, got "${value}"`, command);
  return Number(value);
}

function decimal(name: string, value: string | undefined, command: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw usageError(`--${name} must be a number, got "${value}"`, command);
  return n;
}

/** `--option key=value`: the value as JSON where it parses (numbers, booleans, objects), else as text. */
function parseOptions(pairs: string[] | undefined, command: string): Record<string, unknown> | undefined {
  if (!pairs?.length) return undefined;
  const options: Record<string, unknown> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw usageError(`--option takes key=value, got "${pair}"`, command);
    const raw = pair.slice(eq + 1);
    let value: unknown = raw;
    try {
      value = JSON.parse(raw);
    } catch {
      // plain text
    }
    options[pair.slice(0, eq)] = value;
  }
  return options;
}

const IMAGE_OPTIONS = {
  model: { type: 'string', short: 'm' },
  prompt: { type: 'string', short: 'p' },
  n: { type: 'string', short: 'n' },
  size: { type: 'string' },
  'aspect-ratio': { type: 'string' },
  quality: { type: 'string' },
  seed: { type: 'string' },
  'negative-prompt': { type: 'string' },
  style: { type: 'string' },
  'output-format': { type: 'string' },
  background: { type: 'string' },
  option: { type: 'string', multiple: true },
  output: { type: 'string', short: 'o' },
  timeout: { type: 'string' },
} as const;

const IMAGE_OPTIONS_HELP = `  -m, --model <id>            a catalogue id or alias (see: ${PROGRAM} models)   [required]
  -p, --prompt <text>         the prompt (or give it as the last argument)        [required]
  -n <count>                  number of images, 1..the model's max n
      --size <WxH|auto|1K..>  --aspect-ratio <W:H>  --quality <q>  --seed <int>
      --negative-prompt <t>   --style <s>  --output-format <png|jpeg|webp>  --background <b>
      --option key=value      a model-specific upstream option (repeatable; value read as JSON when it parses)
  -o, --output <file>         where to save: out.png, or out-1.png, out-2.png, ... when n > 1; a folder/ keeps their names
                              (default: the image's own name, img_<sha256>.<ext>, in this directory)
      --timeout <seconds>     stop waiting after this long (default 900; the job goes on at the gateway)
  -h, --help                  this help`;

type ImageValues = ReturnType<typeof parse<typeof IMAGE_OPTIONS>>['values'];

/** The fields shared by generate and edit, in the gateway's names; absent flags are left out. */
function imageFields(command: string, values: ImageValues, positionals: string[], promptless = false): Record<string, unknown> {
  const prompt = values.prompt ?? (positionals.length > 0 ? positionals.join(' ') : undefined);
  if (!values.model) throw usageError('--model is required', command);
  // An edit mode that takes no prompt (Ideogram's reframe) is sent without one.
  if (!prompt && !promptless) throw usageError('a prompt is required: --prompt "..." or as the last argument', command);
  const fields: Record<string, unknown> = {
    model: values.model,
    prompt,
    n: integer('n', values.n, command),
    size: values.size,
    aspect_ratio: values['aspect-ratio'],
    quality: values.quality,
    seed: integer('seed', values.seed, command),
    negative_prompt: values['negative-prompt'],
    style: values.style,
    output_format: values['output-format'],
    background: values.background,
    options: parseOptions(values.option, command),
  };
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined));
}

/** Sends the request as an async job, waits for it with progress on stderr, saves the images. */
async function runImageJob(command: string, values: { timeout?: string | undefined; output?: string | undefined }, send: (gateway: Gateway) => Promise<Json | undefined>): Promise<void> {
  const timeout = integer('timeout', values.timeout, command) ?? 900;
  const gateway = gatewayFromEnv();
  await checkOutputFolder(values.output);
  const answer = (await send(gateway))!;
  const result = 'images' in answer ? answer : await waitForJob(gateway, answer, timeout);
  await saveImages(result, values.output);
}

const generate: Command = {
  summary: 'generate images from a prompt and save them',
  help: `Usage: ${PROGRAM} generate -m <model> [options] [prompt]

Sends POST /v1/generate as an async job, shows the job's status on stderr while it runs, then
downloads the images and prints the saved paths on stdout.

${IMAGE_OPTIONS_HELP}

Example:
  ${PROGRAM} generate -m gpt-image-1 -n 2 --size 1024x1024 -o deer.png "A deer drinking in the lake"`,
  async run(args) {
    const { values, positionals } = parse('generate', args, IMAGE_OPTIONS);
    if (values.help) return void console.log(this.help);
    const body = { ...imageFields('generate', values, positionals), async: true };
    await runImageJob('generate', values, (gateway) => call(gateway, 'POST', '/v1/generate', { json: body }));
  },
};

const EDIT_OPTIONS = {
  ...IMAGE_OPTIONS,
  image: { type: 'string', short: 'i', multiple: true },
  mask: { type: 'string' },
  mode: { type: 'string' },
  'style-ref': { type: 'string', multiple: true },
} as const;

async function imageBlob(path: string, field: string): Promise<Blob> {
  try {
    const bytes = await readFile(path);
    // The gateway checks the bytes themselves; the type is a courtesy.
    return new Blob([bytes], { type: MIME_OF[extname(path).toLowerCase()] ?? 'application/octet-stream' });
  } catch (err) {
    throw new CliError(`cannot read the ${field} file ${path}: ${(err as Error).message}`);
  }
}

const edit: Command = {
  summary: 'edit images with a prompt (and a mask) and save the results',
  help: `Usage: ${PROGRAM} edit -m <model> -i <image> [-i <image> ...] [--mask <file>] [options] [prompt]

Sends POST /v1/edit (multipart) as an async job, shows the job's status on stderr while it runs,
then downloads the images and prints the saved paths on stdout.

  -i, --image <file>          an input image, PNG, JPEG or WebP (repeatable)      [required]
      --mask <file>           OpenAI's convention: transparent pixels = the area to change
      --mode <mode>           edit | remix | replace_background | reframe (default: edit with a mask, else the model's image-to-image);
                              reframe (ideogram-v3 and the legacy Ideogram models) takes no prompt and needs --size, one of the model's resolutions
      --style-ref <file>      a style reference image (repeatable; ideogram-v3 remix and replace_background)
${IMAGE_OPTIONS_HELP}

Example:
  ${PROGRAM} edit -m gpt-image-1 -i cat.png --mask mask.png -o hat.png "Put a red hat on the cat"`,
  async run(args) {
    const { values, positionals } = parse('edit', args, EDIT_OPTIONS);
    if (values.help) return void console.log(this.help);
    const fields = imageFields('edit', values, positionals, values.mode === 'reframe');
    if (!values.image?.length) throw usageError('at least one --image is required', 'edit');
    const form = new FormData();
    for (const [name, value] of Object.entries({ ...fields, ...(values.mode ? { mode: values.mode } : {}), async: true })) {
      form.append(name, typeof value === 'object' ? JSON.stringify(value) : String(value));
    }
    for (const path of values.image) form.append('image', await imageBlob(path, 'image'), basename(path));
    if (values.mask) form.append('mask', await imageBlob(values.mask, 'mask'), basename(values.mask));
    for (const path of values['style-ref'] ?? []) form.append('style_reference_images', await imageBlob(path, 'style reference'), basename(path));
    await runImageJob('edit', values, (gateway) => call(gateway, 'POST', '/v1/edit', { form }));
  },
};

const UPSCALE_OPTIONS = {
  model: { type: 'string', short: 'm' },
  image: { type: 'string', short: 'i' },
  prompt: { type: 'string', short: 'p' },
  resemblance: { type: 'string' },
  detail: { type: 'string' },
  n: { type: 'string', short: 'n' },
  seed: { type: 'string' },
  option: { type: 'string', multiple: true },
  output: { type: 'string', short: 'o' },
  timeout: { type: 'string' },
} as const;

/** Text fields and one image file as a multipart form; objects (options) JSON-encoded, absent fields left out. */
async function imageForm(fields: Record<string, unknown>, imagePath: string): Promise<FormData> {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value !== undefined) form.append(name, typeof value === 'object' ? JSON.stringify(value) : String(value));
  }
  form.append('image', await imageBlob(imagePath, 'image'), basename(imagePath));
  return form;
}

const upscale: Command = {
  summary: 'upscale an image (with an optional prompt) and save the results',
  help: `Usage: ${PROGRAM} upscale -m <model> -i <image> [options] [prompt]

Sends POST /v1/upscale (multipart) as an async job, shows the job's status on stderr while it
runs, then downloads the images and prints the saved paths on stdout.

  -m, --model <id>            a model that upscales, e.g. ideogram-upscale       [required]
  -i, --image <file>          the image to upscale, PNG, JPEG or WebP            [required]
  -p, --prompt <text>         an optional prompt to guide the upscale (or the last argument)
      --resemblance <1-100>   how closely the result keeps the source
      --detail <1-100>        how much detail the upscale adds
  -n <count>                  number of images, 1..the model's max n
      --seed <int>
      --option key=value      a model-specific option, e.g. magic_prompt_option=OFF (repeatable)
  -o, --output <file>         where to save: out.png, or out-1.png, out-2.png, ... when n > 1; a folder/ keeps their names
      --timeout <seconds>     stop waiting after this long (default 900; the job goes on at the gateway)
  -h, --help                  this help

Example:
  ${PROGRAM} upscale -m ideogram-upscale -i poster.png --resemblance 80 -o poster-large.png`,
  async run(args) {
    const { values, positionals } = parse('upscale', args, UPSCALE_OPTIONS);
    if (values.help) return void console.log(this.help);
    if (!values.model) throw usageError('--model is required', 'upscale');
    if (!values.image) throw usageError('--image is required', 'upscale');
    const prompt = values.prompt ?? (positionals.length > 0 ? positionals.join(' ') : undefined);
    const form = await imageForm(
      {
        model: values.model,
        prompt,
        resemblance: integer('resemblance', values.resemblance, 'upscale'),
        detail: integer('detail', values.detail, 'upscale'),
        n: integer('n', values.n, 'upscale'),
        seed: integer('seed', values.seed, 'upscale'),
        options: parseOptions(values.option, 'upscale'),
        async: true,
      },
      values.image,
    );
    await runImageJob('upscale', values, (gateway) => call(gateway, 'POST', '/v1/upscale', { form }));
  },
};

const describeCommand: Command = {
  summary: 'describe an image in text',
  help: `Usage: ${PROGRAM} describe -m <model> -i <image> [--option key=value]

Sends POST /v1/describe (multipart) and prints each description on stdout, a blank line apart.
Nothing is stored at the gateway.

  -m, --model <id>            a model that describes, e.g. ideogram-describe     [required]
  -i, --image <file>          the image to describe, PNG, JPEG or WebP           [required]
      --option key=value      a model-specific option, e.g. describe_model_version=V_3 (repeatable)
  -h, --help                  this help

Example:
  ${PROGRAM} describe -m ideogram-describe -i poster.png`,
  async run(args) {
    const { values, positionals } = parse('describe', args, {
      model: { type: 'string', short: 'm' },
      image: { type: 'string', short: 'i' },
      option: { type: 'string', multiple: true },
    });
    if (values.help) return void console.log(this.help);
    if (!values.model) throw usageError('--model is required', 'describe');
    if (!values.image) throw usageError('--image is required', 'describe');
    if (positionals.length > 0) throw usageError(`describe takes no prompt; got "${positionals.join(' ')}"`, 'describe');
    const form = await imageForm({ model: values.model, options: parseOptions(values.option, 'describe') }, values.image);
    const answer = (await call(gatewayFromEnv(), 'POST', '/v1/describe', { form }))!;
    const texts = (answer.descriptions as Json[]).map((d) => String(d.text));
    process.stdout.write(`${texts.join('\n\n')}\n`);
  },
};

const models: Command = {
  summary: 'list the model catalogue',
  help: `Usage: ${PROGRAM} models [model]

Without an argument: a table of every model (GET /v1/models). With a model id or alias: that
model's parameters and options (GET /v1/models/{id}).

  -h, --help   this help`,
  async run(args) {
    const { values, positionals } = parse('models', args, {});
    if (values.help) return void console.log(this.help);
    const gateway = gatewayFromEnv();
    if (positionals.length > 0) {
      const m = (await call(gateway, 'GET', `/v1/models/${encodeURIComponent(positionals[0]!)}`))!;
      const rows: unknown[][] = [
        ['id', m.id],
        ['aliases', m.aliases],
        ['operations', m.operations],
        ...(m.edit_modes ? [['edit modes', m.edit_modes]] : []),
        ['max n', m.max_n],
        ['async upstream', m.async ? 'yes' : 'no'],
        // A model priced by tokens has no price per image: its token prices instead, as the list says "by tokens".
        ...(m.price_per_image_usd == null && m.price_per_million_tokens_usd
          ? Object.entries(m.price_per_million_tokens_usd as Record<string, number>).map(([kind, usd]) => [`USD / 1M ${kind.replace('_', ' ')} tokens`, usd])
          : m.price_by_option
            ? // An option's value picks the price (ideogram-v3's rendering_speed): each value's.
              [[`USD / image by ${m.price_by_option.option}`, Object.entries(m.price_by_option.per_image_usd as Record<string, number>).map(([value, usd]) => `${value} ${usd}${value === m.price_by_option.default ? ' (default)' : ''}`)]]
            : [['USD / image', m.price_per_image_usd]]),
        // What a budget reserves per image for such a model, by quality.
        ...(m.output_tokens_per_image
          ? [['output tokens / image', Object.entries(m.output_tokens_per_image as Record<string, number>).map(([quality, tokens]) => `${quality} ${tokens}`)]]
          : []),
        ...Object.entries((m.parameters ?? {}) as Record<string, string>).map(([name, allowed]) => [name, allowed]),
        ...Object.entries((m.options ?? {}) as Record<string, string>).map(([name, allowed]) => [`options.${name}`, allowed]),
      ];
      console.log(m.description ?? '');
      console.log(table(['FIELD', 'VALUE'], rows));
      return;
    }
    const list = (await call(gateway, 'GET', '/v1/models'))!.data as Json[];
    console.log(
      table(
        ['ID', 'OPERATIONS', 'MAX N', 'SIZES', 'ASPECT RATIOS', 'ASYNC', 'USD/IMAGE'],
        list.map((m) => [
          m.id,
          m.operations,
          m.max_n,
          m.sizes?.length ? m.sizes : m.size_rule,
          m.aspect_ratios?.length ? m.aspect_ratios : m.aspect_ratio_rule,
          m.async ? 'yes' : 'no',
          m.price_per_image_usd ?? (m.price_per_million_tokens_usd ? 'by tokens' : null),
        ]),
      ),
    );
  },
};

const USAGE_METRICS = ['requests', 'images', 'errors', 'estimated_cost_usd', 'unpriced_images'];

const usage: Command = {
  summary: 'show usage as a table',
  help: `Usage: ${PROGRAM} usage [--from <date>] [--to <date>] [--group-by team,model,key,day]

Reads GET /v1/usage: a team key sees its own team, the admin key everyone. Without --from and
--to, the current UTC month; without --group-by, one row of totals.

      --from <ISO date>    start of the window (inclusive)
      --to <ISO date>      end of the window (exclusive)
  -g, --group-by <dims>    any of team, model, key, day, comma-separated
  -h, --help               this help

Example:
  ${PROGRAM} usage --from 2026-11-01 --to 2026-12-01 -g team,model`,
  async run(args) {
    const { values } = parse('usage', args, { from: { type: 'string' }, to: { type: 'string' }, 'group-by': { type: 'string', short: 'g' } });
    if (values.help) return void console.log(this.help);
    const query = new URLSearchParams();
    if (values.from) query.set('from', values.from);
    if (values.to) query.set('to', values.to);
    if (values['group-by']) query.set('group_by', values['group-by']);
    const report = (await call(gatewayFromEnv(), 'GET', `/v1/usage${query.size > 0 ? `?${query}` : ''}`))!;
    const groups = report.group_by as string[];
    const rows = report.data as Json[];
    const metrics = USAGE_METRICS.filter((name) => name !== 'unpriced_images' || rows.some((r) => r[name] !== undefined));
    console.log(`usage from ${report.from} to ${report.to}`);
    console.log(table([...groups, ...metrics].map((h) => h.toUpperCase()), rows.map((r) => [...groups, ...metrics].map((name) => r[name]))));
  },
};

const KEY_COLUMNS = ['id', 'team', 'rpm', 'images_per_day', 'monthly_budget_usd', 'models', 'admin', 'source'];

const keys: Command = {
  summary: 'manage client keys (admin key only): create, list, revoke',
  help: `Usage: ${PROGRAM} keys <create|list|revoke> [options]      (GATEWAY_KEY must be the admin key)

  keys list                              the keys' policies (never the keys themselves)
  keys create --team <team> [options]    mint a key; it is printed this once
      --id <id>                            a stable name (default: generated)
      --rpm <n>  --images-per-day <n>  --monthly-budget-usd <usd>
      --models <glob,glob>                 allow-list, e.g. "gpt-image-*,imagen-*"
      --admin                              an admin key
  keys revoke <id>                       revoke a minted key at once
  -h, --help                             this help`,
  async run(args) {
    const [action, ...rest] = args;
    if (action === undefined || action === '-h' || action === '--help' || action === 'help') return void console.log(this.help);
    if (action === 'list') {
      const { values } = parse('keys', rest, {});
      if (values.help) return void console.log(this.help);
      const list = (await call(gatewayFromEnv(), 'GET', '/v1/keys'))!.data as Json[];
      console.log(table(KEY_COLUMNS.map((c) => c.toUpperCase()), list.map((k) => KEY_COLUMNS.map((c) => (c === 'admin' ? (k.admin ? 'yes' : 'no') : k[c])))));
      return;
    }
    if (action === 'create') {
      const { values } = parse('keys', rest, {
        team: { type: 'string' },
        id: { type: 'string' },
        rpm: { type: 'string' },
        'images-per-day': { type: 'string' },
        'monthly-budget-usd': { type: 'string' },
        models: { type: 'string' },
        admin: { type: 'boolean' },
      });
      if (values.help) return void console.log(this.help);
      if (!values.team) throw usageError('--team is required', 'keys');
      const policy = Object.fromEntries(
        Object.entries({
          id: values.id,
          team: values.team,
          rpm: integer('rpm', values.rpm, 'keys'),
          images_per_day: integer('images-per-day', values['images-per-day'], 'keys'),
          monthly_budget_usd: decimal('monthly-budget-usd', values['monthly-budget-usd'], 'keys'),
          models: values.models?.split(',').map((m) => m.trim()).filter(Boolean),
          admin: values.admin,
        }).filter(([, v]) => v !== undefined),
      );
      const created = (await call(gatewayFromEnv(), 'POST', '/v1/keys', { json: policy }))!;
      console.log(table(['FIELD', 'VALUE'], [...KEY_COLUMNS.map((c) => [c, c === 'admin' ? (created.admin ? 'yes' : 'no') : created[c]]), ['key', created.key]]));
      process.stderr.write('The key is shown only this once: store it now.\n');
      return;
    }
    if (action === 'revoke') {
      const { values, positionals } = parse('keys', rest, {});
      if (values.help) return void console.log(this.help);
      if (positionals.length !== 1) throw usageError('keys revoke takes one key id', 'keys');
      await call(gatewayFromEnv(), 'DELETE', `/v1/keys/${encodeURIComponent(positionals[0]!)}`);
      console.log(`revoked ${positionals[0]}`);
      return;
    }
    throw usageError(`unknown keys action "${action}": create, list or revoke`, 'keys');
  },
};

const COMMANDS: Record<string, Command> = { generate, edit, upscale, describe: describeCommand, models, usage, keys };

const MAIN_HELP = `Usage: ${PROGRAM} <command> [options]

The Image Gateway's command-line client.

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(10)}${c.summary}`)
  .join('\n')}

Environment:
  GATEWAY_URL   the gateway's base URL (default http://localhost:8080)
  GATEWAY_KEY   your client key (the admin key for "keys")

Run "${PROGRAM} <command> --help" for a command's options.`;

async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (name === undefined || name === '-h' || name === '--help') {
    console.log(MAIN_HELP);
    return name === undefined ? 2 : 0;
  }
  if (name === 'help') {
    const command = args[0] === undefined || !Object.hasOwn(COMMANDS, args[0]) ? undefined : COMMANDS[args[0]];
    console.log(command ? command.help : MAIN_HELP);
    return 0;
  }
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!command) throw usageError(`unknown command "${name}"`);
  await command.run(args);
  return 0;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (!(err instanceof CliError)) throw err;
  process.stderr.write(`${PROGRAM}: ${err.message}\n`);
  process.exitCode = err.exitCode;
}
