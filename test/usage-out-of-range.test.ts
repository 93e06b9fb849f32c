/**
 * A refused request's usage record keeps the count it asked for only where the usage table can
 * hold it: on PostgreSQL `images_requested` is a 32-bit INTEGER, and an `n` past 2147483647 (a 400
 * naming n) failed every write of the usage batch it joined, so no record of it, nor of the
 * requests beside it, was ever stored.
 */
import { beforeEach, expect, it } from 'vitest';
import { usageRecordOf, type Harness } from './harness.js';
import { describeOnEachDatabase } from './each-database.js';

describeOnEachDatabase('an image count past what the usage table holds', (harness) => {
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });

  it('n = 2147483648 is a 400 naming n, and its usage record is written (count unknown), as is the next request\'s', async () => {
    for (const [route, n] of [['/v1/generate', 2147483648], ['/v1/images/generations', 2 ** 40]] as const) {
      const res = await h.app.inject({ method: 'POST', url: route, headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', n } });
      expect(res.statusCode).toBe(400);
      expect(res.body).toContain('n: must be an integer from 1 to 10');
      const record = await usageRecordOf(h, res.headers['x-request-id'] as string);
      expect(record).toMatchObject({ status: 400, images_requested: null });
    }
    const ok = await h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { model: 'gpt-image-1', prompt: 'x', n: 2 } });
    expect(ok.statusCode).toBe(200);
    expect(await usageRecordOf(h, ok.headers['x-request-id'] as string)).toMatchObject({ status: 200, images_requested: 2 });
  });
});
