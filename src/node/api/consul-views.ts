/**
 * Consul's JSON shapes (PascalCase, Consul's field names and types) for what the catalog, the
 * local registry and the check runner hold (issue #15). Peermesh-only information is in extra
 * fields Consul clients ignore: `PeerID`, `Status` (aggregated health), `Sidecar`.
 */
import type { SwimConfig } from '../../gossip/config.ts'
import type { HealthCheckView, HealthEntry, NodeRef } from '../catalog/catalog.ts'
import type { CheckState } from '../catalog/checks.ts'
import { formatDuration } from '../catalog/duration.ts'
import type { CheckDefinition, ServiceDefinition } from '../catalog/service-definition.ts'

/** Context every view needs: the datacenter, and the per-service index as Create/ModifyIndex. */
export interface ViewContext {
  datacenter: string
  /** The index of the last change to a service (Create/ModifyIndex: peermesh keeps no history). */
  serviceIndex(name: string): number
}

export interface ConsulWeights {
  Passing: number
  Warning: number
}

const weights = (w: { passing: number; warning: number }): ConsulWeights => ({
  Passing: w.passing,
  Warning: w.warning,
})

/** `Node` of `/v1/health/service` and `/v1/catalog/node/:n` (Consul's `structs.Node`). */
export function nodeView(n: NodeRef, ctx: ViewContext, index = 1): Record<string, unknown> {
  return {
    ID: n.peerId,
    Node: n.name,
    Address: n.address,
    Datacenter: ctx.datacenter,
    TaggedAddresses: { lan: n.address, lan_ipv4: n.address, wan: n.address, wan_ipv4: n.address },
    Meta: {},
    CreateIndex: index,
    ModifyIndex: index,
    PeerID: n.peerId,
  }
}

/** A health check as Consul lists it (`structs.HealthCheck`). */
export function checkView(
  c: HealthCheckView,
  tags: string[],
  index: number,
  extra: { notes?: string; type?: string; definition?: Record<string, unknown> } = {},
): Record<string, unknown> {
  return {
    Node: c.node,
    CheckID: c.checkId,
    Name: c.name,
    Status: c.status,
    Notes: extra.notes ?? '',
    Output: c.output,
    ServiceID: c.serviceId,
    ServiceName: c.serviceName,
    ServiceTags: c.serviceId === '' ? [] : tags,
    Type: extra.type ?? '',
    Interval: '',
    Timeout: '',
    ExposedPort: 0,
    Definition: extra.definition ?? {},
    CreateIndex: index,
    ModifyIndex: index,
  }
}

/** `Service` of a `/v1/health/service` entry (`structs.NodeService`). */
export function instanceView(e: HealthEntry, index: number): Record<string, unknown> {
  const s = e.service
  return {
    ID: s.id,
    Service: s.name,
    Tags: s.tags,
    Address: s.address,
    TaggedAddresses: {},
    Meta: s.meta,
    Port: s.port,
    Weights: weights(s.weights),
    EnableTagOverride: false,
    Proxy: { Mode: '', MeshGateway: {}, Expose: {} },
    Connect: {},
    PeerName: '',
    CreateIndex: index,
    ModifyIndex: index,
    ...(s.sidecar !== undefined ? { Sidecar: { Port: s.sidecar.port, Protocol: s.sidecar.protocol } } : {}),
  }
}

/**
 * One `/v1/health/service/:name` entry: `{ Node, Service, Checks }`; `outputOf` gives the output
 * of a check run by this agent (others' outputs do not travel in gossip).
 */
export function healthView(
  e: HealthEntry,
  ctx: ViewContext,
  outputOf: (node: NodeRef, checkId: string) => string | undefined,
): Record<string, unknown> {
  const index = ctx.serviceIndex(e.service.name)
  return {
    Node: nodeView(e.node, ctx, index),
    Service: instanceView(e, index),
    Checks: e.checks.map((c) =>
      checkView({ ...c, output: outputOf(e.node, c.checkId) ?? c.output }, e.service.tags, index),
    ),
    Status: e.status,
  }
}

/** One `/v1/catalog/service/:name` entry (`structs.ServiceNode`: flat, `Service*` fields). */
export function catalogServiceView(e: HealthEntry, ctx: ViewContext): Record<string, unknown> {
  const index = ctx.serviceIndex(e.service.name)
  const s = e.service
  return {
    ID: e.node.peerId,
    Node: e.node.name,
    Address: e.node.address,
    Datacenter: ctx.datacenter,
    TaggedAddresses: {
      lan: e.node.address,
      lan_ipv4: e.node.address,
      wan: e.node.address,
      wan_ipv4: e.node.address,
    },
    NodeMeta: {},
    ServiceKind: '',
    ServiceID: s.id,
    ServiceName: s.name,
    ServiceTags: s.tags,
    ServiceAddress: s.address,
    ServiceTaggedAddresses: {},
    ServiceWeights: weights(s.weights),
    ServiceMeta: s.meta,
    ServicePort: s.port,
    ServiceEnableTagOverride: false,
    ServiceProxy: { Mode: '', MeshGateway: {}, Expose: {} },
    ServiceConnect: {},
    CreateIndex: index,
    ModifyIndex: index,
    PeerID: e.node.peerId,
    Status: e.status,
    ...(s.sidecar !== undefined ? { Sidecar: { Port: s.sidecar.port, Protocol: s.sidecar.protocol } } : {}),
  }
}

/** A local check's definition fields as Consul shows them (`HTTP`, `Interval`, `TTL`...). */
function definitionOf(c: CheckDefinition): Record<string, unknown> {
  switch (c.kind) {
    case 'ttl':
      return { TTL: formatDuration(c.ttlMs) }
    case 'tcp':
      return { TCP: c.tcp, Interval: formatDuration(c.intervalMs), Timeout: formatDuration(c.timeoutMs) }
    default:
      return {
        HTTP: c.http,
        Method: c.method,
        Header: c.header,
        Interval: formatDuration(c.intervalMs),
        Timeout: formatDuration(c.timeoutMs),
      }
  }
}

/** A registration as `/v1/agent/services` and `/v1/agent/service/:id` show it (`api.AgentService`). */
export function agentServiceView(
  def: ServiceDefinition,
  address: string,
  datacenter: string,
): Record<string, unknown> {
  const sc = def.connect?.sidecarService
  return {
    ID: def.id,
    Service: def.name,
    Tags: def.tags,
    Meta: def.meta,
    Port: def.port,
    Address: def.address ?? address,
    TaggedAddresses: {},
    Weights: weights(def.weights),
    EnableTagOverride: false,
    Datacenter: datacenter,
    // Peermesh's registration of the sidecar, and the checks as they were defined.
    ...(sc !== undefined
      ? {
          Connect: {
            SidecarService: {
              Port: sc.port,
              LocalServicePort: sc.localServicePort,
              Protocol: sc.protocol,
              Upstreams: sc.upstreams.map((u) => ({
                DestinationName: u.destinationName,
                LocalBindPort: u.localBindPort,
              })),
            },
          },
        }
      : {}),
    Checks: def.checks.map((c) => ({ CheckID: c.id, Name: c.name, ...definitionOf(c) })),
  }
}

/** A local check as `/v1/agent/checks` shows it (`api.AgentCheck`). */
export function agentCheckView(
  state: CheckState,
  node: string,
  def: ServiceDefinition | undefined,
): Record<string, unknown> {
  const c = def?.checks.find((x) => x.id === state.checkId)
  return checkView(
    {
      node,
      checkId: state.checkId,
      name: state.name,
      status: state.status,
      output: state.output,
      serviceId: state.serviceId,
      serviceName: state.serviceName,
    },
    def?.tags ?? [],
    0,
    {
      ...(c?.notes !== undefined ? { notes: c.notes } : {}),
      ...(c !== undefined ? { type: c.kind, definition: definitionOf(c) } : {}),
    },
  )
}

/** Serf's member status codes, which Consul reports (`Status: 1` is alive). */
export const SERF_STATUS = Object.freeze({ none: 0, alive: 1, leaving: 2, left: 3, failed: 4 })

/** A gossip member as Consul's `/v1/agent/members` lists it, with peermesh's own fields after. */
export function memberView(
  m: {
    id: string
    name: string
    address: string
    addresses: readonly string[]
    status: 'alive' | 'suspect' | 'dead' | 'left'
    incarnation: number
    tags: Record<string, string>
  },
  datacenter: string,
): Record<string, unknown> {
  const ep = /\/(?:ip4|ip6|dns4|dns6|dns)\/([^/]+)\/(?:tcp|udp)\/(\d+)/.exec(m.addresses[0] ?? m.address)
  // SWIM's suspect is still a member (serf reports it alive); dead is serf's failed.
  const status =
    m.status === 'dead' ? SERF_STATUS.failed : m.status === 'left' ? SERF_STATUS.left : SERF_STATUS.alive
  return {
    Name: m.name,
    Addr: ep?.[1] ?? '',
    Port: ep !== null ? Number(ep[2]) : 0,
    Tags: { ...m.tags, dc: datacenter },
    Status: status,
    ProtocolMin: 1,
    ProtocolMax: 5,
    ProtocolCur: 2,
    DelegateMin: 2,
    DelegateMax: 5,
    DelegateCur: 4,
    PeerID: m.id,
    Address: m.address,
    State: m.status,
    Incarnation: m.incarnation,
  }
}

/** `/v1/agent/self`: Consul's `Config` and `Member`, then peermesh's `PeerID`, `Addresses`, `Peers`. */
export function agentSelfView(a: {
  datacenter: string
  name: string
  peerId: string
  addresses: string[]
  peers: string[]
  version: string
  /** The SWIM timing in force, as Consul's DebugConfig names it (`GossipLAN*`). */
  gossip: { profile: string; config: SwimConfig }
  /** The Raft timing in force: `performance.raftMultiplier` and the shortest election timeout. */
  raft: { multiplier: number; electionTimeoutMs: number }
}): Record<string, unknown> {
  const g = a.gossip.config
  return {
    Config: {
      Datacenter: a.datacenter,
      PrimaryDatacenter: a.datacenter,
      NodeName: a.name,
      NodeID: a.peerId,
      Revision: '',
      Server: true,
      Version: a.version,
    },
    DebugConfig: {
      GossipProfile: a.gossip.profile,
      GossipLANProbeInterval: `${g.probeIntervalMs}ms`,
      GossipLANProbeTimeout: `${g.probeTimeoutMs}ms`,
      GossipLANSuspicionMult: g.suspicionMult,
      GossipLANGossipInterval: `${g.gossipIntervalMs}ms`,
      GossipLANGossipNodes: g.gossipNodes,
      GossipLANRetransmitMult: g.retransmitMult,
      RaftMultiplier: a.raft.multiplier,
      ConsulRaftElectionTimeout: `${a.raft.electionTimeoutMs}ms`,
    },
    Coord: null,
    Member: memberView(
      {
        id: a.peerId,
        name: a.name,
        address: a.addresses[0] ?? '',
        addresses: a.addresses,
        status: 'alive',
        incarnation: 0,
        tags: {},
      },
      a.datacenter,
    ),
    Stats: {},
    Meta: {},
    PeerID: a.peerId,
    Addresses: a.addresses,
    Peers: a.peers,
  }
}

/** prom-client's JSON as Consul's `/v1/agent/metrics` summary (gauges and counters, no samples). */
export function agentMetricsJson(
  metrics: readonly {
    name: string
    type: unknown
    values: readonly { value: number; labels: Partial<Record<string, string | number>> }[]
  }[],
): Record<string, unknown> {
  const Gauges: unknown[] = []
  const Counters: unknown[] = []
  for (const m of metrics) {
    for (const v of m.values) {
      const labels = Object.fromEntries(Object.entries(v.labels).map(([k, x]) => [k, String(x ?? '')]))
      if (m.type === 'counter') Counters.push({ Name: m.name, Count: v.value, Sum: v.value, Labels: labels })
      else if (m.type === 'gauge') Gauges.push({ Name: m.name, Value: v.value, Labels: labels })
    }
  }
  return {
    Timestamp: new Date().toISOString().replace('T', ' ').slice(0, 19),
    Gauges,
    Points: [],
    Counters,
    Samples: [],
  }
}
