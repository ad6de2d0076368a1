import { createHash } from 'node:crypto'
import { z } from 'zod'
import { pack } from '../../common/msgpack.ts'
import {
  ANONYMOUS_TOKEN_ID,
  ANONYMOUS_TOKEN_SECRET,
  FOUNDER_ACCESSOR_ID,
  GLOBAL_MANAGEMENT_POLICY_ID,
  GLOBAL_MANAGEMENT_POLICY_NAME,
  MAX_RULES_CHARS,
  NODE_IDENTITY_PATTERN,
  PEER_ID_PATTERN,
  POLICY_NAME_PATTERN,
  SERVICE_IDENTITY_PATTERN,
  SERVICE_NAME_PATTERN,
  UUID_PATTERN,
} from '../../acl/constants.ts'
import type {
  AclNodeIdentity,
  AclPolicy,
  AclServiceIdentity,
  AclToken,
  NodeEnrollment,
  ServiceGrant,
} from '../../acl/types.ts'

/**
 * The ACL part of the replicated policy state: tokens, policies, whether the cluster has been
 * bootstrapped, and (issue #12 enrollment) which peer id is enrolled as which node, which services
 * each may publish (grants), and which peer ids were revoked. A sub-state-machine the policy store owns and dispatches `acl.*` commands to; like
 * the store, `apply` is deterministic and never throws: the same entry gives the same result and
 * state on every agent. Everything random or timed (AccessorID, SecretID, policy ID, CreateTime)
 * is chosen by the proposer (the API handler) and travels in the command.
 *
 * Secrets are stored in clear, as Consul stores them: `GET /v1/acl/token/:id` shows a token's
 * SecretID to a caller with `acl:write`, and the Raft log is already sealed to the cluster
 * (private network, signed entries). Lookups by secret go through a map keyed by the secret's
 * SHA-256, so finding a token takes no comparison whose time depends on how much of a guess
 * matched.
 *
 * Policies linked by name are resolved to IDs here, at apply time, against this state; a token
 * keeps IDs only, and a link to a policy deleted later is ignored (Consul's behaviour).
 *
 * Enrollments and grants name the token that made them; deleting the token removes them (an
 * enrollment removed so, by an operator's unenroll or by a re-keyed node, leaves its peer id
 * revoked until it enrolls again). Everything counts in ACL_STATE_MAX_BYTES.
 */

/** Codes of refused ACL commands. The first two are the policy store's own strings. */
export const AclErrorCodes = {
  invalidCommand: 'PEERMESH_ERR_INVALID_COMMAND',
  notFound: 'PEERMESH_ERR_NOT_FOUND',
  /** `acl.bootstrap` after the cluster was bootstrapped. */
  bootstrapDone: 'PEERMESH_ERR_ACL_BOOTSTRAP_DONE',
  /** An ID, name or secret already in use; or a create of something that exists. */
  conflict: 'PEERMESH_ERR_ACL_CONFLICT',
  /** A token links a policy that does not exist. */
  unknownPolicy: 'PEERMESH_ERR_ACL_UNKNOWN_POLICY',
  /** A change the builtins refuse (deleting the anonymous token, renaming global-management, ...). */
  notPermitted: 'PEERMESH_ERR_ACL_NOT_PERMITTED',
  /** The ACL state would grow past `ACL_STATE_MAX_BYTES` (the same code as the policy store's caps). */
  tooLarge: 'PEERMESH_ERR_TOO_LARGE',
} as const

/**
 * Most bytes the tokens, policies, enrollments, grants and revoked ids may take, encoded: with the policy store's 8 MiB and the CA
 * state's 1 MiB, the whole state's snapshot stays under one 16 MiB Raft message. A write that
 * would grow past it is refused; one that shrinks or keeps the size, and every delete, is not.
 */
export const ACL_STATE_MAX_BYTES = 4 * 1024 * 1024

export type AclErrorCode = (typeof AclErrorCodes)[keyof typeof AclErrorCodes]

export type AclResult = { ok: true; index: number } | { ok: false; code: AclErrorCode; message: string }

// ---- commands ---------------------------------------------------------------------------------

const uuid = z.string().regex(UUID_PATTERN, 'must be a UUID')
const description = z.string().max(4096)
const policyName = z.string().regex(POLICY_NAME_PATTERN, 'must be 1-128 letters, digits, "-" or "_"')
const datacenter = z.string().min(1).max(256)
const createTime = z.string().min(1).max(64)

/** A link to a policy, by ID or by name (resolved to the ID at apply time). */
const policyLink = z
  .object({ id: uuid.optional(), name: policyName.optional() })
  .strict()
  .refine((l) => l.id !== undefined || l.name !== undefined, 'a policy link needs an ID or a name')

const serviceIdentity = z
  .object({
    serviceName: z
      .string()
      .regex(SERVICE_IDENTITY_PATTERN, 'must be lowercase letters, digits and "-", at most 256'),
    datacenters: z.array(datacenter).max(16).optional(),
  })
  .strict()

const nodeIdentity = z
  .object({
    nodeName: z.string().regex(NODE_IDENTITY_PATTERN, 'must be 1-63 letters, digits, ".", "_" or "-"'),
    datacenter,
  })
  .strict()

export const aclBootstrapCommand = z
  .object({
    op: z.literal('acl.bootstrap'),
    accessorId: uuid,
    secretId: uuid,
    description: description.optional(),
    createTime,
  })
  .strict()

export const aclTokenUpsertCommand = z
  .object({
    op: z.literal('acl.token.upsert'),
    /** `create`: the AccessorID and SecretID must be new. `update`: the token must exist. */
    mode: z.enum(['create', 'update']),
    accessorId: uuid,
    /** Required to create; to update, absent or the token's own (a SecretID never changes). */
    secretId: uuid.optional(),
    description: description.default(''),
    policies: z.array(policyLink).max(64).default([]),
    serviceIdentities: z.array(serviceIdentity).max(64).default([]),
    nodeIdentities: z.array(nodeIdentity).max(64).default([]),
    local: z.boolean().default(false),
    voter: z.boolean().default(false),
    /** Used on create; an update keeps the token's. */
    createTime,
  })
  .strict()

export const aclTokenDeleteCommand = z
  .object({ op: z.literal('acl.token.delete'), accessorId: uuid })
  .strict()

export const aclPolicyUpsertCommand = z
  .object({
    op: z.literal('acl.policy.upsert'),
    mode: z.enum(['create', 'update']),
    id: uuid,
    name: policyName,
    description: description.default(''),
    /** Checked by the proposer with `parseRules`; stored as given (see authorizerForToken). */
    rules: z.string().max(MAX_RULES_CHARS).default(''),
    datacenters: z.array(datacenter).max(16).default([]),
  })
  .strict()

export const aclPolicyDeleteCommand = z.object({ op: z.literal('acl.policy.delete'), id: uuid }).strict()

const peerId = z.string().regex(PEER_ID_PATTERN, 'must be a peer id')
const nodeName = z.string().regex(NODE_IDENTITY_PATTERN, 'must be 1-63 letters, digits, ".", "_" or "-"')

/**
 * Binds a peer id to a node name (issue #12 enrollment). Proposed only by the leader, after it
 * checked the requester's token (node/raft/enrollment.ts), never taken from a forward. An upsert:
 * another peer id holding the node name is replaced (the node was re-keyed) and counts as revoked.
 * `accessorId` names the token that enrolled it, or is FOUNDER_ACCESSOR_ID.
 */
export const aclNodeEnrollCommand = z
  .object({ op: z.literal('acl.node.enroll'), peerId, node: nodeName, voter: z.boolean(), accessorId: uuid })
  .strict()

/** An operator's revoke of a node's enrollment (by node name): its peer id becomes revoked. */
export const aclNodeUnenrollCommand = z
  .object({ op: z.literal('acl.node.unenroll'), node: nodeName })
  .strict()

/**
 * The enrolled peer `peerId` may publish `service`: the leader checked that the token named by
 * `accessorId` grants `service:write` on it. Proposed only by the leader, like `acl.node.enroll`.
 */
export const aclServiceGrantCommand = z
  .object({
    op: z.literal('acl.service.grant'),
    peerId,
    service: z.string().regex(SERVICE_NAME_PATTERN, 'must be 1-256 letters, digits, "_", "." or "-"'),
    accessorId: uuid,
  })
  .strict()

/** The ACL commands, to add to `policyCommandSchema`'s discriminated union. */
export const aclCommandSchemas = [
  aclBootstrapCommand,
  aclTokenUpsertCommand,
  aclTokenDeleteCommand,
  aclPolicyUpsertCommand,
  aclPolicyDeleteCommand,
  aclNodeEnrollCommand,
  aclNodeUnenrollCommand,
  aclServiceGrantCommand,
] as const

export const aclCommandSchema = z.discriminatedUnion('op', aclCommandSchemas)

/** A parsed ACL command (defaults filled in). */
export type AclCommand = z.infer<typeof aclCommandSchema>
/** An ACL command as a proposer writes it (fields with defaults may be left out). */
export type AclCommandInput = z.input<typeof aclCommandSchema>

export const ACL_COMMAND_OPS: ReadonlySet<string> = new Set(aclCommandSchemas.map((s) => s.shape.op.value))

// ---- builtins ---------------------------------------------------------------------------------

/** Consul's rules text of global-management (informative: the policy is enforced as "everything"). */
const GLOBAL_MANAGEMENT_RULES = `acl = "write"
operator = "write"
mesh = "write"
agent_prefix "" { policy = "write" }
key_prefix "" { policy = "write" }
node_prefix "" { policy = "write" }
service_prefix "" { policy = "write" intentions = "write" }
`

function builtinPolicy(): AclPolicy {
  return {
    id: GLOBAL_MANAGEMENT_POLICY_ID,
    name: GLOBAL_MANAGEMENT_POLICY_NAME,
    description: 'Builtin Policy that grants unlimited access',
    rules: GLOBAL_MANAGEMENT_RULES,
    datacenters: [],
    createIndex: 0,
    modifyIndex: 0,
  }
}

function anonymousToken(): AclToken {
  return {
    accessorId: ANONYMOUS_TOKEN_ID,
    secretId: ANONYMOUS_TOKEN_SECRET,
    description: 'Anonymous Token',
    policies: [],
    serviceIdentities: [],
    nodeIdentities: [],
    local: false,
    voter: false,
    createTime: '1970-01-01T00:00:00Z',
    createIndex: 0,
    modifyIndex: 0,
  }
}

/** SHA-256 of a secret, the key of the secret index. */
export function secretKey(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex')
}

// ---- snapshot ---------------------------------------------------------------------------------

const storedToken = z.object({
  accessorId: z.string(),
  secretId: z.string(),
  description: z.string(),
  policies: z.array(z.string()),
  serviceIdentities: z.array(
    z.object({ serviceName: z.string(), datacenters: z.array(z.string()).optional() }),
  ),
  nodeIdentities: z.array(z.object({ nodeName: z.string(), datacenter: z.string() })),
  local: z.boolean(),
  voter: z.boolean(),
  createTime: z.string(),
  createIndex: z.number().int().nonnegative(),
  modifyIndex: z.number().int().nonnegative(),
})

const storedPolicy = z.object({
  id: z.string(),
  name: z.string(),
  description: z.string(),
  rules: z.string(),
  datacenters: z.array(z.string()),
  createIndex: z.number().int().nonnegative(),
  modifyIndex: z.number().int().nonnegative(),
})

const storedEnrollment = z.object({
  peerId: z.string(),
  node: z.string(),
  voter: z.boolean(),
  accessorId: z.string(),
  createIndex: z.number().int().nonnegative(),
})

const storedGrant = z.object({
  peerId: z.string(),
  service: z.string(),
  accessorId: z.string(),
  createIndex: z.number().int().nonnegative(),
})

/** Version 1: tokens and policies (before enrollment). */
const aclSnapshotV1 = z.object({
  version: z.literal(1),
  index: z.number().int().nonnegative(),
  bootstrapIndex: z.number().int().nonnegative(),
  tokens: z.array(storedToken),
  policies: z.array(storedPolicy),
})

/** Version 2: also the enrollments, the service grants and the revoked peer ids. */
const aclSnapshotV2 = aclSnapshotV1.extend({
  version: z.literal(2),
  enrollments: z.array(storedEnrollment),
  grants: z.array(storedGrant),
  revoked: z.array(z.string()),
})

const aclSnapshotSchema = z.discriminatedUnion('version', [aclSnapshotV1, aclSnapshotV2])

/** The ACL state as plain data (the policy store packs it into its own snapshot). */
export type AclSnapshot = z.infer<typeof aclSnapshotV2>

// ---- the state machine ------------------------------------------------------------------------

/** What readers (the token resolver, the API) use of the ACL state. */
export interface AclStateView {
  /** Raft index of the last ACL change (0: none yet). */
  readonly index: number
  /** Raft index of `acl.bootstrap`, 0 while the cluster has not been bootstrapped. */
  readonly bootstrapIndex: number
  tokenBySecret(secret: string): AclToken | undefined
  token(accessorId: string): AclToken | undefined
  tokens(): AclToken[]
  policy(id: string): AclPolicy | undefined
  policyByName(name: string): AclPolicy | undefined
  policies(): AclPolicy[]
  /** The enrollment of the agent with this peer id, if any. */
  enrollment(peerId: string): NodeEnrollment | undefined
  /** Every enrollment, by peer id. */
  enrollments(): NodeEnrollment[]
  /**
   * Whether this peer id was enrolled and then revoked (its token deleted, or unenrolled by an
   * operator), and not enrolled again since: autopilot removes such a member from Raft.
   */
  revoked(peerId: string): boolean
  /** The service grants of the agent with this peer id. */
  serviceGrants(peerId: string): ServiceGrant[]
}

export class AclState implements AclStateView {
  private tokensById = new Map<string, AclToken>()
  /** Encoded bytes of the tokens and policies, and each record's share (keys `t:`/`p:` + id). */
  private bytes = 0
  private readonly sizes = new Map<string, number>()
  private secretIndex = new Map<string, string>()
  private policiesById = new Map<string, AclPolicy>()
  private policyNames = new Map<string, string>()
  private enrollmentsByPeer = new Map<string, NodeEnrollment>()
  /** Node name -> the peer id enrolled under it (one peer per name). */
  private peerByNode = new Map<string, string>()
  /** Peer id -> service -> grant. */
  private grantsByPeer = new Map<string, Map<string, ServiceGrant>>()
  private revokedPeers = new Set<string>()
  index = 0
  bootstrapIndex = 0

  constructor() {
    this.reset()
  }

  private reset(): void {
    this.bytes = 0
    this.sizes.clear()
    this.tokensById = new Map()
    this.secretIndex = new Map()
    this.policiesById = new Map()
    this.policyNames = new Map()
    this.clearEnrollments()
    this.index = 0
    this.bootstrapIndex = 0
    this.putPolicy(builtinPolicy())
    this.putToken(anonymousToken())
  }

  /**
   * Applies a command at Raft index `index`. Takes an already-parsed command (the policy store
   * parses with `policyCommandSchema`) or raw data, which it parses itself.
   */
  apply(raw: unknown, index: number): AclResult {
    const parsed = aclCommandSchema.safeParse(raw)
    if (!parsed.success) {
      const issue = parsed.error.issues[0]
      const at = issue?.path.map(String).join('.')
      return fail(
        AclErrorCodes.invalidCommand,
        `${at ? `${at}: ` : ''}${issue?.message ?? 'invalid ACL command'}`,
      )
    }
    try {
      return this.execute(parsed.data, index)
    } catch (err) {
      // Defensive: nothing above throws, but apply must never break the apply loop.
      return fail(AclErrorCodes.invalidCommand, `ACL command failed: ${(err as Error).message}`)
    }
  }

  private execute(cmd: AclCommand, at: number): AclResult {
    switch (cmd.op) {
      case 'acl.bootstrap': {
        if (this.bootstrapIndex !== 0)
          return fail(
            AclErrorCodes.bootstrapDone,
            `ACL bootstrap no longer allowed (bootstrapped at index ${this.bootstrapIndex})`,
          )
        const clash = this.idOrSecretClash(cmd.accessorId, cmd.secretId)
        if (clash !== undefined) return clash
        this.putToken({
          accessorId: cmd.accessorId,
          secretId: cmd.secretId,
          description: cmd.description ?? 'Bootstrap Token (Global Management)',
          policies: [GLOBAL_MANAGEMENT_POLICY_ID],
          serviceIdentities: [],
          nodeIdentities: [],
          local: false,
          // The founders hold this token; they are the first voters.
          voter: true,
          createTime: cmd.createTime,
          createIndex: at,
          modifyIndex: at,
        })
        this.bootstrapIndex = at
        return this.changed(at)
      }
      case 'acl.token.upsert': {
        const cur = this.tokensById.get(cmd.accessorId)
        let secretId: string
        let createTime = cmd.createTime
        let createIndex = at
        if (cmd.mode === 'create') {
          if (cmd.secretId === undefined)
            return fail(AclErrorCodes.invalidCommand, 'secretId: required to create a token')
          const clash = this.idOrSecretClash(cmd.accessorId, cmd.secretId)
          if (clash !== undefined) return clash
          secretId = cmd.secretId
        } else {
          if (cur === undefined) return fail(AclErrorCodes.notFound, `ACL token ${cmd.accessorId} not found`)
          if (cmd.secretId !== undefined && cmd.secretId !== cur.secretId)
            return fail(AclErrorCodes.notPermitted, "Changing a token's SecretID is not permitted")
          if (cmd.local !== cur.local)
            return fail(AclErrorCodes.notPermitted, `Cannot toggle local mode of ${cmd.accessorId}`)
          secretId = cur.secretId
          createTime = cur.createTime
          createIndex = cur.createIndex
        }
        const links = this.resolveLinks(cmd.policies)
        if (!Array.isArray(links)) return links
        const token: AclToken = {
          accessorId: cmd.accessorId,
          secretId,
          description: cmd.description,
          policies: links,
          serviceIdentities: dedupeBy(cmd.serviceIdentities, (s) => s.serviceName).map(copyServiceIdentity),
          nodeIdentities: dedupeBy(cmd.nodeIdentities, (n) => `${n.nodeName}\u0000${n.datacenter}`).map(
            (n): AclNodeIdentity => ({ nodeName: n.nodeName, datacenter: n.datacenter }),
          ),
          local: cmd.local,
          voter: cmd.voter,
          createTime,
          createIndex,
          modifyIndex: at,
        }
        const over = this.overCap(`t:${token.accessorId}`, recordBytes(token))
        if (over !== undefined) return over
        this.putToken(token)
        return this.changed(at)
      }
      case 'acl.token.delete': {
        if (cmd.accessorId === ANONYMOUS_TOKEN_ID)
          return fail(AclErrorCodes.notPermitted, 'Delete operation not permitted on the anonymous token')
        const cur = this.tokensById.get(cmd.accessorId)
        if (cur === undefined) return fail(AclErrorCodes.notFound, `ACL token ${cmd.accessorId} not found`)
        this.tokensById.delete(cur.accessorId)
        this.secretIndex.delete(secretKey(cur.secretId))
        this.resize(`t:${cur.accessorId}`, 0)
        // What the token enrolled or granted goes with it (sorted: the same order everywhere).
        for (const e of this.enrollments()) if (e.accessorId === cur.accessorId) this.dropEnrollment(e.peerId)
        for (const g of this.allServiceGrants())
          if (g.accessorId === cur.accessorId) this.dropGrant(g.peerId, g.service)
        return this.changed(at)
      }
      case 'acl.policy.upsert': {
        const cur = this.policiesById.get(cmd.id)
        const holder = this.policyNames.get(cmd.name)
        if (cmd.mode === 'create') {
          if (cur !== undefined)
            return fail(AclErrorCodes.conflict, `a policy with ID ${cmd.id} already exists`)
        } else {
          if (cur === undefined) return fail(AclErrorCodes.notFound, `ACL policy ${cmd.id} not found`)
          if (cmd.id === GLOBAL_MANAGEMENT_POLICY_ID && (cmd.name !== cur.name || cmd.rules !== cur.rules))
            return fail(
              AclErrorCodes.notPermitted,
              `Changing the Name or Rules of the builtin ${GLOBAL_MANAGEMENT_POLICY_NAME} policy is not permitted`,
            )
        }
        if (holder !== undefined && holder !== cmd.id)
          return fail(
            AclErrorCodes.conflict,
            `Invalid Policy: A Policy with Name "${cmd.name}" already exists`,
          )
        const policy: AclPolicy = {
          id: cmd.id,
          name: cmd.name,
          description: cmd.description,
          rules: cmd.rules,
          datacenters: [...cmd.datacenters],
          createIndex: cur?.createIndex ?? at,
          modifyIndex: at,
        }
        const over = this.overCap(`p:${policy.id}`, recordBytes(policy))
        if (over !== undefined) return over
        if (cur !== undefined) this.policyNames.delete(cur.name)
        this.putPolicy(policy)
        return this.changed(at)
      }
      case 'acl.policy.delete': {
        if (cmd.id === GLOBAL_MANAGEMENT_POLICY_ID)
          return fail(
            AclErrorCodes.notPermitted,
            `Deletion of the builtin ${GLOBAL_MANAGEMENT_POLICY_NAME} policy is not permitted`,
          )
        const cur = this.policiesById.get(cmd.id)
        if (cur === undefined) return fail(AclErrorCodes.notFound, `ACL policy ${cmd.id} not found`)
        this.policiesById.delete(cur.id)
        this.policyNames.delete(cur.name)
        this.resize(`p:${cur.id}`, 0)
        return this.changed(at)
      }
      case 'acl.node.enroll': {
        if (cmd.accessorId !== FOUNDER_ACCESSOR_ID && !this.tokensById.has(cmd.accessorId))
          return fail(AclErrorCodes.notFound, `ACL token ${cmd.accessorId} not found`)
        const cur = this.enrollmentsByPeer.get(cmd.peerId)
        const enrollment: NodeEnrollment = {
          peerId: cmd.peerId,
          node: cmd.node,
          voter: cmd.voter,
          accessorId: cmd.accessorId,
          createIndex: cur !== undefined && cur.node === cmd.node ? cur.createIndex : at,
        }
        const over = this.overCap(`e:${cmd.peerId}`, recordBytes(enrollment))
        if (over !== undefined) return over
        // The node re-keyed: the old peer id loses the name (and is revoked).
        const holder = this.peerByNode.get(cmd.node)
        if (holder !== undefined && holder !== cmd.peerId) this.dropEnrollment(holder)
        if (cur !== undefined && cur.node !== cmd.node) this.peerByNode.delete(cur.node)
        this.enrollmentsByPeer.set(cmd.peerId, enrollment)
        this.peerByNode.set(cmd.node, cmd.peerId)
        this.resize(`e:${cmd.peerId}`, recordBytes(enrollment))
        this.revokedPeers.delete(cmd.peerId)
        this.resize(`r:${cmd.peerId}`, 0)
        return this.changed(at)
      }
      case 'acl.node.unenroll': {
        const peer = this.peerByNode.get(cmd.node)
        if (peer === undefined) return fail(AclErrorCodes.notFound, `node ${cmd.node} is not enrolled`)
        this.dropEnrollment(peer)
        return this.changed(at)
      }
      case 'acl.service.grant': {
        if (!this.enrollmentsByPeer.has(cmd.peerId))
          return fail(AclErrorCodes.notPermitted, `peer ${cmd.peerId} is not enrolled`)
        if (!this.tokensById.has(cmd.accessorId))
          return fail(AclErrorCodes.notFound, `ACL token ${cmd.accessorId} not found`)
        const cur = this.grantsByPeer.get(cmd.peerId)?.get(cmd.service)
        const grant: ServiceGrant = {
          peerId: cmd.peerId,
          service: cmd.service,
          accessorId: cmd.accessorId,
          createIndex: cur !== undefined && cur.accessorId === cmd.accessorId ? cur.createIndex : at,
        }
        const key = grantKey(cmd.peerId, cmd.service)
        const over = this.overCap(key, recordBytes(grant))
        if (over !== undefined) return over
        this.putGrant(grant)
        return this.changed(at)
      }
    }
  }

  private idOrSecretClash(accessorId: string, secretId: string): AclResult | undefined {
    if (this.tokensById.has(accessorId))
      return fail(AclErrorCodes.conflict, `a token with AccessorID ${accessorId} already exists`)
    if (this.secretIndex.has(secretKey(secretId)) || this.tokensById.has(secretId))
      return fail(AclErrorCodes.conflict, 'that SecretID is already in use')
    if (accessorId === secretId)
      return fail(AclErrorCodes.invalidCommand, 'AccessorID and SecretID must differ')
    return undefined
  }

  /** Policy links to IDs, in order, without repeats; a refusal naming the first unknown link. */
  private resolveLinks(
    links: { id?: string | undefined; name?: string | undefined }[],
  ): string[] | AclResult {
    const out: string[] = []
    for (const l of links) {
      const id = l.id ?? this.policyNames.get(l.name!)
      if (id === undefined || !this.policiesById.has(id)) {
        const what = l.id !== undefined ? `ID ${l.id}` : `name "${l.name}"`
        return fail(AclErrorCodes.unknownPolicy, `No such ACL policy with ${what}`)
      }
      if (!out.includes(id)) out.push(id)
    }
    return out
  }

  private putToken(t: AclToken): void {
    this.tokensById.set(t.accessorId, t)
    this.secretIndex.set(secretKey(t.secretId), t.accessorId)
    this.resize(`t:${t.accessorId}`, recordBytes(t))
  }

  private putPolicy(p: AclPolicy): void {
    this.policiesById.set(p.id, p)
    this.policyNames.set(p.name, p.id)
    this.resize(`p:${p.id}`, recordBytes(p))
  }

  private putGrant(g: ServiceGrant): void {
    let byService = this.grantsByPeer.get(g.peerId)
    if (byService === undefined) {
      byService = new Map()
      this.grantsByPeer.set(g.peerId, byService)
    }
    byService.set(g.service, g)
    this.resize(grantKey(g.peerId, g.service), recordBytes(g))
  }

  private dropGrant(peerId: string, service: string): void {
    const byService = this.grantsByPeer.get(peerId)
    if (byService?.delete(service) !== true) return
    if (byService.size === 0) this.grantsByPeer.delete(peerId)
    this.resize(grantKey(peerId, service), 0)
  }

  /** Removes a peer's enrollment and grants; the peer id is revoked (autopilot removes it). */
  private dropEnrollment(peerId: string): void {
    const cur = this.enrollmentsByPeer.get(peerId)
    if (cur === undefined) return
    this.enrollmentsByPeer.delete(peerId)
    if (this.peerByNode.get(cur.node) === peerId) this.peerByNode.delete(cur.node)
    this.resize(`e:${peerId}`, 0)
    for (const service of [...(this.grantsByPeer.get(peerId)?.keys() ?? [])]) this.dropGrant(peerId, service)
    this.revokedPeers.add(peerId)
    this.resize(`r:${peerId}`, pack(peerId).length)
  }

  private clearEnrollments(): void {
    this.enrollmentsByPeer = new Map()
    this.peerByNode = new Map()
    this.grantsByPeer = new Map()
    this.revokedPeers = new Set()
  }

  /** Records a record's encoded size (0: gone) in the state's byte count. */
  private resize(key: string, bytes: number): void {
    this.bytes += bytes - (this.sizes.get(key) ?? 0)
    if (bytes === 0) this.sizes.delete(key)
    else this.sizes.set(key, bytes)
  }

  /** The refusal of a write that would take record `key` to `bytes` past the cap, if it would. */
  private overCap(key: string, bytes: number): AclResult | undefined {
    const before = this.sizes.get(key) ?? 0
    const total = this.bytes - before + bytes
    if (bytes <= before || total <= ACL_STATE_MAX_BYTES) return undefined
    return fail(
      AclErrorCodes.tooLarge,
      `ACL state would hold ${total} bytes, over its ${ACL_STATE_MAX_BYTES} byte cap`,
    )
  }

  private changed(at: number): AclResult {
    this.index = at
    return { ok: true, index: at }
  }

  // ---- queries (copies: callers may not change the state) ------------------------------------

  tokenBySecret(secret: string): AclToken | undefined {
    const id = this.secretIndex.get(secretKey(secret))
    return id === undefined ? undefined : this.token(id)
  }

  token(accessorId: string): AclToken | undefined {
    const t = this.tokensById.get(accessorId)
    return t === undefined ? undefined : structuredClone(t)
  }

  /** All tokens, by CreateIndex then AccessorID (the same order on every agent). */
  tokens(): AclToken[] {
    return [...this.tokensById.values()]
      .sort((a, b) => a.createIndex - b.createIndex || cmp(a.accessorId, b.accessorId))
      .map((t) => structuredClone(t))
  }

  policy(id: string): AclPolicy | undefined {
    const p = this.policiesById.get(id)
    return p === undefined ? undefined : structuredClone(p)
  }

  policyByName(name: string): AclPolicy | undefined {
    const id = this.policyNames.get(name)
    return id === undefined ? undefined : this.policy(id)
  }

  /** All policies, by name. */
  policies(): AclPolicy[] {
    return [...this.policiesById.values()].sort((a, b) => cmp(a.name, b.name)).map((p) => structuredClone(p))
  }

  enrollment(peerId: string): NodeEnrollment | undefined {
    const e = this.enrollmentsByPeer.get(peerId)
    return e === undefined ? undefined : { ...e }
  }

  /** The enrollment under a node name, if any. */
  enrollmentByNode(node: string): NodeEnrollment | undefined {
    const peer = this.peerByNode.get(node)
    return peer === undefined ? undefined : this.enrollment(peer)
  }

  /** Every enrollment, by peer id. */
  enrollments(): NodeEnrollment[] {
    return [...this.enrollmentsByPeer.values()].sort((a, b) => cmp(a.peerId, b.peerId)).map((e) => ({ ...e }))
  }

  revoked(peerId: string): boolean {
    return this.revokedPeers.has(peerId)
  }

  /** The revoked peer ids, sorted. */
  revokedPeerIds(): string[] {
    return [...this.revokedPeers].sort(cmp)
  }

  /** The service grants of a peer, by service. */
  serviceGrants(peerId: string): ServiceGrant[] {
    return [...(this.grantsByPeer.get(peerId)?.values() ?? [])]
      .sort((a, b) => cmp(a.service, b.service))
      .map((g) => ({ ...g }))
  }

  /** Every service grant, by peer id then service. */
  allServiceGrants(): ServiceGrant[] {
    return [...this.grantsByPeer.keys()].sort(cmp).flatMap((p) => this.serviceGrants(p))
  }

  // ---- snapshots --------------------------------------------------------------------------------

  snapshot(): AclSnapshot {
    return structuredClone({
      version: 2 as const,
      index: this.index,
      bootstrapIndex: this.bootstrapIndex,
      tokens: [...this.tokensById.values()].sort((a, b) => cmp(a.accessorId, b.accessorId)),
      policies: [...this.policiesById.values()].sort((a, b) => cmp(a.id, b.id)),
      enrollments: this.enrollments(),
      grants: this.allServiceGrants(),
      revoked: this.revokedPeerIds(),
    })
  }

  /**
   * Replaces the state with a snapshot's; `undefined` (a snapshot from before ACLs) restores the
   * initial state. Throws RangeError on a malformed snapshot, leaving the state unchanged.
   */
  restore(data: unknown): void {
    if (data === undefined || data === null) {
      this.reset()
      return
    }
    const parsed = aclSnapshotSchema.safeParse(data)
    if (!parsed.success) throw new RangeError(`unsupported ACL snapshot: ${parsed.error.issues[0]?.message}`)
    const s = parsed.data
    this.bytes = 0
    this.sizes.clear()
    this.tokensById = new Map()
    this.secretIndex = new Map()
    this.policiesById = new Map()
    this.policyNames = new Map()
    this.clearEnrollments()
    for (const p of s.policies) this.putPolicy(structuredClone(p) as AclPolicy)
    for (const t of s.tokens) this.putToken(structuredClone(t) as AclToken)
    if (s.version === 2) {
      for (const e of s.enrollments) {
        const enrollment: NodeEnrollment = { ...e }
        this.enrollmentsByPeer.set(e.peerId, enrollment)
        this.peerByNode.set(e.node, e.peerId)
        this.resize(`e:${e.peerId}`, recordBytes(enrollment))
      }
      for (const g of s.grants) this.putGrant({ ...g })
      for (const r of s.revoked) {
        this.revokedPeers.add(r)
        this.resize(`r:${r}`, pack(r).length)
      }
    }
    this.index = s.index
    this.bootstrapIndex = s.bootstrapIndex
  }
}

/** A stored record's size as the cap counts it: the record, encoded. */
function recordBytes(r: AclToken | AclPolicy | NodeEnrollment | ServiceGrant): number {
  return pack(r).length
}

function grantKey(peerId: string, service: string): string {
  return `g:${peerId}\u0000${service}`
}

function fail(code: AclErrorCode, message: string): AclResult {
  return { ok: false, code, message }
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

function dedupeBy<T>(list: T[], key: (v: T) => string): T[] {
  const seen = new Set<string>()
  return list.filter((v) => {
    const k = key(v)
    if (seen.has(k)) return false
    seen.add(k)
    return true
  })
}

function copyServiceIdentity(s: {
  serviceName: string
  datacenters?: string[] | undefined
}): AclServiceIdentity {
  return s.datacenters === undefined || s.datacenters.length === 0
    ? { serviceName: s.serviceName }
    : { serviceName: s.serviceName, datacenters: [...s.datacenters] }
}
