/**
 * Passive outlier detection (Envoy's consecutive-failure detector): an endpoint that fails
 * `consecutiveFailures` times in a row is ejected — it gets no new connections — for
 * `baseEjectionMs × timesEjected`, capped at `maxEjectionMs`, unless that would put more than
 * `maxEjectionPercent` of the endpoints out at once. Time is a parameter; nothing here sets timers:
 * an ejection ends when a pick sees that its time has passed.
 */
import {
  DEFAULT_OUTLIER_BASE_EJECTION_MS,
  DEFAULT_OUTLIER_CONSECUTIVE_FAILURES,
  DEFAULT_OUTLIER_MAX_EJECTION_MS,
  DEFAULT_OUTLIER_MAX_EJECTION_PERCENT,
} from './constants.ts'
import { InvalidProxyConfigError } from './errors.ts'

export interface OutlierConfig {
  /** Failures in a row that eject an endpoint. Default 3. */
  consecutiveFailures: number
  /** First ejection time; the n-th ejection lasts n times this. Default 1 s. */
  baseEjectionMs: number
  /** Longest ejection. Default 30 s. */
  maxEjectionMs: number
  /** Most endpoints ejected at once, in percent of the set (rounded down). Default 50. */
  maxEjectionPercent: number
}

export const DEFAULT_OUTLIER_CONFIG: OutlierConfig = {
  consecutiveFailures: DEFAULT_OUTLIER_CONSECUTIVE_FAILURES,
  baseEjectionMs: DEFAULT_OUTLIER_BASE_EJECTION_MS,
  maxEjectionMs: DEFAULT_OUTLIER_MAX_EJECTION_MS,
  maxEjectionPercent: DEFAULT_OUTLIER_MAX_EJECTION_PERCENT,
}

export function validateOutlierConfig(partial: Partial<OutlierConfig> | undefined): OutlierConfig {
  const c = { ...DEFAULT_OUTLIER_CONFIG, ...partial }
  if (!Number.isInteger(c.consecutiveFailures) || c.consecutiveFailures < 1) {
    throw new InvalidProxyConfigError('outlier.consecutiveFailures', 'must be an integer ≥ 1')
  }
  if (!(c.baseEjectionMs > 0)) throw new InvalidProxyConfigError('outlier.baseEjectionMs', 'must be > 0')
  if (!(c.maxEjectionMs >= c.baseEjectionMs)) {
    throw new InvalidProxyConfigError('outlier.maxEjectionMs', 'cannot be shorter than baseEjectionMs')
  }
  if (!(c.maxEjectionPercent >= 0 && c.maxEjectionPercent <= 100)) {
    throw new InvalidProxyConfigError('outlier.maxEjectionPercent', 'must be from 0 to 100')
  }
  return c
}

/** How long the `timesEjected`-th ejection (1-based) lasts. */
export function ejectionDurationMs(timesEjected: number, config: OutlierConfig): number {
  return Math.min(config.maxEjectionMs, config.baseEjectionMs * Math.max(1, timesEjected))
}

/** How many of `total` endpoints may be ejected at once. */
export function maxEjected(total: number, maxEjectionPercent: number): number {
  return Math.floor((total * maxEjectionPercent) / 100)
}

/** Per-endpoint outlier state, owned by the endpoint's record in the pool. */
export interface OutlierState {
  consecutiveFailures: number
  /** 0 when not ejected. */
  ejectedUntil: number
  timesEjected: number
}

export function newOutlierState(): OutlierState {
  return { consecutiveFailures: 0, ejectedUntil: 0, timesEjected: 0 }
}

/** True while `state` is ejected at `now`. */
export function isEjected(state: OutlierState, now: number): boolean {
  return state.ejectedUntil > now
}

/**
 * Records a success. The ejection multiplier resets once an endpoint has served well for a full
 * maximum ejection time after its last ejection ended.
 */
export function recordSuccess(state: OutlierState, now: number, config: OutlierConfig): void {
  state.consecutiveFailures = 0
  if (state.timesEjected > 0 && state.ejectedUntil > 0 && now - state.ejectedUntil > config.maxEjectionMs) {
    state.timesEjected = 0
  }
}

/**
 * Records a failure; returns true when it ejected the endpoint. `ejectedNow` is how many endpoints
 * of `total` are ejected at `now` (this one excluded, since it is not).
 */
export function recordFailure(
  state: OutlierState,
  now: number,
  config: OutlierConfig,
  ejectedNow: number,
  total: number,
): boolean {
  if (isEjected(state, now)) return false // failures of connections begun before the ejection
  state.consecutiveFailures++
  if (state.consecutiveFailures < config.consecutiveFailures) return false
  if (ejectedNow + 1 > maxEjected(total, config.maxEjectionPercent)) return false
  state.timesEjected++
  state.ejectedUntil = now + ejectionDurationMs(state.timesEjected, config)
  state.consecutiveFailures = 0
  return true
}
