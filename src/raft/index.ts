export type { RaftClock } from './clock.ts'
export { systemClock } from './clock.ts'
export type { DecodeResult } from './codec.ts'
export { decodeMessage, encodeMessage } from './codec.ts'
export type { RaftConfig } from './config.ts'
export { DEFAULT_RAFT_CONFIG, validateRaftConfig } from './config.ts'
export {
  ConfChangeError,
  InvalidRaftConfigError,
  LeadershipTransferInProgressError,
  LogCorruptedError,
  NotLeaderError,
  ProposalDroppedError,
  ProposalOutcomeUnknownError,
  RaftAbortedError,
  RaftStoppedError,
  StorageCorruptedError,
} from './errors.ts'
export type { FileStorageOptions } from './storage/file-storage.ts'
export { FileStorage } from './storage/file-storage.ts'
export { MemoryStorage } from './storage/memory-storage.ts'
export type {
  DriverStatus,
  RaftNodeEvents,
  RaftNodeOptions,
  RaftTransport,
  RequestOptions,
} from './node-driver.ts'
export { RaftNode } from './node-driver.ts'
export type {
  CaRoots,
  ConfigEntry,
  Intention,
  IntentionAction,
  PolicyCommand,
  PolicyErrorCode,
  PolicyResult,
} from './policy/policy-store.ts'
export { encodePolicyCommand, PolicyStore } from './policy/policy-store.ts'
export { committedIndex, quorum } from './quorum.ts'
export type { RaftInitialState, RaftStatus } from './raft.ts'
export { Raft } from './raft.ts'
export type { StateMachine } from './state-machine.ts'
export type { RaftStorage, StoredState } from './storage/storage.ts'
export type {
  ConfChange,
  ConfState,
  Entry,
  HardState,
  Message,
  NodeId,
  ReadState,
  Ready,
  RequestId,
  Role,
  Snapshot,
  SoftState,
} from './types.ts'
export * from './policy/policy-signing.ts'
export type { EntrySealer } from './raft.ts'
