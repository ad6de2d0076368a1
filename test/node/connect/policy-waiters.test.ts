import { describe, expect, it } from 'vitest'
import { PolicyIndexWaiters } from '../../../src/node/connect/policy-waiters.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

describe('PolicyIndexWaiters (blocking queries)', () => {
  it('answers at once when the state is already past the index', async () => {
    const w = new PolicyIndexWaiters(new VirtualClock())
    w.advance(5)
    expect(await w.wait(4, 10_000)).toBe(5)
  })

  it('wakes a waiter when the state passes its index, not before', async () => {
    const clock = new VirtualClock()
    const w = new PolicyIndexWaiters(clock)
    w.advance(5)
    let got: number | undefined
    void w.wait(6, 10_000).then((i) => (got = i))
    w.advance(6)
    await Promise.resolve()
    expect(got).toBeUndefined()
    w.advance(7)
    await Promise.resolve()
    expect(got).toBe(7)
    expect(clock.pending).toBe(0)
  })

  it('answers with the current index when the wait ends, the signal aborts, or it closes', async () => {
    const clock = new VirtualClock()
    const w = new PolicyIndexWaiters(clock)
    w.advance(3)
    const timedOut = w.wait(3, 1_000)
    clock.advance(1_000)
    expect(await timedOut).toBe(3)
    const ac = new AbortController()
    const aborted = w.wait(3, 1_000, ac.signal)
    ac.abort()
    expect(await aborted).toBe(3)
    const closed = w.wait(3, 1_000)
    w.close()
    expect(await closed).toBe(3)
    expect(await w.wait(3, 1_000)).toBe(3)
  })
})
