import type { Clock } from '../common/clock.ts'

/** Where the Raft driver reports what it survives (a failed snapshot); a pino logger fits. */
export interface DriverLog {
  warn(obj: object, msg: string): void
  info(obj: object, msg: string): void
}

/**
 * After a failed snapshot (the state machine or the storage threw), the next attempt waits this
 * long, doubling per failure up to the max: the log keeps growing meanwhile, which is safe (it is
 * compacted only behind a saved snapshot), and a persistent fault is not retried on every Ready.
 */
export const SNAPSHOT_RETRY = Object.freeze({ initialMs: 1_000, maxMs: 60_000 })

/** When the driver may try a snapshot again, and what it reports about failures (once per run). */
export class SnapshotBackoff {
  /** Attempts that threw, in total. */
  failures = 0
  private streak = 0
  private nextAt = 0

  constructor(
    private readonly clock: Clock,
    private readonly log: DriverLog | undefined,
  ) {}

  /** Whether an attempt may run now (always, unless the last one failed and its backoff runs). */
  mayTry(): boolean {
    return this.streak === 0 || this.clock.now() >= this.nextAt
  }

  failed(index: number, err: unknown): void {
    this.failures++
    this.streak++
    const backoff = Math.min(
      SNAPSHOT_RETRY.initialMs * 2 ** Math.min(this.streak - 1, 30),
      SNAPSHOT_RETRY.maxMs,
    )
    this.nextAt = this.clock.now() + backoff
    if (this.streak === 1)
      this.log?.warn(
        { index, err: err instanceof Error ? err.message : String(err), retryInMs: backoff },
        'snapshot failed; the log is kept and the snapshot retried with backoff',
      )
  }

  succeeded(index: number): void {
    if (this.streak > 0) this.log?.info({ index, failures: this.streak }, 'snapshot taken after failures')
    this.streak = 0
  }
}
