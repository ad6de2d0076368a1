import type { RaftStorage, StoredState } from './storage.ts'
import { EMPTY_HARD_STATE } from './storage.ts'
import type { Entry, HardState, Snapshot } from '../types.ts'

/**
 * In-memory `RaftStorage` for tests and simulations (hashicorp/raft `inmem_store.go`). It survives a
 * simulated crash of the node that owns it: restart a `Raft` from `initialState()`.
 */
export class MemoryStorage implements RaftStorage {
  private hardState: HardState = { ...EMPTY_HARD_STATE }
  private snapshot: Snapshot | undefined
  private entries: Entry[] = []

  initialState(): StoredState {
    return { hardState: { ...this.hardState }, snapshot: this.snapshot, entries: this.entries.slice() }
  }

  setHardState(hs: HardState): void {
    this.hardState = { ...hs }
  }

  append(entries: readonly Entry[]): void {
    if (entries.length === 0) return
    const first = entries[0]!.index
    const last = this.lastIndex()
    if (first > last + 1) throw new RangeError(`append at ${first} leaves a gap after ${last}`)
    this.entries = this.entries.filter((e) => e.index < first).concat(entries)
  }

  installSnapshot(snap: Snapshot): void {
    this.snapshot = snap
    this.entries = []
  }

  saveSnapshot(snap: Snapshot): void {
    if (this.snapshot === undefined || snap.metadata.index > this.snapshot.metadata.index)
      this.snapshot = snap
  }

  compact(index: number): void {
    const limit = Math.min(index, this.snapshot?.metadata.index ?? 0)
    this.entries = this.entries.filter((e) => e.index > limit)
  }

  close(): void {}

  firstIndex(): number {
    return this.entries[0]?.index ?? (this.snapshot?.metadata.index ?? 0) + 1
  }

  lastIndex(): number {
    return this.entries.at(-1)?.index ?? this.snapshot?.metadata.index ?? 0
  }
}
