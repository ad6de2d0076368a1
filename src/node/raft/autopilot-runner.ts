import type { Logger } from 'pino'
import { type Cancel, type Clock, withTimeout } from '../../common/clock.ts'
import type { ConfChange, ConfState, NodeId } from '../../raft/index.ts'
import { type AutopilotSettings, planAutopilot, trackDown } from './autopilot.ts'
import type { RaftMembers, VoterKeyGrant } from './components.ts'

/** What autopilot needs of the Raft node. */
export interface AutopilotNode {
  readonly id: NodeId
  isLeader(): boolean
  status(): {
    conf: ConfState
    lastIndex: number
    progress: Readonly<Record<NodeId, { match: number; state: string; active?: boolean }>>
  }
  changeMembership(change: ConfChange, options: { signal: AbortSignal }): Promise<{ index: number }>
}

export interface AutopilotRunnerComponents {
  node: AutopilotNode
  members: Pick<RaftMembers, 'members'>
  clock: Clock
  log: Logger
  /** Seals the CA key to a member before it becomes a voter; absent: nothing to await. */
  keyGrant?: VoterKeyGrant
  /**
   * Who may be added as a learner; absent: an alive (or suspect) gossip member
   * (`defaultEligibility`). The hook for node enrollment.
   */
  eligibleLearner?: (id: NodeId) => boolean
  /** Who may be promoted to voter; absent: as `eligibleLearner`'s default. */
  eligibleVoter?: (id: NodeId) => boolean
  /** Members to remove because their enrollment was revoked; absent: none. */
  revoked?: (id: NodeId) => boolean
}

export interface AutopilotRunnerSettings extends AutopilotSettings {
  intervalMs: number
  /** Time limit of one change (the key grant and the membership change). */
  changeTimeoutMs: number
}

/**
 * Runs the pure planner (`planAutopilot`) on the leader every `intervalMs` and makes at most one
 * change at a time (thesis §4.1: one server per change, each committed before the next). Voters
 * track since when each member is down even while following, so a new leader acts at once.
 */
export class AutopilotRunner {
  private readonly downSince = new Map<NodeId, number>()
  private busy = false
  private cancel?: Cancel

  constructor(
    private readonly components: AutopilotRunnerComponents,
    private readonly settings: AutopilotRunnerSettings,
  ) {}

  start(): void {
    this.cancel = this.components.clock.setInterval(() => this.run(), this.settings.intervalMs)
  }

  stop(): void {
    this.cancel?.()
    this.cancel = undefined
  }

  /** One round (the timer calls it; tests too). */
  run(): void {
    const { node, members, clock, log, keyGrant, eligibleLearner, eligibleVoter, revoked } = this.components
    const st = node.status()
    // Only voters lead: a learner (most agents of a large cluster) skips the scan of every member.
    if (!st.conf.voters.includes(node.id)) return
    const view = members.members().map((m) => ({ id: m.id, status: m.status }))
    const now = clock.now()
    trackDown(this.downSince, st.conf, view, now)
    if (!node.isLeader() || this.busy) return
    const change = planAutopilot(
      {
        self: node.id,
        conf: st.conf,
        members: view,
        progress: st.progress,
        lastIndex: st.lastIndex,
        downSince: this.downSince,
        now,
        ...(eligibleLearner !== undefined ? { eligibleLearner } : {}),
        ...(eligibleVoter !== undefined ? { eligibleVoter } : {}),
        ...(revoked !== undefined ? { revoked } : {}),
      },
      this.settings,
    )
    if (change === undefined) return
    this.busy = true
    log.info({ change }, 'autopilot: proposing membership change')
    const becomesVoter = change.type === 'addVoter' || change.type === 'promoteLearner'
    withTimeout(this.components.clock, this.settings.changeTimeoutMs, async (signal) => {
      if (becomesVoter && keyGrant !== undefined) await keyGrant.grantKeyTo(change.node, signal)
      return await node.changeMembership(change, { signal })
    })
      .then(
        ({ index }) => log.info({ change, index }, 'autopilot: membership change committed'),
        (err: unknown) => log.debug({ change, err: (err as Error).message }, 'autopilot: change not made'),
      )
      .finally(() => {
        this.busy = false
      })
  }
}
