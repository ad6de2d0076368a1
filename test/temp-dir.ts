/**
 * Temp dirs for tests. Every one is `<os.tmpdir()>/pm-test-<run>-<label>-XXXXXX`: `pm-test-` marks
 * it as the test suite's, `<run>` is the id test/temp-dir-check.ts gives this vitest run (through
 * `$PEERMESH_TEST_RUN`, which the workers inherit), so that check can find what this run left
 * behind without being confused by other runs on the same machine. Outside vitest (benches that
 * reuse the e2e harness) the run is `adhoc`.
 *
 * Use: `const tmp = new TempDirs(); afterAll(() => tmp.removeAll())`, then `tmp.make('label')`.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** The prefix every test temp dir starts with. */
export const TEST_TMP_PREFIX = 'pm-test-'
/** The environment variable carrying this run's id from the global setup to the workers. */
export const TEST_RUN_ENV = 'PEERMESH_TEST_RUN'

/** The prefix of this run's temp dirs: `pm-test-<run>-`. */
export function runTmpPrefix(run: string | undefined = process.env[TEST_RUN_ENV]): string {
  return `${TEST_TMP_PREFIX}${run ?? 'adhoc'}-`
}

/** A new temp dir named `pm-test-<run>-<label>-XXXXXX`; the caller removes it. */
export function makeTempDir(label: string): string {
  return mkdtempSync(join(tmpdir(), `${runTmpPrefix()}${label}-`))
}

/** Removes a temp dir and everything in it (no error when it is already gone). */
export function removeTempDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true })
}

/** The temp dirs of one test file, removed together (from an `afterAll` or `afterEach`). */
export class TempDirs {
  private readonly dirs: string[] = []

  make(label: string): string {
    const dir = makeTempDir(label)
    this.dirs.push(dir)
    return dir
  }

  removeAll(): void {
    for (const dir of this.dirs.splice(0)) removeTempDir(dir)
  }
}
