#!/usr/bin/env node
// Entry point. Runs the compiled build (dist/, made by `npm ci` through the `prepare` script,
// or `npm run build`) when it is complete and newer than every source file; otherwise the
// TypeScript sources through tsx, so an edited checkout never runs stale code.
import { readdirSync, statSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))

/** Newest mtime (ms) of the files under `dir`, recursively. */
function newest(dir) {
  let max = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = `${dir}/${e.name}`
    max = Math.max(max, e.isDirectory() ? newest(path) : statSync(path).mtimeMs)
  }
  return max
}

function buildIsFresh() {
  try {
    const built = statSync(`${root}dist/BUILD`).mtimeMs
    return built >= newest(`${root}src`) && built >= statSync(`${root}package.json`).mtimeMs
  } catch {
    return false // no build
  }
}

// Started through `npx` (npm exec), this process runs under an npm wrapper and a shell. Killing
// the wrapper with SIGTERM does not reach us: we would be left running, orphaned. So under npm
// exec, a parent that goes away counts as SIGTERM (a graceful stop). Direct and systemd runs are
// not affected.
if (process.env.npm_command === 'exec') {
  const parent = process.ppid
  setInterval(() => {
    if (process.ppid !== parent) process.kill(process.pid, 'SIGTERM')
  }, 500).unref()
}

// An agent holds V8's new space at its initial size from the first module loaded (loading the CLI
// and the agent would grow it for good; src/node/agent/young-generation.ts).
const holdsYoungGeneration = process.argv[2] === 'agent'

if (process.env.PEERMESH_FROM_SOURCE !== '1' && buildIsFresh()) {
  if (holdsYoungGeneration) (await import('../dist/young-generation.js')).holdYoungGeneration()
  // No source maps by default, not even for the agent: the first stack trace Node formats with
  // them on parses the agent chunk's map whole (128 ms and 12 MiB of heap, kept for good), and the
  // first is typically a connection error in a failover. Frames still name our functions (the
  // build keeps names); NODE_OPTIONS=--enable-source-maps maps them to the TypeScript sources.
  await import('../dist/peermesh.js')
} else {
  const { register } = await import('tsx/esm/api')
  register()
  if (holdsYoungGeneration) (await import('../src/node/agent/young-generation.ts')).holdYoungGeneration()
  await import('../src/node/agent/polyfill.ts')
  const { main } = await import('../src/node/cli/cli.ts')
  await main(process.argv)
}
