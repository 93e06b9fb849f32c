/**
 * Following a job without polling: its event stream (replayed, then live, here or on another
 * replica) and the long-poll `GET /v1/jobs/{id}?wait=N`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, OTHER_CLIENT_KEY, jobWhenFinished, startHarness, startListening, type Harness, type ListeningHarness } from './harness.js';
import { freshRedis, redisProblem } from './services.js';
import { eventsOf, parseSse, readStream } from './sse.js';

let h: ListeningHarness;
let base: string;
const fetch: ListeningHarness['fetch'] = (url, init) => h.fetch(url, init);

beforeAll(async () => {
  h = await startListening({ RATE_LIMIT_RPM: '1000' });
  base = h.base;
});
afterAll(async () => h.close());
beforeEach(() => {
  h.simulator.reset();
  h.simulator.holdTasks = false;
});

async function submit(target: Harness, body: Record<string, unknown>): Promise<string> {
  const res = await target.app.inject({ method: 'POST', url: '/v1/generate', headers: target.auth, payload: { ...body, async: true } });
  expect(res.statusCode).toBe(202);
  return res.json().id;
}

const pollsOf = (target: Harness) => target.simulator.received.filter((r) => r.path.startsWith('/v1/tasks/'));

async function until(ready: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 250 && !ready(); i++) await new Promise((r) => setTimeout(r, 20));
  if (!ready()) throw new Error(`timed out waiting for ${what}`);
}

describe('GET /v1/jobs/{id}/events', () => {
  it('replays a finished job’s last event at once, with the job’s result, and ends', async () => {
    const id = await submit(h, { model: 'gpt-image-1', prompt: 'done already' });
    const job = await jobWhenFinished(h, id);
    const res = await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}/events`, headers: h.auth });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    const events = eventsOf(parseSse(res.body));
    expect(events).toEqual([{ event: 'succeeded', data: job.result }]);
  });

  it('replays a failed job as `failed` with its error object', async () => {
    h.simulator.failNext('task_error');
    const id = await submit(h, { model: 'flux-kontext-pro', prompt: 'will fail' });
    const job = await jobWhenFinished(h, id);
    expect(job.status).toBe('failed');
    const events = eventsOf(parseSse((await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}/events`, headers: h.auth })).body));
    expect(events).toEqual([{ event: 'failed', data: job.error }]);
  });

  it('follows a running job live: its state first, then the task, the image and the result', async () => {
    h.simulator.holdTasks = true;
    const id = await submit(h, { model: 'flux-kontext-pro', prompt: 'followed live', response_format: 'b64_json' });
    await until(() => pollsOf(h).length > 0, 'the task to be polled');
    const res = await fetch(`${base}/v1/jobs/${id}/events`, { headers: h.auth });
    const blocks = await readStream(res, (block) => {
      if (block.event === 'running') h.simulator.holdTasks = false;
    });
    const events = eventsOf(blocks);
    expect(events[0]).toMatchObject({ event: 'running', data: { task_id: expect.stringMatching(/^sim-task-/) } });
    const names = events.map((e) => e.event);
    expect(names.slice(-2)).toEqual(['image', 'succeeded']);
    const image = events.at(-2)!.data;
    const result = events.at(-1)!.data;
    expect(image).toEqual({ index: 0, image: result.images[0] });
    expect(Buffer.from(image.image.b64_json, 'base64').subarray(1, 4).toString()).toBe('PNG');
    // Read through the same origin: a job's image URLs carry each reader's own (src/jobs/job-origin.ts).
    const job = (await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: { ...h.auth, host: new URL(base).host } })).json();
    expect(result).toEqual(job.result);
  });

  it('says `queued` first for a job waiting for an upstream slot, then `running` once it is sent', async () => {
    // One upstream slot, and an upstream that answers only once the test lets it: the second job
    // waits for the first until the follower has been told `queued`.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const narrow = await startHarness({ UPSTREAM_MAX_CONCURRENCY: '1' }, { latencyMs: 1, wait: () => held });
    try {
      await submit(narrow, { model: 'gpt-image-1', prompt: 'holds the slot' });
      await until(() => narrow.simulator.received.length > 0, 'the first job to be sent');
      const waiting = await submit(narrow, { model: 'gpt-image-1', prompt: 'waits' });
      const url = await narrow.app.listen({ port: 0, host: '127.0.0.1' });
      const opened = await fetch(`${url}/v1/jobs/${waiting}/events`, { headers: narrow.auth });
      const events = eventsOf(await readStream(opened, (block) => void (block.event === 'queued' && release())));
      expect(events[0]).toEqual({ event: 'queued', data: { job_id: waiting } });
      expect(events.map((e) => e.event).slice(1)).toEqual(['running', 'image', 'succeeded']);
    } finally {
      release();
      await narrow.close();
    }
  });

  it('answers another team’s job with 404 JSON, not a stream', async () => {
    const id = await submit(h, { model: 'gpt-image-1', prompt: 'not theirs' });
    const res = await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}/events`, headers: { authorization: `Bearer ${OTHER_CLIENT_KEY}` } });
    expect(res.statusCode).toBe(404);
    expect(res.json().error.code).toBe('not_found');
    await jobWhenFinished(h, id);
  });

  it('a client that leaves the stream leaves the job running', async () => {
    h.simulator.holdTasks = true;
    const id = await submit(h, { model: 'flux-kontext-pro', prompt: 'left alone' });
    const leave = new AbortController();
    const res = await fetch(`${base}/v1/jobs/${id}/events`, { headers: h.auth, signal: leave.signal });
    await readStream(res, () => leave.abort()).catch(() => {});
    h.simulator.holdTasks = false;
    expect((await jobWhenFinished(h, id)).status).toBe('succeeded');
  });
});

describe('a gateway that stops while clients follow its jobs', () => {
  it('ends their streams with an error event and their long-polls with the job’s state, and stops', async () => {
    const stopping = await startHarness();
    stopping.simulator.holdTasks = true;
    const id = await submit(stopping, { model: 'flux-kontext-pro', prompt: 'outlives its gateway' });
    await until(() => pollsOf(stopping).length > 0, 'the task to be polled');
    const url = await stopping.app.listen({ port: 0, host: '127.0.0.1' });
    const opened = await fetch(`${url}/v1/jobs/${id}/events`, { headers: stopping.auth });
    const stream = readStream(opened);
    const longPoll = fetch(`${url}/v1/jobs/${id}?wait=60`, { headers: stopping.auth }).then((r) => r.json() as Promise<any>);
    await new Promise((r) => setTimeout(r, 100));
    // Without the stop ending them, the close would wait for the job, which is held.
    await stopping.close();
    const events = eventsOf(await stream);
    expect(events.at(-1)).toEqual({ event: 'error', data: { type: 'error', error: { code: 'service_unavailable', message: expect.stringMatching(/stopping/) } } });
    expect((await longPoll).status).toBe('running');
    // The stop is no fault of the stream's: one warning line, without an error or a stack.
    const lines = stopping.logs.map((l) => JSON.parse(l));
    const told = lines.filter((l) => l.code === 'service_unavailable');
    expect(told).toHaveLength(1);
    expect(told[0]).toMatchObject({ level: 40, msg: expect.stringMatching(/stopping/) });
    expect(told[0].err).toBeUndefined();
    expect(lines.filter((l) => l.level >= 50)).toEqual([]);
  }, 15_000);
});

describe('GET /v1/jobs/{id}?wait=N', () => {
  it('answers as soon as the job has finished, told by its end, not by reading the job store again', async () => {
    // The job store is read again only once an hour here: the answer can come from the job's end alone.
    const told = await startHarness({}, {}, { jobFollowPollMs: 3_600_000 });
    try {
      told.simulator.holdTasks = true;
      const id = await submit(told, { model: 'flux-kontext-pro', prompt: 'long-polled' });
      await until(() => pollsOf(told).length > 0, 'the task to be polled');
      const events: string[] = [];
      const answer = told.app.inject({ method: 'GET', url: `/v1/jobs/${id}?wait=60`, headers: told.auth }).then((r) => {
        events.push('answered');
        return r;
      });
      // Still waiting after more polls of the held task ...
      const polled = pollsOf(told).length;
      await until(() => pollsOf(told).length >= polled + 2, 'more polls');
      expect(events).toEqual([]);
      events.push('released');
      told.simulator.holdTasks = false;
      const job = (await answer).json();
      expect(events).toEqual(['released', 'answered']);
      expect(job.status).toBe('succeeded');
      expect(job.result.images).toHaveLength(1);
    } finally {
      await told.close();
    }
  });

  it('answers where the job stands after N when it has not finished', async () => {
    h.simulator.holdTasks = true;
    const id = await submit(h, { model: 'flux-kontext-pro', prompt: 'still running' });
    const job = (await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}?wait=0.3`, headers: h.auth })).json();
    expect(job.status).toBe('running');
    h.simulator.holdTasks = false;
    await jobWhenFinished(h, id);
  });

  it('answers a finished job at once, and refuses a wait outside 0..60', async () => {
    const id = await submit(h, { model: 'gpt-image-1', prompt: 'quick' });
    await jobWhenFinished(h, id);
    expect((await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}?wait=60`, headers: h.auth })).json().status).toBe('succeeded');
    for (const wait of ['61', '-1', 'soon']) {
      const res = await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}?wait=${wait}`, headers: h.auth });
      expect(res.statusCode).toBe(400);
      expect(res.json().error.details[0].field).toBe('wait');
    }
    // Other query parameters (a cache-buster, say) are ignored, as they always were.
    expect((await h.app.inject({ method: 'GET', url: `/v1/jobs/${id}?_=123`, headers: h.auth })).statusCode).toBe(200);
  });
});

/** Two replicas on one database (a shared DATA_DIR), with or without Redis between them. */
async function twoReplicas(env: Record<string, string>): Promise<{ a: Harness; b: Harness; close(): Promise<void> }> {
  const dataDir = mkdtempSync(join(tmpdir(), 'gw-two-replicas-'));
  const a = await startHarness({ DATA_DIR: dataDir, ...env });
  const b = await startHarness({ DATA_DIR: dataDir, ...env });
  return {
    a,
    b,
    async close() {
      await b.close();
      await a.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

describe('a job followed from another replica', () => {
  it('without Redis: the other replica reads the job’s state from the database and ends with its result', async () => {
    const { a, b, close } = await twoReplicas({});
    try {
      a.simulator.holdTasks = true;
      const id = await submit(a, { model: 'flux-kontext-pro', prompt: 'made on a' });
      await until(() => pollsOf(a).length > 0, 'the task to be polled on a');
      const onB = await b.app.listen({ port: 0, host: '127.0.0.1' });
      const res = await fetch(`${onB}/v1/jobs/${id}/events`, { headers: b.auth });
      const longPoll = b.app.inject({ method: 'GET', url: `/v1/jobs/${id}?wait=30`, headers: b.auth });
      const blocks = await readStream(res, (block) => {
        if (block.event === 'running') a.simulator.holdTasks = false;
      });
      const events = eventsOf(blocks);
      expect(events[0]!.event).toBe('running');
      expect(events.at(-1)!.event).toBe('succeeded');
      const job = (await a.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: { ...a.auth, host: new URL(onB).host } })).json();
      expect(events.at(-1)!.data).toEqual(job.result);
      expect((await longPoll).json().status).toBe('succeeded');
      // The task was submitted and polled on a only.
      expect(b.simulator.received).toHaveLength(0);
    } finally {
      await close();
    }
  });

  describe.skipIf(redisProblem !== undefined)('with Redis (skipped when Redis is unreachable and REQUIRE_SERVICES is unset)', () => {
    it('the other replica hears every event as it happens: the task, its progress, the image with its bytes', async () => {
      const { a, b, close } = await twoReplicas({ REDIS_URL: freshRedis().url });
      try {
        a.simulator.holdTasks = true;
        const id = await submit(a, { model: 'flux-kontext-pro', prompt: 'made on a, heard on b', response_format: 'b64_json' });
        const onB = await b.app.listen({ port: 0, host: '127.0.0.1' });
        const res = await fetch(`${onB}/v1/jobs/${id}/events`, { headers: b.auth });
        let progress = 0;
        const blocks = await readStream(res, (block) => {
          if (block.event === 'progress' && ++progress === 1) a.simulator.holdTasks = false;
        });
        const events = eventsOf(blocks);
        expect(events.filter((e) => e.event === 'running').at(-1)!.data.task_id).toMatch(/^sim-task-/);
        expect(progress).toBeGreaterThanOrEqual(1);
        const image = events.find((e) => e.event === 'image')!.data;
        const result = events.at(-1)!.data;
        expect(events.at(-1)!.event).toBe('succeeded');
        // Bytes travel through the image store, not Redis: the same image either way.
        expect(image).toEqual({ index: 0, image: result.images[0] });
        expect(image.image.b64_json.length).toBeGreaterThan(100);
        expect(b.simulator.received).toHaveLength(0);
      } finally {
        await close();
      }
    });

    it("on another database of the same Redis server, a deployment's job events and key changes stay on channels of its own", async () => {
      // Pub/sub channels belong to the whole server, not to a database: a staging deployment on /1
      // must not hear production's (on /0) job events, which carry signed image URLs.
      const onDb1 = new URL(freshRedis().url);
      onDb1.pathname = '/1';
      const listener = new Redis(freshRedis().url);
      const heard: Array<{ channel: string; message: string }> = [];
      listener.on('pmessage', (_pattern: string, channel: string, message: string) => heard.push({ channel, message }));
      await listener.psubscribe('gw:*');
      const { a, b, close } = await twoReplicas({ REDIS_URL: onDb1.toString() });
      try {
        const id = await submit(a, { model: 'flux-kontext-pro', prompt: 'made on database 1' });
        const onB = await b.app.listen({ port: 0, host: '127.0.0.1' });
        // B hears A's events: the replicas of one deployment still share them.
        const events = eventsOf(await readStream(await fetch(`${onB}/v1/jobs/${id}/events`, { headers: b.auth })));
        expect(events.at(-1)!.event).toBe('succeeded');
        const minted = await a.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'db-one' } });
        expect(minted.statusCode).toBe(201);
        await until(() => heard.some((m) => m.channel === 'gw:db1:client-keys:changed'), 'the key change on its own channel');
        const about = heard.filter((m) => m.message.includes(id));
        expect(about.length).toBeGreaterThan(0);
        expect(new Set(about.map((m) => m.channel))).toEqual(new Set(['gw:db1:job-events']));
      } finally {
        await close();
        listener.disconnect();
      }
    });

    it('a replica that started while Redis was down hears the events once Redis answers', async () => {
      const redisUrl = new URL(freshRedis().url);
      // B's Redis is a forwarder to the real one that drops every connection until it is "up": it
      // listens from the start, so its port cannot be taken by another test while Redis is "down".
      let up = false;
      const forwarder = createServer((client) => {
        if (!up) return client.destroy();
        const redis = connect(Number(redisUrl.port || 6379), redisUrl.hostname);
        client.pipe(redis).pipe(client);
        client.on('error', () => redis.destroy());
        redis.on('error', () => client.destroy());
      });
      const port = await new Promise<number>((resolve) =>
        forwarder.listen(0, '127.0.0.1', () => resolve((forwarder.address() as AddressInfo).port)),
      );
      const dataDir = mkdtempSync(join(tmpdir(), 'gw-two-replicas-'));
      const a = await startHarness({ DATA_DIR: dataDir, REDIS_URL: redisUrl.toString() });
      const b = await startHarness({ DATA_DIR: dataDir, REDIS_URL: `redis://127.0.0.1:${port}` });
      try {
        up = true;
        a.simulator.holdTasks = true;
        const id = await submit(a, { model: 'flux-kontext-pro', prompt: 'heard after redis came back' });
        const onB = await b.app.listen({ port: 0, host: '127.0.0.1' });
        // Held until B hears a progress event; after 8 s without one, released anyway (and the test fails).
        const failSafe = setTimeout(() => (a.simulator.holdTasks = false), 8000);
        let progress = 0;
        const blocks = await readStream(await fetch(`${onB}/v1/jobs/${id}/events`, { headers: b.auth }), (block) => {
          if (block.event === 'progress' && ++progress === 1) a.simulator.holdTasks = false;
        });
        clearTimeout(failSafe);
        expect(progress).toBeGreaterThanOrEqual(1);
        expect(eventsOf(blocks).at(-1)!.event).toBe('succeeded');
      } finally {
        await b.close();
        await a.close();
        forwarder.close();
        rmSync(dataDir, { recursive: true, force: true });
      }
    }, 20_000);
  });
});
