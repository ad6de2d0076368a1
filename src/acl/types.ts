/**
 * The ACL system's data: rules (what a policy grants), policies and tokens as the replicated
 * state holds them. Field names are camelCase here; the HTTP API shows Consul's PascalCase.
 */

/**
 * A rule's level. `write` includes `read`; `deny` refuses both, whatever else matches less
 * specifically. `list` (key rules only) lets a token list key names; as in Consul with its default
 * `acl.enable_key_list_policy = false`, listing is filtered by `read`, so `list` alone grants
 * neither read nor write (but, being a rule, it stops a shorter prefix or the default from granting).
 */
export type AccessLevel = 'list' | 'read' | 'write' | 'deny'

/** A `service` or `service_prefix` rule: its level, and optionally a separate one for intentions. */
export interface ServiceRule {
  policy: AccessLevel
  /** Level on intentions whose destination this rule matches; unset: read if `policy` grants read. */
  intentions?: AccessLevel
}

/**
 * A parsed policy (Consul's rule language). Exact rules and prefix rules of each resource are kept
 * apart: an exact rule beats any prefix, a longer prefix beats a shorter one (see authorizer.ts).
 * Maps, so that a rule named `__proto__` is just a name.
 */
export interface RuleSet {
  service: Map<string, ServiceRule>
  servicePrefix: Map<string, ServiceRule>
  node: Map<string, AccessLevel>
  nodePrefix: Map<string, AccessLevel>
  key: Map<string, AccessLevel>
  keyPrefix: Map<string, AccessLevel>
  agent: Map<string, AccessLevel>
  agentPrefix: Map<string, AccessLevel>
  /** User events by name (`event`, `event_prefix`): read to list, write to fire. */
  event: Map<string, AccessLevel>
  eventPrefix: Map<string, AccessLevel>
  /** `session "node"`: sessions on that node (Consul's session rules name nodes). */
  session: Map<string, AccessLevel>
  sessionPrefix: Map<string, AccessLevel>
  operator?: AccessLevel
  acl?: AccessLevel
  /** Unset: `mesh` follows `operator`, as in Consul. */
  mesh?: AccessLevel
}

export function emptyRuleSet(): RuleSet {
  return {
    service: new Map(),
    servicePrefix: new Map(),
    node: new Map(),
    nodePrefix: new Map(),
    key: new Map(),
    keyPrefix: new Map(),
    agent: new Map(),
    agentPrefix: new Map(),
    event: new Map(),
    eventPrefix: new Map(),
    session: new Map(),
    sessionPrefix: new Map(),
  }
}

/** A policy as replicated (Consul's ACLPolicy without namespaces and partitions). */
export interface AclPolicy {
  id: string
  name: string
  description: string
  /** The rule text as given (JSON or HCL); parsed when a token using it is resolved. */
  rules: string
  /** Datacenters the policy applies in; empty: all. Kept for Consul clients; peermesh has one. */
  datacenters: string[]
  createIndex: number
  modifyIndex: number
}

/** Consul's ServiceIdentity: write on the service and its sidecar, read on every service and node. */
export interface AclServiceIdentity {
  serviceName: string
  datacenters?: string[]
}

/** Consul's NodeIdentity: write on the node, read on every service. */
export interface AclNodeIdentity {
  nodeName: string
  datacenter: string
}

/** A token as replicated (Consul's ACLToken without roles, auth methods or expiry). */
export interface AclToken {
  accessorId: string
  /**
   * The bearer secret, kept in clear as Consul keeps it: `GET /v1/acl/token/:id` shows it to a
   * caller with `acl:write`. Lookups go through a SHA-256 of it (acl-state.ts).
   */
  secretId: string
  description: string
  /** IDs of linked policies; a link to a policy deleted since is ignored (and not shown). */
  policies: string[]
  serviceIdentities: AclServiceIdentity[]
  nodeIdentities: AclNodeIdentity[]
  /** Consul's datacenter-local flag; stored and shown, no effect with one datacenter. */
  local: boolean
  /** peermesh extension: the holder may enroll a node as a Raft voter. */
  voter: boolean
  /** RFC 3339 time the proposer gave when the token was created. */
  createTime: string
  createIndex: number
  modifyIndex: number
}

/**
 * A node enrolled into the control plane (issue #12): the leader checked an agent token over the
 * peer-id-authenticated channel and committed this binding. Only enrolled nodes become Raft
 * learners; only `voter` ones become voters.
 */
export interface NodeEnrollment {
  /** libp2p peer id of the agent (its node key). */
  peerId: string
  /** Node name the token granted (`node:write`, e.g. through a node identity). */
  node: string
  /** The token said voter-eligible (`Voter`, or a management token). */
  voter: boolean
  /** AccessorID of the token that enrolled it: deleting that token revokes the enrollment. */
  accessorId: string
  createIndex: number
}

/**
 * A grant for one node to publish an instance of `service` (and get its leaf): committed by the
 * leader after it checked that the token used to register the service grants `service:write`.
 */
export interface ServiceGrant {
  peerId: string
  service: string
  /** AccessorID of the registering token: deleting it (or its rights) revokes the grant. */
  accessorId: string
  createIndex: number
}
