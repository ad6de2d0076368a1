/**
 * A retry budget (Linkerd's, also Finagle's RetryBudget): over a sliding window, retries may add
 * at most `ratio` of the requests, plus `minPerSecond` per second so that a quiet upstream can
 * still retry. It keeps a dead endpoint from turning into a retry storm that doubles the load on
 * the living ones. Time is a parameter; one bucket per second, no timers.
 */
import {
  DEFAULT_RETRY_BUDGET_MIN_PER_SECOND,
  DEFAULT_RETRY_BUDGET_RATIO,
  DEFAULT_RETRY_BUDGET_WINDOW_MS,
} from './constants.ts'
import { InvalidProxyConfigError } from './errors.ts'

export interface RetryBudgetConfig {
  /** Share of recent requests that retries may add. Default 0.2. */
  ratio: number
  /** Retries per second allowed on top of the ratio. Default 10. */
  minPerSecond: number
  /** Window length, a whole number of seconds. Default 10 s. */
  windowMs: number
}

export const DEFAULT_RETRY_BUDGET_CONFIG: RetryBudgetConfig = {
  ratio: DEFAULT_RETRY_BUDGET_RATIO,
  minPerSecond: DEFAULT_RETRY_BUDGET_MIN_PER_SECOND,
  windowMs: DEFAULT_RETRY_BUDGET_WINDOW_MS,
}

const BUCKET_MS = 1_000

export class RetryBudget {
  readonly config: RetryBudgetConfig
  private readonly requests: Float64Array
  private readonly retries: Float64Array
  /** Index of the bucket of `bucketStart`. */
  private head = 0
  private bucketStart = Number.NEGATIVE_INFINITY
  private requestSum = 0
  private retrySum = 0

  constructor(config?: Partial<RetryBudgetConfig>) {
    const c = { ...DEFAULT_RETRY_BUDGET_CONFIG, ...config }
    if (!(c.ratio >= 0)) throw new InvalidProxyConfigError('retryBudget.ratio', 'must be ≥ 0')
    if (!(c.minPerSecond >= 0)) throw new InvalidProxyConfigError('retryBudget.minPerSecond', 'must be ≥ 0')
    if (!Number.isInteger(c.windowMs / BUCKET_MS) || c.windowMs < BUCKET_MS) {
      throw new InvalidProxyConfigError('retryBudget.windowMs', 'must be a whole number of seconds ≥ 1')
    }
    this.config = c
    const n = c.windowMs / BUCKET_MS
    this.requests = new Float64Array(n)
    this.retries = new Float64Array(n)
  }

  /** Counts one request (a connection in L4 mode) at `now`. */
  recordRequest(now: number): void {
    this.advance(now)
    this.requests[this.head]!++
    this.requestSum++
  }

  /** Takes one retry from the budget if there is room at `now`; false means do not retry. */
  tryAcquire(now: number): boolean {
    this.advance(now)
    const allowance =
      this.config.ratio * this.requestSum + (this.config.minPerSecond * this.config.windowMs) / 1000
    if (this.retrySum + 1 > allowance) return false
    this.retries[this.head]!++
    this.retrySum++
    return true
  }

  /** Requests and retries counted in the window ending at `now`. */
  counts(now: number): { requests: number; retries: number } {
    this.advance(now)
    return { requests: this.requestSum, retries: this.retrySum }
  }

  private advance(now: number): void {
    if (this.bucketStart === Number.NEGATIVE_INFINITY) {
      this.bucketStart = now
      return
    }
    const steps = Math.floor((now - this.bucketStart) / BUCKET_MS)
    if (steps <= 0) return
    const n = this.requests.length
    for (let i = 0; i < Math.min(steps, n); i++) {
      this.head = (this.head + 1) % n
      this.requestSum -= this.requests[this.head]!
      this.retrySum -= this.retries[this.head]!
      this.requests[this.head] = 0
      this.retries[this.head] = 0
    }
    this.bucketStart += steps * BUCKET_MS
  }
}
