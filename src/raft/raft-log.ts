import type { Entry, Snapshot } from './types.ts'

/**
 * The core's in-memory view of the log (etcd `log.go` + `log_unstable.go` in one): entries after
 * the last compaction point, plus the indexes that say how far they are committed, persisted
 * (`stabled`) and applied.
 */
export class RaftLog {
  /** Index and term of the last compacted entry (0/0 for an uncompacted log). */
  offsetIndex = 0
  offsetTerm = 0
  /** entries[i].index === offsetIndex + 1 + i */
  entries: Entry[] = []
  committed = 0
  /** Highest index handed to the application to apply (acknowledged by advance). */
  applied = 0
  /** Highest index known to be durable in storage. */
  stabled = 0
  /**
   * Highest index handed to storage, durable or not (etcd `offsetInProgress`): entries up to it
   * are not handed out again while their write is under way. Never below `stabled`.
   */
  inProgress = 0
  /** A snapshot received from the leader that the application has not persisted yet. */
  pendingSnapshot: Snapshot | undefined

  firstIndex(): number {
    return this.offsetIndex + 1
  }

  lastIndex(): number {
    return this.offsetIndex + this.entries.length
  }

  lastTerm(): number {
    return this.term(this.lastIndex()) ?? 0
  }

  /** Term of the entry at `i`, or undefined if compacted away or not (yet) in the log. */
  term(i: number): number | undefined {
    if (i === this.offsetIndex) return this.offsetTerm
    if (i < this.offsetIndex || i > this.lastIndex()) return undefined
    return this.entries[i - this.offsetIndex - 1]!.term
  }

  entry(i: number): Entry | undefined {
    if (i <= this.offsetIndex) return undefined
    return this.entries[i - this.offsetIndex - 1]
  }

  matchTerm(i: number, t: number): boolean {
    return this.term(i) === t
  }

  /** Raft §5.4.1: a candidate's log is at least as up-to-date as ours. */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourTerm = this.lastTerm()
    return lastTerm > ourTerm || (lastTerm === ourTerm && lastIndex >= this.lastIndex())
  }

  /** Index of the first entry of `ents` that conflicts with (or extends) our log; 0 if none. */
  findConflict(ents: readonly Entry[]): number {
    for (const e of ents) {
      if (!this.matchTerm(e.index, e.term)) return e.index
    }
    return 0
  }

  /**
   * The largest index <= `index` whose term is <= `term` (etcd `findConflictByTerm`): everything
   * after it certainly mismatches a log whose entry at `index` has term `term`, so the leader can
   * skip a whole term per round trip when backtracking.
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    let i = Math.min(index, this.lastIndex())
    for (; i >= this.offsetIndex; i--) {
      const t = this.term(i)
      if (t === undefined) break
      if (t <= term) return { index: i, term: t }
    }
    return { index: Math.max(i, 0), term: 0 }
  }

  /** Appends `ents`, first dropping any existing entries at or after `ents[0].index`. */
  truncateAndAppend(ents: readonly Entry[]): void {
    if (ents.length === 0) return
    const first = ents[0]!.index
    if (first <= this.lastIndex()) {
      this.entries.length = Math.max(0, first - this.offsetIndex - 1)
      this.stabled = Math.min(this.stabled, first - 1)
      this.inProgress = Math.min(this.inProgress, first - 1)
    }
    for (const e of ents) this.entries.push(e)
  }

  /** Entries in [lo, lo + maxEntries) within maxBytes (at least one); undefined if lo is compacted. */
  sliceForSend(lo: number, maxEntries: number, maxBytes: number): Entry[] | undefined {
    if (lo <= this.offsetIndex) return undefined
    const out: Entry[] = []
    let bytes = 0
    for (let i = lo; i <= this.lastIndex() && out.length < maxEntries; i++) {
      const e = this.entry(i)!
      bytes += e.data.byteLength
      if (out.length > 0 && bytes > maxBytes) break
      out.push(e)
    }
    return out
  }

  slice(lo: number, hi: number): Entry[] {
    const from = Math.max(lo, this.firstIndex())
    return this.entries.slice(from - this.offsetIndex - 1, Math.max(0, hi - this.offsetIndex - 1))
  }

  /** Entries not yet handed to storage. */
  unstableEntries(): Entry[] {
    return this.slice(this.inProgress + 1, this.lastIndex() + 1)
  }

  /** Committed entries not yet handed to the application. */
  entriesToApply(): Entry[] {
    const lo = Math.max(this.applied, this.offsetIndex) + 1
    return this.slice(lo, this.committed + 1)
  }

  commitTo(i: number): boolean {
    const target = Math.min(i, this.lastIndex())
    if (target > this.committed) {
      this.committed = target
      return true
    }
    return false
  }

  /**
   * Replaces the whole log with a snapshot from the leader (Raft §7). Storage drops its log when it
   * installs the snapshot, so nothing after the snapshot index is durable any more: entries the
   * leader sends next, from index + 1 on, must all be reported as unstable, even where this node had
   * stabled (conflicting) entries before.
   */
  restore(s: Snapshot): void {
    this.offsetIndex = s.metadata.index
    this.offsetTerm = s.metadata.term
    this.entries = []
    this.committed = s.metadata.index
    this.stabled = Math.min(this.stabled, s.metadata.index)
    this.inProgress = Math.min(this.inProgress, s.metadata.index)
    this.pendingSnapshot = s
  }

  /** Drops entries <= index (the application has snapshotted at least that far). */
  compact(index: number): void {
    if (index <= this.offsetIndex) return
    const i = Math.min(index, this.applied, this.lastIndex())
    if (i <= this.offsetIndex) return
    this.offsetTerm = this.term(i)!
    this.entries.splice(0, i - this.offsetIndex)
    this.offsetIndex = i
  }
}
