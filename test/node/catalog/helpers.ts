import type { Timers } from '../../../src/node/catalog/timers.ts'

/** A virtual clock: timers run only when the test advances time. */
export class VirtualTimers implements Timers {
  private t = 0
  private seq = 0
  private readonly pending = new Map<number, { at: number; seq: number; fn: () => void }>()

  now(): number {
    return this.t
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq
    this.pending.set(id, { at: this.t + Math.max(0, ms), seq: id, fn })
    return id
  }

  clearTimeout(handle: unknown): void {
    this.pending.delete(handle as number)
  }

  get size(): number {
    return this.pending.size
  }

  /** Runs every timer due within `ms`, in order, letting promises settle after each one. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms
    await settle()
    for (;;) {
      let next: { id: number; at: number; seq: number; fn: () => void } | undefined
      for (const [id, p] of this.pending) {
        if (p.at <= end && (next === undefined || p.at < next.at || (p.at === next.at && p.seq < next.seq))) {
          next = { id, ...p }
        }
      }
      if (next === undefined) break
      this.pending.delete(next.id)
      this.t = next.at
      next.fn()
      await settle()
    }
    this.t = end
  }
}

/** Lets resolved promises and their continuations run (no wall-clock wait). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r))
}

/** Polls `fn` until it returns true, failing after `ms` of wall-clock time. */
export async function eventually(fn: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms
  while (!fn()) {
    if (Date.now() > end) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 10))
  }
}
