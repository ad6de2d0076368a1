/**
 * A per-destination concurrency limit with a bounded queue (Envoy's max_requests and
 * max_pending_requests circuit breakers, Consul's `Limits.MaxConcurrentRequests` and
 * `MaxPendingRequests`): up to `maxConcurrent` holders at once; the next `maxPending` callers wait
 * in FIFO order; anyone beyond is refused at once, so a slow destination cannot pile up unbounded
 * work in the caller's sidecar. No timers: a waiter leaves the queue when it is granted a slot or
 * cancels (its client went away, or its request timed out).
 */

export interface ConcurrencyLimitConfig {
  /** Holders at once; Infinity: no limit. */
  maxConcurrent: number
  /** Waiters at once beyond the holders; 0: no queue. */
  maxPending: number
}

/** A place in the limit: `granted` once it holds a slot; `release()` gives up the slot or the wait. */
export interface LimitTicket {
  readonly granted: boolean
  release(): void
}

export type Admission = { ok: true; ticket: LimitTicket } | { ok: false }

export class ConcurrencyLimit {
  private active = 0
  private readonly waiting: Ticket[] = []

  constructor(private config: ConcurrencyLimitConfig) {}

  /** Changes the limits; waiters are granted at once if the new limit allows. */
  configure(config: ConcurrencyLimitConfig): void {
    this.config = config
    this.drain()
  }

  get inFlight(): number {
    return this.active
  }

  get pending(): number {
    return this.waiting.length
  }

  /**
   * A slot now (`onGranted` runs before this returns), a place in the queue (`onGranted` runs
   * when a slot frees), or a refusal when the queue is full.
   */
  admit(onGranted: () => void): Admission {
    if (this.active < this.config.maxConcurrent) {
      this.active++
      const t = new Ticket(this, onGranted, true)
      onGranted()
      return { ok: true, ticket: t }
    }
    if (this.waiting.length >= this.config.maxPending) return { ok: false }
    const t = new Ticket(this, onGranted, false)
    this.waiting.push(t)
    return { ok: true, ticket: t }
  }

  /** @internal */
  leave(t: Ticket): void {
    if (t.granted) {
      this.active--
      this.drain()
      return
    }
    const i = this.waiting.indexOf(t)
    if (i >= 0) this.waiting.splice(i, 1)
  }

  private drain(): void {
    while (this.active < this.config.maxConcurrent && this.waiting.length > 0) {
      const t = this.waiting.shift()!
      this.active++
      t.grant()
    }
  }
}

class Ticket implements LimitTicket {
  private released = false

  constructor(
    private readonly limit: ConcurrencyLimit,
    private readonly onGranted: () => void,
    public granted: boolean,
  ) {}

  grant(): void {
    this.granted = true
    this.onGranted()
  }

  release(): void {
    if (this.released) return
    this.released = true
    this.limit.leave(this)
  }
}
