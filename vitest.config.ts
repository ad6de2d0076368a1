import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['src/node/agent/polyfill.ts'],
    // Fails the run when a test leaves a temp dir behind (test/temp-dir.ts names them).
    globalSetup: ['test/temp-dir-check.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
})
