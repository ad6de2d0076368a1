/**
 * Service identity is granted (issue #12): whether the agent with a given peer id may publish an
 * instance of a service in the catalog and get the service's leaf. Other agents ignore catalog
 * entries that fail this test, and the leader refuses their CSRs.
 *
 * With ACLs on, an agent may publish `S` when it is enrolled and
 * - the token that enrolled it grants `service:write` on `S`, or
 * - a service grant (peerId, S) exists whose token still exists and still grants `service:write`
 *   on `S` (the token used to register the service; deleting it or taking the right away from its
 *   policies withdraws the grant without another Raft entry), or
 * - it was enrolled as a founder (a voter of the first configuration): founders hold the CA root
 *   key and could sign any leaf themselves, so refusing them a service would protect nothing.
 * A sidecar `S-sidecar-proxy` follows `S` (a service identity covers both). ACLs off: everyone may
 * publish anything, as before ACLs.
 */
import type { Unsubscribe } from '../common/events.ts'
import { PeermeshError } from '../common/errors.ts'
import type { AclStateView } from '../raft/policy/acl-state.ts'
import { type Authorizer, type DefaultPolicy, SIDECAR_SUFFIX } from './authorizer.ts'
import { FOUNDER_ACCESSOR_ID } from './constants.ts'
import type { NodeEnrollment } from './types.ts'
import { authorizerForToken, RuleSetCache } from './token-authorizer.ts'

/** A leaf or catalog entry for a service its agent may not publish. */
export class ServiceNotEntitledError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_PERMISSION_DENIED'
}

/** What of the ACL state the decision reads. */
export type EntitlementState = Pick<
  AclStateView,
  'index' | 'token' | 'policy' | 'enrollment' | 'serviceGrants'
>

export interface EntitlementOptions {
  /** ACLs on (`acl.enabled`); off: everyone may publish everything. */
  enabled: boolean
  /** What applies when no rule of a token matches (`acl.defaultPolicy`). */
  defaultPolicy: DefaultPolicy
  /** Memo of decisions, valid for one state (see EntitlementCache). */
  cache?: EntitlementCache
}

/**
 * The service whose rights decide for `service`: `S` for `S-sidecar-proxy`, else the name itself.
 */
export function entitlementSubject(service: string): string {
  return service.endsWith(SIDECAR_SUFFIX) && service.length > SIDECAR_SUFFIX.length
    ? service.slice(0, -SIDECAR_SUFFIX.length)
    : service
}

/**
 * Most decisions one EntitlementCache keeps. The catalog asks once per remote instance on each
 * rebuild, so this is room for the instances (services and sidecars) of a cluster of a few
 * thousand agents; a key is a peer id and a name of at most MAX_REMEMBERED_SERVICE_CHARS, so a
 * full memo holds a few MiB. Past it the oldest decision is forgotten (asked again, it is decided
 * again): no sequence of questions grows the memo beyond this.
 */
export const MAX_ENTITLEMENT_DECISIONS = 16_384

/**
 * Longest service name whose decision is remembered: the longest a grant may name
 * (`SERVICE_NAME_PATTERN`). A longer name is decided each time it is asked, so a few questions
 * with huge names cannot fill the memo with huge keys.
 */
export const MAX_REMEMBERED_SERVICE_CHARS = 256

/**
 * Decisions and token authorizers of one ACL state, kept while its `index` stays the same: the
 * catalog asks for every remote instance on each rebuild and the leader for every CSR, and the
 * answer changes only with the ACL state. Use one cache per state. At most
 * MAX_ENTITLEMENT_DECISIONS decisions are kept (the oldest goes first); authorizers are kept per
 * token of the state, so they are bounded by the state itself.
 */
export class EntitlementCache {
  private index = -1
  private readonly decisions = new Map<string, boolean>()
  private readonly authorizers = new Map<string, Authorizer | null>()
  private readonly rules = new RuleSetCache()

  constructor(private readonly maxDecisions = MAX_ENTITLEMENT_DECISIONS) {
    if (!(maxDecisions >= 1)) throw new RangeError('EntitlementCache: maxDecisions >= 1 is needed')
  }

  /** Decisions remembered now (at most `maxDecisions`). */
  get size(): number {
    return this.decisions.size
  }

  /** Empties the memo when the state has changed since it was filled. */
  sync(state: EntitlementState): void {
    if (state.index === this.index) return
    this.index = state.index
    this.decisions.clear()
    this.authorizers.clear()
  }

  decision(key: string): boolean | undefined {
    return this.decisions.get(key)
  }

  /** Remembers a decision, forgetting the oldest one when the memo is full. */
  remember(key: string, value: boolean): void {
    if (!this.decisions.has(key) && this.decisions.size >= this.maxDecisions) {
      const oldest = this.decisions.keys().next()
      if (oldest.done !== true) this.decisions.delete(oldest.value)
    }
    this.decisions.set(key, value)
  }

  /** The authorizer of the token `accessorId` (null: no such token), built once per state. */
  authorizer(
    state: EntitlementState,
    accessorId: string,
    defaultPolicy: DefaultPolicy,
  ): Authorizer | undefined {
    const hit = this.authorizers.get(accessorId)
    if (hit !== undefined) return hit ?? undefined
    const a = tokenAuthorizer(state, accessorId, defaultPolicy, this.rules)
    this.authorizers.set(accessorId, a ?? null)
    return a
  }
}

function tokenAuthorizer(
  state: EntitlementState,
  accessorId: string,
  defaultPolicy: DefaultPolicy,
  rules: RuleSetCache,
): Authorizer | undefined {
  const token = state.token(accessorId)
  if (token === undefined) return undefined
  // anonymousRead adds read rules only: it never decides a service:write.
  return authorizerForToken(token, (id) => state.policy(id), { defaultPolicy, anonymousRead: false }, rules)
}

/** Whether the agent `peerId` may publish (and get the leaf of) `service`; see the file comment. */
export function mayPublish(
  state: EntitlementState,
  peerId: string,
  service: string,
  opts: EntitlementOptions,
): boolean {
  if (!opts.enabled) return true
  const cache = opts.cache ?? new EntitlementCache()
  cache.sync(state)
  const remembered = service.length <= MAX_REMEMBERED_SERVICE_CHARS
  const key = `${peerId}\u0000${service}`
  const hit = remembered ? cache.decision(key) : undefined
  if (hit !== undefined) return hit
  // Not enrolled: nothing. Not remembered (asked again, it is one lookup in the state), so
  // questions under peer ids nobody enrolled leave nothing behind.
  const enrollment = state.enrollment(peerId)
  if (enrollment === undefined) return false
  const answer = decide(state, peerId, enrollment, entitlementSubject(service), opts.defaultPolicy, cache)
  if (remembered) cache.remember(key, answer)
  return answer
}

function decide(
  state: EntitlementState,
  peerId: string,
  enrollment: NodeEnrollment,
  subject: string,
  defaultPolicy: DefaultPolicy,
  cache: EntitlementCache,
): boolean {
  if (enrollment.accessorId === FOUNDER_ACCESSOR_ID) return true
  const writes = (accessorId: string): boolean =>
    cache.authorizer(state, accessorId, defaultPolicy)?.serviceWrite(subject) === true
  if (writes(enrollment.accessorId)) return true
  return state
    .serviceGrants(peerId)
    .some((g) => entitlementSubject(g.service) === subject && writes(g.accessorId))
}

/**
 * The decision as the agent's modules take it: bound to this agent's committed ACL state and
 * settings, with its cache, and told when the ACL state changes.
 */
export interface PublishEntitlement {
  mayPublish(peerId: string, service: string): boolean
  /** Called after the ACL state changed: decisions may differ. Returns the unsubscribe. */
  onChange(listener: () => void): Unsubscribe
}

/** `PublishEntitlement` over an ACL state and the agent's `acl` settings. */
export class AclPublishEntitlement implements PublishEntitlement {
  private readonly cache = new EntitlementCache()

  /**
   * `onStateChange`: subscribes to changes of the state holding `state` (the policy store's
   * `onChange`, which fires on every change; listeners here hear only ACL changes).
   */
  constructor(
    private readonly state: EntitlementState,
    private readonly options: Omit<EntitlementOptions, 'cache'>,
    private readonly onStateChange: (listener: () => void) => Unsubscribe = () => () => {},
  ) {}

  mayPublish(peerId: string, service: string): boolean {
    return mayPublish(this.state, peerId, service, { ...this.options, cache: this.cache })
  }

  onChange(listener: () => void): Unsubscribe {
    if (!this.options.enabled) return () => {}
    let seen = this.state.index
    return this.onStateChange(() => {
      if (this.state.index === seen) return
      seen = this.state.index
      listener()
    })
  }
}
