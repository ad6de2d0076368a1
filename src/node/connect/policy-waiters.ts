/**
 * Blocking queries on the policy state (Consul's `?index=N&wait=D`): callers wait until the state
 * applied here passes an index, or until their wait or signal ends.
 */
import type { Clock } from '../../common/clock.ts'

interface Waiter {
  after: number
  resolve: (index: number) => void
}

export class PolicyIndexWaiters {
  private readonly waiters = new Set<Waiter>()
  private applied = 0
  private closed = false

  constructor(private readonly clock: Clock) {}

  /** Raft index of the policy state last applied here. */
  get index(): number {
    return this.applied
  }

  /** Records the index now applied and wakes the waiters it passes. */
  advance(index: number): void {
    this.applied = index
    for (const w of this.waiters) {
      if (index > w.after) {
        this.waiters.delete(w)
        w.resolve(index)
      }
    }
  }

  /** Resolves with the new index once the policy state here passes `after`, or after `waitMs`. */
  wait(after: number, waitMs: number, signal?: AbortSignal): Promise<number> {
    if (this.applied > after || this.closed) return Promise.resolve(this.applied)
    return new Promise((resolve) => {
      const w: Waiter = {
        after,
        resolve: (i) => {
          cancel()
          signal?.removeEventListener('abort', onAbort)
          resolve(i)
        },
      }
      const onAbort = (): void => {
        this.waiters.delete(w)
        w.resolve(this.applied)
      }
      const cancel = this.clock.setTimeout(onAbort, waitMs)
      signal?.addEventListener('abort', onAbort, { once: true })
      this.waiters.add(w)
    })
  }

  /** Answers every waiter with the current index; later waits return at once. */
  close(): void {
    this.closed = true
    for (const w of this.waiters) w.resolve(this.applied)
    this.waiters.clear()
  }
}
