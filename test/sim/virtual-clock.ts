import type { Cancel, Clock } from '../../src/common/clock.ts'

interface Timer {
  at: number
  seq: number
  every: number | undefined
  fn: () => void
  live: boolean
}

/**
 * The project's virtual clock: nothing happens until the test moves time. Timers run in due-time
 * order (ties in creation order) and the clock jumps to each one's due time; `defer`red callbacks
 * run before any later timer, at the current time. Deterministic, no sleeps.
 */
export class VirtualClock implements Clock {
  private t: number
  private seq = 0
  private timers: Timer[] = []

  constructor(startMs = 0) {
    this.t = startMs
  }

  now = (): number => this.t

  /** The same virtual time: tests see one clock. */
  wallNow = (): number => this.t

  setTimeout = (fn: () => void, ms: number): Cancel => this.add(fn, Math.max(0, ms), undefined)

  setInterval = (fn: () => void, ms: number): Cancel => this.add(fn, Math.max(1, ms), Math.max(1, ms))

  defer = (fn: () => void): Cancel => this.add(fn, 0, undefined)

  private add(fn: () => void, ms: number, every: number | undefined): Cancel {
    const timer: Timer = { at: this.t + ms, seq: this.seq++, every, fn, live: true }
    this.timers.push(timer)
    return () => {
      timer.live = false
    }
  }

  /** Number of timers (and deferred callbacks) waiting. */
  get pending(): number {
    return this.timers.filter((x) => x.live).length
  }

  /** Due time of the earliest waiting timer, if any. */
  nextDue(): number | undefined {
    return this.earliest()?.at
  }

  /** Fires the earliest timer due at or before `limitMs` (jumping to its time); false if none. */
  fireNext(limitMs: number): boolean {
    const next = this.earliest()
    if (next === undefined || next.at > limitMs) return false
    this.t = Math.max(this.t, next.at)
    if (next.every === undefined) next.live = false
    else next.at += next.every
    next.fn()
    return true
  }

  /** Runs everything due within `ms` from now, in time order, then sets the time to now + ms. */
  advance(ms: number): void {
    const end = this.t + ms
    while (this.fireNext(end)) {}
    this.t = end
  }

  /** Runs what is due now (deferred callbacks included) without moving time. */
  flush(): void {
    this.advance(0)
  }

  /** Moves time forward without firing anything (what became due fires on the next call). */
  setNow(ms: number): void {
    this.t = Math.max(this.t, ms)
  }

  private earliest(): Timer | undefined {
    this.timers = this.timers.filter((x) => x.live)
    let best: Timer | undefined
    for (const x of this.timers)
      if (best === undefined || x.at < best.at || (x.at === best.at && x.seq < best.seq)) best = x
    return best
  }
}
