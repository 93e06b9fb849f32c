import { afterAll, beforeAll, describe } from 'vitest';
import { startHarness, type Harness } from './harness.js';
import { freshPostgres, postgresProblem } from './services.js';

const DATABASES = [
  { name: 'SQLite', skip: false, start: async () => ({ env: {}, drop: async () => {} }) },
  {
    name: 'PostgreSQL',
    skip: postgresProblem !== undefined,
    start: async () => {
      const pg = await freshPostgres();
      return { env: { DATABASE_URL: pg.url } as Record<string, string>, drop: pg.drop };
    },
  },
];

/**
 * `tests` against a gateway on SQLite, then on a fresh PostgreSQL schema (skipped, with the reason
 * services.ts prints, where PostgreSQL is unreachable and REQUIRE_SERVICES is unset). `harness()` is
 * the block's gateway, started before its tests and closed after them.
 */
export function describeOnEachDatabase(title: string, tests: (harness: () => Harness) => void): void {
  describe.each(DATABASES)('on $name', ({ skip, start }) => {
    describe.skipIf(skip)(title, () => {
      let h: Harness | undefined;
      let drop: (() => Promise<void>) | undefined;
      beforeAll(async () => {
        const db = await start();
        drop = db.drop;
        h = await startHarness(db.env);
      });
      afterAll(async () => {
        await h?.close();
        await drop?.();
      });
      tests(() => h!);
    });
  });
}
