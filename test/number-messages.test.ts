/** A number that is neither an integer nor in range (1e308) is named once, not once per check it fails. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Harness } from './harness.js';

describe('an out-of-range non-integer', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  it('n = 1e308 and seed = -1e308 are one 400 detail each, naming the field', async () => {
    for (const [field, value] of [['n', 1e308], ['seed', -1e308]] as const) {
      const res = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', [field]: value } });
      expect(res.statusCode).toBe(400);
      const details = res.json().error.details as Array<{ field: string }>;
      expect(details.map((d) => d.field)).toEqual([field]);
      expect(res.json().error.message.split('; ')).toHaveLength(1);
    }
  });
});
