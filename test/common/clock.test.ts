import { describe, expect, it } from 'vitest'
import { systemClock } from '../../src/common/clock.ts'

/** Spins for `ms` (the turn's work that leaves Node's cached loop time behind `now()`). */
function busy(ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end) {}
}

describe('systemClock.setTimeout', () => {
  it('never calls back before now() has advanced by the delay', async () => {
    // Node's own setTimeout fired early by this measure in about 6 of 10 of these trials.
    const early: number[] = []
    for (let i = 0; i < 40; i++) {
      busy((i % 8) / 4)
      const ms = 5 + (i % 7) + (i % 3) / 3
      const start = systemClock.now()
      await new Promise<void>((resolve) => {
        systemClock.setTimeout(() => {
          const waited = systemClock.now() - start
          if (waited < ms) early.push(ms - waited)
          resolve()
        }, ms)
      })
    }
    expect(early).toEqual([])
  })

  it('cancels before the timer fires', async () => {
    let fired = false
    const cancel = systemClock.setTimeout(() => {
      fired = true
    }, 1)
    cancel()
    await new Promise<void>((resolve) => systemClock.setTimeout(resolve, 10))
    expect(fired).toBe(false)
  })

  it('waits out a delay past node’s longest timeout instead of firing at once', async () => {
    const warnings: string[] = []
    const onWarning = (w: Error): void => {
      warnings.push(w.name)
    }
    process.on('warning', onWarning)
    let fired = false
    const cancel = systemClock.setTimeout(
      () => {
        fired = true
      },
      2 ** 31 + 1_000,
    )
    await new Promise<void>((resolve) => systemClock.setTimeout(resolve, 10))
    cancel()
    process.off('warning', onWarning)
    expect(fired).toBe(false)
    expect(warnings).not.toContain('TimeoutOverflowWarning')
  })
})
