import { Counter, Gauge, type Registry } from 'prom-client'
import type { NodeId, Role } from '../../raft/index.ts'
import type { RefusalReason, RefusalRecord } from '../../raft/types.ts'
import { counterFrom, gaugeFrom } from '../agent/metrics.ts'

/** What the Raft metrics read, each time they are scraped. */
export interface RaftMetricsSource {
  /** The running node's status; undefined before start. */
  status():
    | {
        id: NodeId
        term: number
        commit: number
        lastIndex: number
        role: Role
        conf: { voters: readonly NodeId[]; learners: readonly NodeId[] }
      }
    | undefined
  applied(): number
  counters(): { leaderChanges: number; proposals: number; forwardedWrites: number; confChanges: number }
  /** Peer messages refused so far, per reason (the core's and the agent's own checks). */
  refused(): Partial<Record<RefusalReason, RefusalRecord>>
  /** Other inputs refused so far, per reason (commands, forwarded writes, streams, snapshots). */
  inputsRefused?(): Record<string, number>
  /** Raft messages so far by path: the direct TLS connections, or libp2p. */
  transport?(): {
    direct: { sent: number; received: number }
    libp2p: { sent: number; received: number }
    directConnects: number
    directConnectFailures: number
  }
}

/** Registers the `peermesh_raft_*` metrics. */
export function registerRaftMetrics(registry: Registry, source: RaftMetricsSource): void {
  const gauge = (name: string, help: string, pick: () => number): void =>
    gaugeFrom(registry, name, help, pick)
  const counter = (name: string, help: string, pick: () => number): void =>
    counterFrom(registry, name, help, pick)
  const status = () => source.status()
  gauge('peermesh_raft_term', 'Current Raft term', () => status()?.term ?? 0)
  new Counter({
    name: 'peermesh_raft_inputs_refused_total',
    help: 'Commands, forwarded writes, stream data and snapshots refused, by reason (never applied)',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset()
      for (const [reason, n] of Object.entries(source.inputsRefused?.() ?? {})) this.inc({ reason }, n)
    },
  })
  gauge('peermesh_raft_commit_index', 'Highest log index known committed', () => status()?.commit ?? 0)
  gauge('peermesh_raft_applied_index', 'Highest log index applied here', () => source.applied())
  gauge('peermesh_raft_last_index', 'Last log index here', () => status()?.lastIndex ?? 0)
  new Gauge({
    name: 'peermesh_raft_role',
    help: 'Raft role of this agent (1 for the current role; learner = follower outside the voters)',
    labelNames: ['role'],
    registers: [registry],
    collect() {
      this.reset()
      const st = status()
      if (st === undefined) return
      const learner = st.conf.learners.includes(st.id)
      this.set({ role: learner ? 'learner' : st.role }, 1)
    },
  })
  gauge('peermesh_raft_voters', 'Voters in the Raft configuration', () => status()?.conf.voters.length ?? 0)
  gauge(
    'peermesh_raft_learners',
    'Learners in the Raft configuration',
    () => status()?.conf.learners.length ?? 0,
  )
  counter(
    'peermesh_raft_leader_changes_total',
    'Leader or term changes seen',
    () => source.counters().leaderChanges,
  )
  counter('peermesh_raft_proposals_total', 'Writes started on this agent', () => source.counters().proposals)
  counter(
    'peermesh_raft_forwarded_writes_total',
    'Write attempts forwarded to the leader',
    () => source.counters().forwardedWrites,
  )
  counter(
    'peermesh_raft_conf_changes_total',
    'Membership changes applied',
    () => source.counters().confChanges,
  )
  new Counter({
    name: 'peermesh_raft_transport_messages_total',
    help: 'Raft messages (appends, votes, heartbeats, snapshots) sent and received, by path: direct (TLS) or libp2p',
    labelNames: ['path', 'direction'],
    registers: [registry],
    collect() {
      this.reset()
      const t = source.transport?.()
      if (t === undefined) return
      for (const path of ['direct', 'libp2p'] as const) {
        this.inc({ path, direction: 'sent' }, t[path].sent)
        this.inc({ path, direction: 'received' }, t[path].received)
      }
    },
  })
  counter(
    'peermesh_raft_direct_connects_total',
    'Direct Raft connections set up from this agent',
    () => source.transport?.().directConnects ?? 0,
  )
  counter(
    'peermesh_raft_direct_connect_failures_total',
    'Attempts at a direct Raft connection that failed (libp2p carried that peer meanwhile)',
    () => source.transport?.().directConnectFailures ?? 0,
  )
  new Counter({
    name: 'peermesh_raft_messages_refused_total',
    help: 'Raft messages from peers dropped instead of acted on, by reason (see RefusalReason)',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset()
      for (const [reason, r] of Object.entries(source.refused()))
        if (r !== undefined) this.inc({ reason }, r.count)
    },
  })
}
