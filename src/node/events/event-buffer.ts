import type { Clock } from '../../common/clock.ts'
import type { UserEventRecord } from './user-event.ts'

/** Events an agent remembers (Consul's agent `eventBuf`, 256): the oldest go first. */
export const EVENT_BUFFER_SIZE = 256

/**
 * The user events this agent received and that were for it, oldest first, in a ring of
 * `EVENT_BUFFER_SIZE`; `wait` serves blocking lists (Consul's `eventNotify`).
 */
export class UserEventBuffer {
  private readonly ring: UserEventRecord[] = []
  private next = 0
  private readonly waiters = new Set<() => void>()

  constructor(
    private readonly clock: Clock,
    private readonly size = EVENT_BUFFER_SIZE,
  ) {}

  add(e: UserEventRecord): void {
    if (this.ring.length < this.size) this.ring.push(e)
    else this.ring[this.next] = e
    this.next = (this.next + 1) % this.size
    const woken = [...this.waiters]
    this.waiters.clear()
    for (const wake of woken) wake()
  }

  /** The events held, oldest first. */
  list(): UserEventRecord[] {
    return this.ring.length < this.size
      ? [...this.ring]
      : [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)]
  }

  /**
   * Resolves once `unchanged()` turns false after an `add`, when `waitMs` elapses, or when
   * `signal` aborts, whichever comes first; never rejects. One timer for the whole wait.
   */
  waitWhile(unchanged: () => boolean, waitMs: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted === true || waitMs <= 0 || !unchanged()) return Promise.resolve()
    return new Promise<void>((resolve) => {
      const finish = () => {
        this.waiters.delete(onAdd)
        cancel()
        signal?.removeEventListener('abort', finish)
        resolve()
      }
      const onAdd = () => {
        if (unchanged()) this.waiters.add(onAdd)
        else finish()
      }
      const cancel = this.clock.setTimeout(finish, waitMs)
      signal?.addEventListener('abort', finish, { once: true })
      this.waiters.add(onAdd)
    })
  }

  get waiting(): number {
    return this.waiters.size
  }
}
