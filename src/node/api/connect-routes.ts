import { commandPermission } from '../../acl/command-permission.ts'
import { need } from '../../acl/index.ts'
import {
  type Intention as IntentionInput,
  InvalidIntentionQueryError,
  intentionPrecedence,
  validateIntention,
} from '../../proxy/intentions.ts'
import type { IntentionPermission, StoredIntention } from '../../raft/policy/intention.ts'
import { type PolicyCommand, PolicyErrorCodes, type PolicyResult } from '../../raft/policy/policy-commands.ts'
import { DEFAULT_BLOCKING_WAIT_MS, MAX_BLOCKING_WAIT_MS, parseDuration } from '../catalog/index.ts'
import type { RotationStarted } from '../../identity/connect/ca-manager.ts'
import { type CaState, caRootsJson } from '../../identity/connect/ca-state.ts'
import { CaRotationConflictError } from '../../identity/connect/errors.ts'
import type { LeafCredentials } from '../../identity/connect/leaf-rotator.ts'
import type { IntentionIndex } from '../../proxy/intentions.ts'
import { INDEX_HEADER } from './consul-query.ts'
import { DEFAULT_ACTION_ENTRY } from '../connect/intention-view.ts'
import { ApiError } from '../agent/errors.ts'
import { ApiReply, type ApiRequest, type HttpApi, requestDeadline } from './server.ts'
import { filtered, requestedConsistency } from './consul-query.ts'
import { API_RAFT_TIMEOUT_MS, CONNECT_WIRING_DEFAULTS } from '../agent/defaults.ts'

/** What the connect routes use of the connect module. */
export interface ConnectApi {
  caState(): CaState
  /** Starts a CA rotation on the leader; `token` (the request's) is checked there again. */
  rotate(options: { signal: AbortSignal; token?: string }): Promise<RotationStarted>
  hostsService(service: string): boolean
  leaf(service: string, options: { signal: AbortSignal }): Promise<LeafCredentials | undefined>
  trustedRootsPem(): string[]
  intentions(): StoredIntention[]
  getIntention(source: string, destination: string): StoredIntention | undefined
  intentionIndex(): IntentionIndex
  /** Raft index of the policy state applied here. */
  readonly stateIndex: number
  waitForChange(after: number, waitMs: number, signal?: AbortSignal): Promise<number>
  /** A policy write through Raft (from any agent). */
  write(cmd: PolicyCommand, options: { signal: AbortSignal; token?: string }): Promise<PolicyResult>
}

const DEFAULT_WRITE_TIMEOUT_MS = API_RAFT_TIMEOUT_MS
const LEAF_WAIT_MS = CONNECT_WIRING_DEFAULTS.apiLeafWaitMs

/** An intention as the API shows it (Consul's shape, camelCase, without namespaces). */
export interface IntentionJson {
  source: string
  destination: string
  /** `deny` for an L7 intention (its connection-level answer); its permissions decide requests. */
  action: 'allow' | 'deny'
  /** L7 permissions (Consul's shape), if any. */
  permissions?: IntentionPermission[]
  description?: string
  precedence: number
  createIndex: number
  modifyIndex: number
}

export function intentionJson(i: StoredIntention): IntentionJson {
  return {
    source: i.source,
    destination: i.destination,
    action: i.action,
    ...(i.permissions !== undefined ? { permissions: i.permissions } : {}),
    ...(i.description !== undefined ? { description: i.description } : {}),
    precedence: intentionPrecedence(i),
    createIndex: i.createdIndex,
    modifyIndex: i.modifyIndex,
  }
}

/** An intention as Consul shows it (`structs.Intention`), peermesh's form under the same names. */
export interface ConsulIntentionJson {
  ID: string
  Description: string
  SourceNS: string
  SourceName: string
  DestinationNS: string
  DestinationName: string
  SourceType: 'consul'
  /** Empty for an L7 intention (Consul's shape): `Permissions` decide. */
  Action: 'allow' | 'deny' | ''
  Permissions?: IntentionPermission[]
  Precedence: number
  Meta: Record<string, string>
  CreateIndex: number
  ModifyIndex: number
}

export function consulIntentionJson(i: IntentionJson): ConsulIntentionJson {
  return {
    ID: '',
    Description: i.description ?? '',
    SourceNS: 'default',
    SourceName: i.source,
    DestinationNS: 'default',
    DestinationName: i.destination,
    SourceType: 'consul',
    Action: i.permissions !== undefined ? '' : i.action,
    ...(i.permissions !== undefined ? { Permissions: i.permissions } : {}),
    Precedence: i.precedence,
    Meta: {},
    CreateIndex: i.createIndex,
    ModifyIndex: i.modifyIndex,
  }
}

/** `GET /v1/connect/ca/roots` as Consul answers it (`structs.IndexedCARoots`), peermesh fields after. */
export function consulCaRootsJson(state: CaState): Record<string, unknown> {
  const j = caRootsJson(state)
  return {
    ActiveRootID: j.activeRootId,
    TrustDomain: j.trustDomain,
    Roots: j.roots.map((r) => ({
      ID: r.id,
      Name: r.name,
      ExternalTrustDomain: j.trustDomain,
      NotBefore: r.notBefore,
      NotAfter: r.notAfter,
      RootCert: r.rootCert,
      IntermediateCerts: r.intermediateCerts,
      Active: r.active,
      PrivateKeyType: r.keyType === 'ecdsa-p256' ? 'ec' : r.keyType,
      PrivateKeyBits: r.keyType === 'ecdsa-p256' ? 256 : 0,
      CreateIndex: j.index,
      ModifyIndex: j.index,
      KeyType: r.keyType,
      Serial: r.serialNumber,
    })),
    Index: j.index,
  }
}

/** Highest precedence first (the order they are evaluated in), then by name. */
export function sortIntentions(list: IntentionJson[]): IntentionJson[] {
  return list.sort(
    (a, b) =>
      b.precedence - a.precedence ||
      (a.destination < b.destination ? -1 : a.destination > b.destination ? 1 : 0) ||
      (a.source < b.source ? -1 : a.source > b.source ? 1 : 0),
  )
}

const BODY_FIELDS = new Set(['source', 'destination', 'action', 'permissions', 'description'])
/** Consul's body fields (any case) and peermesh's names for them. */
const CONSUL_BODY_FIELDS: Record<string, string> = {
  source: 'source',
  sourcename: 'source',
  destination: 'destination',
  destinationname: 'destination',
  action: 'action',
  permissions: 'permissions',
  description: 'description',
}
/** Consul fields accepted and ignored: namespaces and partitions other than the default are refused. */
const CONSUL_IGNORED = new Set([
  'sourcens',
  'destinationns',
  'sourcepartition',
  'destinationpartition',
  'sourcetype',
  'meta',
  'id',
  'precedence',
  'createindex',
  'modifyindex',
  'createdat',
  'updatedat',
])

/** A Consul intention body (`SourceName`, `DestinationName`, `Action`, any case) in peermesh's names. */
function canonicalIntentionBody(body: unknown): unknown {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return body
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(body)) {
    const loose = k.toLowerCase().replaceAll('_', '')
    const name = CONSUL_BODY_FIELDS[loose]
    if (name === undefined) {
      if (CONSUL_IGNORED.has(loose)) {
        if (
          (loose.endsWith('ns') || loose.endsWith('partition')) &&
          v !== '' &&
          v !== 'default' &&
          v !== null
        )
          throw new ApiError(`${k}: peermesh has only the default namespace and partition`, 400)
        continue
      }
      out[k] = v
      continue
    }
    if (name in out) throw new ApiError(`${k}: given twice`, 400)
    out[name] = name === 'description' && v === '' ? undefined : v
    if (out[name] === undefined) delete out[name]
  }
  return out
}

/**
 * Validates an intention body; throws a 400 naming the field. A `*` must be the whole name: a
 * partial wildcard (`web-*`) is a self-contradiction (Consul: "wildcard character '*' cannot be
 * used with partial values").
 */
export function parseIntentionBody(raw: unknown): IntentionInput {
  const body = canonicalIntentionBody(raw)
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw new ApiError('body: expected a JSON object { source, destination, action, description? }', 400)
  for (const k of Object.keys(body)) {
    if (!BODY_FIELDS.has(k)) throw new ApiError(`${k}: unknown field`, 400)
  }
  const o = body as Record<string, unknown>
  if (o.permissions !== undefined) {
    // Consul's rule: an intention is L4 (Action) or L7 (Permissions), never both.
    if (o.action !== undefined && o.action !== '')
      throw new ApiError(
        'action: must not be set with Permissions (an L7 intention decides per request)',
        400,
      )
    delete o.action
  }
  for (const field of ['source', 'destination'] as const) {
    const v = o[field]
    if (typeof v === 'string' && v.includes('*') && v !== '*')
      throw new ApiError(
        `${field}: wildcard '*' must be the whole name, not part of it (${JSON.stringify(v)})`,
        400,
      )
  }
  try {
    return validateIntention(body as Record<string, unknown>)
  } catch (err) {
    throw new ApiError((err as Error).message, 400, { cause: err })
  }
}

/** `?source=&destination=` as an exact pair (names or `*`). */
export function parsePairQuery(query: URLSearchParams): { source: string; destination: string } {
  const pair = { source: query.get('source'), destination: query.get('destination'), action: 'deny' }
  for (const f of ['source', 'destination'] as const)
    if (pair[f] === null) throw new ApiError(`${f}: missing query parameter`, 400)
  const v = parseIntentionBody(pair)
  return { source: v.source, destination: v.destination }
}

function deadline(req: ApiRequest): AbortSignal {
  return requestDeadline(req, { defaultMs: DEFAULT_WRITE_TIMEOUT_MS, maxMs: 99_999, maxDigits: 5 })
}

async function write(connect: ConnectApi, cmd: PolicyCommand, req: ApiRequest): Promise<PolicyResult> {
  let res: PolicyResult
  // Checked here, and again by the leader with the token carried along (a forward is a request).
  const needed = commandPermission(cmd)
  if (needed !== undefined) req.auth.require(...needed)
  const token = req.auth.secret()
  try {
    res = await connect.write(cmd, { signal: deadline(req), ...(token !== undefined ? { token } : {}) })
  } catch (err) {
    throw unavailable(err)
  }
  if (!res.ok && res.code === PolicyErrorCodes.tooLarge) throw new ApiError(res.message, 413)
  if (!res.ok && res.code === PolicyErrorCodes.permissionDenied) throw new ApiError(res.message, 403)
  return res
}

function unavailable(err: unknown): unknown {
  if (err instanceof ApiError) return err
  const code = (err as { code?: unknown }).code
  if (typeof code === 'string' && code.startsWith('PEERMESH_ERR_'))
    return new ApiError((err as Error).message, code === CaRotationConflictError.code ? 409 : 503, {
      cause: err,
    })
  if (err instanceof Error && (err.name === 'AbortError' || err.name === 'TimeoutError'))
    return new ApiError('timed out waiting for the raft leader', 503, { cause: err })
  return err
}

function json(value: unknown, index: number): ApiReply {
  const at = String(Math.max(1, index))
  return new ApiReply(200, JSON.stringify(value), 'application/json', {
    [INDEX_HEADER]: at,
    'X-Consul-Index': at,
    // Answered from this agent's applied Raft state, as Consul's default (non-stale) reads are not.
    'X-Consul-Effective-Consistency': 'stale',
  })
}

/** `?index=N&wait=D`: wait until the policy state passes index N (Consul blocking query). */
async function maybeBlock(connect: ConnectApi, req: ApiRequest): Promise<void> {
  const after = req.query.get('index')
  if (after === null) return
  if (!/^\d{1,15}$/.test(after)) throw new ApiError('index: expected a non-negative integer', 400)
  let waitMs = DEFAULT_BLOCKING_WAIT_MS
  const w = req.query.get('wait')
  if (w !== null) {
    const ms = parseDuration(w)
    if (ms === undefined) throw new ApiError('wait: expected a duration such as "10s"', 400)
    waitMs = Math.min(Math.ceil(ms), MAX_BLOCKING_WAIT_MS)
  }
  await connect.waitForChange(Number(after), waitMs, req.signal)
}

/**
 * Connect routes of the local HTTP API (Consul's paths where one exists):
 * - `GET /v1/connect/ca/roots` → Consul's `{ ActiveRootID, TrustDomain, Roots: [{ ID, Name, RootCert,
 *   IntermediateCerts, Active, ... }] }`; `POST /v1/connect/ca/rotate` → `{ activeRootId, previousRootId }`;
 * - `GET /v1/agent/connect/ca/leaf/:service` → the local service's leaf `{ service, serviceURI,
 *   certPem, privateKeyPem, intermediatesPem, rootsPem, serialNumber, validAfter, validBefore }`;
 * - `GET /v1/connect/intentions[?index=&wait=&filter=]` → Consul's intentions (`SourceName`,
 *   `DestinationName`, `Action`, `Precedence`...), highest precedence first;
 *   `GET /v1/connect/intentions/match?by=source|destination&name=N` → `{ N: [...] }`;
 *   `POST /v1/connect/intentions` `{ SourceName, DestinationName, Action, Description? }` (any
 *   case; peermesh's `source`/`destination` too) → `{ index }`
 *   (400 if that pair exists); `PUT /v1/connect/intentions/exact?source=&destination=`
 *   `{ action, description? }` upserts; either takes Consul's `Permissions` (L7, checked per
 *   request by the destination's inbound) in place of `Action`, and shows it back with `Action: ""`; `GET|DELETE /v1/connect/intentions/exact?source=&destination=`
 *   and `DELETE /v1/connect/intentions?source=&destination=`;
 * - `GET /v1/connect/intentions/check?source=&destination=` → `{ Allowed, Action, Matched?, DefaultAction }`;
 * - `GET|PUT /v1/connect/intentions/default` → `{ action }` (cluster-wide, in Raft).
 * Reads and checks answer from this agent's committed state, with `X-Peermesh-Index`.
 */
export function registerConnectRoutes(http: HttpApi, connect: ConnectApi): void {
  http.route('GET', '/v1/connect/ca/roots', (req) => {
    requestedConsistency(req)
    return json(consulCaRootsJson(connect.caState()), connect.caState().modifyIndex)
  })
  http.route('POST', '/v1/connect/ca/rotate', async (req) => {
    req.auth.require(...need.operatorWrite())
    try {
      const token = req.auth.secret()
      return await connect.rotate({ signal: deadline(req), ...(token !== undefined ? { token } : {}) })
    } catch (err) {
      throw unavailable(err)
    }
  })

  http.route('GET', '/v1/agent/connect/ca/leaf/:service', async (req) => {
    const service = req.params['service']!
    // A private key: only for a token that may act as the service (Consul: service:write).
    req.auth.require(...need.serviceWrite(service))
    if (!connect.hostsService(service))
      throw new ApiError(`service: ${service} is not registered on this agent`, 404)
    const leaf = await connect.leaf(service, {
      signal: AbortSignal.any([req.signal, AbortSignal.timeout(LEAF_WAIT_MS)]),
    })
    if (leaf === undefined)
      throw new ApiError(`no leaf certificate for ${service} yet (is there a raft leader?)`, 503)
    return {
      service,
      serviceURI: leaf.spiffeId,
      certPem: leaf.certPem,
      privateKeyPem: leaf.keyPem,
      intermediatesPem: leaf.intermediatesPem,
      rootsPem: connect.trustedRootsPem(),
      serialNumber: leaf.serialNumber,
      validAfter: new Date(leaf.notBefore).toISOString(),
      validBefore: new Date(leaf.notAfter).toISOString(),
    }
  })

  http.route('GET', '/v1/connect/intentions', async (req) => {
    await maybeBlock(connect, req)
    const authz = req.auth.authorizer()
    const visible = connect.intentions().filter((i) => authz.intentionRead(i.destination))
    return json(
      filtered(req, sortIntentions(visible.map(intentionJson)).map(consulIntentionJson)),
      connect.stateIndex,
    )
  })
  // Consul's match: the intentions that apply to a source or destination, by precedence.
  http.route('GET', '/v1/connect/intentions/match', async (req) => {
    const by = req.query.get('by')
    if (by !== 'source' && by !== 'destination')
      throw new ApiError('by: must be "source" or "destination"', 400)
    const names = req.query.getAll('name')
    if (names.length === 0) throw new ApiError('name: required', 400)
    for (const n of names) req.auth.require(...need.intentionRead(n))
    await maybeBlock(connect, req)
    const all = sortIntentions(connect.intentions().map(intentionJson))
    const out: Record<string, ConsulIntentionJson[]> = {}
    for (const n of names) out[n] = all.filter((i) => i[by] === n || i[by] === '*').map(consulIntentionJson)
    return json(out, connect.stateIndex)
  })
  http.route('POST', '/v1/connect/intentions', async (req) => {
    const it = parseIntentionBody(req.body)
    const res = await write(connect, { op: 'intention.upsert', ...it, casIndex: 0 }, req)
    if (res.ok) return { index: res.index }
    if (res.code === PolicyErrorCodes.casFailed)
      throw new ApiError(
        `source/destination: an intention ${it.source} -> ${it.destination} already exists (change it with PUT /v1/connect/intentions/exact)`,
        400,
      )
    throw new ApiError(res.message, 400)
  })
  http.route('PUT', '/v1/connect/intentions/exact', async (req) => {
    const pair = parsePairQuery(req.query)
    const body =
      req.body === null || typeof req.body !== 'object'
        ? req.body
        : { ...pair, ...(canonicalIntentionBody(req.body) as object) }
    const it = parseIntentionBody(body)
    if (it.source !== pair.source || it.destination !== pair.destination)
      throw new ApiError('source/destination: body and query name different intentions', 400)
    const res = await write(connect, { op: 'intention.upsert', ...it }, req)
    if (!res.ok) throw new ApiError(res.message, 400)
    return { index: res.index }
  })
  http.route('GET', '/v1/connect/intentions/exact', (req) => {
    const { source, destination } = parsePairQuery(req.query)
    req.auth.require(...need.intentionRead(destination))
    const it = connect.getIntention(source, destination)
    if (it === undefined) throw new ApiError(`no intention ${source} -> ${destination}`, 404)
    return json(consulIntentionJson(intentionJson(it)), connect.stateIndex)
  })
  const del = async (req: ApiRequest): Promise<unknown> => {
    const { source, destination } = parsePairQuery(req.query)
    const res = await write(connect, { op: 'intention.delete', source, destination }, req)
    if (res.ok) return { index: res.index }
    if (res.code === PolicyErrorCodes.notFound) throw new ApiError(res.message, 404)
    throw new ApiError(res.message, 400)
  }
  http.route('DELETE', '/v1/connect/intentions', del)
  http.route('DELETE', '/v1/connect/intentions/exact', del)

  http.route('GET', '/v1/connect/intentions/check', (req) => {
    const source = req.query.get('source')
    const destination = req.query.get('destination')
    req.auth.require(...need.intentionRead(destination ?? ''))
    const index = connect.intentionIndex()
    try {
      const d = index.decide(source ?? '', destination ?? '')
      return json(
        {
          Allowed: d.action === 'allow',
          Action: d.action,
          ...(d.matched
            ? { Matched: { SourceName: d.matched.source, DestinationName: d.matched.destination } }
            : {}),
          DefaultAction: index.defaultAction,
        },
        connect.stateIndex,
      )
    } catch (err) {
      if (err instanceof InvalidIntentionQueryError) throw new ApiError(err.message, 400)
      throw err
    }
  })

  http.route('GET', '/v1/connect/intentions/default', (req) => {
    req.auth.require(...need.meshRead())
    return json({ action: connect.intentionIndex().defaultAction }, connect.stateIndex)
  })
  http.route('PUT', '/v1/connect/intentions/default', async (req) => {
    const b = req.body as { action?: unknown } | undefined
    if (b === null || typeof b !== 'object' || (b.action !== 'allow' && b.action !== 'deny'))
      throw new ApiError("action: must be 'allow' or 'deny'", 400)
    const res = await write(
      connect,
      { op: 'config.set', ...DEFAULT_ACTION_ENTRY, value: { value: b.action } },
      req,
    )
    if (!res.ok) throw new ApiError(res.message, 400)
    return { index: res.index }
  })
}
