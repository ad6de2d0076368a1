/**
 * Every HTTP API call the demo makes, in one place: the response shapes of the agent API are read
 * only here, through small typed accessors, so a change of field names (e.g. to Consul's
 * PascalCase) is made in this file alone. Everything else in the demo sees the types below.
 */
import { ApiClient } from '../cli/client.ts'
import { membersFromConsul } from '../cli/from-consul.ts'

/** An agent's API as the demo uses it: anonymous reads and writes with the management token. */
export interface AgentClients {
  /** Anonymous: what any caller may read (members, catalog, health, leader). */
  anon: ApiClient
  /** With the demo's management token: writes and operator reads. */
  admin: ApiClient
}

export function agentClients(http: string, token: string): AgentClients {
  return { anon: new ApiClient(http, false), admin: new ApiClient(http, token) }
}

export type MemberStatus = 'alive' | 'suspect' | 'dead' | 'left'

export interface DemoMember {
  name: string
  status: MemberStatus | string
}

export interface RaftServer {
  node: string
  address: string
  leader: boolean
  voter: boolean
}

export interface ApiInstance {
  node: string
  id: string
  tags: string[]
}

/** Per-request timeout of the demo's polls: a stopped agent must not hold a poll for 10 s. */
const READ_TIMEOUT_MS = 2_000
const opts = (): { signal: AbortSignal } => ({ signal: AbortSignal.timeout(READ_TIMEOUT_MS) })

/** `GET /v1/agent/self`: the agent's first libp2p address (what other agents use as a seed). */
export async function seedAddressOf(a: AgentClients): Promise<string> {
  const self = await a.anon.get<{ Addresses?: string[] }>('/v1/agent/self', opts())
  const addr = self.Addresses?.[0]
  if (addr === undefined) throw new Error('agent reports no libp2p address')
  return addr
}

/** `GET /v1/agent/members`: every member this agent's gossip knows, with its status. */
export async function membersOf(a: AgentClients): Promise<DemoMember[]> {
  // Consul's members: `Status` is Serf's number; peermesh's `State` names the SWIM state.
  const list = await a.anon.get<unknown[]>('/v1/agent/members', opts())
  return membersFromConsul(list).map((m) => ({ name: m.name, status: m.status }))
}

/** `GET /v1/status/leader`: the Raft leader's address as this agent knows it; undefined: none. */
export async function leaderOf(a: AgentClients): Promise<string | undefined> {
  const leader = await a.anon.get<string>('/v1/status/leader', opts())
  return typeof leader === 'string' && leader !== '' ? leader : undefined
}

/** `GET /v1/operator/raft/configuration`: the Raft servers (voters and learners) this agent knows. */
export async function raftServersOf(a: AgentClients): Promise<RaftServer[]> {
  const conf = await a.admin.get<{ servers: RaftServer[] }>('/v1/operator/raft/configuration', opts())
  return conf.servers.map((s) => ({ node: s.node, address: s.address, leader: s.leader, voter: s.voter }))
}

/** `GET /v1/acl/token/self` with the management token: true once this agent knows the token. */
export async function knowsManagementToken(a: AgentClients): Promise<boolean> {
  await a.admin.get('/v1/acl/token/self', opts())
  return true
}

/** `GET /v1/health/service/api?passing`: the passing instances of a service, as this agent sees them. */
export async function passingInstances(a: AgentClients, service: string): Promise<ApiInstance[]> {
  const entries = await a.anon.get<
    { Node: { Node: string }; Service: { ID: string; Tags?: string[] | null } }[]
  >(`/v1/health/service/${encodeURIComponent(service)}?passing`, opts())
  return entries.map((e) => ({ node: e.Node.Node, id: e.Service.ID, tags: e.Service.Tags ?? [] }))
}

export const passingApiInstances = (a: AgentClients): Promise<ApiInstance[]> => passingInstances(a, 'api')

/** `GET /v1/connect/intentions/exact`: the action of the intention SRC -> DST; undefined: none. */
export async function intentionActionOf(
  a: AgentClients,
  source: string,
  destination: string,
): Promise<string | undefined> {
  try {
    const i = await a.admin.get<{ Action: string }>(
      `/v1/connect/intentions/exact?${pair(source, destination)}`,
      opts(),
    )
    return i.Action
  } catch {
    return undefined
  }
}

/** A service definition as the demo registers it (the agent's camelCase definition format). */
export interface DemoServiceDefinition {
  name: string
  id: string
  port: number
  tags?: string[]
  /** A TCP check on the app's port (so a crashed app turns critical). */
  tcpCheck?: string
  sidecarPort: number
  upstream?: { destination: string; localBindPort: number }
}

/** `PUT /v1/agent/service/register` of a service with its sidecar. */
export async function registerService(a: AgentClients, def: DemoServiceDefinition): Promise<void> {
  await a.admin.call('PUT', '/v1/agent/service/register', {
    name: def.name,
    id: def.id,
    address: '127.0.0.1',
    port: def.port,
    ...(def.tags !== undefined ? { tags: def.tags } : {}),
    ...(def.tcpCheck !== undefined
      ? { checks: [{ tcp: def.tcpCheck, interval: '500ms', timeout: '300ms' }] }
      : {}),
    connect: {
      sidecarService: {
        port: def.sidecarPort,
        protocol: 'http',
        ...(def.upstream !== undefined
          ? {
              upstreams: [
                { destinationName: def.upstream.destination, localBindPort: def.upstream.localBindPort },
              ],
            }
          : {}),
      },
    },
  })
}

/** `POST /v1/connect/intentions`: a new intention SRC -> DST. */
export async function createIntention(
  a: AgentClients,
  source: string,
  destination: string,
  action: 'allow' | 'deny',
): Promise<void> {
  await a.admin.call('POST', '/v1/connect/intentions', { source, destination, action })
}

/**
 * `PUT /v1/connect/intentions/exact` (what `peermesh intention update` does): the action of the
 * existing intention SRC -> DST changed in one replicated write, never a moment without one.
 */
export async function updateIntention(
  a: AgentClients,
  source: string,
  destination: string,
  action: 'allow' | 'deny',
): Promise<void> {
  await a.admin.call('PUT', `/v1/connect/intentions/exact?${pair(source, destination)}`, {
    source,
    destination,
    action,
  })
}

/** `PUT /v1/config` of a service-splitter: traffic to `service` split by instance tag. */
export async function writeSplitter(
  a: AgentClients,
  service: string,
  splits: { weight: number; tag: string }[],
): Promise<void> {
  await a.admin.call('PUT', '/v1/config', {
    kind: 'service-splitter',
    name: service,
    splits: splits.map((s) => ({ weight: s.weight, serviceSubset: s.tag })),
  })
}

const pair = (src: string, dst: string): string =>
  `source=${encodeURIComponent(src)}&destination=${encodeURIComponent(dst)}`
