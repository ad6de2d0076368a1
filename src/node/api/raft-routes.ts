import { commandPermission, configRead, configWrite } from '../../acl/command-permission.ts'
import { NODE_IDENTITY_PATTERN } from '../../acl/constants.ts'
import { need } from '../../acl/index.ts'
import type { NodeEnrollment, ServiceGrant } from '../../acl/types.ts'
import { errorCode } from '../../common/errors.ts'
import { CONFIG_ENTRY_SCHEMAS } from '../../raft/policy/policy-store.ts'
import type { ConfigEntry, PolicyCommand, PolicyResult } from '../../raft/index.ts'
import { PolicyErrorCodes } from '../../raft/policy/policy-commands.ts'
import { ApiError } from '../agent/errors.ts'
import { ApiReply, type ApiRequest, type HttpApi, requestDeadline } from './server.ts'
import {
  allServiceIntentionsJson,
  SERVICE_INTENTIONS_KIND,
  serviceIntentionsCommand,
  serviceIntentionsJson,
} from './service-intentions.ts'

/** Header of `GET /v1/status/leader` with the leader's libp2p address ("" when none). */
export const LEADER_HEADER = 'X-Peermesh-Leader'
import { API_MAX_TIMEOUT_MS, API_RAFT_TIMEOUT_MS } from '../agent/defaults.ts'
import { NoLeaderError, RaftNotRunningError, WriteTimeoutError } from '../raft/errors.ts'
import type { RaftModule } from '../raft/raft-module.ts'

/** Time a write or consistent read may take by default before the API answers 503. */
export const DEFAULT_RAFT_TIMEOUT_MS = API_RAFT_TIMEOUT_MS
const MAX_TIMEOUT_MS = API_MAX_TIMEOUT_MS

/** A config entry as the API shows it: Consul's flat shape, camelCase. */
export type ConfigEntryJson = {
  kind: string
  name: string
  createIndex: number
  modifyIndex: number
} & Record<string, unknown>

export function configEntryJson(e: ConfigEntry): ConfigEntryJson {
  return { ...e.value, kind: e.kind, name: e.name, createIndex: e.createdIndex, modifyIndex: e.modifyIndex }
}

/**
 * Raft routes of the local HTTP API:
 * - `GET /v1/status/leader` → the leader as "ip:port" ("" when none) and `GET /v1/status/peers` →
 *   the Raft voters as "ip:port", as Consul (the libp2p addresses are in `/v1/operator/raft/configuration`);
 * - `GET /v1/operator/raft/configuration` → `{ servers: [{ id, node, address, leader, voter }], index }`;
 * - `GET /v1/operator/raft/status` → this agent's term, role, commit and applied index;
 * - config entries of the policy store: `PUT /v1/config` (body `{ kind, name, ... }`, `?cas=INDEX`)
 *   → `{ index }`; `GET /v1/config/:kind/:name[?consistent]` (404 when missing);
 *   `DELETE /v1/config/:kind/:name` → `{ index }`; `GET /v1/config/:kind[?consistent]`.
 * - node enrollment (issue #12): `GET /v1/operator/enrollment` (operator:read) →
 *   `{ Enrollments: [{ PeerID, Node, Voter, AccessorID, CreateIndex }], Grants: [{ PeerID, Service,
 *   AccessorID, CreateIndex }], Revoked: [peer id] }`; `DELETE /v1/operator/enrollment/:node`
 *   (operator:write, also checked on the leader) revokes a node → `{ index }`. Nothing here
 *   proposes an enrollment or a grant: only the leader does, for a typed request (enrollment.ts).
 * Writes and `?consistent` reads take `?timeout=MS` (default 5 s) and answer 503 past it.
 */
export function registerRaftRoutes(http: HttpApi, raft: RaftModule): void {
  // Consul's headers: whether a leader is known, and how long ago this agent last heard from it
  // (0 on the leader).
  http.useLeaderInfo(() => ({
    known: raft.leaderId() !== undefined,
    lastContactMs: raft.lastContactMs() ?? 0,
  }))
  // Consul's shapes: the leader and the voters as "ip:port" (the host and TCP port of their
  // libp2p address: where Raft reaches them); "" when there is no leader.
  http.route('GET', '/v1/status/leader', () => {
    const address = raft.leaderAddress()
    // Peermesh's own: the leader's libp2p address (what `peermesh leader` prints).
    return new ApiReply(200, JSON.stringify(hostPortOf(address)), 'application/json', {
      [LEADER_HEADER]: address,
    })
  })
  http.route('GET', '/v1/status/peers', () =>
    raft
      .configuration()
      .servers.filter((s) => s.voter)
      .map((s) => hostPortOf(s.address))
      .filter((a) => a !== ''),
  )
  http.route('GET', '/v1/operator/raft/configuration', (req) => {
    req.auth.require(...need.operatorRead())
    return raft.configuration()
  })
  http.route('GET', '/v1/operator/raft/status', (req) => {
    req.auth.require(...need.operatorRead())
    const node = raft.raft
    if (node === undefined) throw new ApiError('raft is not running', 503)
    const st = node.status()
    return {
      id: st.id,
      term: st.term,
      role: st.conf.learners.includes(st.id) ? 'learner' : st.role,
      leader: st.leader ?? '',
      commitIndex: st.commit,
      appliedIndex: node.applied(),
      lastIndex: st.lastIndex,
      voters: st.conf.voters,
      learners: st.conf.learners,
    }
  })

  http.route('GET', '/v1/operator/enrollment', async (req) => {
    req.auth.require(...need.operatorRead())
    await maybeConsistent(raft, req)
    return enrollmentJson(raft.store.acl)
  })
  http.route('DELETE', '/v1/operator/enrollment/:node', async (req) => {
    const node = req.params['node']!
    if (!NODE_IDENTITY_PATTERN.test(node))
      throw new ApiError('node: must be 1-63 letters, digits, ".", "_" or "-"', 400)
    return { index: await write(raft, { op: 'acl.node.unenroll', node }, req) }
  })

  http.route('PUT', '/v1/config', async (req) => {
    const cmd = parseConfigEntryBody(req.body, req.query)
    return { index: await write(raft, cmd, req) }
  })
  http.route('GET', '/v1/config/:kind/:name', async (req) => {
    req.auth.require(...configRead(req.params['kind']!, req.params['name']!))
    await maybeConsistent(raft, req)
    if (req.params['kind'] === SERVICE_INTENTIONS_KIND) {
      const si = serviceIntentionsJson(raft.store.listIntentions(), req.params['name']!)
      if (si === undefined)
        throw new ApiError(`no config entry service-intentions/${req.params['name']}`, 404)
      return si
    }
    const e = raft.store.getConfigEntry(req.params['kind']!, req.params['name']!)
    if (e === undefined)
      throw new ApiError(`no config entry ${req.params['kind']}/${req.params['name']}`, 404)
    return configEntryJson(e)
  })
  http.route('DELETE', '/v1/config/:kind/:name', async (req) => {
    const { kind, name } = req.params as { kind: string; name: string }
    checkName('kind', kind)
    checkName('name', name)
    // Before looking: a token that may not write the entry gets the same 403 whether it exists or not.
    req.auth.require(...configWrite(kind, name))
    if (kind === SERVICE_INTENTIONS_KIND) {
      if (!raft.store.listIntentions().some((i) => i.destination === name))
        throw new ApiError(`no config entry service-intentions/${name}`, 404)
      return { index: await write(raft, serviceIntentionsCommand(name, { Sources: [] }), req) }
    }
    return { index: await write(raft, { op: 'config.delete', kind, name }, req) }
  })
  http.route('GET', '/v1/config/:kind', async (req) => {
    await maybeConsistent(raft, req)
    const authz = req.auth.authorizer()
    if (req.params['kind'] === SERVICE_INTENTIONS_KIND)
      return allServiceIntentionsJson(raft.store.listIntentions()).filter((e) =>
        configRead(SERVICE_INTENTIONS_KIND, e.name)[0](authz),
      )
    return raft.store
      .listConfigEntries(req.params['kind']!)
      .filter((e) => configRead(e.kind, e.name)[0](authz))
      .map(configEntryJson)
  })
}

/** `/ip4/10.0.0.5/tcp/4001/p2p/...` -> `10.0.0.5:4001` (`[v6]:port` for IPv6); '' if not one. */
export function hostPortOf(multiaddr: string): string {
  const m = /^\/(ip4|ip6|dns4|dns6|dns)\/([^/]+)\/tcp\/(\d+)/.exec(multiaddr)
  if (m === null) return ''
  return m[1] === 'ip6' ? `[${m[2]}]:${m[3]}` : `${m[2]}:${m[3]}`
}

/** `GET /v1/operator/enrollment`: Consul-style PascalCase, like the ACL routes. */
export interface EnrollmentListJson {
  Enrollments: { PeerID: string; Node: string; Voter: boolean; AccessorID: string; CreateIndex: number }[]
  Grants: { PeerID: string; Service: string; AccessorID: string; CreateIndex: number }[]
  Revoked: string[]
}

export function enrollmentJson(state: {
  enrollments(): NodeEnrollment[]
  allServiceGrants(): ServiceGrant[]
  revokedPeerIds(): string[]
}): EnrollmentListJson {
  return {
    Enrollments: state.enrollments().map((e) => ({
      PeerID: e.peerId,
      Node: e.node,
      Voter: e.voter,
      AccessorID: e.accessorId,
      CreateIndex: e.createIndex,
    })),
    Grants: state.allServiceGrants().map((g) => ({
      PeerID: g.peerId,
      Service: g.service,
      AccessorID: g.accessorId,
      CreateIndex: g.createIndex,
    })),
    Revoked: state.revokedPeerIds(),
  }
}

function checkName(field: string, v: unknown): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > 512)
    throw new ApiError(`${field}: expected a string of 1-512 characters`, 400)
  return v
}

/** Validates a `PUT /v1/config` body into a command; 400 naming the field on bad input. */
export function parseConfigEntryBody(body: unknown, query: URLSearchParams): PolicyCommand {
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw new ApiError('body: expected a JSON object { kind, name, ... }', 400)
  // Consul's `Kind`/`Name` or the lower-case `kind`/`name`.
  const { kind: k, name: n, Kind, Name, ...value } = body as Record<string, unknown>
  const [kind, name] = [k ?? Kind, n ?? Name]
  checkName('kind', kind)
  checkName('name', name)
  if (kind === SERVICE_INTENTIONS_KIND) {
    if (query.has('cas')) throw new ApiError('cas: not supported for service-intentions', 400)
    return serviceIntentionsCommand(name, value)
  }
  const schema = CONFIG_ENTRY_SCHEMAS[kind as string]
  if (schema === undefined) {
    const known = [...Object.keys(CONFIG_ENTRY_SCHEMAS), SERVICE_INTENTIONS_KIND].join(', ')
    throw new ApiError(`kind: unknown config entry kind "${kind}" (known: ${known})`, 400)
  }
  const v = schema.safeParse(value)
  if (!v.success) {
    const issue = v.error.issues[0]
    const field =
      issue?.path.map(String).join('.') || (issue?.code === 'unrecognized_keys' ? 'body' : 'value')
    throw new ApiError(`${field}: ${issue?.message ?? 'invalid value'}`, 400)
  }
  const cmd: PolicyCommand = { op: 'config.set', kind: kind as string, name: name as string, value }
  const cas = query.get('cas')
  if (cas !== null) {
    if (!/^\d{1,15}$/.test(cas)) throw new ApiError('cas: expected a non-negative integer index', 400)
    cmd.casIndex = Number(cas)
  }
  return cmd
}

function deadline(req: ApiRequest): AbortSignal {
  return requestDeadline(req, { defaultMs: DEFAULT_RAFT_TIMEOUT_MS, maxMs: MAX_TIMEOUT_MS, maxDigits: 6 })
}

async function write(raft: RaftModule, cmd: PolicyCommand, req: ApiRequest): Promise<number> {
  let r: { index: number; result: PolicyResult }
  // Checked here, and again by the leader with the token carried along (a forward is a request).
  const needed = commandPermission(cmd)
  if (needed !== undefined) req.auth.require(...needed)
  const token = req.auth.secret()
  try {
    r = await raft.write(cmd, { signal: deadline(req), ...(token !== undefined ? { token } : {}) })
  } catch (err) {
    throw unavailable(err)
  }
  const res = r.result
  if (res.ok) return res.index
  switch (res.code) {
    case PolicyErrorCodes.notFound:
      throw new ApiError(res.message, 404)
    case PolicyErrorCodes.casFailed:
      throw new ApiError(`cas: ${res.message}`, 409)
    case PolicyErrorCodes.tooLarge:
      throw new ApiError(res.message, 413)
    case PolicyErrorCodes.permissionDenied:
      throw new ApiError(res.message, 403)
    default:
      throw new ApiError(res.message, 400)
  }
}

async function maybeConsistent(raft: RaftModule, req: ApiRequest): Promise<void> {
  if (!req.query.has('consistent')) return
  try {
    await raft.linearizableRead({ signal: deadline(req) })
  } catch (err) {
    throw unavailable(err)
  }
}

/** Errors that mean "try again later": the cluster has no leader now, or this agent is stopping. */
const UNAVAILABLE = new Set([NoLeaderError.code, WriteTimeoutError.code, RaftNotRunningError.code])

function unavailable(err: unknown): unknown {
  if (err instanceof ApiError) return err
  const code = errorCode(err)
  if (code !== undefined && UNAVAILABLE.has(code))
    return new ApiError((err as Error).message, 503, { cause: err })
  return err
}
