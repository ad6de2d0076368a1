/**
 * Local rate limits on the inbound side (Consul's `RateLimits.InstanceLevel` of service-defaults):
 * a token bucket per (source service, route), so a retry storm or one noisy caller is stopped at
 * the receiver while the other callers keep their share.
 *
 * A bucket holds up to `burst` tokens (`RequestsMaxBurst`, or `RequestsPerSecond` when unset) and
 * refills at `RequestsPerSecond`; a request takes one token, or is refused when there is none.
 * The route is the first of `Routes` whose path matches; a request that matches none is limited
 * by the instance-wide `RequestsPerSecond`, if set.
 *
 * Memory is bounded: at most `maxBuckets` buckets are kept. A full bucket is the same as a new one,
 * so full buckets (among the 64 oldest) are dropped first; past that the least recently used bucket goes (its caller
 * starts again with a full bucket, which costs at most one burst). The clock is injected.
 */
import type { RateLimits } from '../raft/policy/config-entries.ts'
import { compilePathMatch } from './l7-permissions.ts'

/** Buckets kept at most: far more than the services that call one instance. */
export const DEFAULT_MAX_RATE_LIMIT_BUCKETS = 10_000

/** Rounding allowance when comparing a refilled bucket to one token. */
const TOKEN_EPSILON = 1e-9

/** Oldest buckets looked at for a full one when the table is full. */
const EVICTION_SCAN = 64

interface Limit {
  /** Tokens per millisecond. */
  perMs: number
  burst: number
}

interface CompiledRoute {
  match: (path: string) => boolean
  limit: Limit
}

interface Bucket {
  tokens: number
  /** When `tokens` was last brought up to date (clock ms). */
  at: number
}

export interface RateLimiterInit {
  limits: RateLimits
  /** Milliseconds; monotonic. */
  now: () => number
  maxBuckets?: number
}

/** Whether a request of `source` to `path` is within the limits, taking a token if so. */
export class RateLimiter {
  private readonly routes: CompiledRoute[]
  private readonly instance: Limit | undefined
  /** `${route index or -1} ${source}` -> bucket, least recently used first. */
  private readonly buckets = new Map<string, Bucket>()
  private readonly maxBuckets: number
  private readonly now: () => number

  constructor(init: RateLimiterInit) {
    const il = init.limits.InstanceLevel
    this.routes = (il?.Routes ?? []).map((r) => ({
      match: compilePathMatch(r)!,
      limit: limitOf(r.RequestsPerSecond, r.RequestsMaxBurst),
    }))
    this.instance =
      il?.RequestsPerSecond === undefined ? undefined : limitOf(il.RequestsPerSecond, il.RequestsMaxBurst)
    this.maxBuckets = Math.max(1, init.maxBuckets ?? DEFAULT_MAX_RATE_LIMIT_BUCKETS)
    this.now = init.now
  }

  /** Buckets held now. */
  get size(): number {
    return this.buckets.size
  }

  /** Whether any limit is configured. */
  get active(): boolean {
    return this.instance !== undefined || this.routes.length > 0
  }

  /** True if the request may pass (a token was taken), false if it is over the limit. */
  take(source: string, path: string): boolean {
    let index = -1
    let limit = this.instance
    for (let i = 0; i < this.routes.length; i++) {
      if (this.routes[i]!.match(path)) {
        index = i
        limit = this.routes[i]!.limit
        break
      }
    }
    if (limit === undefined) return true
    const key = `${index} ${source}`
    const now = this.now()
    let b = this.buckets.get(key)
    if (b === undefined) {
      this.makeRoom(now)
      b = { tokens: limit.burst, at: now }
    } else {
      this.buckets.delete(key) // re-inserted below: most recently used last
      b.tokens = Math.min(limit.burst, b.tokens + Math.max(0, now - b.at) * limit.perMs)
      b.at = now
    }
    this.buckets.set(key, b)
    // Refills are fractions (10 ms at 10 rps is 0.1): a float sum of ten of them is 0.999…
    if (b.tokens < 1 - TOKEN_EPSILON) return false
    b.tokens -= 1
    return true
  }

  /** Frees a slot when the table is full: full buckets first, then the least recently used. */
  private makeRoom(now: number): void {
    if (this.buckets.size < this.maxBuckets) return
    // The oldest few only: a full table costs a bounded scan per new bucket, never a full one.
    let scanned = 0
    for (const [key, b] of this.buckets) {
      if (++scanned > EVICTION_SCAN) break
      const limit = this.limitOfKey(key)
      if (limit === undefined || b.tokens + (now - b.at) * limit.perMs >= limit.burst)
        this.buckets.delete(key)
    }
    while (this.buckets.size >= this.maxBuckets) this.buckets.delete(this.buckets.keys().next().value!)
  }

  private limitOfKey(key: string): Limit | undefined {
    const index = Number(key.slice(0, key.indexOf(' ')))
    return index < 0 ? this.instance : this.routes[index]?.limit
  }
}

function limitOf(requestsPerSecond: number, burst: number | undefined): Limit {
  return {
    perMs: requestsPerSecond / 1000,
    burst: burst !== undefined && burst > 0 ? burst : Math.max(1, requestsPerSecond),
  }
}
