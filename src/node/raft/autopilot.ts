import type { ConfChange, ConfState, NodeId } from '../../raft/index.ts'
import { DEFAULT_RAFT_VOTERS, RAFT_DEFAULTS } from '../agent/defaults.ts'

/**
 * Autopilot: which single membership change the Raft leader should make next, decided from the
 * gossip view of the cluster. Pure functions, so every rule has a table test; AutopilotRunner
 * (./autopilot-runner.ts) calls `planAutopilot` on the leader and makes the changes.
 */

export type GossipStatus = 'alive' | 'suspect' | 'dead' | 'left'

export interface AutopilotSettings {
  /** Desired number of voters (1, 3 or 5). */
  targetVoters: number
  /** A member dead (or left, or unknown) in gossip for this long leaves the Raft configuration. */
  deadThresholdMs: number
  /** A learner within this many entries of the leader's last index counts as caught up. */
  maxLagEntries: number
}

/** The agent's settings (src/node/agent/defaults.ts). */
export const DEFAULT_AUTOPILOT: AutopilotSettings = {
  targetVoters: DEFAULT_RAFT_VOTERS,
  deadThresholdMs: RAFT_DEFAULTS.deadThresholdMs,
  maxLagEntries: RAFT_DEFAULTS.maxLagEntries,
}

export interface AutopilotInput {
  /** The leader's own id (never removed). */
  self: NodeId
  conf: ConfState
  /** Gossip's view, self included. */
  members: readonly { id: NodeId; status: GossipStatus }[]
  /**
   * The leader's replication progress per member. `active`: the leader heard from it within the
   * last election timeout or two; Raft's own evidence that it is up, which overrides gossip.
   */
  progress: Readonly<Record<NodeId, { match: number; state: string; active?: boolean }>>
  /** The leader's last log index. */
  lastIndex: number
  /** Since when each configuration member has been seen not alive (see `trackDown`). */
  downSince: ReadonlyMap<NodeId, number>
  now: number
  /**
   * Who may join the configuration as a learner (an identity decision, not a health one); see
   * `defaultEligibility`. Receiving Raft messages from a peer never makes it eligible.
   */
  eligibleLearner?: (id: NodeId) => boolean
  /** Who may be promoted to voter (besides being healthy and caught up); see `defaultEligibility`. */
  eligibleVoter?: (id: NodeId) => boolean
  /**
   * Members whose enrollment was revoked (token deleted, operator revoke, node re-keyed): removed
   * from the configuration (never the leader itself). Absent: none (ACLs off).
   */
  revoked?: (id: NodeId) => boolean
}

/** What enrollment-based eligibility reads of the ACL state. */
export interface EnrollmentView {
  enrollment(peerId: NodeId): { voter: boolean } | undefined
}

/**
 * Eligibility with ACLs on (issue #12): a learner must be enrolled, a voter enrolled with
 * `voter`; the leader itself always is. Health is judged apart, as for `defaultEligibility`.
 */
export function enrollmentEligibility(
  self: NodeId,
  state: EnrollmentView,
): { eligibleLearner: (id: NodeId) => boolean; eligibleVoter: (id: NodeId) => boolean } {
  return {
    eligibleLearner: (id) => id === self || state.enrollment(id) !== undefined,
    eligibleVoter: (id) => id === self || state.enrollment(id)?.voter === true,
  }
}

/**
 * The default eligibility, for learners and voters alike: a member that gossip knows and has not
 * declared dead or gone (`alive` or `suspect`; suspect is not yet a verdict). Health is judged
 * apart (`planAutopilot`). Node enrollment, when it exists, plugs its own predicate in here.
 */
export function defaultEligibility(
  members: readonly { id: NodeId; status: GossipStatus }[],
): (id: NodeId) => boolean {
  const known = new Set(
    members.filter((m) => m.status === 'alive' || m.status === 'suspect').map((m) => m.id),
  )
  return (id) => known.has(id)
}

/**
 * Updates `downSince` for the members of `conf`: a member that gossip reports `dead`, `left` or
 * not at all is recorded the first time it is seen so; one seen `alive` or `suspect` is cleared
 * (suspect is not yet a verdict). Entries for nodes no longer in the configuration are dropped.
 */
export function trackDown(
  downSince: Map<NodeId, number>,
  conf: ConfState,
  members: readonly { id: NodeId; status: GossipStatus }[],
  now: number,
): void {
  const status = new Map(members.map((m) => [m.id, m.status]))
  const inConf = new Set([...conf.voters, ...conf.learners])
  for (const id of downSince.keys()) if (!inConf.has(id)) downSince.delete(id)
  for (const id of inConf) {
    const s = status.get(id)
    if (s === 'alive' || s === 'suspect') downSince.delete(id)
    else if (!downSince.has(id)) downSince.set(id, now)
  }
}

/** Largest odd number <= n (0 for n <= 0): an even voter count tolerates no more failures. */
export function largestOdd(n: number): number {
  if (n <= 0) return 0
  return n % 2 === 1 ? n : n - 1
}

/**
 * The next change, in priority order:
 * 1. a voter down past the threshold: promote a caught-up healthy learner first if that keeps the
 *    voter count at or under the target, otherwise remove the dead voter;
 * 2. a learner down past the threshold: remove it; then a revoked member (never the leader): a
 *    learner at once, a voter only if the voters left keep a healthy majority;
 * 3. an alive gossip member outside the configuration that is `eligibleLearner`: add it as a
 *    learner (every agent follows the committed state locally);
 * 4. fewer voters than the target (capped at the largest odd number of healthy members): promote
 *    the caught-up healthy `eligibleVoter` learner with the lowest id;
 * 5. more voters than the target, all healthy: remove the highest-id voter other than the leader
 *    (it comes back as a learner through rule 3).
 * Ties are broken by id so that the choice is deterministic.
 */
export function planAutopilot(input: AutopilotInput, settings: AutopilotSettings): ConfChange | undefined {
  const { self, conf, progress, lastIndex, downSince, now } = input
  const status = new Map(input.members.map((m) => [m.id, m.status]))
  status.set(self, 'alive')
  // Raft's own evidence (the leader hears from it) counts as much as gossip's `alive`: gossip's
  // view of a member that restarted can lag or flap to `suspect` for seconds under load, and
  // waiting for it left a re-added learner unpromoted.
  const raftAlive = (id: NodeId): boolean => progress[id]?.active === true
  const healthy = (id: NodeId): boolean => status.get(id) === 'alive' || raftAlive(id)
  const gossipEligible = defaultEligibility(input.members)
  const eligibleLearner = input.eligibleLearner ?? gossipEligible
  const eligibleVoter = input.eligibleVoter ?? ((id: NodeId) => id === self || gossipEligible(id))
  const downLong = (id: NodeId): boolean => {
    // A member that answers the leader is not removed whatever gossip says: gossip's view of a
    // member that just restarted can lag, and removing a live voter while another one is dead
    // (the leader was just replaced) would leave a configuration that cannot reach a quorum.
    if (id === self || progress[id]?.active === true) return false
    const since = downSince.get(id)
    return since !== undefined && now - since >= settings.deadThresholdMs
  }
  // Judged on the acknowledged match only: a learner whose progress went back to `probe` (a lost
  // or reordered append, a rejection after its restart) but whose match is recent is caught up;
  // requiring `replicate` kept one from ever being promoted while no write came to move it back.
  const caughtUp = (id: NodeId): boolean => {
    const pr = progress[id]
    return (
      pr !== undefined &&
      pr.state !== 'snapshot' &&
      pr.match > 0 &&
      pr.match >= lastIndex - settings.maxLagEntries
    )
  }
  const voters = [...conf.voters].sort()
  const learners = [...conf.learners].sort()
  const spare = learners.find((id) => healthy(id) && caughtUp(id) && eligibleVoter(id))

  const deadVoter = voters.find(downLong)
  if (deadVoter !== undefined) {
    if (spare !== undefined && voters.length <= settings.targetVoters) {
      return { type: 'promoteLearner', node: spare }
    }
    if (voters.length > 1) return { type: 'removeVoter', node: deadVoter }
  }
  const deadLearner = learners.find(downLong)
  if (deadLearner !== undefined) return { type: 'removeVoter', node: deadLearner }

  const revoked = input.revoked
  if (revoked !== undefined) {
    const revokedLearner = learners.find((id) => id !== self && revoked(id))
    if (revokedLearner !== undefined) return { type: 'removeVoter', node: revokedLearner }
    // A voter only when the rest can still commit: removing one from {leader, revoked, down}
    // would leave a configuration that needs the down voter back.
    const revokedVoter = voters.find((id) => id !== self && revoked(id))
    if (revokedVoter !== undefined) {
      const rest = voters.filter((id) => id !== revokedVoter)
      if (rest.filter(healthy).length > rest.length / 2) return { type: 'removeVoter', node: revokedVoter }
    }
  }

  const inConf = new Set([...voters, ...learners])
  // Only gossip members: a peer is never added because it sent Raft messages.
  const newcomer = [...status.keys()]
    .filter((id) => status.get(id) === 'alive' && !inConf.has(id) && eligibleLearner(id))
    .sort()[0]
  if (newcomer !== undefined) return { type: 'addLearner', node: newcomer }

  const healthyMembers = [...inConf].filter(healthy).length
  const want = Math.min(settings.targetVoters, largestOdd(healthyMembers))
  if (voters.length < want && spare !== undefined) return { type: 'promoteLearner', node: spare }

  if (voters.length > settings.targetVoters && voters.every(healthy)) {
    const surplus = voters.filter((id) => id !== self).at(-1)
    if (surplus !== undefined) return { type: 'removeVoter', node: surplus }
  }
  return undefined
}
