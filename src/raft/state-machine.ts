import type { Entry } from './types.ts'

/**
 * The replicated application state (Raft §5, "replicated state machine"). Must be deterministic:
 * the same entries applied in the same order yield the same state and results on every node, so no
 * clock, no randomness, no I/O, no iteration over unordered structures. `apply` must not throw on
 * bad input: a rejected command returns an error result and leaves the state unchanged.
 */
export interface StateMachine<R = unknown> {
  /** Applies a committed `normal` entry with non-empty data; returns the result for the proposer. */
  apply(entry: Entry): R
  /** Serializes the whole state (including any client dedupe table). */
  snapshot(): Uint8Array
  /** Replaces the whole state with a snapshot's. */
  restore(bytes: Uint8Array): void
  /**
   * Optional: entries were just appended to this node's log and will likely be applied soon. A
   * hint only (they may be overwritten): start costly checks of them early, decide nothing.
   */
  prepare?(entries: readonly Entry[]): void
  /**
   * Optional: runs `run`, which applies a run of entries in order (`apply` each); the state
   * machine may hold what it tells observers (change notifications) until `run` returns.
   */
  batch?(run: () => void): void
}
