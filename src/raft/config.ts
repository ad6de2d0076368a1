import { InvalidRaftConfigError } from './errors.ts'
import type { NodeId } from './types.ts'

/** Settings of the pure Raft core. Times are in ticks; the driver decides how long a tick is. */
export interface RaftConfig {
  /** This node's id. */
  id: NodeId
  /**
   * Followers start an election after a randomized timeout in [electionTick, 2·electionTick) ticks
   * without hearing from a leader (Raft §5.2). Must be well above heartbeatTick so one lost
   * heartbeat does not cause an election.
   */
  electionTick: number
  /** The leader sends heartbeats every heartbeatTick ticks. */
  heartbeatTick: number
  /**
   * Learners get a heartbeat only every learnerHeartbeatTick ticks (a multiple of heartbeatTick in
   * effect). They never vote or campaign, so no election timer or lease depends on it: their
   * heartbeat only lets a lost append be resent and keeps them `active` for autopilot, hence it
   * must stay below electionTick. Appends and commit notices still reach them at once. In a big
   * cluster with a short tick, learners' heartbeats and answers are most of the leader's messages.
   */
  learnerHeartbeatTick: number
  /**
   * Idle heartbeats (0: off). A leader with nothing to replicate (every member has every entry, all
   * committed, no read or transfer in progress) for `quietTicks` ticks heartbeats every
   * idleHeartbeatTick ticks instead, to voters and learners alike, and says so in each of those
   * heartbeats (`idleTicks`). Every timeout that waits on heartbeats stretches by the same amount on
   * both sides (`electionTimeoutTicks`): a follower told so waits electionTick + 2 ×
   * (idleHeartbeatTick - heartbeatTick) ticks before campaigning (and keeps its check-quorum lease
   * that long), and the leader's check-quorum round is as long. Anything the leader sends without the field (an append,
   * a read's heartbeat round) puts followers back on the short timeout, and the leader heartbeats
   * every heartbeatTick again. Only liveness depends on it: a hung, still-connected leader of an
   * idle cluster is replaced later (a closed connection is noticed at once by the agent).
   */
  idleHeartbeatTick: number
  /** Uniform random number in [0, 1); injected so simulations are deterministic by seed. */
  rng: () => number
  /**
   * Pre-vote (thesis §9.6): a node first asks whether it could win before bumping its term, so a
   * partitioned node that rejoins cannot disrupt a healthy leader.
   */
  preVote: boolean
  /**
   * Check-quorum (thesis §6.2): the leader steps down if it has not heard from a quorum within an
   * election timeout, and followers that heard from a leader recently ignore vote requests.
   */
  checkQuorum: boolean
  /** Maximum number of entries in one append message (batching). */
  maxEntriesPerMsg: number
  /** Maximum total entry payload bytes in one append message (at least one entry is always sent). */
  maxBytesPerMsg: number
  /** Maximum in-flight append messages per follower while pipelining (replicate state). */
  maxInflightMsgs: number
}

/**
 * Core defaults for a LAN cluster with the driver's 100 ms tick (DEFAULT_DRIVER_CONFIG below):
 * heartbeats every 100 ms, elections after 1-2 s.
 */
export const DEFAULT_RAFT_CONFIG: Omit<RaftConfig, 'id' | 'rng'> = {
  electionTick: 10, // 10 × 100 ms: tolerates several lost heartbeats before an election
  heartbeatTick: 1, // heartbeat every tick keeps followers' election timers well clear of expiry
  learnerHeartbeatTick: 1, // as voters: at 100 ms ticks, learners' heartbeats cost little
  idleHeartbeatTick: 0, // off: a library user opts in (the agent does, RAFT_DEFAULTS)
  preVote: true, // a rejoining partitioned node must not depose a healthy leader
  checkQuorum: true, // a leader cut off from the majority must stop serving reads and writes
  maxEntriesPerMsg: 256, // policy writes are small; 256 keeps a catching-up follower moving fast
  maxBytesPerMsg: 1024 * 1024, // 1 MiB keeps one message under libp2p stream frame limits
  maxInflightMsgs: 256, // enough pipelining for a WAN round trip without unbounded memory
}

/** Settings of the driver (`RaftNode`): real time, and what it does around the core. */
export interface DriverConfig {
  /** Milliseconds per tick: the core's timeouts are counted in ticks. */
  tickMs: number
  /** Snapshot the state machine after this many applied entries (bounds log size and replay). */
  snapshotThreshold: number
  /** Entries kept behind a compaction so that slightly lagging followers need no snapshot. */
  snapshotTrailing: number
  /** Default time limit for propose/read/changeMembership when the caller gives no signal. */
  requestTimeoutMs: number
}

export const DEFAULT_DRIVER_CONFIG: DriverConfig = {
  tickMs: 100, // with electionTick 10: heartbeats every 100 ms, elections after 1-2 s
  snapshotThreshold: 1024, // policy entries are small: a snapshot every ~1k writes keeps replay short
  snapshotTrailing: 128, // a follower lagging < 128 entries catches up from the log
  requestTimeoutMs: 10_000, // longer than several elections; a caller wanting less passes a signal
}

/**
 * Largest idle heartbeat interval, in ticks, a node configures or accepts from a leader: a peer's
 * `idleTicks` beyond it is clamped, so a member cannot silence another's election timer for long.
 */
export const MAX_IDLE_HEARTBEAT_TICK = 1000

/**
 * The shortest election timeout, in ticks, of a follower whose leader last said it heartbeats every
 * `leaderIdleTicks` ticks (0: every heartbeatTick): electionTick plus twice the extra silence
 * between two idle heartbeats, so one idle heartbeat may come late by a whole interval (a leader
 * whose timers fire late under load counts its ticks slower than its followers) without an
 * election. The follower's check-quorum lease and the leader's check-quorum round use the same
 * figure. The randomized timeout is drawn in [this, this + electionTick).
 */
export function electionTimeoutTicks(
  c: Pick<RaftConfig, 'electionTick' | 'heartbeatTick'>,
  leaderIdleTicks: number,
): number {
  const idle = Math.min(Math.max(0, Math.floor(leaderIdleTicks)), MAX_IDLE_HEARTBEAT_TICK)
  return idle > c.heartbeatTick ? c.electionTick + 2 * (idle - c.heartbeatTick) : c.electionTick
}

/**
 * Ticks a leader must have had nothing to replicate before it heartbeats at the idle interval: four
 * idle intervals, and at least an election timeout. A cluster written to within the last 600 ms
 * (at the agent's 50 ms ticks) keeps its short timeouts and leases, so a leader that dies right
 * after a write is replaced as fast as before even by a survivor that missed its connection close.
 */
export function quietTicks(c: Pick<RaftConfig, 'electionTick' | 'idleHeartbeatTick'>): number {
  return Math.max(c.electionTick, 4 * c.idleHeartbeatTick)
}

/** Rejects combinations that cannot work, with the reason. */
export function validateRaftConfig(c: RaftConfig): void {
  const intOver = (name: string, v: number, min: number) => {
    if (!Number.isInteger(v) || v < min)
      throw new InvalidRaftConfigError(`${name} must be an integer >= ${min}`)
  }
  if (typeof c.id !== 'string' || c.id.length === 0)
    throw new InvalidRaftConfigError('id must be a non-empty string')
  intOver('heartbeatTick', c.heartbeatTick, 1)
  intOver('electionTick', c.electionTick, 1)
  if (c.electionTick <= c.heartbeatTick) {
    throw new InvalidRaftConfigError('electionTick must be greater than heartbeatTick')
  }
  intOver('learnerHeartbeatTick', c.learnerHeartbeatTick, 1)
  if (c.learnerHeartbeatTick >= c.electionTick) {
    throw new InvalidRaftConfigError(
      'learnerHeartbeatTick must be less than electionTick (a learner would look inactive to autopilot)',
    )
  }
  intOver('idleHeartbeatTick', c.idleHeartbeatTick, 0)
  if (c.idleHeartbeatTick !== 0 && c.idleHeartbeatTick <= c.heartbeatTick) {
    throw new InvalidRaftConfigError('idleHeartbeatTick must be 0 (off) or greater than heartbeatTick')
  }
  if (c.idleHeartbeatTick > MAX_IDLE_HEARTBEAT_TICK) {
    throw new InvalidRaftConfigError(`idleHeartbeatTick must be at most ${MAX_IDLE_HEARTBEAT_TICK}`)
  }
  intOver('maxEntriesPerMsg', c.maxEntriesPerMsg, 1)
  intOver('maxBytesPerMsg', c.maxBytesPerMsg, 1)
  intOver('maxInflightMsgs', c.maxInflightMsgs, 1)
  if (typeof c.rng !== 'function') throw new InvalidRaftConfigError('rng must be a function returning [0, 1)')
}
