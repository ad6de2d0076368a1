/**
 * vitest global setup: the suite must leave /tmp as it found it. Gives this run an id (every test
 * temp dir is named `pm-test-<run>-…`, see test/temp-dir.ts) and, when the run ends, lists what is
 * left under that prefix: anything there was created by this run and not removed, so the run fails
 * with the names. Only this run's prefix is checked, so temp dirs that other processes (another
 * test run, a demo, a bench) create on the machine at the same time are not counted.
 */
import { randomBytes } from 'node:crypto'
import { readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { runTmpPrefix, TEST_RUN_ENV } from './temp-dir.ts'

/** Entries of the temp dir whose names start with `prefix`. */
export function tmpEntries(prefix: string, dir: string = tmpdir()): string[] {
  return readdirSync(dir).filter((name) => name.startsWith(prefix))
}

export default function setup(): () => void {
  const run = randomBytes(4).toString('hex')
  process.env[TEST_RUN_ENV] = run
  const prefix = runTmpPrefix(run)
  const before = new Set(tmpEntries(prefix))
  return () => {
    const leaked = tmpEntries(prefix).filter((name) => !before.has(name))
    if (leaked.length === 0) return
    console.error(
      `\ntest temp dirs left behind in ${tmpdir()} (${leaked.length}); every test must remove what it creates:\n` +
        leaked.map((name) => `  ${name}`).join('\n'),
    )
    process.exitCode = 1
  }
}
