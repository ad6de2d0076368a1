/**
 * The CLI's own `--json` shapes (documented, and what users' scripts read) from the HTTP API's
 * Consul shapes (issue #15). Type-only imports: the CLI loads none of the agent's code for them.
 */
import type { HealthEntry } from '../catalog/index.ts'
import type { CheckStatus } from '../catalog/service-definition.ts'
import type { MemberJson } from '../gossip/gossip-module.ts'
import type { CaRootsJson } from '../../identity/connect/ca-state.ts'
import type { IntentionJson } from '../api/connect-routes.ts'

// biome-ignore lint/suspicious/noExplicitAny: API answers, read field by field below
type Json = any

/** `/v1/health/service/:name` entries -> `peermesh health --json` entries. */
export function healthEntriesFromConsul(list: Json[]): HealthEntry[] {
  return list.map((e) => ({
    node: { name: e.Node.Node, peerId: e.Node.PeerID ?? e.Node.ID, address: e.Node.Address },
    service: {
      id: e.Service.ID,
      name: e.Service.Service,
      address: e.Service.Address,
      port: e.Service.Port,
      tags: e.Service.Tags ?? [],
      meta: e.Service.Meta ?? {},
      weights: { passing: e.Service.Weights?.Passing ?? 1, warning: e.Service.Weights?.Warning ?? 1 },
      ...(e.Service.Sidecar !== undefined
        ? { sidecar: { port: e.Service.Sidecar.Port, protocol: e.Service.Sidecar.Protocol } }
        : {}),
    },
    checks: (e.Checks ?? []).map((c: Json) => ({
      node: c.Node,
      checkId: c.CheckID,
      name: c.Name,
      status: c.Status as CheckStatus,
      output: c.Output,
      serviceId: c.ServiceID,
      serviceName: c.ServiceName,
    })),
    status: e.Status,
  }))
}

const SERF_STATUS_NAMES: Record<number, MemberJson['status']> = { 1: 'alive', 3: 'left', 4: 'dead' }

/** `/v1/agent/members` -> `peermesh members --json`. */
export function membersFromConsul(list: Json[]): MemberJson[] {
  return list.map((m) => {
    const { dc: _dc, ...tags } = (m.Tags ?? {}) as Record<string, string>
    return {
      name: m.Name,
      peerId: m.PeerID,
      address: m.Address,
      status: m.State ?? SERF_STATUS_NAMES[m.Status as number] ?? 'alive',
      incarnation: m.Incarnation ?? 0,
      tags,
    }
  })
}

/** `/v1/agent/self` -> the fields of `peermesh info --json`. */
export function agentInfoFromConsul(self: Json): {
  name: string
  peerId: string
  addresses: string[]
  version: string
  peers: string[]
} {
  return {
    name: self.Config.NodeName,
    peerId: self.PeerID,
    addresses: self.Addresses ?? [],
    version: self.Config.Version,
    peers: self.Peers ?? [],
  }
}

/** `/v1/connect/ca/roots` -> `peermesh ca roots --json`. */
export function caRootsFromConsul(r: Json): CaRootsJson {
  return {
    activeRootId: r.ActiveRootID,
    trustDomain: r.TrustDomain,
    roots: (r.Roots ?? []).map((x: Json) => ({
      id: x.ID,
      name: x.Name,
      rootCert: x.RootCert,
      intermediateCerts: x.IntermediateCerts ?? [],
      active: x.Active,
      keyType: x.KeyType,
      serialNumber: x.Serial,
      notBefore: x.NotBefore,
      notAfter: x.NotAfter,
    })),
    index: r.Index,
  }
}

/** A Consul intention -> `peermesh intention list --json` element. */
export function intentionFromConsul(i: Json): IntentionJson {
  return {
    source: i.SourceName,
    destination: i.DestinationName,
    action: i.Permissions !== undefined ? 'deny' : i.Action,
    ...(i.Permissions !== undefined ? { permissions: i.Permissions } : {}),
    ...(i.Description ? { description: i.Description } : {}),
    precedence: i.Precedence,
    createIndex: i.CreateIndex,
    modifyIndex: i.ModifyIndex,
  }
}

/** `/v1/connect/intentions/check` -> `peermesh intention check --json`. */
export function intentionCheckFromConsul(r: Json): {
  allowed: boolean
  action: string
  matched?: { source: string; destination: string }
  defaultAction: string
} {
  return {
    allowed: r.Allowed,
    action: r.Action,
    ...(r.Matched !== undefined
      ? { matched: { source: r.Matched.SourceName, destination: r.Matched.DestinationName } }
      : {}),
    defaultAction: r.DefaultAction,
  }
}
