import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 20_000,
    hookTimeout: 20_000,
    pool: 'forks',
    // dist/ is built once here for the tests that run the built gateway and CLI.
    globalSetup: ['test/global-setup.ts'],
  },
});
