/**
 * The leader's view of one follower's replication (etcd `tracker/progress.go`).
 * - probe: send one append at a time until the follower's match is found;
 * - replicate: pipeline appends, advancing `next` optimistically, bounded by `inflights`;
 * - snapshot: a snapshot is on its way; send nothing else until it is acknowledged.
 */
export type ProgressState = 'probe' | 'replicate' | 'snapshot'

/** Bounded window of in-flight append messages, each remembered by its last index. */
export class Inflights {
  private readonly buf: number[] = []

  constructor(readonly size: number) {}

  add(lastIndex: number): void {
    this.buf.push(lastIndex)
  }

  /** Frees every in-flight message whose last index is <= index (acknowledged). */
  freeLE(index: number): void {
    let i = 0
    while (i < this.buf.length && this.buf[i]! <= index) i++
    this.buf.splice(0, i)
  }

  freeFirst(): void {
    this.buf.shift()
  }

  full(): boolean {
    return this.buf.length >= this.size
  }

  count(): number {
    return this.buf.length
  }

  reset(): void {
    this.buf.length = 0
  }
}

export class Progress {
  match = 0
  next: number
  state: ProgressState = 'probe'
  /** In probe state: an append was sent and not yet answered (paused until a heartbeat response). */
  probeSent = false
  /** In snapshot state: index of the snapshot being sent. */
  pendingSnapshot = 0
  /** Leader ticks since the snapshot was sent; after an election timeout it is sent again. */
  snapshotTicks = 0
  /**
   * Highest index this leader sent to the peer in this term (the last entry of an append, its
   * previous index when empty, a snapshot's index). A follower cannot acknowledge more than it was
   * sent: an acknowledgement beyond it is forged and dropped.
   */
  sentIndex = 0
  /** Heard from since the last check-quorum round (thesis §6.2). */
  recentActive = false
  /** `recentActive` as it stood at the end of the previous round. */
  activeLastRound = false
  readonly inflights: Inflights

  constructor(
    next: number,
    maxInflight: number,
    public isLearner: boolean,
  ) {
    this.next = next
    this.inflights = new Inflights(maxInflight)
  }

  private resetState(state: ProgressState): void {
    this.probeSent = false
    this.pendingSnapshot = 0
    this.snapshotTicks = 0
    this.state = state
    this.inflights.reset()
  }

  becomeProbe(): void {
    if (this.state === 'snapshot') {
      const pending = this.pendingSnapshot
      this.resetState('probe')
      this.next = Math.max(this.match + 1, pending + 1)
    } else {
      this.resetState('probe')
      this.next = this.match + 1
    }
  }

  becomeReplicate(): void {
    this.resetState('replicate')
    this.next = this.match + 1
  }

  becomeSnapshot(index: number): void {
    this.resetState('snapshot')
    this.pendingSnapshot = index
  }

  /** Records an acknowledgement up to `n`; returns whether match advanced. */
  maybeUpdate(n: number): boolean {
    let updated = false
    if (this.match < n) {
      this.match = n
      updated = true
      this.probeSent = false
    }
    this.next = Math.max(this.next, n + 1)
    return updated
  }

  /** Records that entries (or a snapshot) up to `index` went to the peer (see `sentIndex`). */
  sentUpTo(index: number): void {
    if (index > this.sentIndex) this.sentIndex = index
  }

  /** Optimistically advances `next` after sending entries up to `lastIndex` (pipelining). */
  sentEntries(lastIndex: number): void {
    if (this.state === 'replicate') {
      this.next = lastIndex + 1
      this.inflights.add(lastIndex)
    } else if (this.state === 'probe') {
      this.probeSent = true
    }
  }

  /**
   * Handles a rejected append for index `rejected`; `matchHint` is the leader's best guess of the
   * follower's match (from the follower's conflict hint). Returns false if the rejection is stale.
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === 'replicate') {
      if (rejected <= this.match) return false
      this.next = this.match + 1
      return true
    }
    if (this.next - 1 !== rejected) return false
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1, 1)
    this.probeSent = false
    return true
  }

  isPaused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.probeSent
      case 'replicate':
        return this.inflights.full()
      case 'snapshot':
        return true
    }
  }
}
