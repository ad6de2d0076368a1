import {
  type Authorizer,
  anonymousReadRules,
  type DefaultPolicy,
  MANAGE_ALL,
  nodeIdentityRules,
  PolicyAuthorizer,
  serviceIdentityRules,
} from './authorizer.ts'
import { ANONYMOUS_TOKEN_ID, GLOBAL_MANAGEMENT_POLICY_ID } from './constants.ts'
import { parseRules } from './rules.ts'
import type { AclPolicy, AclToken, RuleSet } from './types.ts'

export interface TokenAuthorizerOptions {
  /** What applies when no rule matches (Consul's `acl.default_policy`). */
  defaultPolicy: DefaultPolicy
  /** The anonymous token also reads services, nodes and agents (see `anonymousReadRules`). */
  anonymousRead: boolean
  /**
   * Told of a linked policy whose rules no longer parse (they were checked when written, so only a
   * newer agent's syntax can get here); such a policy grants nothing.
   */
  onInvalidPolicy?: (policy: AclPolicy, err: Error) => void
}

/**
 * Parses policies' rules once per policy version (ID + ModifyIndex), so resolving a token costs a
 * map lookup per linked policy.
 */
export class RuleSetCache {
  private readonly cache = new Map<string, { modifyIndex: number; rules: RuleSet | Error }>()

  get(policy: AclPolicy): RuleSet | Error {
    const hit = this.cache.get(policy.id)
    if (hit !== undefined && hit.modifyIndex === policy.modifyIndex) return hit.rules
    let rules: RuleSet | Error
    try {
      rules = parseRules(policy.rules)
    } catch (err) {
      rules = err as Error
    }
    this.cache.set(policy.id, { modifyIndex: policy.modifyIndex, rules })
    return rules
  }

  /** Forgets policies that are gone (call after a change, with the IDs that still exist). */
  retain(ids: ReadonlySet<string>): void {
    for (const id of this.cache.keys()) if (!ids.has(id)) this.cache.delete(id)
  }
}

/**
 * A token's authorizer: management if it links `global-management`; otherwise its linked
 * policies, its service and node identities' synthesized policies, and for the anonymous token
 * the anonymous read rules when enabled. A link to a policy that no longer exists is ignored.
 */
export function authorizerForToken(
  token: AclToken,
  policyById: (id: string) => AclPolicy | undefined,
  options: TokenAuthorizerOptions,
  cache: RuleSetCache = new RuleSetCache(),
): Authorizer {
  if (token.policies.includes(GLOBAL_MANAGEMENT_POLICY_ID)) return MANAGE_ALL
  const sets: RuleSet[] = []
  for (const id of token.policies) {
    const policy = policyById(id)
    if (policy === undefined) continue
    const rules = cache.get(policy)
    if (rules instanceof Error) options.onInvalidPolicy?.(policy, rules)
    else sets.push(rules)
  }
  for (const s of token.serviceIdentities) sets.push(serviceIdentityRules(s.serviceName))
  for (const n of token.nodeIdentities) sets.push(nodeIdentityRules(n.nodeName))
  if (token.accessorId === ANONYMOUS_TOKEN_ID && options.anonymousRead) sets.push(anonymousReadRules())
  return new PolicyAuthorizer(sets, options.defaultPolicy)
}
