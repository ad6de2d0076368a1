import { randomUUID } from 'node:crypto'
import { need } from '../../acl/index.ts'
import { hasLoneSurrogate, KV_LIMITS } from '../../raft/policy/kv-commands.ts'
import type { StoredSession } from '../../raft/policy/kv-state.ts'
import type { PolicyCommand } from '../../raft/policy/policy-commands.ts'
import { ApiError } from '../agent/errors.ts'
import { NODE_CHECK_ID } from '../catalog/catalog.ts'
import { formatDuration, parseDuration } from '../catalog/index.ts'
import { blockOn, consistentRead, type KvApi, kvWrite, readHeaders } from './kv-http.ts'
import { resultError } from './kv-routes.ts'
import { ApiReply, type ApiRequest, type HttpApi } from './server.ts'

/** Consul's name of a node's gossip health check; peermesh's own (`peermesh:node`) is the same check. */
export const SERF_HEALTH = 'serfHealth'

/** Whether `id` names the gossip health check of a node. */
export const isGossipCheck = (id: string): boolean => id === SERF_HEALTH || id === NODE_CHECK_ID

/** A session as Consul shows it (`structs.Session`); `LockDelay` in nanoseconds, as Go encodes it. */
export interface SessionJson {
  ID: string
  Name: string
  Node: string
  LockDelay: number
  Behavior: 'release' | 'delete'
  TTL: string
  /** Every check (Consul's deprecated field, still read by clients). */
  Checks: string[]
  NodeChecks: string[]
  ServiceChecks: null
  CreateIndex: number
  ModifyIndex: number
}

export function sessionJson(s: StoredSession): SessionJson {
  return {
    ID: s.id,
    Name: s.name,
    Node: s.node,
    LockDelay: s.lockDelayMs * 1_000_000,
    Behavior: s.behavior,
    TTL: s.ttlMs === 0 ? '' : formatDuration(s.ttlMs),
    Checks: [...s.checks],
    NodeChecks: [...s.checks],
    ServiceChecks: null,
    CreateIndex: s.createIndex,
    ModifyIndex: s.modifyIndex,
  }
}

/** What `PUT /v1/session/create` takes, decoded. */
export interface SessionRequest {
  name: string
  node: string
  lockDelayMs: number
  behavior: 'release' | 'delete'
  ttlMs: number
  checks: string[]
}

const CREATE_FIELDS = new Map(
  [
    'Name',
    'Node',
    'LockDelay',
    'Behavior',
    'TTL',
    'Checks',
    'NodeChecks',
    'ServiceChecks',
    'ID',
    'Namespace',
  ].map((f) => [f.toLowerCase(), f]),
)

/**
 * A session create body (Consul's field names, any case). `LockDelay` is a duration string or a
 * number of nanoseconds, except that, as Consul's `FixupLockDelay` reads it, a number below 1000
 * means seconds. Checks: none given means the node's gossip check (`serfHealth`).
 */
export function parseSessionRequest(body: unknown, defaultNode: string): SessionRequest {
  const b: Record<string, unknown> = {}
  if (body !== undefined) {
    if (body === null || typeof body !== 'object' || Array.isArray(body))
      throw new ApiError('body: expected a JSON object', 400)
    for (const [k, v] of Object.entries(body)) {
      const f = CREATE_FIELDS.get(k.toLowerCase())
      if (f === undefined) throw new ApiError(`${k}: unknown field`, 400)
      b[f] = v
    }
  }
  const str = (f: string, max: number): string | undefined => {
    const v = b[f]
    if (v === undefined || v === null || v === '') return undefined
    if (typeof v !== 'string' || v.length > max || hasLoneSurrogate(v))
      throw new ApiError(`${f}: expected a string of at most ${max} characters`, 400)
    return v
  }
  const name = str('Name', 256) ?? ''
  const node = str('Node', 256) ?? defaultNode
  const behavior = str('Behavior', 16) ?? 'release'
  if (behavior !== 'release' && behavior !== 'delete')
    throw new ApiError(`Behavior: expected "release" or "delete", not ${JSON.stringify(behavior)}`, 400)
  let lockDelayMs: number = KV_LIMITS.defaultLockDelayMs
  const ld = b['LockDelay']
  if (typeof ld === 'string' && ld !== '') {
    const ms = parseDuration(ld)
    if (ms === undefined) throw new ApiError(`LockDelay: invalid duration ${JSON.stringify(ld)}`, 400)
    lockDelayMs = ms
  } else if (typeof ld === 'number') {
    if (!Number.isFinite(ld) || ld < 0) throw new ApiError('LockDelay: expected a non-negative duration', 400)
    lockDelayMs = ld < 1000 ? ld * 1000 : ld / 1_000_000
  } else if (ld !== undefined && ld !== null && ld !== '') {
    throw new ApiError('LockDelay: expected a duration', 400)
  }
  lockDelayMs = Math.round(lockDelayMs)
  if (lockDelayMs > KV_LIMITS.maxLockDelayMs)
    throw new ApiError(`LockDelay: at most ${KV_LIMITS.maxLockDelayMs / 1000}s`, 400)
  let ttlMs = 0
  const ttl = str('TTL', 64)
  if (ttl !== undefined) {
    const ms = parseDuration(ttl)
    if (ms === undefined) throw new ApiError(`TTL: invalid duration ${JSON.stringify(ttl)}`, 400)
    if (ms !== 0 && (ms < KV_LIMITS.minTtlMs || ms > KV_LIMITS.maxTtlMs))
      throw new ApiError(
        `Invalid Session TTL '${ms * 1e6}', must be between [${KV_LIMITS.minTtlMs / 1000}s=${KV_LIMITS.maxTtlMs / 1000}s]`,
        400,
      )
    ttlMs = Math.round(ms)
  }
  const list = (f: string): string[] | undefined => {
    const v = b[f]
    if (v === undefined || v === null) return undefined
    if (
      !Array.isArray(v) ||
      v.length > KV_LIMITS.maxSessionChecks ||
      !v.every((c) => typeof c === 'string' && c.length > 0 && c.length <= 256 && !hasLoneSurrogate(c))
    )
      throw new ApiError(`${f}: expected at most ${KV_LIMITS.maxSessionChecks} check IDs`, 400)
    return v as string[]
  }
  const checks = list('Checks')
  const nodeChecks = list('NodeChecks')
  const serviceChecks = b['ServiceChecks']
  const svc: string[] = []
  if (serviceChecks !== undefined && serviceChecks !== null) {
    if (!Array.isArray(serviceChecks) || serviceChecks.length > KV_LIMITS.maxSessionChecks)
      throw new ApiError('ServiceChecks: expected a list of {ID, Namespace}', 400)
    for (const c of serviceChecks) {
      const id = c !== null && typeof c === 'object' ? (c as Record<string, unknown>)['ID'] : undefined
      if (typeof id !== 'string' || id.length === 0 || id.length > 256 || hasLoneSurrogate(id))
        throw new ApiError('ServiceChecks: expected a list of {ID, Namespace}', 400)
      svc.push(id)
    }
  }
  // Consul: no list given means the node's gossip check; an empty list given means none.
  const all = [
    ...new Set([...(checks ?? []), ...(nodeChecks ?? (checks === undefined ? [SERF_HEALTH] : [])), ...svc]),
  ]
  if (all.length > KV_LIMITS.maxSessionChecks)
    throw new ApiError(`Checks: at most ${KV_LIMITS.maxSessionChecks} checks`, 400)
  return { name, node, lockDelayMs, behavior, ttlMs, checks: all }
}

function json(body: unknown, headers: Record<string, string>): ApiReply {
  return new ApiReply(200, JSON.stringify(body), 'application/json', headers)
}

/**
 * Consul's session API: `PUT /v1/session/create` → `{ID}`; `PUT /v1/session/destroy/:id` → `true`;
 * `GET /v1/session/info/:id` → `[session]` or `[]`; `GET /v1/session/list`;
 * `GET /v1/session/node/:node`; `PUT /v1/session/renew/:id` → `[session]` (404 when unknown).
 * ACLs: `session:write` on the session's node to create, destroy and renew; `session:read` to see
 * one (lists are filtered).
 */
export function registerSessionRoutes(http: HttpApi, api: KvApi): void {
  http.route('PUT', '/v1/session/create', async (req) => {
    const s = parseSessionRequest(req.body, api.nodeName)
    req.auth.require(...need.sessionWrite(s.node))
    const health = api.nodeHealth(s.node)
    if (health === undefined)
      throw new ApiError(`Missing node registration for ${JSON.stringify(s.node)}`, 400)
    for (const c of s.checks) {
      if (isGossipCheck(c)) {
        if (!health.alive) throw new ApiError(`Check '${c}' is in critical state`, 400)
        continue
      }
      const status = health.checks.get(c)
      if (status === undefined) throw new ApiError(`Missing check '${c}' registration`, 400)
      if (status === 'critical') throw new ApiError(`Check '${c}' is in critical state`, 400)
    }
    const id = randomUUID()
    const cmd: PolicyCommand = { op: 'session.create', id, ...s, now: api.wallNow() }
    const out = await kvWrite(api, req, cmd)
    if (!out.result.ok) throw resultError(out.result)
    return { ID: id }
  })
  http.route('PUT', '/v1/session/destroy/:id', async (req) => {
    const s = api.kv.session(req.params['id'] ?? '')
    // Consul answers true for a session that does not exist (already gone).
    if (s === undefined) return true
    req.auth.require(...need.sessionWrite(s.node))
    const out = await kvWrite(api, req, {
      op: 'session.destroy',
      id: s.id,
      node: s.node,
      now: api.wallNow(),
      reason: 'destroy',
    })
    if (!out.result.ok && out.result.code !== 'PEERMESH_ERR_NOT_FOUND') throw resultError(out.result)
    return true
  })
  http.route('PUT', '/v1/session/renew/:id', async (req) => {
    const id = req.params['id'] ?? ''
    const s = api.kv.session(id)
    if (s === undefined) throw new ApiError(`Session id '${id}' not found`, 404)
    req.auth.require(...need.sessionWrite(s.node))
    const out = await kvWrite(api, req, { op: 'session.renew', id: s.id, node: s.node, now: api.wallNow() })
    if (!out.result.ok) {
      if (out.result.code === 'PEERMESH_ERR_NOT_FOUND')
        throw new ApiError(`Session id '${id}' not found`, 404)
      throw resultError(out.result)
    }
    const now = api.kv.session(id) ?? s
    return [sessionJson(now)]
  })
  const read = async (req: ApiRequest, pick: () => StoredSession[]): Promise<ApiReply> => {
    await consistentRead(api, req)
    await blockOn(api, req, () => api.kv.sessionIndex)
    const authz = req.auth.authorizer()
    const list = pick()
      .filter((s) => authz.sessionRead(s.node))
      .map(sessionJson)
    return json(list, readHeaders(api, api.kv.sessionIndex))
  }
  http.route('GET', '/v1/session/info/:id', (req) => {
    const id = req.params['id'] ?? ''
    return read(req, () => {
      const s = api.kv.session(id)
      return s === undefined ? [] : [s]
    })
  })
  http.route('GET', '/v1/session/list', (req) => read(req, () => api.kv.listSessions()))
  http.route('GET', '/v1/session/node/:node', (req) => {
    const node = req.params['node'] ?? ''
    return read(req, () => api.kv.listSessions().filter((s) => s.node === node))
  })
}
