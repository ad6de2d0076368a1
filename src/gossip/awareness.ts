/**
 * Lifeguard §IV-A Local Health Multiplier (memberlist `awareness.go`): a saturating counter of
 * evidence that this node itself is slow (failed probes, missed nacks, having to refute a suspicion
 * about itself). Timeouts are scaled by `score + 1`, so a sick node probes less aggressively
 * instead of accusing healthy members.
 */
export class LocalHealth {
  private score = 0

  constructor(private readonly max: number) {}

  /** Adds `delta` (may be negative), clamped to `[0, max − 1]`. */
  apply(delta: number): void {
    this.score = Math.min(this.max - 1, Math.max(0, this.score + delta))
  }

  get health(): number {
    return this.score
  }

  /** `timeoutMs · (score + 1)`. */
  scale(timeoutMs: number): number {
    return timeoutMs * (this.score + 1)
  }
}
