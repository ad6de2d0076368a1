import { type Clock, systemClock } from '../../common/clock.ts'

/** Longest a blocking query may wait (Consul's limit). */
export const MAX_BLOCKING_WAIT_MS = 10 * 60_000
/** Wait when a blocking query gives `index` but no `wait` (Consul's default). */
export const DEFAULT_BLOCKING_WAIT_MS = 5 * 60_000

/**
 * A monotonically increasing change counter with waiters, the core of blocking queries
 * (`?index=N&wait=30s`): `bump()` on every real change wakes everyone waiting for an index
 * above N. No polling: a waiter costs one timer and one closure.
 */
export class ChangeIndex {
  private value = 1
  private readonly waiters = new Set<() => void>()

  constructor(private readonly clock: Clock = systemClock) {}

  get current(): number {
    return this.value
  }

  /** Records a change and wakes every waiter. Returns the new index. */
  bump(): number {
    this.value++
    const woken = [...this.waiters]
    this.waiters.clear()
    for (const wake of woken) wake()
    return this.value
  }

  /**
   * Resolves with the current index once it is above `afterIndex`, when `waitMs` elapses, or
   * when `signal` aborts (the client went away), whichever comes first; never rejects. An
   * `afterIndex` above the current index (the agent restarted and counts from 1 again) returns
   * at once, so the client resets to the new index, as with Consul.
   */
  wait(afterIndex: number, waitMs: number, signal?: AbortSignal): Promise<number> {
    if (this.value !== afterIndex || signal?.aborted === true || waitMs <= 0) {
      return Promise.resolve(this.value)
    }
    return new Promise<number>((resolve) => {
      const done = () => {
        this.waiters.delete(done)
        cancel()
        signal?.removeEventListener('abort', done)
        resolve(this.value)
      }
      const cancel = this.clock.setTimeout(done, Math.min(waitMs, MAX_BLOCKING_WAIT_MS))
      signal?.addEventListener('abort', done, { once: true })
      this.waiters.add(done)
    })
  }

  /** Waiters currently blocked (for metrics and tests). */
  get waiting(): number {
    return this.waiters.size
  }
}
