import { describe, expect, it } from 'vitest'
import { sharedIntervals } from '../../src/common/shared-intervals.ts'
import { VirtualClock } from '../sim/virtual-clock.ts'

/** A virtual clock that also counts the wake-ups its timers cause (each firing is one). */
function countingClock(): { clock: VirtualClock; wakeUps: () => number } {
  const clock = new VirtualClock()
  let wakeUps = 0
  const setInterval = clock.setInterval
  clock.setInterval = (fn, ms) =>
    setInterval(() => {
      wakeUps++
      fn()
    }, ms)
  return { clock, wakeUps: () => wakeUps }
}

describe('sharedIntervals: the Raft module periodic tasks on one timer per period', () => {
  it('three 200 ms tasks started apart wake the process once a period, each task every period', () => {
    const { clock, wakeUps } = countingClock()
    const shared = sharedIntervals(clock)
    const runs = { autopilot: 0, voters: 0, founders: 0 }
    shared.setInterval(() => runs.autopilot++, 200)
    clock.advance(30)
    shared.setInterval(() => runs.voters++, 200)
    clock.advance(70)
    shared.setInterval(() => runs.founders++, 200)
    clock.advance(1_900) // 2 s in all: ticks at 200, 400, ..., 2000
    expect(wakeUps()).toBe(10)
    expect(runs).toEqual({ autopilot: 10, voters: 10, founders: 10 })
    expect(clock.pending).toBe(1)
  })

  it('periods of different lengths keep timers of their own', () => {
    const { clock, wakeUps } = countingClock()
    const shared = sharedIntervals(clock)
    let fast = 0
    let slow = 0
    shared.setInterval(() => fast++, 25)
    shared.setInterval(() => slow++, 1_000)
    clock.advance(1_000)
    expect([fast, slow]).toEqual([40, 1])
    expect(wakeUps()).toBe(41)
  })

  it('the shared timer stops with its last task, and starts again for a new one', () => {
    const clock = new VirtualClock()
    const shared = sharedIntervals(clock)
    let a = 0
    let b = 0
    const offA = shared.setInterval(() => a++, 200)
    const offB = shared.setInterval(() => b++, 200)
    clock.advance(400)
    offA()
    offA() // twice: nothing more
    clock.advance(400)
    expect([a, b]).toEqual([2, 4])
    offB()
    expect(clock.pending).toBe(0)
    clock.advance(1_000)
    expect([a, b]).toEqual([2, 4])
    let c = 0
    shared.setInterval(() => c++, 200)
    clock.advance(400)
    expect(c).toBe(2)
    offB() // a stale cancel must not stop the new timer
    clock.advance(200)
    expect(c).toBe(3)
  })

  it('a task cancelled by an earlier task of the same tick does not run', () => {
    const clock = new VirtualClock()
    const shared = sharedIntervals(clock)
    let second = 0
    let offSecond = (): void => {}
    shared.setInterval(() => offSecond(), 200)
    offSecond = shared.setInterval(() => second++, 200)
    clock.advance(1_000)
    expect(second).toBe(0)
  })

  it('timeouts, deferred calls and time are the underlying clock', () => {
    const clock = new VirtualClock(5_000)
    const shared = sharedIntervals(clock)
    const seen: string[] = []
    shared.setTimeout(() => seen.push(`timeout at ${shared.now()}`), 50)
    shared.defer(() => seen.push(`deferred at ${shared.wallNow()}`))
    clock.advance(100)
    expect(seen).toEqual(['deferred at 5000', 'timeout at 5050'])
  })
})
