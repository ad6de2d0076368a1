import { POLICY_LIMITS } from '../../raft/policy/policy-commands.ts'
import { ConfigError } from './errors.ts'

/**
 * The production defaults of the agent (Raft wiring, seed dialing, HTTP API, gossip wiring, the
 * CA's RPC, sidecars), each with why it has that value (memberlist `config.go` style). The
 * libraries' own defaults suit them as libraries: the Raft core and driver's in `src/raft/config.ts`
 * (the agent runs `RAFT_DEFAULTS` instead), the SWIM profiles in `src/gossip/config.ts` (the agent
 * runs `lan`), the CA's leaf lifetime and rotation timing in `src/identity/`.
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
  /** Ticks between the heartbeats of a leader with nothing to replicate (see RaftConfig.idleHeartbeatTick). */
  idleHeartbeatTick: number
  /** Snapshot the policy store after this many applied entries. */
  snapshotThreshold: number
  /** Entries kept behind a compaction, so a slightly lagging member needs no snapshot. */
  snapshotTrailing: number
  /** Time limit of a Raft request (propose, read, membership change) given no signal. */
  requestTimeoutMs: number
  /** Process every input of one event-loop turn in one Ready (one fsync), fsync off the loop. */
  coalesceReady: boolean
  /** How long a leader holds a commit notice for the next write's append (RaftNodeOptions `noticeHoldMs`). */
  noticeHoldMs: number
  /** Wake only for the Raft ticks that act (RaftNodeOptions `lazyTicks`). */
  lazyTicks: boolean
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
  /** Largest frame on a Raft stream; a larger message (a snapshot) travels as chunks of it. */
  maxFrameBytes: number
  /** Per peer: bytes held for its partly received Raft messages, over all its streams. */
  maxPartialBytesPerPeer: number
  /** Per peer: Raft messages partly received at once (one per stream). */
  maxPartialMessagesPerPeer: number
  /** Raft messages queued per peer while its stream opens; older ones are dropped beyond it. */
  maxQueuedPerPeer: number
  /** Messages to a peer whose dial failed are dropped for this long. */
  dialBackoffMs: number
  /**
   * Raft messages and forwarded writes between agents go over a direct mutual-TLS connection
   * (src/node/transport/direct-messenger.ts) once one is set up, libp2p carrying them until then;
   * false: libp2p only.
   */
  directTransport: boolean
}

export const RAFT_DEFAULTS: Readonly<RaftAgentConfig> = {
  // 50 ms: every member wakes once a tick whatever it is doing, so at rest the tick was a large part
  // of an idle agent's CPU at 25 ms (40 wake-ups a second on every member). Timeouts keep their
  // length in wall time: with electionTick 3, election timeouts of 150–300 ms (Raft §9.3's range;
  // randomized in whole ticks: 150, 200 or 250 ms), so a dead leader is still replaced in ~0.2 s on
  // a LAN, and a heartbeat every tick while there is something to replicate keeps followers far
  // from expiry even with an event loop stalled for 100 ms.
  tickMs: 50,
  electionTick: 3,
  heartbeatTick: 1,
  // 100 ms: learners need no heartbeat to stay in sync (appends and commit notices go out at
  // once), only to resend a lost append and to look active to autopilot; at every tick their
  // heartbeats and answers were most of a large cluster's leader traffic at rest.
  learnerHeartbeatTick: 2,
  // 150 ms: at rest, heartbeats were most of an idle agent's CPU (each one a libp2p stream write
  // through yamux, noise and the private-network cipher, and its answer). Followers of an idle
  // leader wait 350-500 ms (3 + 2 × (3 - 1) ticks, randomized) before campaigning and keep their
  // lease that long: a hung leader that keeps its connections open is replaced later than a busy
  // one's (gossip's suspicion of it makes every follower forget it sooner, leader-liveness.ts), and
  // so is a killed one when a survivor misses its connection close (the other survivor's pre-votes
  // wait out that lease). 100 ms (2 ticks) kept that wait at 250-400 ms for 50% more heartbeats; 250
  // ms let such failovers take up to 1.4 s in bench:raft-failover. A leader goes idle only after 4
  // idle intervals (600 ms) without writes (quietTicks), and the first write wakes it.
  idleHeartbeatTick: 3,
  snapshotThreshold: 8192, // a snapshot holds the dedupe table (up to 10k clients): not too often
  snapshotTrailing: 128, // a member lagging < 128 entries catches up from the log
  requestTimeoutMs: 10_000, // longer than several elections; callers wanting less pass a signal
  coalesceReady: true, // group commit: one fsync per event-loop turn, not per message
  // 3 ms: longer than a sequential HTTP writer takes from one reply to its next request on a busy
  // machine, short beside a follower's election timeout and the policy propagation target (a
  // follower applies the last of a run of writes this much later).
  noticeHoldMs: 3,
  // An idle follower woke every tick (20 times a second) to count it; it now wakes for its
  // leader's heartbeats only, and an idle leader for its heartbeats and quorum checks
  // (bench:footprint: 54 → 40 wake-ups a second per agent; CPU moved within the bench's spread).
  lazyTicks: true,
  // 2 ticks: the first survivor repeats its pre-vote every tick (a follower that has not yet seen
  // the connection close ignores it), so it wins within a tick or two of everyone noticing; the
  // next one starts only if the first cannot win (its log is behind), without racing it.
  failoverStaggerMs: 100,
  bootstrapCheckMs: 100, // founding waits for gossip, which converges in a few 150 ms probes
  // Membership reacts within a fifth of the dead threshold. One timer (shared with the voters'
  // connection keeping and the founders' enrollment) wakes every agent at this period: at 200 ms it
  // was five wake-ups a second of an idle agent, each reading the Raft status and gossip's members.
  autopilotIntervalMs: 500,
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
  // A snapshot goes out in 1 MiB chunks: no single frame (hence no partial frame a peer can make
  // this side buffer) is larger, and appends and heartbeats interleave between snapshots' frames.
  maxFrameBytes: 1024 * 1024,
  // One largest message in progress plus two frames: a leader sends one snapshot at a time; what a
  // peer can make this side hold is bounded by this, not by streams × message size.
  maxPartialBytesPerPeer: 16 * 1024 * 1024 + 2 * (1024 * 1024 + 4),
  // One stream per peer in normal use, and the one replacing it while the old one ends.
  maxPartialMessagesPerPeer: 2,
  maxQueuedPerPeer: 1024, // a burst of appends while a stream opens, not an unbounded backlog
  // One tick: a member that just restarted cannot reach peers whose addresses it has not learnt
  // yet, and a longer silence costs a failover round (its pre-vote answers would be lost).
  dialBackoffMs: 50,
  // A third of libp2p's CPU per message (private-network cipher, Noise and yamux per message):
  // what a write costs is mostly messages. Peers authenticated over libp2p first; see the README.
  directTransport: true,
}

/** Largest `performance.raftMultiplier` (Consul's `raft_multiplier` has the same bound). */
export const MAX_RAFT_MULTIPLIER = 10

/**
 * The Raft timing of `performance.raftMultiplier` m (Consul's `raft_multiplier`): the tick, and the
 * two settings defined in ticks, m times `RAFT_DEFAULTS`'. Every timeout and heartbeat counted in
 * ticks scales with it: election timeouts of 150–300 ms become m times that, an idle leader's
 * heartbeat 150·m ms, a follower's wake-ups for its tick 20/m a second. What does not scale: how a
 * write travels (appends and commit notices go out at once, not on a tick), and the timeouts of
 * requests and dials. Agents of one cluster may differ: heartbeats say how long the leader's ticks
 * are, and a follower with shorter ticks counts the leader's interval in its own (RaftNode).
 */
export function raftTimingFor(
  multiplier: number,
): Pick<RaftAgentConfig, 'tickMs' | 'failoverStaggerMs' | 'dialBackoffMs'> {
  if (!Number.isInteger(multiplier) || multiplier < 1 || multiplier > MAX_RAFT_MULTIPLIER)
    throw new ConfigError(
      `performance.raftMultiplier: expected an integer from 1 to ${MAX_RAFT_MULTIPLIER}`,
      'performance',
    )
  return {
    tickMs: RAFT_DEFAULTS.tickMs * multiplier,
    failoverStaggerMs: RAFT_DEFAULTS.failoverStaggerMs * multiplier,
    dialBackoffMs: RAFT_DEFAULTS.dialBackoffMs * multiplier,
  }
}

/**
 * The policy store's cap on intentions and config entries together (PEERMESH_ERR_TOO_LARGE past
 * it): with the CA (1 MiB cap) and the dedupe table (10k clients), a snapshot stays well under
 * `maxMessageBytes` (16 MiB), so any legal state replicates to a new member. A rule of the
 * replicated state machine, not a setting: every agent must apply the same, so it is defined in
 * src/raft/policy/policy-commands.ts (POLICY_LIMITS, with the per-entry caps) and shown here.
 */
export const POLICY_STATE_MAX_BYTES = POLICY_LIMITS.maxStateBytes

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
  if (c.maxFrameBytes < 64 || c.maxFrameBytes > c.maxMessageBytes)
    throw new ConfigError('maxFrameBytes must be at least 64 and at most maxMessageBytes')
  if (c.maxPartialBytesPerPeer < c.maxMessageBytes + c.maxFrameBytes + 4)
    throw new ConfigError('maxPartialBytesPerPeer must hold one largest message and a frame')
  if (c.maxMessageBytes < POLICY_LIMITS.maxStateBytes + POLICY_LIMITS.maxCaBytes)
    throw new ConfigError('maxMessageBytes must hold a snapshot of the largest policy state')
}

/** The agent's gossip wiring (the SWIM protocol's own timing is the profile, src/gossip/config.ts). */
export const GOSSIP_WIRING_DEFAULTS = {
  /** First pause between join attempts while no live member is known: a seed that just started answers within it. */
  joinRetryMinMs: 2_000,
  /** Longest such pause: an agent alone still finds a returning seed within half a minute. */
  joinRetryMaxMs: 30_000,
  /** A graceful leave disseminates this long at most (several gossip rounds), then the agent stops anyway. */
  leaveBudgetMs: 600,
  /** How often a leave checks whether its broadcasts are out (a fraction of a gossip interval). */
  leavePollMs: 20,
  /** A connection opened only for a push/pull is closed this long after the exchange if idle: another protocol may adopt it meanwhile. */
  pushPullCloseDelayMs: 1_000,
  /** Longest a push/pull exchange may take: a whole member list crosses a LAN in milliseconds. */
  pushPullTimeoutMs: 5_000,
  /** Most members remembered in peers.json: a few live ones are enough to rejoin. */
  knownPeersMax: 32,
  /** peers.json is rewritten at most this often: membership churn must not become disk churn. */
  knownPeersWriteMs: 5_000,
} as const

/** The agent's side of the mesh CA: the signing RPC and the leaf routes. */
export const CONNECT_WIRING_DEFAULTS = {
  /** Largest signing request (a CSR is under 2 KiB). */
  maxSignRequestBytes: 32 * 1024,
  /** One signing attempt: a dead leader's connection resets at once on a LAN; a hung one is cut. */
  signAttemptTimeoutMs: 2_000,
  /** A rotation makes a root key and writes through Raft: give it longer than a signing. */
  rotateAttemptTimeoutMs: 10_000,
  /** Pause before asking the leader again: an election or the CA's creation is over in a few hundred ms. */
  retryPauseMs: 50,
  /** The leader's own bound on a rotation it serves (below the requester's attempt timeout). */
  serveRotateTimeoutMs: 8_000,
  /** Time `GET /v1/agent/connect/ca/leaf/:service` waits for a first leaf. */
  apiLeafWaitMs: 10_000,
} as const

/** Sidecars of local services. */
export const SIDECAR_DEFAULTS = {
  /** A sidecar whose service has no leaf yet is tried again this soon (leaves arrive within a second of the CA). */
  noLeafRetryMs: 1_000,
  /** Longest a sidecar start waits for its service's first leaf. */
  leafWaitMs: 60_000,
  /**
   * Longest an agent's stop waits for its last spans to reach the OTLP collector: a collector on
   * the LAN takes milliseconds, and one that is down must not hold the stop (the graceful stop
   * budget is a few seconds).
   */
  tracingStopMs: 1_000,
} as const
