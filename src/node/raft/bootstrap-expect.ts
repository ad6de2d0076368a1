import type { Logger } from 'pino'
import type { Cancel, Clock } from '../../common/clock.ts'
import type { NodeId } from '../../raft/index.ts'
import type { RaftMembers } from './components.ts'

/** What founding needs of the Raft node. */
export interface FoundingNode {
  readonly id: NodeId
  status(): { term: number; lastIndex: number }
  bootstrap(voters: readonly NodeId[]): void
}

export interface BootstrapExpectComponents {
  node: FoundingNode
  members: Pick<RaftMembers, 'members'>
  clock: Clock
  log: Logger
}

/**
 * `--bootstrap-expect N`: once N members are alive in gossip, the N lowest peer ids found the
 * cluster with that same voter list (every founder computes the same list; no coordination).
 * A node with any Raft state (from disk, or from a leader that reached it first) never does.
 */
export class BootstrapExpect {
  private cancel?: Cancel

  constructor(
    private readonly components: BootstrapExpectComponents,
    private readonly settings: { expect: number; checkMs: number },
  ) {}

  start(): void {
    this.cancel = this.components.clock.setInterval(() => this.check(), this.settings.checkMs)
    this.check()
  }

  stop(): void {
    this.cancel?.()
    this.cancel = undefined
  }

  private check(): void {
    const { node, members, log } = this.components
    const st = node.status()
    if (st.term > 0 || st.lastIndex > 0) {
      this.stop()
      return
    }
    const alive = members
      .members()
      .filter((m) => m.status === 'alive')
      .map((m) => m.id)
      .sort()
    if (alive.length < this.settings.expect) return
    this.stop()
    const founders = alive.slice(0, this.settings.expect)
    if (!founders.includes(node.id)) {
      log.info({ founders }, 'bootstrap-expect met; not a founder, waiting to be added')
      return
    }
    try {
      node.bootstrap(founders)
      log.info({ founders }, 'bootstrapped raft cluster')
    } catch (err) {
      log.info({ err: (err as Error).message }, 'not bootstrapping: raft state already present')
    }
  }
}
