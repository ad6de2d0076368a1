/**
 * The leader's per-requester limit on leaf signing (#13): a token bucket per requesting peer id
 * (the one the transport authenticated), so that one agent asking in a loop cannot take the
 * leader's signing time from everyone else's renewals. A request past the limit is refused with
 * `PEERMESH_ERR_SIGN_RATE_LIMITED`, which the asking agent retries after a pause.
 */
import { PeermeshError } from '../../common/errors.ts'

/** The leader refused a CSR because its requester asked too often; ask again later. */
export class SignRateLimitedError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_SIGN_RATE_LIMITED'
}

export interface SignRateLimitSettings {
  /** Requests a requester may send at once after a quiet spell. */
  burst: number
  /** Requests per second a requester may keep sending. */
  perSecond: number
  /** Requesters tracked at most; past it, the ones whose bucket is full again are forgotten. */
  maxRequesters: number
}

export const SIGN_RATE_LIMIT_DEFAULTS: SignRateLimitSettings = {
  /**
   * An agent asks once per service instance it hosts at start and after a CA rotation, all at
   * once: 64 covers a busy node's instances in one burst.
   */
  burst: 64,
  /**
   * Renewals are spread over a leaf's lifetime (hours); 2 per second sustained is far above a
   * healthy agent's rate, and a signature takes the leader about a millisecond.
   */
  perSecond: 2,
  /** Agents in one cluster; a forgotten requester only starts again with a full bucket. */
  maxRequesters: 10_000,
}

/** One requester's bucket: tokens left at time `at` (ms). */
export interface Bucket {
  tokens: number
  at: number
}

/**
 * Takes one token from `bucket` at `now` (ms), refilling `perSecond` per second up to `burst`.
 * Pure. Returns the new bucket, and when refused how long until a token is there.
 */
export function takeToken(
  bucket: Bucket | undefined,
  now: number,
  s: Pick<SignRateLimitSettings, 'burst' | 'perSecond'>,
): { ok: boolean; bucket: Bucket; retryInMs: number } {
  const prev = bucket ?? { tokens: s.burst, at: now }
  const elapsed = Math.max(0, now - prev.at)
  const tokens = Math.min(s.burst, prev.tokens + (elapsed * s.perSecond) / 1000)
  if (tokens >= 1) return { ok: true, bucket: { tokens: tokens - 1, at: now }, retryInMs: 0 }
  return { ok: false, bucket: { tokens, at: now }, retryInMs: Math.ceil(((1 - tokens) * 1000) / s.perSecond) }
}

/** The buckets of every requester, and what they refused. */
export class SignRateLimiter {
  private readonly buckets = new Map<string, Bucket>()
  readonly stats = { limited: 0 }

  constructor(private readonly settings: SignRateLimitSettings = SIGN_RATE_LIMIT_DEFAULTS) {
    if (!(settings.burst >= 1) || !(settings.perSecond > 0) || !(settings.maxRequesters >= 1))
      throw new RangeError('sign rate limit: burst >= 1, perSecond > 0 and maxRequesters >= 1 are needed')
  }

  /** Takes a token for `requester` at `now` (ms); undefined when allowed, else ms until a retry may pass. */
  take(requester: string, now: number): number | undefined {
    const r = takeToken(this.buckets.get(requester), now, this.settings)
    if (!this.buckets.has(requester) && this.buckets.size >= this.settings.maxRequesters) this.forgetFull(now)
    this.buckets.set(requester, r.bucket)
    if (r.ok) return undefined
    this.stats.limited++
    return r.retryInMs
  }

  /** Requesters tracked now. */
  get size(): number {
    return this.buckets.size
  }

  /** Drops the buckets that are full again (their requesters lose nothing), else the oldest. */
  private forgetFull(now: number): void {
    const { burst, perSecond } = this.settings
    for (const [id, b] of this.buckets) {
      if (b.tokens + ((now - b.at) * perSecond) / 1000 >= burst) this.buckets.delete(id)
    }
    if (this.buckets.size >= this.settings.maxRequesters) {
      const oldest = this.buckets.keys().next().value
      if (oldest !== undefined) this.buckets.delete(oldest)
    }
  }
}
