/**
 * A token bucket for leaf signing on the CA holder (the Raft leader). Consul limits CSR signing
 * to 50 per second by default (`csr_max_per_second`) so that a mass re-issue after a root
 * rotation cannot starve the leader; this is the same idea. Pure: time is passed in.
 */
import { DEFAULT_LEAF_SIGNING_RATE_PER_SECOND } from '../ca/constants.ts'
import { InvalidCaOptionError, LeafSigningRateLimitedError } from '../ca/errors.ts'

export interface LeafSigningRateLimiterOptions {
  /** Sustained signings per second. Default 50, Consul's `csr_max_per_second`. */
  ratePerSecond?: number
  /** Signings allowed back to back after a quiet period. Default: one second's worth. */
  burst?: number
  /** Time of creation; the bucket starts full. */
  nowMs: number
}

export type RateLimitDecision = { ok: true } | { ok: false; retryAfterMs: number }

export class LeafSigningRateLimiter {
  readonly ratePerSecond: number
  readonly burst: number
  private tokens: number
  private lastMs: number

  constructor(options: LeafSigningRateLimiterOptions) {
    const rate = options.ratePerSecond ?? DEFAULT_LEAF_SIGNING_RATE_PER_SECOND
    if (!Number.isFinite(rate) || rate <= 0) {
      throw new InvalidCaOptionError('ratePerSecond', 'must be a positive finite number')
    }
    const burst = options.burst ?? Math.max(1, rate)
    if (!Number.isFinite(burst) || burst < 1) {
      throw new InvalidCaOptionError('burst', 'must be a finite number >= 1')
    }
    if (!Number.isFinite(options.nowMs)) throw new InvalidCaOptionError('nowMs', 'must be a finite number')
    this.ratePerSecond = rate
    this.burst = burst
    this.tokens = burst
    this.lastMs = options.nowMs
  }

  /** Takes one token if there is one; otherwise says how long until there will be. */
  tryAcquire(nowMs: number): RateLimitDecision {
    this.refill(nowMs)
    if (this.tokens >= 1) {
      this.tokens -= 1
      return { ok: true }
    }
    return { ok: false, retryAfterMs: Math.ceil(((1 - this.tokens) * 1000) / this.ratePerSecond) }
  }

  /** Like `tryAcquire`, but throws `LeafSigningRateLimitedError` when over the limit. */
  acquire(nowMs: number): void {
    const decision = this.tryAcquire(nowMs)
    if (!decision.ok) throw new LeafSigningRateLimitedError(decision.retryAfterMs)
  }

  /** Tokens available at `nowMs` (fractional), for metrics and tests. */
  available(nowMs: number): number {
    this.refill(nowMs)
    return this.tokens
  }

  private refill(nowMs: number): void {
    // A clock that steps backwards adds nothing; it never takes tokens away either.
    if (!(nowMs > this.lastMs)) return
    this.tokens = Math.min(this.burst, this.tokens + ((nowMs - this.lastMs) * this.ratePerSecond) / 1000)
    this.lastMs = nowMs
  }
}
