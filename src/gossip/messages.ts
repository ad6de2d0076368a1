/** Wire types of the SWIM protocol (`/peermesh/swim/1`). Field names are short: they are on every datagram. */

export type MemberStatus = 'alive' | 'suspect' | 'dead' | 'left'

/**
 * What a node says about itself, signed by its own key and gossiped verbatim (bytes) so every
 * member can check it. `meta` is opaque to the core (services, health, ...), size-bounded by
 * `maxRecordBytes` for the whole encoded record.
 */
export interface NodeRecord {
  /** Member id: in production the libp2p peer id string. */
  id: string
  /** Human-readable, unique name (conflicts resolved by a rule, see `Swim`). */
  name: string
  /** Where to reach it (multiaddrs in production). */
  addresses: string[]
  tags: Record<string, string>
  meta: Record<string, unknown>
  /** Bumped by the owner on every change of the record. */
  version: number
}

/** Direct probe (SWIM §3.1). `target` guards against a reused address answering for someone else. */
export interface PingMessage {
  t: 'ping'
  seq: number
  target: string
}

/** Indirect probe request (SWIM §3.1); with `nack`, the helper reports a missed ack (Lifeguard §IV-C). */
export interface PingReqMessage {
  t: 'ping-req'
  seq: number
  target: string
  nack: boolean
}

export interface AckMessage {
  t: 'ack'
  seq: number
}

/** Lifeguard §IV-C: "I forwarded your probe but got no ack" — proof that the prober itself is fine. */
export interface NackMessage {
  t: 'nack'
  seq: number
}

/**
 * A member is alive at incarnation `inc` with record `rec` (encoded `NodeRecord` bytes). `sig` is
 * the owner's signature over `aliveSigningBytes(inc, rec)`; relays forward the bytes unchanged.
 */
export interface AliveMessage {
  t: 'alive'
  inc: number
  rec: Uint8Array
  sig: Uint8Array
}

/** `from` suspects member `id` at incarnation `inc` (SWIM §4.2). */
export interface SuspectMessage {
  t: 'suspect'
  id: string
  inc: number
  from: string
}

/** `from` declares member `id` dead at incarnation `inc`. */
export interface DeadMessage {
  t: 'dead'
  id: string
  inc: number
  from: string
}

/**
 * An operator's force-leave (Consul's `force-leave`), relayed by `from`: member `id`, failed at
 * incarnation `inc`, is to be held `left`. Receivers apply it only to a member they also hold
 * dead at that incarnation, so it can hasten the end of a failure, never end a live member.
 */
export interface ForceLeaveMessage {
  t: 'fleave'
  id: string
  inc: number
  from: string
}

/** Member `id` leaves gracefully; signed by its owner over `leaveSigningBytes(id, inc)`. */
export interface LeaveMessage {
  t: 'leave'
  id: string
  inc: number
  sig: Uint8Array
}

/**
 * A user event fired by member `from` at Lamport time `lt` (see `user-events.ts`); `sig` is
 * `from`'s signature over `userEventSigningBytes(from, lt, id, body)`. Relays forward it unchanged.
 */
export interface UserEventMessage {
  t: 'user'
  from: string
  lt: number
  id: string
  body: Uint8Array
  sig: Uint8Array
}

/**
 * Anti-entropy check before a push/pull (`Swim`): `digest` is the sender's `stateDigest`, a
 * 16-byte fingerprint of every member it knows (self included) with status, incarnations and
 * signature. The receiver answers with a `sync-ack` carrying its own; only when they differ does
 * the requester run the full push/pull exchange over the reliable path.
 */
export interface SyncMessage {
  t: 'sync'
  seq: number
  digest: Uint8Array
}

/** Answer to a `sync`: the responder's `stateDigest`. */
export interface SyncAckMessage {
  t: 'sync-ack'
  seq: number
  digest: Uint8Array
}

/** Several encoded messages in one datagram (a probe plus piggybacked updates). Not nested. */
export interface CompoundMessage {
  t: 'compound'
  parts: Uint8Array[]
}

export type SimpleMessage =
  | PingMessage
  | PingReqMessage
  | AckMessage
  | NackMessage
  | AliveMessage
  | SuspectMessage
  | DeadMessage
  | ForceLeaveMessage
  | LeaveMessage
  | UserEventMessage
  | SyncMessage
  | SyncAckMessage
export type Message = SimpleMessage | CompoundMessage
export type MessageType = Message['t']

/** An alive message after decoding, with its record parsed and validated. */
export type DecodedAlive = AliveMessage & { record: NodeRecord }
export type DecodedSimpleMessage = Exclude<SimpleMessage, AliveMessage> | DecodedAlive
export type DecodedMessage = DecodedSimpleMessage | { t: 'compound'; parts: DecodedSimpleMessage[] }

/** One member in a push/pull state exchange. `ri`/`rec`/`sig` are the latest signed alive. */
export interface StateEntry {
  /** Member id (must equal the id inside `rec`). */
  id: string
  st: MemberStatus
  /** Incarnation of the member's current state (≥ `ri`). */
  inc: number
  /** Incarnation signed together with the record. */
  ri: number
  rec: Uint8Array
  sig: Uint8Array
  /** Owner's leave signature, present when `st` is `left`. */
  lsig?: Uint8Array
}

/** Full state of a node, exchanged over the reliable push/pull path (memberlist `pushPull`). */
export interface PushPullState {
  t: 'state'
  join: boolean
  members: StateEntry[]
}
