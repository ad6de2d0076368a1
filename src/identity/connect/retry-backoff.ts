/**
 * Retries with capped, jittered exponential backoff, as leaf renewal and service grant requests
 * make them. Pure: the random source is passed in.
 */

export interface RetryBackoff {
  /** First retry delay. Default 1 s: a CA hiccup (leader election) usually passes that fast. */
  initialMs: number
  /** Largest retry delay. Default 60 s: keeps trying often enough to renew before expiry. */
  maxMs: number
}

export const DEFAULT_RETRY_BACKOFF: RetryBackoff = { initialMs: 1_000, maxMs: 60_000 }

/**
 * Delay before retry number `attempt` (1-based): `initialMs * 2^(attempt-1)` capped at `maxMs`,
 * then "equal jitter" — uniformly in [d/2, d] — so retries spread out but never collapse to 0.
 */
export function retryDelayMs(attempt: number, backoff: RetryBackoff, rng: () => number): number {
  const exp = Math.min(Math.max(attempt - 1, 0), 52)
  const capped = Math.min(backoff.maxMs, backoff.initialMs * 2 ** exp)
  return Math.floor(capped / 2 + (capped / 2) * clamp01(rng()))
}

/** `x` clamped to [0, 1) (a random source that returns 1 or more must not overshoot). */
export function clamp01(x: number): number {
  if (!(x >= 0)) return 0
  return x < 1 ? x : 1 - Number.EPSILON
}
