import { strongerLevel } from './rules.ts'
import { type AccessLevel, emptyRuleSet, type RuleSet, type ServiceRule } from './types.ts'

/**
 * Answers what a token may do. Every method is a pure lookup on rules compiled once per token.
 *
 * Precedence (Consul's): for a named resource the exact rule wins; else the longest matching
 * prefix rule (`service_prefix ""` matches every name); rules for the same name or prefix from
 * several policies merge to the strongest, deny before write before read. A rule that matches
 * decides: `read` answers a write with no, even if the default is allow. Only when nothing
 * matches does the default apply (deny, or allow with `defaultPolicy: "allow"`); the default
 * never grants `acl:*`, which needs a rule (or management), as in Consul.
 */
export interface Authorizer {
  /** Holds Consul's `global-management` policy: everything is allowed. */
  readonly isManagement: boolean
  serviceRead(name: string): boolean
  serviceWrite(name: string): boolean
  /** Intentions whose destination is `destination`. */
  intentionRead(destination: string): boolean
  intentionWrite(destination: string): boolean
  nodeRead(name: string): boolean
  nodeWrite(name: string): boolean
  keyRead(key: string): boolean
  keyWrite(key: string): boolean
  /**
   * Write on `prefix` and on every key under it (Consul's KeyWritePrefix, for a recursive delete):
   * no rule for a longer prefix or a key under it may refuse write.
   */
  keyWritePrefix(prefix: string): boolean
  /** Sessions on the node named `node`. */
  sessionRead(node: string): boolean
  sessionWrite(node: string): boolean
  /** The agent API of the agent named `node`. */
  agentRead(node: string): boolean
  agentWrite(node: string): boolean
  /** User events named `name`: list them (read), fire them (write). */
  eventRead(name: string): boolean
  eventWrite(name: string): boolean
  operatorRead(): boolean
  operatorWrite(): boolean
  aclRead(): boolean
  aclWrite(): boolean
  meshRead(): boolean
  meshWrite(): boolean
}

export type DefaultPolicy = 'allow' | 'deny'

type Decision = 'allow' | 'deny' | 'default'

/** What a rule of `level` answers to a request for `want`. */
export function decide(level: AccessLevel | undefined, want: 'read' | 'write'): Decision {
  if (level === undefined) return 'default'
  if (level === 'deny' || level === 'list') return 'deny'
  if (level === 'write' || want === 'read') return 'allow'
  return 'deny'
}

/** Exact and prefix rules of one resource, merged across policies. */
class RuleTable {
  readonly exact = new Map<string, AccessLevel>()
  readonly prefix = new Map<string, AccessLevel>()

  add(exact: Map<string, AccessLevel>, prefix: Map<string, AccessLevel>): void {
    for (const [k, v] of exact) this.exact.set(k, strongerLevel(this.exact.get(k), v))
    for (const [k, v] of prefix) this.prefix.set(k, strongerLevel(this.prefix.get(k), v))
  }

  /** Exact match, else the longest prefix that has a rule. */
  lookup(name: string): AccessLevel | undefined {
    const exact = this.exact.get(name)
    if (exact !== undefined) return exact
    if (this.prefix.size === 0) return undefined
    for (let n = name.length; n >= 0; n--) {
      const p = this.prefix.get(name.slice(0, n))
      if (p !== undefined) return p
    }
    return undefined
  }

  /** The longest prefix rule matching `name` (exact rules ignored). */
  lookupPrefix(name: string): AccessLevel | undefined {
    for (let n = name.length; n >= 0; n--) {
      const p = this.prefix.get(name.slice(0, n))
      if (p !== undefined) return p
    }
    return undefined
  }

  /** Whether a rule for a name under `prefix` (exact, or a longer prefix) is not `write`. */
  refusesUnder(prefix: string): boolean {
    for (const [k, v] of this.exact) if (k.startsWith(prefix) && v !== 'write') return true
    for (const [k, v] of this.prefix)
      if (k.length > prefix.length && k.startsWith(prefix) && v !== 'write') return true
    return false
  }
}

/** Consul's default for `intentions` when a service rule leaves it unset. */
function intentionLevel(rule: ServiceRule): AccessLevel {
  if (rule.intentions !== undefined) return rule.intentions
  return rule.policy === 'deny' ? 'deny' : 'read'
}

function mapValues<V>(m: Map<string, V>, f: (v: V) => AccessLevel): Map<string, AccessLevel> {
  const out = new Map<string, AccessLevel>()
  for (const [k, v] of m) out.set(k, f(v))
  return out
}

/** The authorizer of a set of policies (a token's, identities' synthesized ones included). */
export class PolicyAuthorizer implements Authorizer {
  readonly isManagement = false
  private readonly service = new RuleTable()
  private readonly intention = new RuleTable()
  private readonly node = new RuleTable()
  private readonly key = new RuleTable()
  private readonly agent = new RuleTable()
  private readonly event = new RuleTable()
  private readonly session = new RuleTable()
  private operator: AccessLevel | undefined
  private acl: AccessLevel | undefined
  private mesh: AccessLevel | undefined

  constructor(
    policies: readonly RuleSet[],
    private readonly defaultPolicy: DefaultPolicy = 'deny',
  ) {
    for (const p of policies) {
      this.service.add(
        mapValues(p.service, (r) => r.policy),
        mapValues(p.servicePrefix, (r) => r.policy),
      )
      this.intention.add(mapValues(p.service, intentionLevel), mapValues(p.servicePrefix, intentionLevel))
      this.node.add(p.node, p.nodePrefix)
      this.key.add(p.key, p.keyPrefix)
      this.agent.add(p.agent, p.agentPrefix)
      this.event.add(p.event, p.eventPrefix)
      this.session.add(p.session, p.sessionPrefix)
      if (p.operator !== undefined) this.operator = strongerLevel(this.operator, p.operator)
      if (p.acl !== undefined) this.acl = strongerLevel(this.acl, p.acl)
      if (p.mesh !== undefined) this.mesh = strongerLevel(this.mesh, p.mesh)
    }
  }

  private allowed(level: AccessLevel | undefined, want: 'read' | 'write'): boolean {
    const d = decide(level, want)
    return d === 'default' ? this.defaultPolicy === 'allow' : d === 'allow'
  }

  serviceRead(name: string): boolean {
    return this.allowed(this.service.lookup(name), 'read')
  }
  serviceWrite(name: string): boolean {
    return this.allowed(this.service.lookup(name), 'write')
  }
  intentionRead(destination: string): boolean {
    return this.allowed(this.intention.lookup(destination), 'read')
  }
  intentionWrite(destination: string): boolean {
    return this.allowed(this.intention.lookup(destination), 'write')
  }
  nodeRead(name: string): boolean {
    return this.allowed(this.node.lookup(name), 'read')
  }
  nodeWrite(name: string): boolean {
    return this.allowed(this.node.lookup(name), 'write')
  }
  keyRead(key: string): boolean {
    return this.allowed(this.key.lookup(key), 'read')
  }
  keyWrite(key: string): boolean {
    return this.allowed(this.key.lookup(key), 'write')
  }
  keyWritePrefix(prefix: string): boolean {
    // Consul: with a default of allow, only an explicit refusal under the prefix denies; else the
    // prefix's own rule decides, and nothing under it may refuse.
    if (this.key.refusesUnder(prefix)) return false
    return this.allowed(this.key.lookupPrefix(prefix), 'write')
  }
  sessionRead(node: string): boolean {
    return this.allowed(this.session.lookup(node), 'read')
  }
  sessionWrite(node: string): boolean {
    return this.allowed(this.session.lookup(node), 'write')
  }
  agentRead(node: string): boolean {
    return this.allowed(this.agent.lookup(node), 'read')
  }
  agentWrite(node: string): boolean {
    return this.allowed(this.agent.lookup(node), 'write')
  }
  eventRead(name: string): boolean {
    return this.allowed(this.event.lookup(name), 'read')
  }
  eventWrite(name: string): boolean {
    return this.allowed(this.event.lookup(name), 'write')
  }
  operatorRead(): boolean {
    return this.allowed(this.operator, 'read')
  }
  operatorWrite(): boolean {
    return this.allowed(this.operator, 'write')
  }
  aclRead(): boolean {
    return decide(this.acl, 'read') === 'allow'
  }
  aclWrite(): boolean {
    return decide(this.acl, 'write') === 'allow'
  }
  meshRead(): boolean {
    return this.allowed(this.mesh ?? this.operator, 'read')
  }
  meshWrite(): boolean {
    return this.allowed(this.mesh ?? this.operator, 'write')
  }
}

const yes = (): boolean => true

/** The management authorizer: everything (Consul's ManageAll). Also what "ACLs disabled" means. */
export const MANAGE_ALL: Authorizer = Object.freeze({
  isManagement: true,
  serviceRead: yes,
  serviceWrite: yes,
  intentionRead: yes,
  intentionWrite: yes,
  nodeRead: yes,
  nodeWrite: yes,
  keyRead: yes,
  keyWrite: yes,
  keyWritePrefix: yes,
  sessionRead: yes,
  sessionWrite: yes,
  agentRead: yes,
  agentWrite: yes,
  eventRead: yes,
  eventWrite: yes,
  operatorRead: yes,
  operatorWrite: yes,
  aclRead: yes,
  aclWrite: yes,
  meshRead: yes,
  meshWrite: yes,
})

const no = (): boolean => false

/** The authorizer of a token that cannot be resolved: nothing. */
export const DENY_ALL: Authorizer = Object.freeze({
  isManagement: false,
  serviceRead: no,
  serviceWrite: no,
  intentionRead: no,
  intentionWrite: no,
  nodeRead: no,
  nodeWrite: no,
  keyRead: no,
  keyWrite: no,
  keyWritePrefix: no,
  sessionRead: no,
  sessionWrite: no,
  agentRead: no,
  agentWrite: no,
  eventRead: no,
  eventWrite: no,
  operatorRead: no,
  operatorWrite: no,
  aclRead: no,
  aclWrite: no,
  meshRead: no,
  meshWrite: no,
})

// ---- synthesized policies ---------------------------------------------------------------------

/** Suffix of a service's sidecar proxy name, which its service identity also covers. */
export const SIDECAR_SUFFIX = '-sidecar-proxy'

/**
 * Consul's synthesized policy of a service identity:
 * `service "S" { policy = "write" }`, `service "S-sidecar-proxy" { policy = "write" }`,
 * `service_prefix "" { policy = "read" }`, `node_prefix "" { policy = "read" }`.
 */
export function serviceIdentityRules(service: string): RuleSet {
  const r = emptyRuleSet()
  r.service.set(service, { policy: 'write' })
  r.service.set(service + SIDECAR_SUFFIX, { policy: 'write' })
  r.servicePrefix.set('', { policy: 'read' })
  r.nodePrefix.set('', 'read')
  return r
}

/** Consul's synthesized policy of a node identity: `node "N" { policy = "write" }`, `service_prefix "" { policy = "read" }`. */
export function nodeIdentityRules(node: string): RuleSet {
  const r = emptyRuleSet()
  r.node.set(node, 'write')
  r.servicePrefix.set('', { policy: 'read' })
  return r
}

/**
 * What the anonymous token gets on top of its own policies when `acl.anonymousRead` is on: read
 * of services (catalog, health, DNS), nodes (members) and agents (`/v1/agent/self`). Not
 * intentions (Consul's default would give read with the service rule; who may talk to whom is
 * not public), no keys, no operator, no ACLs, no writes.
 */
export function anonymousReadRules(): RuleSet {
  const r = emptyRuleSet()
  r.servicePrefix.set('', { policy: 'read', intentions: 'deny' })
  r.nodePrefix.set('', 'read')
  r.agentPrefix.set('', 'read')
  return r
}
