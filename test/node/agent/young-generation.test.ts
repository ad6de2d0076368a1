import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { HOLD_NEW_SPACE_BYTES, userSetsYoungGeneration } from '../../../src/node/agent/young-generation.ts'

const MODULE = fileURLToPath(new URL('../../../src/node/agent/young-generation.ts', import.meta.url))

/**
 * Runs the hold, a churn of short- and longer-lived objects, the release and the same churn again
 * in a fresh node process (V8 flags are process-wide): the new space's size after each.
 */
function inChild(env: NodeJS.ProcessEnv = {}): { held: boolean; whileHeld: number; afterRelease: number } {
  const code = `
    import v8 from 'node:v8'
    import { holdYoungGeneration, releaseYoungGeneration } from ${JSON.stringify(MODULE)}
    const size = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size
    // Rounds with a turn of the event loop between them, as an agent's work comes.
    const churn = async () => {
      const keep = []
      for (let r = 0; r < 200; r++) {
        for (let i = 0; i < 20000; i++) { const o = { a: i, b: 'x' + i }; if (i % 50 === 0) keep.push(o) }
        if (keep.length > 20000) keep.splice(0, 10000)
        await new Promise((resolve) => setImmediate(resolve))
      }
    }
    const held = holdYoungGeneration()
    await churn()
    const whileHeld = size()
    releaseYoungGeneration()
    await churn()
    console.log(JSON.stringify({ held, whileHeld, afterRelease: size() }))
  `
  const out = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
  })
  if (out.status !== 0) throw new Error(out.stderr)
  return JSON.parse(out.stdout.trim().split('\n').at(-1)!)
}

describe('young generation of the agent process', () => {
  it('held, the new space stops growing near its cap; released (a sidecar started), it grows again', () => {
    const r = inChild({ NODE_OPTIONS: '' })
    expect(r.held).toBe(true)
    // The cap, or one doubling past it (growth is checked after each collection); V8 alone: 32 MiB.
    expect(r.whileHeld).toBeLessThanOrEqual(2 * HOLD_NEW_SPACE_BYTES)
    expect(r.afterRelease).toBeGreaterThan(r.whileHeld)
  })

  it("the user's own young generation flags win: nothing is held", () => {
    const r = inChild({ NODE_OPTIONS: '--max-semi-space-size=8' })
    expect(r.held).toBe(false)
  })

  it.each([
    [[], '', false],
    [['--max-semi-space-size=4'], '', true],
    [[], '--max-old-space-size=200 --semi-space-growth-factor=4', true],
    [['--enable-source-maps'], '--max-old-space-size=200', false],
  ])('execArgv %j, NODE_OPTIONS %j: user flags = %s', (execArgv, nodeOptions, expected) => {
    expect(userSetsYoungGeneration(execArgv, nodeOptions)).toBe(expected)
  })
})
