import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Harness } from './harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => h.close());

describe('authentication follows the route the router matched', () => {
  it.each([
    ['GET', '/%761/models'],
    ['POST', '/%761/generate'],
    ['POST', '/v1/%67enerate'],
    ['POST', '/%761/edit'],
    ['GET', '/%761/jobs/job_x'],
    ['POST', '/v1/images/generation%73'],
    ['POST', '/v1/images/edit%73'],
    ['GET', '/v1/usag%65'],
    ['GET', '/%761/no-such-route'],
  ])('%s %s without a key is a 401 and reaches nothing', async (method, url) => {
    h.simulator.reset();
    const res = await h.app.inject({ method: method as 'GET' | 'POST', url, payload: method === 'POST' ? { model: 'gpt-image-1', prompt: 'x' } : undefined });
    expect(res.statusCode).toBe(401);
    expect(h.simulator.received).toHaveLength(0);
  });

  it('a percent-encoded path with a key still reaches its route', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/%761/models', headers: h.auth });
    expect(res.statusCode).toBe(200);
  });

  it('image downloads stay public (their URL is the capability)', async () => {
    const res = await h.app.inject({ method: 'GET', url: '/v1/images/img_nothing.png?exp=1&sig=x' });
    expect(res.statusCode).toBe(403);
  });
});
