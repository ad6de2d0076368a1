import type { Entry, HardState, Snapshot } from '../types.ts'

/** What a node restarts from. Entries may start before the snapshot index (trailing entries). */
export interface StoredState {
  hardState: HardState
  snapshot: Snapshot | undefined
  entries: Entry[]
}

/**
 * Durable Raft state. Every method returns only once the change is durable (fsynced), so the driver
 * can persist → send → apply in order. Implementations: `FileStorage` (node:fs) and `MemoryStorage`.
 */
export interface RaftStorage {
  initialState(): StoredState
  /** Persists term, vote and commit. */
  setHardState(hs: HardState): void
  /** Appends entries; any stored entries at or after `entries[0].index` are replaced. */
  append(entries: readonly Entry[]): void
  /** A snapshot from the leader: it replaces the whole log. */
  installSnapshot(snap: Snapshot): void
  /** A snapshot of the local state machine; the log is kept until `compact`. */
  saveSnapshot(snap: Snapshot): void
  /** Drops entries <= index; index must not exceed the saved snapshot's index. */
  compact(index: number): void
  close(): void
  /**
   * Optional pair for asynchronous durability: `appendDeferred` writes like `append` but returns
   * before the fsync; the entries are durable once the promise of the next `sync()` resolves. The
   * driver calls nothing else on the storage while a `sync()` is pending.
   */
  appendDeferred?(entries: readonly Entry[]): void
  sync?(): Promise<void>
}

export const EMPTY_HARD_STATE: HardState = { term: 0, vote: '', commit: 0 }
