export { LocalHealth } from './awareness.ts'
export { BroadcastQueue, retransmitLimit } from './broadcast-queue.ts'
export {
  aliveSigningBytes,
  type DecodeFailure,
  type DecodeResult,
  decodeMessage,
  decodePushPull,
  decodeRecord,
  encodeMessage,
  pushPullMemberCount,
  encodePushPull,
  encodeRecord,
  leaveSigningBytes,
  RECORD_LIMITS,
  userEventSigningBytes,
} from './codec.ts'
export {
  lanConfig,
  localConfig,
  type SwimConfig,
  type SwimProfile,
  swimConfig,
  swimProfiles,
  testConfig,
  validateConfig,
} from './config.ts'
export {
  InvalidConfigError,
  InvalidRecordError,
  InvalidUserEventError,
  RecordTooLargeError,
} from './errors.ts'
export {
  accusationWithinSigned,
  MAX_INCARNATION,
  MAX_PLAUSIBLE_INCARNATION,
  refutationIncarnation,
  repairedIncarnation,
} from './incarnation.ts'
export { createMemberSnapshot, type MemberSnapshot, type MemberState } from './member-table.ts'
export type {
  AckMessage,
  AliveMessage,
  CompoundMessage,
  DeadMessage,
  DecodedMessage,
  LeaveMessage,
  MemberStatus,
  Message,
  NackMessage,
  NodeRecord,
  PingMessage,
  PingReqMessage,
  PushPullState,
  StateEntry,
  SuspectMessage,
  UserEventMessage,
} from './messages.ts'
export { probeTiming, type RttEstimate, updateRtt } from './rtt.ts'
export { SimNetwork, type SimNetworkOptions, type SimNetworkStats, type SimNodeSpec } from './sim-network.ts'
export {
  acceptAllVerifier,
  ed25519Signer,
  ed25519Verifier,
  nullSigner,
  type Signer,
  type Verifier,
} from './signing.ts'
export type { DropReason, SwimStats } from './stats.ts'
export {
  LamportClock,
  MAX_USER_EVENT_BODY_BYTES,
  MAX_USER_EVENT_ID_LENGTH,
  MAX_USER_EVENT_LTIME,
  USER_EVENT_REMEMBERED_IDS,
  type UserEvent,
  UserEventDedup,
} from './user-events.ts'
export { remainingSuspicionTime, Suspicion, suspicionMinTimeout, suspicionTimeouts } from './suspicion.ts'
export {
  aliveMemberState,
  type MemberView,
  type Output,
  type PushPullResponse,
  pushPullInterval,
  type SelfInfo,
  Swim,
  type SwimEvent,
  type SwimEventType,
  type SwimOptions,
} from './swim.ts'
