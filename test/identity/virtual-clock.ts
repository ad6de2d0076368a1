import type { RotatorTimers } from '../../src/identity/connect/leaf-rotator.ts'

interface PendingTimer {
  id: number
  due: number
  seq: number
  callback: () => void
}

/**
 * A virtual clock with timers, for tests: nothing happens until the test fires timers. Timers run
 * in due-time order (ties in creation order), and the clock jumps to each timer's due time.
 */
export class VirtualClock implements RotatorTimers {
  private nowMs: number
  private nextId = 1
  private seq = 0
  private readonly timers = new Map<number, PendingTimer>()

  constructor(startMs: number) {
    this.nowMs = startMs
  }

  now = (): number => this.nowMs

  setTimeout = (callback: () => void, ms: number): unknown => {
    const id = this.nextId++
    this.timers.set(id, { id, due: this.nowMs + Math.max(0, ms), seq: this.seq++, callback })
    return id
  }

  clearTimeout = (handle: unknown): void => {
    this.timers.delete(handle as number)
  }

  /** Number of timers waiting. */
  get pending(): number {
    return this.timers.size
  }

  /** Due time of the earliest timer, if any. */
  nextDue(): number | undefined {
    return this.earliest()?.due
  }

  /** Fires the earliest timer due at or before `limitMs`; false when there is none. */
  fireNext(limitMs: number): boolean {
    const next = this.earliest()
    if (!next || next.due > limitMs) return false
    this.timers.delete(next.id)
    this.nowMs = Math.max(this.nowMs, next.due)
    next.callback()
    return true
  }

  /** Moves time forward without firing anything (timers due by then fire on the next fireNext). */
  setNow(ms: number): void {
    this.nowMs = Math.max(this.nowMs, ms)
  }

  private earliest(): PendingTimer | undefined {
    let best: PendingTimer | undefined
    for (const t of this.timers.values()) {
      if (!best || t.due < best.due || (t.due === best.due && t.seq < best.seq)) best = t
    }
    return best
  }
}
