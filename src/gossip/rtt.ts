/**
 * Probe timing that follows the network: a smoothed round-trip time and its variance from direct
 * acks (Jacobson/Karels, as TCP's retransmission timer in RFC 6298 §2: α = 1/8, β = 1/4, K = 4),
 * turned into the probe timeout and the protocol period, bounded by the profile. On loopback the
 * estimate is far below the profile's minimum, so the profile's timings stand; on a 100 ms network
 * the probe waits long enough for the ack, and the period leaves room for the indirect probe's two
 * round trips (SWIM §3.1), instead of suspecting every member it probes.
 */

/** Smoothed round trip and its mean deviation, in ms. */
export interface RttEstimate {
  srttMs: number
  rttvarMs: number
}

/** RFC 6298 §2: the first sample sets srtt = r, rttvar = r/2; later ones smooth with α = 1/8, β = 1/4. */
export function updateRtt(prev: RttEstimate | undefined, sampleMs: number): RttEstimate {
  const r = Math.max(0, sampleMs)
  if (prev === undefined) return { srttMs: r, rttvarMs: r / 2 }
  const rttvarMs = 0.75 * prev.rttvarMs + 0.25 * Math.abs(prev.srttMs - r)
  const srttMs = 0.875 * prev.srttMs + 0.125 * r
  return { srttMs, rttvarMs }
}

/**
 * Probe timeout and protocol period for the estimate `rtt` (undefined: no sample yet):
 *   bound   = srtt + 4·rttvar                       (an ack later than this is unlikely)
 *   timeout = clamp(bound, minTimeoutMs, maxTimeoutMs)
 *   period  = max(minIntervalMs, timeout + 2·min(bound, maxTimeoutMs))   (direct wait + the
 *             indirect probe's two round trips: requester → helper → target and back)
 * With `maxTimeoutMs <= minTimeoutMs` the timings are fixed (the profile's, whatever the RTT).
 */
export function probeTiming(
  rtt: RttEstimate | undefined,
  bounds: { minTimeoutMs: number; maxTimeoutMs: number; minIntervalMs: number },
): { timeoutMs: number; intervalMs: number } {
  const { minTimeoutMs, maxTimeoutMs, minIntervalMs } = bounds
  if (rtt === undefined || maxTimeoutMs <= minTimeoutMs)
    return { timeoutMs: minTimeoutMs, intervalMs: minIntervalMs }
  const bound = rtt.srttMs + 4 * rtt.rttvarMs
  const timeoutMs = Math.ceil(Math.min(maxTimeoutMs, Math.max(minTimeoutMs, bound)))
  const intervalMs = Math.ceil(Math.max(minIntervalMs, timeoutMs + 2 * Math.min(bound, maxTimeoutMs)))
  return { timeoutMs, intervalMs }
}
