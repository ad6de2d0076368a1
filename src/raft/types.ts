/** Data types shared by the Raft core, storage, codec and driver. */

/** A node's identity: the libp2p peer id string in production, any unique string in tests. */
export type NodeId = string

/** Identifies one client write so that a retry is applied at most once (see the state machine). */
export interface RequestId {
  clientId: string
  seq: number
}

export type EntryType = 'normal' | 'conf'

export interface Entry {
  term: number
  index: number
  /** `conf` entries carry an encoded {@link ConfChange}; `normal` entries carry application data. */
  type: EntryType
  data: Uint8Array
  requestId?: RequestId
}

/** Single-server membership change (Raft thesis §4.1). */
export type ConfChangeType = 'addVoter' | 'removeVoter' | 'addLearner' | 'promoteLearner'

export interface ConfChange {
  type: ConfChangeType
  node: NodeId
}

export interface ConfState {
  voters: NodeId[]
  learners: NodeId[]
}

export interface SnapshotMetadata {
  index: number
  term: number
  conf: ConfState
}

export interface Snapshot {
  metadata: SnapshotMetadata
  data: Uint8Array
}

export interface HardState {
  term: number
  vote: NodeId
  commit: number
}

export type Role = 'follower' | 'preCandidate' | 'candidate' | 'leader'

export interface SoftState {
  leader: NodeId | undefined
  role: Role
}

export interface ReadState {
  /** The commit index at the time the read was confirmed; serve the read once applied ≥ index. */
  index: number
  context: string
}

export type MessageType =
  | 'app'
  | 'appResp'
  | 'vote'
  | 'voteResp'
  | 'preVote'
  | 'preVoteResp'
  | 'heartbeat'
  | 'heartbeatResp'
  | 'snap'
  | 'timeoutNow'
  | 'readIndex'
  | 'readIndexResp'

export const MESSAGE_TYPES: readonly MessageType[] = [
  'app',
  'appResp',
  'vote',
  'voteResp',
  'preVote',
  'preVoteResp',
  'heartbeat',
  'heartbeatResp',
  'snap',
  'timeoutNow',
  'readIndex',
  'readIndexResp',
]

/**
 * One Raft message. A flat shape like etcd's `raftpb.Message`; fields a type does not use are
 * zero/empty. `index`/`logTerm` are the previous log position for `app`, the last log position for
 * votes, the match (or rejected) index for `appResp`.
 */
export interface Message {
  type: MessageType
  from: NodeId
  to: NodeId
  term: number
  logTerm: number
  index: number
  commit: number
  entries: Entry[]
  reject: boolean
  /** On a rejected `appResp`: the follower's hint index (its `logTerm` is the hint term). */
  rejectHint: number
  /** Read-index context, or `transfer` on a vote forced by leadership transfer. */
  context: string
  snapshot?: Snapshot
  /**
   * On a `heartbeat`: the leader is idle and heartbeats only every this many ticks until it sends
   * something without the field (RaftConfig.idleHeartbeatTick). Absent elsewhere.
   */
  idleTicks?: number
  /**
   * On a `heartbeat`: the sender's tick length in ms (set by RaftNode, not the core), so that a
   * follower with shorter ticks counts its leader's heartbeat interval in its own ticks (agents
   * with different `performance.raftMultiplier`s). Absent elsewhere.
   */
  tickMs?: number
  /**
   * On a `heartbeat` to a voter (set by the agent, not the core): the other voters this leader
   * received Raft messages from, and how many milliseconds ago; the follower's gossip takes them
   * as evidence of life (`EvidenceRelay` in the agent). Absent elsewhere.
   */
  alive?: RelayedContact[]
}

/** One voter a leader heard from, `ageMs` before it sent the heartbeat (`Message.alive`). */
export interface RelayedContact {
  id: NodeId
  ageMs: number
}

/**
 * Why the Raft core (or the agent in front of it) dropped a peer's message instead of acting on it.
 * Stable strings: they are metric labels (`peermesh_raft_messages_refused_total{reason}`).
 * - `not_member`: the sender is outside this node's configuration (voters and learners);
 * - `not_leader`: an append, heartbeat, snapshot or read answer from a member that is not the
 *   leader this node follows, nor a voter that may have become leader in a later term;
 * - `timeout_now_not_leader`: TimeoutNow from anyone but the current leader (thesis §3.10);
 * - `vote_not_voter`: a (pre-)vote request from a learner;
 * - `higher_term_not_voter`: a learner's message carrying a higher term (only voters lead);
 * - `forced_vote_unannounced`: a vote with the transfer context that the leader did not announce;
 *   not dropped: handled as a normal vote, subject to the leader lease;
 * - `vote_in_lease`: a (pre-)vote ignored because this node heard from a leader within the
 *   election timeout (check-quorum lease, thesis §6.2/§4.2.3);
 * - `ack_beyond_sent`: an append acknowledgement beyond anything the leader sent to that peer;
 * - `reserved_read_context`: a read request whose context imitates a transfer announcement;
 * and, in the agent: `malformed` (undecodable or misaddressed), `sender_mismatch` (`from` is not
 * the authenticated peer), `untrusted_snapshot` (not signed by a trusted CA root).
 */
export type RefusalReason =
  | 'not_member'
  | 'not_leader'
  | 'timeout_now_not_leader'
  | 'vote_not_voter'
  | 'higher_term_not_voter'
  | 'forced_vote_unannounced'
  | 'vote_in_lease'
  | 'ack_beyond_sent'
  | 'reserved_read_context'
  | 'malformed'
  | 'sender_mismatch'
  | 'untrusted_snapshot'
  | 'unproven_leader'

/** How many messages were refused for one reason, and the last of them. */
export interface RefusalRecord {
  count: number
  /** Sender, type and term of the latest refused message. */
  from: NodeId
  /** A MessageType, or '' when the message did not decode. */
  type: MessageType | ''
  term: number
}

/** One proposal of a batch to seal: its data and the index and request id it will get. */
export interface SealRequest {
  index: number
  requestId: RequestId | undefined
  data: Uint8Array
}

/**
 * Rewrites a batch of proposals (consecutive indexes, in order) for the indexes they will get:
 * one output per input, in the same order (the agent seals policy entries so, one signature per
 * batch).
 */
export type EntrySealer = (batch: readonly SealRequest[]) => Uint8Array[]

/** What the core asks of the application; see `Raft` for the order in which to do it. */
export interface Ready {
  /** Present when term, vote or commit changed: persist (and fsync) before sending messages. */
  hardState?: HardState
  /** Entries to append to stable storage (may overwrite a conflicting suffix). */
  entries: Entry[]
  /** A snapshot received from the leader: persist it, then restore the state machine from it. */
  snapshot?: Snapshot
  /**
   * Messages that need not wait for the state above: a leader's appends, heartbeats and read
   * answers, once its term is durable (thesis §10.2.1). May be sent before persisting.
   */
  messages: Message[]
  /** Messages to send only once the state above is durable (acknowledgements, votes; thesis §3.8). */
  messagesAfterAppend: Message[]
  /** Entries committed and safe to apply, in order. */
  committedEntries: Entry[]
  readStates: ReadState[]
  /** Present when leader or role changed. Volatile; not persisted. */
  softState?: SoftState
}
