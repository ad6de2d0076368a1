import type { RaftClock } from '../../src/raft/clock.ts'

/** A virtual clock: timers fire only when the test advances time. Deterministic, no sleeps. */
export class VirtualClock implements RaftClock {
  now = 0
  private seq = 0
  private timers: { at: number; seq: number; every: number | undefined; fn: () => void; live: boolean }[] = []

  setInterval(fn: () => void, ms: number): () => void {
    return this.add(fn, ms, ms)
  }

  setTimeout(fn: () => void, ms: number): () => void {
    return this.add(fn, ms, undefined)
  }

  private add(fn: () => void, ms: number, every: number | undefined): () => void {
    const t = { at: this.now + ms, seq: this.seq++, every, fn, live: true }
    this.timers.push(t)
    return () => {
      t.live = false
    }
  }

  /** Runs every timer due within `ms`, in time order. */
  advance(ms: number): void {
    const end = this.now + ms
    for (;;) {
      this.timers = this.timers.filter((t) => t.live)
      const next = this.timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.seq - b.seq)[0]
      if (next === undefined) break
      this.now = next.at
      if (next.every === undefined) next.live = false
      else next.at += next.every
      next.fn()
    }
    this.now = end
  }
}
