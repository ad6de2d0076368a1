import { ConfigError } from './errors.ts'

/**
 * The production defaults of the agent's Raft wiring, seed dialing and HTTP API, each with why it
 * has that value (memberlist `config.go` style). The Raft library's own defaults
 * (`src/raft/config.ts`, `node-driver.ts`) suit a plain 100 ms-tick cluster; the agent runs these.
 * Gossip's profile is in `src/gossip/config.ts`.
 */

/** Raft voters autopilot keeps (`--raft-voters`): one may fail; more would slow every commit. */
export const DEFAULT_RAFT_VOTERS = 3

export interface RaftAgentConfig {
  /** Milliseconds per Raft tick. */
  tickMs: number
  /** Ticks without a leader before an election (randomized up to twice that). */
  electionTick: number
  /** Ticks between leader heartbeats to voters. */
  heartbeatTick: number
  /** Ticks between leader heartbeats to learners (see RaftConfig.learnerHeartbeatTick). */
  learnerHeartbeatTick: number
  /** Snapshot the policy store after this many applied entries. */
  snapshotThreshold: number
  /** Entries kept behind a compaction, so a slightly lagging member needs no snapshot. */
  snapshotTrailing: number
  /** Time limit of a Raft request (propose, read, membership change) given no signal. */
  requestTimeoutMs: number
  /** Process every input of one event-loop turn in one Ready (one fsync), fsync off the loop. */
  coalesceReady: boolean
  /**
   * When the leader's connection closes, the surviving voters forget it and campaign in the order
   * of their peer ids, this many ms apart: the first at once, the next only if no election reached
   * it meanwhile (so they do not split the vote). 0 turns the fast failover off.
   */
  failoverStaggerMs: number
  /** How often `--bootstrap-expect` looks at gossip for enough alive members. */
  bootstrapCheckMs: number
  /** How often the leader's autopilot looks at gossip and the configuration. */
  autopilotIntervalMs: number
  /** A member dead (or left, or unknown) in gossip this long leaves the Raft configuration. */
  deadThresholdMs: number
  /** A learner within this many entries of the leader's last index counts as caught up. */
  maxLagEntries: number
  /** Time limit of one autopilot change (the CA key grant and the membership change). */
  autopilotChangeTimeoutMs: number
  /** Time limit of a dial that keeps a connection open to another voter. */
  voterDialTimeoutMs: number
  /** One attempt of a write forwarded to the leader (or proposed here), or of a ReadIndex. */
  attemptTimeoutMs: number
  /** Pause before retrying when no leader is known (or it just refused), unless one is elected. */
  retryPauseMs: number
  /** Times a write refused for its CA signature is sent again. */
  signatureRetries: number
  /** Largest Raft message. */
  maxMessageBytes: number
  /** Largest forwarded command. */
  maxCommandBytes: number
  /** Raft messages queued per peer while its stream opens; older ones are dropped beyond it. */
  maxQueuedPerPeer: number
  /** Messages to a peer whose dial failed are dropped for this long. */
  dialBackoffMs: number
}

export const RAFT_DEFAULTS: Readonly<RaftAgentConfig> = {
  // With electionTick 6, election timeouts of 150–300 ms (Raft §9.3's range): a dead leader is
  // replaced in ~0.2 s on a LAN, and a heartbeat every tick keeps followers far from expiry even
  // with an event loop stalled for 100 ms.
  tickMs: 25,
  electionTick: 6,
  heartbeatTick: 1,
  // 100 ms: learners need no heartbeat to stay in sync (appends and commit notices go out at
  // once), only to resend a lost append and to look active to autopilot; at every tick their
  // heartbeats and answers were most of a large cluster's leader traffic at rest.
  learnerHeartbeatTick: 4,
  snapshotThreshold: 8192, // a snapshot holds the dedupe table (up to 10k clients): not too often
  snapshotTrailing: 128, // a member lagging < 128 entries catches up from the log
  requestTimeoutMs: 10_000, // longer than several elections; callers wanting less pass a signal
  coalesceReady: true, // group commit: one fsync per event-loop turn, not per message
  // 4 ticks: the first survivor repeats its pre-vote every tick (a follower that has not yet seen
  // the connection close ignores it), so it wins within a tick or two of everyone noticing; the
  // next one starts only if the first cannot win (its log is behind), without racing it.
  failoverStaggerMs: 100,
  bootstrapCheckMs: 100, // founding waits for gossip, which converges in a few 150 ms probes
  autopilotIntervalMs: 200, // membership reacts within a fraction of the dead threshold
  // SWIM already waited out its suspicion timeout before saying `dead`, so this only rides out a
  // restart (a `kill -9` and restart with the same data dir takes < 2 s).
  deadThresholdMs: 2_500,
  maxLagEntries: 64, // a promoted learner must not hold back commits while it catches up
  autopilotChangeTimeoutMs: 5_000, // many elections long: a change that takes longer is retried
  voterDialTimeoutMs: 2_000, // the next autopilot round dials again
  attemptTimeoutMs: 1_000, // a dead leader's connection resets at once on a LAN; a hung one is cut
  retryPauseMs: 20, // under a tick: a write waits for the next leader, not for a timer
  // A leader signs with the CA state it has applied, so an entry right behind a CA change still in
  // flight is refused everywhere, changing nothing: sending it again is safe, a few times.
  signatureRetries: 5,
  maxMessageBytes: 16 * 1024 * 1024, // a snapshot of the policy store travels in one message
  maxCommandBytes: 1024 * 1024, // the HTTP API takes bodies up to 1 MiB
  maxQueuedPerPeer: 1024, // a burst of appends while a stream opens, not an unbounded backlog
  // Two ticks: a member that just restarted cannot reach peers whose addresses it has not learnt
  // yet, and a longer silence costs a failover round (its pre-vote answers would be lost).
  dialBackoffMs: 50,
}

/** Time a write or `?consistent` read may take through the HTTP API before it answers 503. */
export const API_RAFT_TIMEOUT_MS = 5_000 // several failovers long; a client may pass ?timeout=
/** Longest `?timeout=` the HTTP API accepts. */
export const API_MAX_TIMEOUT_MS = 60_000

export interface SeedDialConfig {
  /** First pause between rounds over the seeds; doubles up to `maxBackoffMs`, ±20% jitter. */
  initialBackoffMs: number
  maxBackoffMs: number
  /** Time limit of one dial to a seed. */
  dialTimeoutMs: number
}

export const SEED_DIAL_DEFAULTS: Readonly<SeedDialConfig> = {
  initialBackoffMs: 250, // seeds started together come up within a fraction of a second
  maxBackoffMs: 10_000, // an agent alone keeps trying often enough to join soon after a seed returns
  dialTimeoutMs: 5_000, // a TCP + pnet + noise + yamux dial takes milliseconds on a LAN
}

/**
 * Rejects agent-level settings that cannot work, with the reason (hashicorp/raft `ValidateConfig`);
 * the tick combinations are the Raft core's to check (`validateRaftConfig`, at start).
 */
export function validateRaftAgentConfig(c: RaftAgentConfig): void {
  if (c.retryPauseMs <= 0 || c.attemptTimeoutMs <= 0)
    throw new ConfigError('retryPauseMs and attemptTimeoutMs must be positive')
}
