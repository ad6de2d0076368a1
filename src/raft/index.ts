/** The consensus library: the pure core (`Raft`), its driver (`RaftNode`), storage and codec. */
export type { DecodeResult } from './codec.ts'
export { decodeMessage, encodeMessage } from './codec.ts'
export type { DriverConfig, RaftConfig } from './config.ts'
export { DEFAULT_DRIVER_CONFIG, DEFAULT_RAFT_CONFIG, validateRaftConfig } from './config.ts'
export {
  ConfChangeError,
  InvalidRaftConfigError,
  LeadershipTransferInProgressError,
  LogCorruptedError,
  NotLeaderError,
  ProposalDroppedError,
  ProposalOutcomeUnknownError,
  RaftAbortedError,
  RaftInvariantError,
  RaftStoppedError,
  StorageCorruptedError,
} from './errors.ts'
export { RaftNode, type RaftNodeDriverOptions } from './node-driver.ts'
export type { DriverStatus, RaftNodeEvents, RaftNodeOptions, RaftTransport } from './node-options.ts'
export type { RequestOptions } from './pending.ts'
export { committedIndex, quorum } from './quorum.ts'
export type { RaftInitialState, RaftStatus } from './raft.ts'
export { Raft } from './raft.ts'
export type { StateMachine } from './state-machine.ts'
export type { FileStorageOptions } from './storage/file-storage.ts'
export { FileStorage } from './storage/file-storage.ts'
export { MemoryStorage } from './storage/memory-storage.ts'
export type { RaftStorage, StoredState } from './storage/storage.ts'
export type {
  ConfChange,
  ConfState,
  Entry,
  EntrySealer,
  SealRequest,
  HardState,
  Message,
  NodeId,
  ReadState,
  Ready,
  RelayedContact,
  RequestId,
  Role,
  Snapshot,
  SoftState,
} from './types.ts'

// The replicated policy state lives in ./policy; these stay re-exported here for the node wiring
// that imports them from this folder until it imports them from there.
export type { PolicySigningRoot } from './policy/policy-signing.ts'
export { snapshotMessageTrusted, withSnapshotSignature } from './policy/policy-signing.ts'
export type { ConfigEntry, PolicyCommand, PolicyResult } from './policy/policy-store.ts'
export { encodePolicyCommand, PolicyStore } from './policy/policy-store.ts'
