/**
 * Lifeguard §IV-B dynamic suspicion timeout ("Lifeguard: Local Health Awareness for More Accurate
 * Failure Detection", Dadgar, Phillips, Currey 2018, arXiv 1707.00788), after memberlist
 * `suspicion.go`.
 */

/**
 * Time left before a suspicion expires, given `confirmations` independent confirmations out of
 * `k` expected, `elapsedMs` since the suspicion started and the `[minMs, maxMs]` bounds.
 * The timeout falls logarithmically from max (no confirmation) to min (k confirmations):
 *   timeout = max − (log(c + 1) / log(k + 1)) · (max − min), never below min.
 * With `k < 1` no confirmation is expected and the timeout is min. May be negative (expired).
 */
export function remainingSuspicionTime(
  confirmations: number,
  k: number,
  elapsedMs: number,
  minMs: number,
  maxMs: number,
): number {
  if (k < 1) return minMs - elapsedMs
  const frac = Math.log(confirmations + 1) / Math.log(k + 1)
  const raw = maxMs - frac * (maxMs - minMs)
  const timeout = Math.max(minMs, Math.floor(raw))
  return timeout - elapsedMs
}

/**
 * Minimum suspicion timeout: `suspicionMult · max(1, log10(n)) · probeIntervalMs` (memberlist
 * `suspicionTimeout`; Lifeguard's alpha). Grows with log n because dissemination takes O(log n).
 */
export function suspicionMinTimeout(suspicionMult: number, n: number, probeIntervalMs: number): number {
  const nodeScale = Math.max(1, Math.log10(Math.max(1, n)))
  return Math.floor(suspicionMult * nodeScale * probeIntervalMs)
}

/**
 * The suspicion timeouts a node applies (Lifeguard §IV-B `min`, `max = beta · min`), scaled by its
 * own Local Health Multiplier `healthScore + 1` (Lifeguard §IV-A). The paper scales the probe
 * timeout and interval; a node that knows itself slow (late timers, missed nacks) also gives a
 * suspect longer to refute, because its own view (unread refutations, probes it could not answer
 * in time) is what is in doubt. A healthy node (score 0) uses the unscaled timeouts.
 */
export function suspicionTimeouts(
  suspicionMult: number,
  maxTimeoutMult: number,
  n: number,
  probeIntervalMs: number,
  healthScore: number,
): { minMs: number; maxMs: number } {
  const minMs = suspicionMinTimeout(suspicionMult, n, probeIntervalMs) * (healthScore + 1)
  return { minMs, maxMs: maxTimeoutMult * minMs }
}

/**
 * One member under suspicion: who accused it, when, and how long until it is declared dead.
 *
 * Lifeguard §IV-B counts independent confirmations by accuser. The accuser named inside a
 * suspect message is not authenticated (anyone holding the cluster key can write any name), so
 * a confirmation counts only if both its claimed accuser and its authenticated sender (the
 * transport's peer: the datagram's or the push/pull stream's) are new to this suspicion: one
 * sender forging many accusers counts once, and a relay of an accusation counts only once too.
 */
export class Suspicion {
  readonly startMs: number
  readonly incarnation: number
  readonly k: number
  readonly minMs: number
  readonly maxMs: number
  private readonly accusers = new Set<string>()
  private readonly senders = new Set<string>()

  constructor(opts: {
    from: string
    /** Authenticated sender of the first accusation (defaults to `from`). */
    via?: string
    startMs: number
    incarnation: number
    k: number
    minMs: number
    maxMs: number
  }) {
    this.startMs = opts.startMs
    this.incarnation = opts.incarnation
    this.k = opts.k
    this.minMs = opts.minMs
    this.maxMs = opts.maxMs
    // The original accuser is not a confirmation, but it must not count twice either.
    this.accusers.add(opts.from)
    this.senders.add(opts.via ?? opts.from)
  }

  /** Independent confirmations so far (the original accuser excluded). */
  get confirmations(): number {
    return this.accusers.size - 1
  }

  /**
   * Records a confirmation by `from`, received from the authenticated sender `via` (defaults to
   * `from`); returns true if it counted (and the timeout shrank).
   */
  confirm(from: string, via: string = from): boolean {
    if (this.confirmations >= this.k) return false
    if (this.accusers.has(from) || this.senders.has(via)) return false
    this.accusers.add(from)
    this.senders.add(via)
    return true
  }

  /** Absolute time at which the member is declared dead, given the confirmations so far. */
  deadlineMs(): number {
    return this.startMs + remainingSuspicionTime(this.confirmations, this.k, 0, this.minMs, this.maxMs)
  }
}
