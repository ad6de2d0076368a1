import {
  ANONYMOUS_TOKEN_ID,
  ANONYMOUS_TOKEN_SECRET,
  type Authorizer,
  authorizerForToken,
  type AclToken,
  type DefaultPolicy,
  MANAGE_ALL,
  type PermissionCheck,
  type PermissionNeed,
  permissionDeniedMessage,
  RuleSetCache,
} from '../../acl/index.ts'
import type { AclStateView } from '../../raft/policy/acl-state.ts'
import { ApiError } from '../agent/errors.ts'
import type { ApiRequest } from './server.ts'

/** The ACL settings the resolver needs (the `acl` block of the agent config). */
export interface AclResolverConfig {
  /** Off: every request may do everything (and `/v1/acl/*` answers 401, as Consul). */
  enabled: boolean
  /** What applies when no rule matches; Consul's `acl.default_policy`. */
  defaultPolicy: DefaultPolicy
  /** The anonymous token reads services, nodes and agents (members, catalog, health, DNS, agent self). */
  anonymousRead: boolean
}

/** Secrets whose resolution an AclResolver keeps (see `bySecret`); past it, it starts over. */
const MAX_CACHED_SECRETS = 1024

/** Who a request is: its token (undefined when ACLs are off) and what it may do. Shared: read only. */
export interface ResolvedToken {
  accessorId: string
  token: AclToken | undefined
  authorizer: Authorizer
}

/** Consul's answer to a secret it does not know. */
export const ACL_NOT_FOUND = 'ACL not found'
/** The answer to an unknown secret while this agent's ACL state is still catching up. */
export const ACL_NOT_REPLICATED = 'ACL state not yet replicated to this agent; retry'

/**
 * The secret a request presents: `X-Consul-Token`, else `Authorization: Bearer <secret>`, else
 * `?token=`; undefined when none (the request is then anonymous). Empty values count as absent.
 *
 * Order: headers before the query, as the issue asks. Consul itself reads `?token=` first
 * (agent/http.go parseTokenInternal); the two differ only for a request that carries both.
 */
export function requestSecret(req: Pick<ApiRequest, 'headers' | 'query'>): string | undefined {
  const header = firstHeader(req.headers['x-consul-token'])?.trim()
  if (header) return header
  const auth = firstHeader(req.headers.authorization)?.trim()
  if (auth) {
    const m = /^bearer\s+(.+)$/i.exec(auth)
    if (m?.[1] !== undefined && m[1].trim() !== '') return m[1].trim()
  }
  const q = req.query.get('token')
  return q === null || q === '' ? undefined : q
}

function firstHeader(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v
}

/**
 * Resolves secrets to tokens and their authorizers on this agent's committed ACL state. An
 * authorizer is built once per token and state version (ACL index), and a policy's rules are
 * parsed once per policy version.
 */
export class AclResolver {
  private readonly rules = new RuleSetCache()
  private cacheIndex = -1
  private readonly cache = new Map<string, Authorizer>()
  /**
   * Secret -> what it resolved to, at ACL index `cacheIndex`: a request then costs one map lookup
   * instead of hashing its secret and copying its token. Only known secrets are kept, at most
   * MAX_CACHED_SECRETS (a client sending many made-up secrets fills nothing).
   */
  private readonly bySecret = new Map<string, ResolvedToken>()

  /**
   * `options.replicated`: whether this agent's ACL state has caught up with the cluster (e.g. it
   * has applied the leader's commit index once). While it has not, an unknown secret is a 503
   * "retry" rather than a 403, since the token may exist and not have reached this agent yet.
   */
  constructor(
    private readonly state: AclStateView,
    readonly config: AclResolverConfig,
    private readonly options: {
      replicated?: () => boolean
      onInvalidPolicy?: (policyId: string, err: Error) => void
    } = {},
  ) {}

  /** Whether this agent's ACL state has caught up (`options.replicated`; true without it). */
  caughtUp(): boolean {
    return this.options.replicated?.() !== false
  }

  /**
   * The token of `secret` (anonymous when undefined); 403 "ACL not
   * found" when unknown.
   */
  resolve(secret: string | undefined): ResolvedToken {
    if (!this.config.enabled) return { accessorId: '', token: undefined, authorizer: MANAGE_ALL }
    const key = secret ?? ANONYMOUS_TOKEN_SECRET
    this.checkIndex()
    const hit = this.bySecret.get(key)
    if (hit !== undefined) return hit
    const token = this.state.tokenBySecret(key)
    if (token === undefined) {
      if (!this.caughtUp()) throw new ApiError(ACL_NOT_REPLICATED, 503)
      throw new ApiError(ACL_NOT_FOUND, 403)
    }
    const who: ResolvedToken = Object.freeze({
      accessorId: token.accessorId,
      token: deepFreeze(token),
      authorizer: this.authorizerOf(token),
    })
    if (this.bySecret.size >= MAX_CACHED_SECRETS) this.bySecret.clear()
    this.bySecret.set(key, who)
    return who
  }

  /** Drops what was resolved on an older ACL state: any ACL change may change any answer. */
  private checkIndex(): void {
    if (this.cacheIndex === this.state.index) return
    this.cache.clear()
    this.bySecret.clear()
    this.cacheIndex = this.state.index
    this.rules.retain(new Set(this.state.policies().map((p) => p.id)))
  }

  /** The token a request presents (see `requestSecret`). */
  resolveRequest(req: Pick<ApiRequest, 'headers' | 'query'>): ResolvedToken {
    return this.resolve(requestSecret(req))
  }

  private authorizerOf(token: AclToken): Authorizer {
    this.checkIndex()
    let a = this.cache.get(token.accessorId)
    if (a === undefined) {
      a = authorizerForToken(
        token,
        (id) => this.state.policy(id),
        {
          defaultPolicy: this.config.defaultPolicy,
          anonymousRead: this.config.anonymousRead,
          onInvalidPolicy: (p, err) => this.options.onInvalidPolicy?.(p.id, err),
        },
        this.rules,
      )
      this.cache.set(token.accessorId, a)
    }
    return a
  }
}

/**
 * Refuses the request with 403 (Consul's "Permission denied: token with AccessorID '…' lacks
 * permission 'service:write' on \"web\"") unless its token passes `check`; returns the token's
 * AccessorID for the log. Use with `need`: `requirePermission(req, acl, ...need.serviceWrite(name))`.
 */
export function requirePermission(
  req: Pick<ApiRequest, 'headers' | 'query'>,
  resolver: AclResolver,
  check: PermissionCheck,
  what: PermissionNeed,
): string {
  const who = resolver.resolveRequest(req)
  if (!check(who.authorizer)) throw new ApiError(permissionDeniedMessage(who.accessorId, what), 403)
  return who.accessorId
}

/**
 * Authorizes a route that finds its object by an ID and needs a permission on something only the
 * object knows (a local service's name behind its service or check ID), without telling a caller
 * that may not see the object whether it exists. `name`: the object's (undefined when there is no
 * such object); `needOf`: the permission on a name; `known`: the names of that kind the caller
 * could hold it on (this agent's, and the ID asked when it may be a name).
 * - the object exists and the token may act on it: passes (true);
 * - the token may act on none of `known`: the same 403 for a hit and a miss, naming no resource;
 * - else Consul's answers: that 403 for an object it may not act on, false for a miss (the
 *   route's 404 or own answer).
 * With ACLs off everything passes (false for a miss).
 */
export function authorizeById(
  req: Pick<ApiRequest, 'auth'>,
  name: string | undefined,
  needOf: (name: string) => [PermissionCheck, PermissionNeed],
  known: () => Iterable<string>,
): boolean {
  const authz = req.auth.authorizer()
  if (name !== undefined && needOf(name)[0](authz)) {
    req.auth.require(...needOf(name))
    return true
  }
  if (name === undefined) for (const n of known()) if (needOf(n)[0](authz)) return false
  req.auth.require(() => false, { permission: needOf('')[1].permission })
  return name !== undefined
}

/** Whether `accessorId` is the anonymous token (for logs that should say "anonymous"). */
export function isAnonymous(accessorId: string): boolean {
  return accessorId === ANONYMOUS_TOKEN_ID
}

/** `o` and everything in it made read-only (a resolved token is shared by every request with its secret). */
function deepFreeze<T>(o: T): T {
  if (o !== null && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o)
    for (const v of Object.values(o)) deepFreeze(v)
  }
  return o
}
