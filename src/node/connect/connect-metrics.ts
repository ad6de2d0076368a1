import { Gauge, type Registry } from 'prom-client'
import { counterFrom } from '../agent/metrics.ts'

/** The figures the connect metrics are read from, at each scrape. */
export interface ConnectMetricSources {
  leavesSigned(): number
  signRefused(): number
  /** Of those, refused because the requester may not publish the service (issue #12). */
  signDenied(): number
  policyRejected(): number
  leavesRenewed(): number
  intentions(): number
  caKeyHeld(): boolean
  caRoots(): number
}

export function registerConnectMetrics(registry: Registry, m: ConnectMetricSources): void {
  counterFrom(
    registry,
    'peermesh_connect_leaves_signed_total',
    'Leaf certificates signed here as leader',
    m.leavesSigned,
  )
  counterFrom(
    registry,
    'peermesh_connect_sign_refused_total',
    'Leaf signing requests refused here',
    m.signRefused,
  )
  counterFrom(
    registry,
    'peermesh_connect_sign_denied_total',
    'Leaf signing requests refused here because the requester may not publish the service (no enrollment or grant)',
    m.signDenied,
  )
  counterFrom(
    registry,
    'peermesh_connect_policy_rejected_total',
    'Policy entries refused here because their CA signature did not verify (forged or replayed)',
    m.policyRejected,
  )
  counterFrom(
    registry,
    'peermesh_connect_leaves_renewed_total',
    'Leaf certificates obtained for local services',
    m.leavesRenewed,
  )
  gauge(
    registry,
    'peermesh_connect_intentions',
    'Intentions in the committed policy state here',
    m.intentions,
  )
  gauge(
    registry,
    'peermesh_connect_ca_key_held',
    'Whether this agent holds a copy of the active CA root key (1 on Raft voters, 0 on learners)',
    () => (m.caKeyHeld() ? 1 : 0),
  )
  gauge(registry, 'peermesh_connect_ca_roots', 'Trusted CA roots (2 during a rotation)', m.caRoots)
}

function gauge(registry: Registry, name: string, help: string, read: () => number): void {
  new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(read())
    },
  })
}
