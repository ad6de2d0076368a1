import type { Clock } from '../common/clock.ts'
import type { DriverConfig, RaftConfig } from './config.ts'
import type { RaftStatus } from './raft.ts'
import type { StateMachine } from './state-machine.ts'
import type { RaftStorage } from './storage/storage.ts'
import type { ConfChange, ConfState, EntrySealer, Message, NodeId, Role } from './types.ts'

/**
 * How the driver sends messages. Best-effort: a message may be lost, delayed, duplicated or
 * reordered, and Raft copes (it retries on heartbeats). `send` must not block, should not throw (a
 * throw is caught and counted as a lost message) and must not deliver synchronously into another
 * node's `receive` within the call: queue the bytes and write them from the event loop. Encode with
 * `encodeMessage` from ./codec.ts; the receiver calls `receive(bytes, authenticatedPeerId)`.
 */
export interface RaftTransport {
  send(to: NodeId, msg: Message): void
}

export interface RaftNodeEvents {
  /** The known leader or the term changed. */
  'leader:change': { leader: NodeId | undefined; term: number }
  /** This node's role changed. */
  'role:change': { role: Role; term: number }
  /** A membership change committed; `conf` is the configuration after it. */
  'conf:change': { index: number; change: ConfChange; conf: ConfState }
  /** The state machine was replaced by a snapshot from the leader. */
  'snapshot:restore': { index: number }
}

export interface RaftNodeOptions<R> extends Partial<DriverConfig> {
  id: NodeId
  storage: RaftStorage
  stateMachine: StateMachine<R>
  transport: RaftTransport
  /** Real timers by default; tests pass a virtual clock. */
  clock?: Clock
  /** Uniform [0, 1) source for election timeouts; Math.random by default (the core never calls it). */
  rng?: () => number
  /** Core settings (ticks); see RaftConfig. */
  config?: Partial<Omit<RaftConfig, 'id' | 'rng'>>
  /** Founding voters of a new cluster; ignored when storage already holds state. */
  bootstrap?: NodeId[]
  /**
   * Rewrites the proposals this node appends as leader, for the indexes they get: the proposals of
   * one event-loop turn go to it as one batch (the agent seals policy entries with one signature
   * per batch; see policy-signing.ts). Unset: entries are stored as proposed.
   */
  sealer?: EntrySealer
  /**
   * Checks a snapshot message before it is stepped (the agent verifies the leader's CA signature
   * carried in its `context`); false drops it as malformed. Unset: every snapshot is accepted.
   */
  verifySnapshot?: (msg: Message) => boolean
  /**
   * Process Ready on `clock.defer` instead of synchronously after each step/propose, so that every
   * message and request handled in one event-loop turn shares one Ready, hence one fsync (group
   * commit). With a storage offering `appendDeferred`/`sync`, entries are also fsynced off the
   * event loop while input keeps arriving (see Raft `accept`). Off by default: most virtual-clock
   * tests expect synchronous processing.
   */
  coalesceReady?: boolean
  /**
   * With an off-loop storage (see `coalesceReady`), whether followers too write entries off the
   * event loop. Off by default: only a leader gains from it (it keeps taking proposals and
   * replicating meanwhile); a follower acknowledges nothing before its fsync and has little else
   * to do in the meantime, so it writes in line, as etcd's raft loop saves a follower's entries,
   * and saves the two thread-pool wake-ups of an asynchronous fsync, which cost more than a fast
   * disk's fsync on a busy machine.
   */
  followerWritesOffLoop?: boolean
  /**
   * With `coalesceReady`, how long (clock ms) a leader holds a commit notice (an append without
   * entries) for an append to the same peer that carries the commit anyway. Unset or 0: a notice
   * waits only a turn or two (NOTICE_HOLD_TURNS in node-driver.ts), which a writer in another
   * process never answers in time: each of its writes then costs the leader a second send per
   * follower and each follower a second receive, step and Ready, competing for the CPU with the
   * next write. Held for a few ms, the next write's append carries the commit instead. The cost:
   * when writes stop, followers apply the last one up to this much later.
   */
  noticeHoldMs?: number
  /**
   * Sleep between the ticks that act (see Raft.ticksUntilDue) instead of waking every `tickMs`:
   * the ticks in between are counted from the clock before the next input, so no input sees
   * time stand still. An idle follower then wakes for its leader's heartbeats only, an idle
   * leader for its own. A tick that acts runs after the I/O already queued in its event-loop turn
   * (`clock.defer`), so a node woken late (stopped, starved) reads the heartbeats waiting for it
   * before it campaigns, and a leader its followers' answers before it checks its quorum; time it
   * spent not running beyond one tick is not counted, as a timer that fires late counts one tick.
   * Off by default.
   */
  lazyTicks?: boolean
}

export interface DriverStatus extends RaftStatus {
  /** Peer messages dropped because they did not decode or were misaddressed. */
  malformedMessages: number
  /** Messages the transport threw on. */
  sendFailures: number
}
