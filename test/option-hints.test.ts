/**
 * A model option sent as a top-level field, as the vendors' docs write it: refused before anything
 * is sent, and the refusal says where it goes (`options.<name>`). A field that is no option of the
 * model is refused as before, with no hint.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN_KEY, makePng, multipartBody, startHarness, type Harness } from './harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ RATE_LIMIT_RPM: '1000' });
});
afterAll(async () => {
  await h?.close();
});
beforeEach(() => h.simulator.reset());

const post = (url: string, payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url, headers: h.auth, payload });

describe('an option sent as a field', () => {
  it('on /v1/generate: 400 naming the field, saying to send it as options.<name>, nothing sent; sent so, it works', async () => {
    const res = await post('/v1/generate', { model: 'ideogram-v3', prompt: 'a deer', rendering_speed: 'TURBO' });
    expect(res.statusCode, res.body).toBe(400);
    const { error } = res.json();
    expect(error.message).toBe('rendering_speed: is not a field of this request; it is an option of ideogram-v3: send it as options.rendering_speed');
    expect(error.details).toEqual([expect.objectContaining({ field: 'rendering_speed', allowed: expect.arrayContaining(['options']) })]);
    expect(h.simulator.received).toHaveLength(0);

    const fixed = await post('/v1/generate', { model: 'ideogram-v3', prompt: 'a deer', options: { rendering_speed: 'TURBO' } });
    expect(fixed.statusCode, fixed.body).toBe(200);
  });

  it('on a multipart /v1/edit too, where options is a part holding JSON, and by a model alias', async () => {
    const { payload, headers } = multipartBody({ model: 'openai/gpt-image-1', prompt: 'make it blue', input_fidelity: 'high' }, [
      { field: 'image', filename: 'a.png', bytes: await makePng() },
    ]);
    const res = await h.app.inject({ method: 'POST', url: '/v1/edit', headers: { ...h.auth, ...headers }, payload });
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().error.message).toBe('input_fidelity: is not a field of this request; it is an option of gpt-image-1: send it inside the options part\'s JSON: options={"input_fidelity": ...}');
    expect(h.simulator.received).toHaveLength(0);
  });

  it('a field that is no option of the model gets no hint; each field of several is told its own', async () => {
    const res = await post('/v1/generate', { model: 'ideogram-v3', prompt: 'a deer', colour: 'red', magic_prompt: 'ON' });
    expect(res.statusCode, res.body).toBe(400);
    const details = res.json().error.details as Array<{ field: string; message: string }>;
    expect(details.find((d) => d.field === 'colour')?.message).toBe('is not a field of this request');
    expect(details.find((d) => d.field === 'magic_prompt')?.message).toBe('is not a field of this request; it is an option of ideogram-v3: send it as options.magic_prompt');
    // An option of another operation only (gpt-image-1's input_fidelity is an edit's): no hint to follow.
    const editOnly = await post('/v1/generate', { model: 'gpt-image-1', prompt: 'a deer', input_fidelity: 'high' });
    expect(editOnly.json().error.message).toBe('input_fidelity: is not a field of this request');
    // An unknown model: nothing to hint from.
    const unknown = await post('/v1/generate', { model: 'no-such-model', prompt: 'a deer', rendering_speed: 'TURBO' });
    expect(unknown.statusCode).toBe(400);
    expect(unknown.json().error.message).not.toContain('options.');
  });

  it('names nothing about a model the key may not use: the refusal is as if no hint existed', async () => {
    const minted = await h.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${ADMIN_KEY}` }, payload: { team: 'limited', models: ['gpt-image-*'] } });
    expect(minted.statusCode, minted.body).toBe(201);
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/generate',
      headers: { authorization: `Bearer ${minted.json().key}` },
      payload: { model: 'ideogram-v3', prompt: 'a deer', rendering_speed: 'TURBO' },
    });
    expect(res.statusCode).toBe(400);
    expect(res.body).not.toContain('ideogram-v3');
    expect(res.json().error.message).toBe('rendering_speed: is not a field of this request');
  });
});
