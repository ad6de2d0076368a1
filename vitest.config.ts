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
    // Two test files at a time on a 2-core machine (vitest's default is one fewer than the cores,
    // so one): most of the time goes to e2e files waiting on agent processes, not to the CPU.
    maxWorkers: 2,
  },
})
