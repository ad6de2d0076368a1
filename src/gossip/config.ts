import { InvalidConfigError } from './errors.ts'

/**
 * Tunables of the SWIM + Lifeguard core. All durations are in (virtual or real) milliseconds;
 * the core never reads a clock, the driver passes `nowMs` on every call.
 *
 * Detection time of a crashed node, for a cluster of n members, is roughly
 *   first probe of it (≤ 1 probe interval) + probe interval (direct + indirect probe fail)
 *   + suspicion timeout (between `suspicionMult·max(1, log10 n)·probeInterval` once
 *     `suspicionConfirmations` members independently confirmed, and `suspicionMaxTimeoutMult` times that)
 *   + dissemination of the `dead` message (a few gossip intervals).
 * With the `lan` profile and n = 50 that is ≈ 0.15–0.75 + 0.15 + 0.51 + 0.05 s
 * (test/gossip/cluster.test.ts asserts a median ≤ 1.5 s and at most 2 s over six simulated clusters).
 */
export interface SwimConfig {
  /**
   * Time between two probes started by this node (SWIM protocol period T'). Each node probes
   * one member per interval, so every member is probed about once per interval by someone.
   * Scaled up by the Local Health Multiplier (Lifeguard §IV-A) when this node itself is slow.
   */
  probeIntervalMs: number
  /**
   * How long to wait for the direct ack before asking `indirectChecks` members to probe the
   * target for us. Must be well above the network round-trip (plus a GC/event-loop hiccup) and
   * below `probeIntervalMs` so the indirect probe has time to complete in the same period.
   * Also scaled by the Local Health Multiplier.
   */
  probeTimeoutMs: number
  /**
   * Upper bound of the probe timeout when measured round trips call for more than
   * `probeTimeoutMs` (`probeTiming`: smoothed RTT + 4 deviations). The protocol period then grows
   * to leave room for the indirect probe. Equal to `probeTimeoutMs`: fixed timings.
   */
  probeTimeoutMaxMs: number
  /** Number of members asked to probe a target that missed its direct ack (SWIM §3.1, k). */
  indirectChecks: number
  /**
   * Alpha of Lifeguard §IV-B: the minimum suspicion timeout is
   * `suspicionMult · max(1, log10(n)) · probeIntervalMs`.
   */
  suspicionMult: number
  /** Beta of Lifeguard §IV-B: the suspicion timeout starts at `suspicionMaxTimeoutMult · min`. */
  suspicionMaxTimeoutMult: number
  /**
   * K of Lifeguard §IV-B: independent confirmations (suspect messages from other members) after
   * which the suspicion timeout has shrunk all the way to its minimum.
   */
  suspicionConfirmations: number
  /**
   * Upper bound (exclusive) of the Local Health Multiplier score (Lifeguard §IV-A). Probe interval
   * and timeout are multiplied by `score + 1`, so a node whose own event loop is stalled slows
   * its probing down by up to this factor instead of accusing healthy members.
   */
  awarenessMaxMultiplier: number
  /**
   * Time between two gossip rounds that flush queued updates to random members. The first round
   * after the queue was empty runs at once; with nothing queued no round is scheduled.
   */
  gossipIntervalMs: number
  /** Members gossiped to per gossip round (fan-out). */
  gossipNodes: number
  /**
   * Keep gossiping to members declared dead for this long, so that a node falsely declared dead
   * hears it and refutes (memberlist `GossipToTheDeadTime`).
   */
  gossipToTheDeadMs: number
  /**
   * Each update is piggybacked `retransmitMult · ceil(log10(n + 1))` times (SWIM §4.1: λ·log n
   * retransmissions reach every member with high probability).
   */
  retransmitMult: number
  /**
   * Anti-entropy with one random member: a digest check (one datagram each way), then the full
   * state exchange over the reliable path if the states differ. Scaled up for clusters above 32
   * members (memberlist `pushPullScale`) because each full exchange costs O(n) bytes.
   */
  pushPullIntervalMs: number
  /** Dead and left members are forgotten this long after their last state change. */
  reapTimeoutMs: number
  /** Largest datagram sent or accepted (bytes, after encoding). Bigger inbound ones are dropped. */
  maxMessageBytes: number
  /** Largest encoded node record (id, name, addresses, tags, meta). */
  maxRecordBytes: number
  /** Largest push/pull state accepted or produced (bytes). */
  maxPushPullBytes: number
  /**
   * Most members one push/pull state may list; a bigger one is refused whole (counted), before
   * its entries are decoded. The cluster-size ceiling of a node's own full state too, and so of
   * its member table: an unknown member's alive past it is dropped (counted), whoever sends it.
   */
  maxPushPullMembers: number
  /**
   * Most members one push/pull exchange may add to the table; the rest are dropped (counted) and
   * learnt from later exchanges or from gossip. Each one costs a signature check.
   */
  maxPushPullNewMembers: number
  /**
   * Most signature checks one push/pull exchange may cost (new members and newer records of known
   * ones); entries past it are skipped (counted) until a later exchange.
   */
  maxPushPullVerifications: number
  /**
   * A protocol timer that fires this much later than it was due means this node itself was not
   * running (CPU starvation, GC, a stopped VM): Lifeguard §IV-A evidence against ourselves. The
   * Local Health Multiplier rises (once per probe period at most), and a probe whose end fired
   * that late is judged 1 ms later, after the driver has read what waits in our socket.
   */
  lateTimerMs: number
  /** Most updates kept queued for dissemination; the most transmitted are dropped first. */
  maxBroadcastQueue: number
  /**
   * How many probe intervals evidence of life passed on by a relay stands for (`Swim.setRelayed`;
   * 0: relayed evidence is ignored, and every member this node has no evidence of its own is
   * probed). The agent's relay, an idle Raft leader, passes on at each heartbeat (every probe
   * interval) what it heard at the round before: its evidence reaches a follower up to an interval
   * old and is renewed an interval later, so two intervals would end at the very moment the next
   * relay lands, and three span a late one. A member the relay stopped hearing from is left off the
   * next relay at once; this bounds only how long a relay that fell silent itself is believed.
   */
  relayedEvidenceIntervals: number
}

/**
 * Default profile, for a LAN (sub-millisecond RTT). Detects a crashed member everywhere in about
 * a second in a 50-member cluster, and tolerates a member whose event loop stalls 300 ms every
 * second (no false `dead`): a stalled member is suspected at the earliest one probe interval
 * (150 ms) into the stall, the suspicion lasts at least `2·max(1, log10 n)·150 ms` ≥ 300 ms, and
 * the member refutes the moment it runs again. Members that missed the refutation get it back
 * directly when they next gossip or probe with the stale suspicion (see `Swim`).
 *
 * Fast detection costs messages: an agent sends and receives about 13 datagrams a second here
 * (Serf's lan profile probes once a second). An agent picks its profile with `--gossip-profile`
 * (`gossipProfile`): `local` trades detection time for CPU, `wan` suits wide-area links.
 */
export const lanConfig: Readonly<SwimConfig> = Object.freeze({
  probeIntervalMs: 150, // ~6.7 probes/s per node: fast detection for ~13 small messages/s per node
  probeTimeoutMs: 75, // LAN RTT < 1 ms; 75 ms absorbs GC hiccups and leaves 75 ms for the indirect probe
  probeTimeoutMaxMs: 500, // a 100 ms path gets ~120 ms and a ~360 ms period instead of flapping; 500 ms covers a continent
  indirectChecks: 3, // use 3 members for the indirect ping (SWIM §3.1, memberlist)
  suspicionMult: 4, // min suspicion = 4·max(1, log10 n)·150 ms: 600 ms up to n = 10, 1 s at n = 50; a node frozen 300 ms has ~2× that to refute (soak-tested)
  suspicionMaxTimeoutMult: 4, // a lone, unconfirmed accuser waits 4× longer (Lifeguard β ≈ 4–6)
  suspicionConfirmations: 2, // two more accusers and we trust the verdict (memberlist lan: 4-2)
  awarenessMaxMultiplier: 8, // memberlist default: slow down at most 8× when we ourselves are sick
  gossipIntervalMs: 50, // 4 rounds per probe interval while updates are queued (none when idle): updates spread in a few hundred ms
  gossipNodes: 3, // fan-out 3: each round quadruples the informed set
  gossipToTheDeadMs: 10_000, // a falsely-dead node learns within seconds and refutes
  retransmitMult: 6, // 12 transmissions at n = 50: the chance one member misses an update is ~e^-12, not ~e^-8 (memberlist's 4)
  pushPullIntervalMs: 10_000, // anti-entropy every 10 s (scaled up above 32 members); idle, it is one digest datagram each way
  reapTimeoutMs: 300_000, // remember dead/left members 5 min so stale alives cannot resurrect them
  maxMessageBytes: 1380, // + the 82-byte sealed UDP envelope = 1462: one Ethernet datagram (1500 - 28 bytes of IP/UDP headers)
  maxRecordBytes: 1024, // leaves room for a ping/ack and a few other updates in one message
  maxPushPullBytes: 32 * 1024 * 1024, // 16 k members of the largest records (~1.2 kB each) and room to spare
  maxPushPullMembers: 16_384, // well above the clusters we run (the simulator's 10,000); refuses a 100 k-entry flood before decoding it
  maxPushPullNewMembers: 1_024, // ~1,000 Ed25519 verifies (tens of ms) per exchange at most; a joiner to a bigger cluster learns the rest from the next exchanges and gossip
  maxPushPullVerifications: 2_048, // new members plus newer records of known ones: bounds the CPU one peer's state can cost
  lateTimerMs: 50, // 2/3 of the probe timeout: a hiccup that long could have hidden an ack in our own socket
  maxBroadcastQueue: 4096, // bounded memory under churn; the most gossiped updates go first
  relayedEvidenceIntervals: 3, // idle Raft followers stop probing each other; a frozen voter is seen dead ~150 ms later (README, Gossip membership)
})

/**
 * Loopback profile (Serf's and memberlist's `local`): many agents on one machine, or any agent
 * that should cost less CPU than it detects failures fast. A third of the lan profile's datagrams
 * (probes every 500 ms instead of 150) and half its gossip rounds: gentler timings because agents
 * sharing CPUs stall more often than a datagram is lost. Detection takes about 3 s instead of about
 * 1 (test/gossip/profiles.test.ts measures both).
 */
export const localConfig: Readonly<SwimConfig> = Object.freeze({
  ...lanConfig,
  probeIntervalMs: 500,
  probeTimeoutMs: 200,
  suspicionMult: 3,
  gossipIntervalMs: 100,
  pushPullIntervalMs: 15_000,
  lateTimerMs: 150, // 3/4 of the probe timeout: agents sharing CPUs hiccup more often
})

/**
 * Wide-area profile (memberlist's `DefaultWANConfig`, Serf's `wan`): round trips of hundreds of
 * milliseconds and lossy paths. One probe every 5 s with 3 s to answer, a longer suspicion, and
 * anti-entropy every minute: detection takes tens of seconds, at a fraction of the traffic.
 */
export const wanConfig: Readonly<SwimConfig> = Object.freeze({
  ...lanConfig,
  probeIntervalMs: 5_000,
  probeTimeoutMs: 3_000,
  probeTimeoutMaxMs: 4_000,
  suspicionMult: 6,
  gossipIntervalMs: 500,
  gossipNodes: 4,
  gossipToTheDeadMs: 60_000,
  pushPullIntervalMs: 60_000,
  lateTimerMs: 2_000, // 2/3 of the probe timeout, as lan
})

/**
 * Test profile: the LAN timings with short anti-entropy and reap periods so that simulations
 * exercise them within a few virtual seconds.
 */
export const testConfig: Readonly<SwimConfig> = Object.freeze({
  ...lanConfig,
  pushPullIntervalMs: 2_000,
  reapTimeoutMs: 5_000,
  gossipToTheDeadMs: 2_000,
})

export const swimProfiles = Object.freeze({
  lan: lanConfig,
  wan: wanConfig,
  local: localConfig,
  test: testConfig,
})
export type SwimProfile = keyof typeof swimProfiles

/** Returns `profile` (default `lan`) with `overrides` applied, validated. */
export function swimConfig(profile: SwimProfile = 'lan', overrides: Partial<SwimConfig> = {}): SwimConfig {
  const cfg = { ...swimProfiles[profile], ...overrides }
  validateConfig(cfg)
  return cfg
}

const INTEGER_FIELDS: readonly (keyof SwimConfig)[] = [
  'indirectChecks',
  'suspicionConfirmations',
  'awarenessMaxMultiplier',
  'gossipNodes',
  'retransmitMult',
  'maxMessageBytes',
  'maxRecordBytes',
  'maxPushPullBytes',
  'maxBroadcastQueue',
  'maxPushPullMembers',
  'maxPushPullNewMembers',
  'maxPushPullVerifications',
  'relayedEvidenceIntervals',
]

/** Throws `InvalidConfigError` (code `PEERMESH_ERR_INVALID_CONFIG`) if `cfg` cannot work. */
export function validateConfig(cfg: SwimConfig): void {
  const fail = (reason: string): never => {
    throw new InvalidConfigError(`invalid SWIM config: ${reason}`)
  }
  for (const key of Object.keys(lanConfig) as (keyof SwimConfig)[]) {
    const v = cfg[key]
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) fail(`${key} must be a finite number >= 0`)
    if (INTEGER_FIELDS.includes(key) && !Number.isInteger(v)) fail(`${key} must be an integer`)
  }
  if (cfg.probeIntervalMs <= 0) fail('probeIntervalMs must be > 0')
  if (cfg.probeTimeoutMs <= 0) fail('probeTimeoutMs must be > 0')
  if (cfg.probeTimeoutMaxMs < cfg.probeTimeoutMs) fail('probeTimeoutMaxMs must be >= probeTimeoutMs')
  if (cfg.probeTimeoutMs >= cfg.probeIntervalMs) {
    fail(
      'probeTimeoutMs must be shorter than probeIntervalMs (the indirect probe needs the rest of the period)',
    )
  }
  if (cfg.gossipIntervalMs <= 0) fail('gossipIntervalMs must be > 0')
  if (cfg.gossipNodes < 1) fail('gossipNodes must be >= 1')
  if (cfg.pushPullIntervalMs <= 0) fail('pushPullIntervalMs must be > 0')
  if (cfg.suspicionMult < 1) fail('suspicionMult must be >= 1')
  if (cfg.suspicionMaxTimeoutMult < 1) fail('suspicionMaxTimeoutMult must be >= 1')
  if (cfg.awarenessMaxMultiplier < 1) fail('awarenessMaxMultiplier must be >= 1')
  if (cfg.retransmitMult < 1) fail('retransmitMult must be >= 1')
  if (cfg.maxMessageBytes < 512) fail('maxMessageBytes must be >= 512')
  if (cfg.maxRecordBytes < 128) fail('maxRecordBytes must be >= 128')
  if (cfg.maxRecordBytes + 256 > cfg.maxMessageBytes) {
    fail('maxRecordBytes + 256 must fit in maxMessageBytes (an alive message carries a whole record)')
  }
  if (cfg.maxPushPullBytes < cfg.maxMessageBytes) fail('maxPushPullBytes must be >= maxMessageBytes')
  if (cfg.maxBroadcastQueue < 1) fail('maxBroadcastQueue must be >= 1')
  if (cfg.maxPushPullMembers < 1) fail('maxPushPullMembers must be >= 1')
  if (cfg.maxPushPullNewMembers < 1) fail('maxPushPullNewMembers must be >= 1')
  if (cfg.maxPushPullVerifications < cfg.maxPushPullNewMembers) {
    fail('maxPushPullVerifications must be >= maxPushPullNewMembers (each new member costs a check)')
  }
  if (cfg.lateTimerMs <= 0) fail('lateTimerMs must be > 0')
  if (cfg.reapTimeoutMs < cfg.gossipToTheDeadMs) fail('reapTimeoutMs must be >= gossipToTheDeadMs')
}
