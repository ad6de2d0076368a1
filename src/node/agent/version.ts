import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The package's root directory: the nearest ancestor of this module holding peermesh's
 * package.json. Found by walking up because this module runs from two places: the sources
 * (src/node/agent/) and the compiled build (a chunk in dist/).
 */
export const PACKAGE_ROOT: string = findPackageRoot(dirname(fileURLToPath(import.meta.url)))

/** The peermesh version, read once from package.json. */
export const VERSION: string = (
  JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }
).version

/** The CLI entry point (bin/peermesh.js), for spawning agents (the demo). */
export const BIN_PATH: string = join(PACKAGE_ROOT, 'bin', 'peermesh.js')

function findPackageRoot(start: string): string {
  for (let dir = start; ; dir = dirname(dir)) {
    const pkg = join(dir, 'package.json')
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: unknown }).name === 'peermesh') return dir
      } catch {
        // not ours or unreadable: keep walking up
      }
    }
    if (dirname(dir) === dir) throw new Error(`peermesh: no package.json above ${start}`)
  }
}
