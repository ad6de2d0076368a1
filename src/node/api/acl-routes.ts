import { randomUUID } from 'node:crypto'
import { z } from 'zod'
import {
  AclRulesError,
  type AclPolicy,
  type AclToken,
  need,
  parseRules,
  REDACTED_SECRET,
} from '../../acl/index.ts'
import { UUID_PATTERN } from '../../acl/constants.ts'
import { errorCode } from '../../common/errors.ts'
import {
  type AclCommand,
  AclErrorCodes,
  type AclResult,
  type AclStateView,
  aclPolicyUpsertCommand,
  aclTokenUpsertCommand,
} from '../../raft/policy/acl-state.ts'
import { API_MAX_TIMEOUT_MS, API_RAFT_TIMEOUT_MS } from '../agent/defaults.ts'
import { ApiError } from '../agent/errors.ts'
import { NoLeaderError, RaftNotRunningError, WriteTimeoutError } from '../raft/errors.ts'
import { type AclResolver, requirePermission } from './acl-auth.ts'
import { type ApiRequest, type HttpApi, requestDeadline } from './server.ts'

/**
 * What the ACL routes use of the agent: the committed ACL state here, and a way to write.
 * The lead wires it to the Raft module and the policy store's ACL state.
 */
export interface AclBackend {
  /** This agent's committed ACL state. */
  readonly state: AclStateView
  /**
   * Proposes an ACL command through Raft (forwarded to the leader from any agent) and resolves
   * with the state machine's result once the entry is applied on this agent, so that `state`
   * shows it. Throws NoLeaderError / WriteTimeoutError / RaftNotRunningError when it cannot.
   */
  write(cmd: AclCommand, options: { signal: AbortSignal; token?: string }): Promise<AclResult>
}

export interface AclRouteDeps {
  backend: AclBackend
  resolver: AclResolver
  /** Fresh UUIDs for AccessorIDs, SecretIDs and policy IDs (default: crypto.randomUUID). */
  newId?: () => string
  /** The time new tokens are stamped with (default: the wall clock). */
  now?: () => Date
}

/** Consul's answer on the ACL routes of an agent with ACLs off. */
export const ACL_DISABLED = 'ACL support disabled'

/** A token as the API shows it (Consul's ACLToken, PascalCase, plus peermesh's `Voter`). */
export interface AclTokenJson {
  AccessorID: string
  SecretID: string
  Description: string
  Policies: { ID: string; Name: string }[]
  ServiceIdentities?: { ServiceName: string; Datacenters?: string[] }[]
  NodeIdentities?: { NodeName: string; Datacenter: string }[]
  Local: boolean
  Voter: boolean
  CreateTime: string
  CreateIndex: number
  ModifyIndex: number
}

/** A policy as the API shows it (Consul's ACLPolicy); the list leaves out `Rules`. */
export interface AclPolicyJson {
  ID: string
  Name: string
  Description: string
  Rules?: string
  Datacenters?: string[]
  CreateIndex: number
  ModifyIndex: number
}

/** `showSecret`: the caller may see SecretIDs (acl:write, or its own token); else `<hidden>`. */
export function tokenJson(t: AclToken, state: AclStateView, showSecret: boolean): AclTokenJson {
  const out: AclTokenJson = {
    AccessorID: t.accessorId,
    SecretID: showSecret ? t.secretId : REDACTED_SECRET,
    Description: t.description,
    Policies: t.policies.flatMap((id) => {
      const p = state.policy(id)
      return p === undefined ? [] : [{ ID: p.id, Name: p.name }]
    }),
    Local: t.local,
    Voter: t.voter,
    CreateTime: t.createTime,
    CreateIndex: t.createIndex,
    ModifyIndex: t.modifyIndex,
  }
  if (t.serviceIdentities.length > 0)
    out.ServiceIdentities = t.serviceIdentities.map((s) =>
      s.datacenters === undefined
        ? { ServiceName: s.serviceName }
        : { ServiceName: s.serviceName, Datacenters: s.datacenters },
    )
  if (t.nodeIdentities.length > 0)
    out.NodeIdentities = t.nodeIdentities.map((n) => ({ NodeName: n.nodeName, Datacenter: n.datacenter }))
  return out
}

export function policyJson(p: AclPolicy, withRules = true): AclPolicyJson {
  return {
    ID: p.id,
    Name: p.name,
    Description: p.description,
    ...(withRules ? { Rules: p.rules } : {}),
    ...(p.datacenters.length > 0 ? { Datacenters: p.datacenters } : {}),
    CreateIndex: p.createIndex,
    ModifyIndex: p.modifyIndex,
  }
}

/**
 * The ACL routes of the local HTTP API, Consul's paths and PascalCase shapes:
 * - `PUT /v1/acl/bootstrap` (no token needed) → the management token, with its SecretID; 403
 *   "ACL bootstrap no longer allowed ..." once done. Body optional: `{ "BootstrapSecret": UUID }`.
 * - tokens (`acl:read` to read, `acl:write` to change; SecretIDs shown only with `acl:write`):
 *   `PUT /v1/acl/token`, `GET|PUT|DELETE /v1/acl/token/:accessor`, `GET /v1/acl/token/self`
 *   (any valid token: itself, with its secret), `GET /v1/acl/tokens`;
 * - policies: `PUT /v1/acl/policy`, `GET|PUT|DELETE /v1/acl/policy/:id`,
 *   `GET /v1/acl/policy/name/:name`, `GET /v1/acl/policies` (without Rules).
 * Writes take `?timeout=MS` and answer 503 without a leader; refusals are 400, unknown IDs 404.
 * With ACLs off every route answers 401 "ACL support disabled", as Consul.
 */
export function registerAclRoutes(http: HttpApi, deps: AclRouteDeps): void {
  const { backend, resolver } = deps
  const newId = deps.newId ?? randomUUID
  const now = deps.now ?? (() => new Date())
  const state = backend.state
  const route = (method: string, path: string, handler: (req: ApiRequest) => unknown): void =>
    http.route(method, path, (req) => {
      if (!resolver.config.enabled) throw new ApiError(ACL_DISABLED, 401)
      return handler(req)
    })
  const createTime = (): string => now().toISOString()

  route('PUT', '/v1/acl/bootstrap', async (req) => {
    const body = objectBody(req.body ?? {}, ['BootstrapSecret'])
    const given = body['BootstrapSecret']
    if (given !== undefined && (typeof given !== 'string' || !UUID_PATTERN.test(given)))
      throw new ApiError('BootstrapSecret: must be a UUID', 400)
    const accessorId = newId()
    const secretId = (given as string | undefined) ?? newId()
    await write(backend, { op: 'acl.bootstrap', accessorId, secretId, createTime: createTime() }, req)
    return tokenJson(mustToken(state, accessorId), state, true)
  })

  // -- tokens: `self` before `:accessor`, which would match it too.
  route('GET', '/v1/acl/token/self', (req) => {
    const who = resolver.resolveRequest(req)
    if (who.token === undefined) throw new ApiError(ACL_DISABLED, 401)
    return tokenJson(who.token, state, true)
  })
  route('GET', '/v1/acl/tokens', (req) => {
    const who = resolver.resolveRequest(req)
    requirePermission(req, resolver, ...need.aclRead())
    const show = who.authorizer.aclWrite()
    return state.tokens().map((t) => tokenJson(t, state, show))
  })
  route('PUT', '/v1/acl/token', async (req) => {
    requirePermission(req, resolver, ...need.aclWrite())
    const fields = parseTokenBody(req.body)
    if (fields.accessorId !== undefined && state.token(fields.accessorId) !== undefined)
      throw new ApiError(`AccessorID: a token ${fields.accessorId} already exists`, 400)
    const accessorId = fields.accessorId ?? newId()
    const cmd = tokenCommand('create', accessorId, fields.secretId ?? newId(), fields, createTime())
    await write(backend, cmd, req)
    return tokenJson(mustToken(state, accessorId), state, true)
  })
  route('GET', '/v1/acl/token/:accessor', (req) => {
    const who = resolver.resolveRequest(req)
    requirePermission(req, resolver, ...need.aclRead())
    const t = state.token(req.params['accessor']!)
    if (t === undefined) throw new ApiError(`ACL token ${req.params['accessor']} not found`, 404)
    return tokenJson(t, state, who.authorizer.aclWrite())
  })
  route('PUT', '/v1/acl/token/:accessor', async (req) => {
    requirePermission(req, resolver, ...need.aclWrite())
    const accessorId = req.params['accessor']!
    const fields = parseTokenBody(req.body)
    if (fields.accessorId !== undefined && fields.accessorId !== accessorId)
      throw new ApiError('AccessorID: does not match the token in the path', 400)
    const cur = state.token(accessorId)
    if (cur === undefined) throw new ApiError(`ACL token ${accessorId} not found`, 404)
    // A Consul client sends the whole token back: its own SecretID (or `<hidden>`) means "keep",
    // and `Local` left out keeps the token's.
    const secret =
      fields.secretId === cur.secretId || fields.secretId === REDACTED_SECRET ? undefined : fields.secretId
    const cmd = tokenCommand(
      'update',
      accessorId,
      secret,
      { ...fields, local: fields.local ?? cur.local },
      cur.createTime,
    )
    await write(backend, cmd, req)
    return tokenJson(mustToken(state, accessorId), state, true)
  })
  route('DELETE', '/v1/acl/token/:accessor', async (req) => {
    const accessorId = requirePermission(req, resolver, ...need.aclWrite())
    const target = req.params['accessor']!
    if (target === accessorId)
      throw new ApiError("Deletion of the request's authorization token is not permitted", 400)
    if (!UUID_PATTERN.test(target)) throw new ApiError(`ACL token ${target} not found`, 404)
    await write(backend, { op: 'acl.token.delete', accessorId: target }, req)
    return true
  })

  // -- policies: `name/:name` is two segments, so it never meets `:id`.
  route('GET', '/v1/acl/policies', (req) => {
    requirePermission(req, resolver, ...need.aclRead())
    return state.policies().map((p) => policyJson(p, false))
  })
  route('PUT', '/v1/acl/policy', async (req) => {
    requirePermission(req, resolver, ...need.aclWrite())
    const fields = parsePolicyBody(req.body)
    if (fields.id !== undefined) throw new ApiError('ID: must be empty to create a policy', 400)
    const id = newId()
    await write(backend, policyCommand('create', id, fields), req)
    return policyJson(mustPolicy(state, id))
  })
  route('GET', '/v1/acl/policy/name/:name', (req) => {
    requirePermission(req, resolver, ...need.aclRead())
    const p = state.policyByName(req.params['name']!)
    if (p === undefined) throw new ApiError(`ACL policy named "${req.params['name']}" not found`, 404)
    return policyJson(p)
  })
  route('GET', '/v1/acl/policy/:id', (req) => {
    requirePermission(req, resolver, ...need.aclRead())
    const p = state.policy(req.params['id']!)
    if (p === undefined) throw new ApiError(`ACL policy ${req.params['id']} not found`, 404)
    return policyJson(p)
  })
  route('PUT', '/v1/acl/policy/:id', async (req) => {
    requirePermission(req, resolver, ...need.aclWrite())
    const id = req.params['id']!
    const fields = parsePolicyBody(req.body)
    if (fields.id !== undefined && fields.id !== id)
      throw new ApiError('ID: does not match the policy in the path', 400)
    if (state.policy(id) === undefined) throw new ApiError(`ACL policy ${id} not found`, 404)
    await write(backend, policyCommand('update', id, fields), req)
    return policyJson(mustPolicy(state, id))
  })
  route('DELETE', '/v1/acl/policy/:id', async (req) => {
    requirePermission(req, resolver, ...need.aclWrite())
    const id = req.params['id']!
    if (!UUID_PATTERN.test(id)) throw new ApiError(`ACL policy ${id} not found`, 404)
    await write(backend, { op: 'acl.policy.delete', id }, req)
    return true
  })
}

/**
 * The `acl.bootstrap` command that applies an `initial_management` secret (every founder may
 * propose it; the first applied wins, the others are refused as "bootstrap no longer allowed").
 */
export function initialManagementCommand(
  secretId: string,
  options: { newId?: () => string; now?: () => Date } = {},
): AclCommand {
  return {
    op: 'acl.bootstrap',
    accessorId: (options.newId ?? randomUUID)(),
    secretId,
    description: 'Initial Management Token',
    createTime: (options.now?.() ?? new Date()).toISOString(),
  }
}

/**
 * Resolves once `store` has applied Raft index `index` here (its change index reached it), or
 * rejects when `signal` aborts. For the lead's `AclBackend.write`: after a successful
 * `raft.write`, `await untilApplied(store, index, signal)` so the route reads what it wrote.
 */
export function untilApplied(
  store: { readonly index: number; onChange(listener: (index: number) => void): () => void },
  index: number,
  signal: AbortSignal,
): Promise<void> {
  if (store.index >= index) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const done = (err?: unknown): void => {
      off()
      signal.removeEventListener('abort', onAbort)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onAbort = (): void => done(signal.reason ?? new Error('aborted'))
    const off = store.onChange((i) => {
      if (i >= index) done()
    })
    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, { once: true })
  })
}

// ---- bodies -----------------------------------------------------------------------------------

/** Fields of a token body, camelCase, not yet checked beyond their JSON types. */
interface TokenFields {
  accessorId?: string
  secretId?: string
  description?: string
  policies?: { id?: string; name?: string }[]
  serviceIdentities?: { serviceName: string; datacenters?: string[] }[]
  nodeIdentities?: { nodeName: string; datacenter: string }[]
  local?: boolean
  voter?: boolean
}

/** Fields Consul clients send back from a read; accepted and ignored. */
const readOnly = () => z.unknown().optional()
const noneOf = (what: string) =>
  z.array(z.unknown()).max(0, `${what} are not supported by peermesh`).nullable().optional()

// The body schemas are built at the first token or policy write, and kept: zod schemas are large
// objects (a few KiB each), and most agents never take such a write.

function buildTokenBodySchema() {
  return z
    .object({
      AccessorID: z.string().optional(),
      SecretID: z.string().optional(),
      Description: z.string().optional(),
      Policies: z
        .array(z.object({ ID: z.string().optional(), Name: z.string().optional() }).strict())
        .nullable()
        .optional(),
      ServiceIdentities: z
        .array(
          z
            .object({ ServiceName: z.string(), Datacenters: z.array(z.string()).nullable().optional() })
            .strict(),
        )
        .nullable()
        .optional(),
      NodeIdentities: z
        // Consul requires Datacenter; peermesh has one datacenter, so a bare node name gets dc1.
        .array(z.object({ NodeName: z.string(), Datacenter: z.string().optional() }).strict())
        .nullable()
        .optional(),
      Local: z.boolean().optional(),
      Voter: z.boolean().optional(),
      Roles: noneOf('roles'),
      TemplatedPolicies: noneOf('templated policies'),
      ExpirationTTL: z
        .union([z.literal(0), z.literal(''), z.literal('0s')], 'token expiry is not supported by peermesh')
        .optional(),
      ExpirationTime: z.null('token expiry is not supported by peermesh').optional(),
      AuthMethod: z.literal('', 'auth methods are not supported by peermesh').optional(),
      CreateTime: readOnly(),
      Hash: readOnly(),
      CreateIndex: readOnly(),
      ModifyIndex: readOnly(),
      Namespace: readOnly(),
      Partition: readOnly(),
      Legacy: readOnly(),
    })
    .strict()
}

let tokenBodySchema: ReturnType<typeof buildTokenBodySchema> | undefined

function parseTokenBody(body: unknown): TokenFields {
  tokenBodySchema ??= buildTokenBodySchema()
  const b = parseBody(tokenBodySchema, body ?? {})
  const out: TokenFields = {}
  if (b.AccessorID !== undefined && b.AccessorID !== '') out.accessorId = b.AccessorID
  if (b.SecretID !== undefined && b.SecretID !== '') out.secretId = b.SecretID
  if (b.Description !== undefined) out.description = b.Description
  if (b.Policies != null)
    out.policies = b.Policies.map((p) => ({
      ...(p.ID ? { id: p.ID } : {}),
      ...(p.Name ? { name: p.Name } : {}),
    }))
  if (b.ServiceIdentities != null)
    out.serviceIdentities = b.ServiceIdentities.map((s) => ({
      serviceName: s.ServiceName,
      ...(s.Datacenters != null && s.Datacenters.length > 0 ? { datacenters: s.Datacenters } : {}),
    }))
  if (b.NodeIdentities != null)
    out.nodeIdentities = b.NodeIdentities.map((n) => ({
      nodeName: n.NodeName,
      datacenter: n.Datacenter || 'dc1',
    }))
  if (b.Local !== undefined) out.local = b.Local
  if (b.Voter !== undefined) out.voter = b.Voter
  return out
}

/** The command for a token body, checked against the command schema (400 naming the field). */
function tokenCommand(
  mode: 'create' | 'update',
  accessorId: string,
  secretId: string | undefined,
  f: TokenFields,
  createTime: string,
): AclCommand {
  return checkCommand(aclTokenUpsertCommand, {
    op: 'acl.token.upsert',
    mode,
    accessorId,
    ...(secretId !== undefined ? { secretId } : {}),
    description: f.description ?? '',
    policies: f.policies ?? [],
    serviceIdentities: f.serviceIdentities ?? [],
    nodeIdentities: f.nodeIdentities ?? [],
    local: f.local ?? false,
    voter: f.voter ?? false,
    createTime,
  })
}

interface PolicyFields {
  id?: string
  name: string
  description?: string
  rules?: string
  datacenters?: string[]
}

function buildPolicyBodySchema() {
  return z
    .object({
      ID: z.string().optional(),
      Name: z.string(),
      Description: z.string().optional(),
      Rules: z.string().optional(),
      Datacenters: z.array(z.string()).nullable().optional(),
      Hash: readOnly(),
      CreateIndex: readOnly(),
      ModifyIndex: readOnly(),
      Namespace: readOnly(),
      Partition: readOnly(),
    })
    .strict()
}

let policyBodySchema: ReturnType<typeof buildPolicyBodySchema> | undefined

function parsePolicyBody(body: unknown): PolicyFields {
  policyBodySchema ??= buildPolicyBodySchema()
  const b = parseBody(policyBodySchema, body)
  const out: PolicyFields = { name: b.Name }
  if (b.ID !== undefined && b.ID !== '') out.id = b.ID
  if (b.Description !== undefined) out.description = b.Description
  if (b.Rules !== undefined) {
    try {
      parseRules(b.Rules)
    } catch (err) {
      if (err instanceof AclRulesError) throw new ApiError(`Rules: ${err.message}`, 400)
      throw err
    }
    out.rules = b.Rules
  }
  if (b.Datacenters != null) out.datacenters = b.Datacenters
  return out
}

function policyCommand(mode: 'create' | 'update', id: string, f: PolicyFields): AclCommand {
  return checkCommand(aclPolicyUpsertCommand, {
    op: 'acl.policy.upsert',
    mode,
    id,
    name: f.name,
    description: f.description ?? '',
    rules: f.rules ?? '',
    datacenters: f.datacenters ?? [],
  })
}

function objectBody(body: unknown, allowed: string[]): Record<string, unknown> {
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw new ApiError('body: expected a JSON object', 400)
  for (const k of Object.keys(body)) if (!allowed.includes(k)) throw new ApiError(`${k}: unknown field`, 400)
  return body as Record<string, unknown>
}

function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw new ApiError('body: expected a JSON object', 400)
  const r = schema.safeParse(body)
  if (r.success) return r.data
  throw new ApiError(
    issueText(r.error, (p) => p),
    400,
  )
}

/** The command as parsed by its schema (defaults filled in); 400 naming the field when invalid. */
function checkCommand<T>(schema: z.ZodType<T>, cmd: unknown): T {
  const r = schema.safeParse(cmd)
  if (!r.success) throw new ApiError(issueText(r.error, pascalPath), 400)
  return r.data
}

/** "Field: problem" from the first issue, the field in the API's own spelling. */
function issueText(err: z.ZodError, spell: (path: PropertyKey[]) => PropertyKey[]): string {
  const issue = err.issues[0]!
  if (issue.code === 'unrecognized_keys') return `${(issue as { keys: string[] }).keys[0]}: unknown field`
  const path = spell(issue.path)
    .map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`))
    .join('')
  const message =
    issue.code === 'invalid_type' ? `expected ${(issue as { expected: string }).expected}` : issue.message
  return `${path || 'body'}: ${message}`
}

/** `serviceIdentities.0.serviceName` → `ServiceIdentities[0].ServiceName`. */
function pascalPath(path: PropertyKey[]): PropertyKey[] {
  return path.map((p) =>
    typeof p === 'string' ? (p.charAt(0).toUpperCase() + p.slice(1)).replace(/Id$/, 'ID') : p,
  )
}

// ---- writes -----------------------------------------------------------------------------------

function deadline(req: ApiRequest): AbortSignal {
  return requestDeadline(req, { defaultMs: API_RAFT_TIMEOUT_MS, maxMs: API_MAX_TIMEOUT_MS, maxDigits: 6 })
}

/** Errors that mean "try again later": no leader now, or this agent is stopping. */
const UNAVAILABLE = new Set([NoLeaderError.code, WriteTimeoutError.code, RaftNotRunningError.code])

async function write(backend: AclBackend, cmd: AclCommand, req: ApiRequest): Promise<number> {
  let res: AclResult
  try {
    const token = req.auth.secret()
    res = await backend.write(cmd, { signal: deadline(req), ...(token !== undefined ? { token } : {}) })
  } catch (err) {
    if (err instanceof ApiError) throw err
    const code = errorCode(err)
    if (code !== undefined && UNAVAILABLE.has(code))
      throw new ApiError((err as Error).message, 503, { cause: err })
    throw err
  }
  if (res.ok) return res.index
  switch (res.code) {
    case AclErrorCodes.notFound:
      throw new ApiError(res.message, 404)
    case AclErrorCodes.bootstrapDone:
      throw new ApiError(res.message, 403)
    case AclErrorCodes.tooLarge:
      throw new ApiError(res.message, 413)
    default:
      throw new ApiError(res.message, 400)
  }
}

function mustToken(state: AclStateView, accessorId: string): AclToken {
  const t = state.token(accessorId)
  if (t === undefined) throw new ApiError(`token ${accessorId} was written but is not visible here yet`, 503)
  return t
}

function mustPolicy(state: AclStateView, id: string): AclPolicy {
  const p = state.policy(id)
  if (p === undefined) throw new ApiError(`policy ${id} was written but is not visible here yet`, 503)
  return p
}
