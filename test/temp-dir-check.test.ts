import { existsSync } from 'node:fs'
import { afterEach, describe, expect, it, vi } from 'vitest'
import setup, { tmpEntries } from './temp-dir-check.ts'
import {
  makeTempDir,
  removeTempDir,
  runTmpPrefix,
  TEST_RUN_ENV,
  TEST_TMP_PREFIX,
  TempDirs,
} from './temp-dir.ts'

describe('test temp dirs', () => {
  const run = process.env[TEST_RUN_ENV]
  const exitCode = process.exitCode
  afterEach(() => {
    process.env[TEST_RUN_ENV] = run
    process.exitCode = exitCode
    vi.restoreAllMocks()
  })

  it('are named pm-test-<this run>-<label>- and TempDirs removes all of them', () => {
    const tmp = new TempDirs()
    const a = tmp.make('alpha')
    const b = tmp.make('beta')
    expect(a).toContain(`/${runTmpPrefix()}alpha-`)
    expect(runTmpPrefix()).toMatch(new RegExp(`^${TEST_TMP_PREFIX}[0-9a-z]+-$`))
    expect(existsSync(a) && existsSync(b)).toBe(true)
    tmp.removeAll()
    expect(existsSync(a) || existsSync(b)).toBe(false)
  })

  it('the global setup fails the run, naming it, when a dir of its run is left behind; not when none is', () => {
    const errors: string[] = []
    vi.spyOn(console, 'error').mockImplementation((s: string) => void errors.push(s))
    process.exitCode = undefined
    const clean = setup()
    removeTempDir(makeTempDir('removed-in-time'))
    expect(tmpEntries(runTmpPrefix())).toEqual([])
    clean()
    expect(process.exitCode).toBeUndefined()

    const teardown = setup() // a new run id
    const other = process.env[TEST_RUN_ENV]
    expect(other).not.toBe(run)
    const leaked = makeTempDir('leaked')
    try {
      teardown()
      expect(process.exitCode).toBe(1)
      expect(errors.join('\n')).toContain(leaked.split('/').pop())
    } finally {
      removeTempDir(leaked)
    }
  })
})
