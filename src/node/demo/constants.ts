/** Defaults of `peermesh demo`, each with its reason. */

/** Agents started by default: three founders, the smallest Raft group that survives losing one. */
export const DEFAULT_AGENTS = 3
/** Fewest agents for the full tour: killing the Raft leader must leave a quorum (2 of 3). */
export const MIN_AGENTS = 3
/** Most agents: each is a process of ~60 MB; more says nothing new on one machine. */
export const MAX_AGENTS = 9
/** Raft founders (`--bootstrap-expect`): 3 voters; further agents join as learners/voters by autopilot. */
export const BOOTSTRAP_EXPECT = 3

/** Default length of the traffic and the story in seconds (the steps take ~12 s; the rest is steady traffic). */
export const DEFAULT_DURATION_S = 20
/** Shortest `--duration`: below it the steps would run back to back with no steady traffic between. */
export const MIN_DURATION_S = 5
/** Longest `--duration`: an hour; `--keep` is for longer. */
export const MAX_DURATION_S = 3_600

/** Steady traffic: requests per second sent to web (enough to see a split, light on 2 cores). */
export const TRAFFIC_RATE_PER_S = 25
/** At most this many requests in flight: a stalled mesh shows as a falling rate, not a pile-up. */
export const TRAFFIC_MAX_IN_FLIGHT = 8
/** One request (client -> web -> sidecars -> api) may take this long before it counts as failed. */
export const DEMO_REQUEST_TIMEOUT_MS = 5_000

/** The live view (TTY) redraws this often. */
export const VIEW_REFRESH_MS = 1_000
/** Without a TTY, a progress line this often. */
export const PLAIN_PROGRESS_MS = 5_000

/** A step waits this long for what it measures (a new leader, a dead member) before it fails. */
export const STEP_TIMEOUT_MS = 30_000
/** Setting the cluster up (start, gossip, Raft, token, services) may take this long. */
export const SETUP_TIMEOUT_MS = 90_000
/** How often the demo polls the agents while it measures (the resolution of its timings). */
export const MEASURE_POLL_MS = 25

/** Stopping everything on a signal: agents get SIGTERM, then SIGKILL after this, so all ends within 2 s. */
export const STOP_GRACE_MS = 1_000

/** Split of api traffic by instance tag, as the service-splitter entry writes it. */
export const SPLIT = [
  { weight: 90, tag: 'v1' },
  { weight: 10, tag: 'v2' },
] as const
