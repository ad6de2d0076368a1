import { Counter, Gauge, type Registry } from 'prom-client'
import type { MemberView, SwimStats } from '../../gossip/index.ts'
import { counterFrom } from '../agent/metrics.ts'
import type { GossipUdpTransport } from '../transport/gossip-udp.ts'
import type { PushPullStats } from './libp2p-glue.ts'

/** What the gossip metrics read at scrape time. */
export interface GossipMetricsSource {
  members(): MemberView[]
  udpStats(): GossipUdpTransport['stats'] | undefined
  pushPullStats(): PushPullStats | undefined
  /** Inbound push/pull exchanges refused by the stream limits, by reason. */
  pushPullRefused(): Record<string, number>
  /** The SWIM core's counters. */
  coreStats(): SwimStats | undefined
  /** Messages the core dropped, by reason. */
  dropped(): Record<string, number>
}

export function registerGossipMetrics(registry: Registry, src: GossipMetricsSource): void {
  new Gauge({
    name: 'peermesh_gossip_members',
    help: 'Members known to gossip, by status',
    labelNames: ['status'],
    registers: [registry],
    collect() {
      this.reset()
      const counts: Record<string, number> = { alive: 0, suspect: 0, dead: 0, left: 0 }
      for (const m of src.members()) counts[m.status] = (counts[m.status] ?? 0) + 1
      for (const [status, n] of Object.entries(counts)) this.set({ status }, n)
    },
  })
  const udp = (pick: (s: GossipUdpTransport['stats']) => number) => () => {
    const s = src.udpStats()
    return s === undefined ? 0 : pick(s)
  }
  const pp = (pick: (s: PushPullStats) => number) => () => {
    const s = src.pushPullStats()
    return s === undefined ? 0 : pick(s)
  }
  const counters: [string, string, () => number][] = [
    ['peermesh_gossip_messages_sent_total', 'SWIM UDP datagrams sent', udp((s) => s.sent)],
    [
      'peermesh_gossip_bytes_sent_total',
      'SWIM UDP datagram bytes sent (sealed envelope included)',
      udp((s) => s.sentBytes),
    ],
    [
      'peermesh_gossip_messages_received_total',
      'SWIM UDP datagrams received and authenticated',
      udp((s) => s.received),
    ],
    [
      'peermesh_gossip_bytes_received_total',
      'SWIM UDP datagram bytes received and authenticated (envelope included)',
      udp((s) => s.receivedBytes),
    ],
    [
      'peermesh_gossip_send_dropped_total',
      'SWIM datagrams not sent (member endpoint unknown, oversize, socket error)',
      udp((s) => s.sendDropped),
    ],
    ['peermesh_gossip_pushpull_total', 'Push/pull exchanges this agent started', pp((s) => s.exchanges)],
    [
      'peermesh_gossip_pushpull_failures_total',
      'Push/pull exchanges this agent started that failed',
      pp((s) => s.failures),
    ],
    [
      'peermesh_gossip_pushpull_bytes_sent_total',
      'Push/pull state bytes sent (requests and replies)',
      pp((s) => s.bytesSent),
    ],
    [
      'peermesh_gossip_pushpull_connections_closed_total',
      'Idle connections closed after a push/pull exchange that opened them',
      pp((s) => s.connectionsClosed),
    ],
  ]
  const core = (pick: (s: SwimStats) => number) => () => {
    const s = src.coreStats()
    return s === undefined ? 0 : pick(s)
  }
  counters.push(
    [
      'peermesh_gossip_signature_checks_total',
      'Member signatures verified (Ed25519) by the gossip core',
      core((s) => s.signatureChecks),
    ],
    [
      'peermesh_gossip_signature_cache_hits_total',
      'Member signature checks answered from the cache (same member, incarnation and record)',
      core((s) => s.signatureCacheHits),
    ],
    [
      'peermesh_gossip_state_syncs_total',
      'Anti-entropy digest checks this agent started (one datagram each way before a push/pull)',
      core((s) => s.stateSyncs),
    ],
    [
      'peermesh_gossip_state_sync_matches_total',
      'Digest checks that found both states equal, so the push/pull exchange was skipped',
      core((s) => s.stateSyncMatches),
    ],
    [
      'peermesh_gossip_probes_skipped_total',
      'Probes not sent: the member had just been heard from over Raft (mutual TLS), by this agent or by its Raft leader',
      core((s) => s.probesSkipped),
    ],
    [
      'peermesh_gossip_probes_skipped_relayed_total',
      'Of the probes skipped, those on what the Raft leader relayed on its heartbeats',
      core((s) => s.probesSkippedRelayed),
    ],
    [
      'peermesh_gossip_suspicions_total',
      'Members this agent moved to suspect (its own probes and others’ accusations)',
      core((s) => s.suspicions),
    ],
    ['peermesh_gossip_deaths_total', 'Members this agent moved to dead', core((s) => s.deaths)],
    [
      'peermesh_gossip_refutations_total',
      'Times this agent refuted a suspicion or death of itself with a higher incarnation',
      core((s) => s.refutations),
    ],
    [
      'peermesh_gossip_late_timers_total',
      'Gossip timer runs that fired late enough to count against this agent’s own health (Lifeguard)',
      core((s) => s.lateTimers),
    ],
  )
  for (const [name, help, pick] of counters) counterFrom(registry, name, help, pick)
  new Gauge({
    name: 'peermesh_gossip_probe_timeout_ms',
    help: 'Current SWIM probe timeout: from measured round trips within the profile, times the local health multiplier',
    registers: [registry],
    collect() {
      this.set(src.coreStats()?.probeTimeoutMs ?? 0)
    },
  })
  new Gauge({
    name: 'peermesh_gossip_local_health',
    help: 'Lifeguard Local Health Multiplier score of this agent (0 = healthy)',
    registers: [registry],
    collect() {
      this.set(src.coreStats()?.localHealth ?? 0)
    },
  })
  new Counter({
    name: 'peermesh_gossip_pushpull_refused_total',
    help: 'Inbound push/pull exchanges refused, by reason (streams, bytes, frame, timeout, dropped)',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset()
      for (const [reason, n] of Object.entries(src.pushPullRefused())) this.inc({ reason }, n)
    },
  })
  new Counter({
    name: 'peermesh_gossip_datagrams_rejected_total',
    help: 'Inbound UDP datagrams dropped before the SWIM core, by reason (truncated, oversize, version, auth, sender)',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset()
      for (const [reason, n] of Object.entries(src.udpStats()?.rejected ?? {})) this.inc({ reason }, n)
    },
  })
  new Counter({
    name: 'peermesh_gossip_dropped_total',
    help: 'Messages dropped by the gossip core, by reason (decode, type, oversize, forged, incarnation, sender, members, newMembers, verifyBudget, tableFull)',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset()
      for (const [reason, n] of Object.entries(src.dropped())) this.inc({ reason }, n)
    },
  })
}
