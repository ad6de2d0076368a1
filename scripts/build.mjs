#!/usr/bin/env node
// Compiles the agent and CLI to JavaScript in dist/ (run by `npm ci` through the `prepare`
// script): one ES module per entry point plus lazily loaded chunks (the agent, the demo), with
// source maps. Dependencies stay in node_modules (`packages: 'external'`). bin/peermesh.js runs
// this build when it is newer than every source file, and the TypeScript through tsx otherwise.
import { rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const out = join(root, 'dist')
const started = Date.now()
rmSync(out, { recursive: true, force: true })
await build({
  absWorkingDir: root,
  entryPoints: { peermesh: 'src/node/cli/main.ts' },
  outdir: out,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  packages: 'external',
  sourcemap: true,
  logLevel: 'warning',
})
// Written last: its presence says the build completed (bin/peermesh.js checks it).
writeFileSync(join(out, 'BUILD'), `${new Date().toISOString()}\n`)
console.log(`peermesh: built dist/ in ${Date.now() - started} ms`)
