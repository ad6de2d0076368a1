/**
 * Intentions: which service may open connections to which, as Consul's service-intentions.
 *
 * An intention is `source -> destination : allow | deny`, where source and destination are a
 * service name (a DNS label) or `*`. For a connection from `src` to `dst`, the most specific
 * matching intention decides (Consul's precedence, without namespaces):
 *
 *   precedence | destination | source
 *   -----------+-------------+--------
 *        4     |    exact    |  exact
 *        3     |    exact    |   *
 *        2     |      *      |  exact
 *        1     |      *      |   *
 *
 * When none matches, the default action applies: deny (zero trust) unless configured otherwise.
 * There is at most one intention per (source, destination) pair, so the decision is unambiguous.
 *
 * `IntentionIndex` answers in O(1) (four hash lookups at most); it runs on every inbound
 * connection, with the committed policy held locally.
 */
import { PeermeshError } from '../common/errors.ts'
import { isDnsLabel } from '../identity/ca/spiffe.ts'
import { intentionPermissionsSchema } from '../raft/policy/config-entries.ts'
import {
  type Intention,
  type IntentionAction,
  type IntentionPermission,
  isIntentionName,
  WILDCARD,
} from '../raft/policy/intention.ts'

export { type Intention, type IntentionAction, type IntentionPermission, isIntentionName, WILDCARD }

export interface IntentionDecision {
  /** For an L7 intention `deny`: the connection-level answer (see `Intention.action`). */
  action: IntentionAction
  /** The intention that decided; absent when the default action applied. */
  matched?: Intention
  /** The matched intention's L7 permissions: per-request decisions (`l7-permissions.ts`). */
  permissions?: readonly IntentionPermission[]
}

/** Longest description kept with an intention. */
export const MAX_INTENTION_DESCRIPTION_LENGTH = 512

export type IntentionField =
  | 'source'
  | 'destination'
  | 'action'
  | 'description'
  | 'permissions'
  | 'intention'
  | 'defaultAction'

/** An intention field is invalid; `field` names it. */
export class IntentionFieldError extends PeermeshError {
  constructor(
    readonly field: IntentionField,
    message: string,
  ) {
    super(`${field}: ${message}`)
  }
}

/** A source or destination is neither a service name (DNS label) nor `*`. */
export class InvalidIntentionNameError extends IntentionFieldError {
  static override readonly code = 'PEERMESH_ERR_INVALID_INTENTION_NAME'
}

/** The action is not `allow` or `deny`. */
export class InvalidIntentionActionError extends IntentionFieldError {
  static override readonly code = 'PEERMESH_ERR_INVALID_INTENTION_ACTION'
}

/** The input is not an object, or a field other than names and action is malformed. */
export class MalformedIntentionError extends IntentionFieldError {
  static override readonly code = 'PEERMESH_ERR_MALFORMED_INTENTION'
}

/** Two intentions in one set have the same source and destination. */
export class DuplicateIntentionError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_DUPLICATE_INTENTION'
  constructor(
    readonly source: string,
    readonly destination: string,
    /** Positions of the two entries in the list. */
    readonly indexes: [number, number],
  ) {
    super(`intentions #${indexes[0]} and #${indexes[1]} both cover ${source} -> ${destination}`)
  }
}

/** A name passed to `decide` is not a service name (`*` included: connections come from a service). */
export class InvalidIntentionQueryError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_INVALID_INTENTION_QUERY'
}

/**
 * Validates untrusted input (API body, Raft entry) as one intention. Returns a new object with
 * only the known fields; unknown fields are dropped. Throws a coded error naming the bad field.
 *
 * An L7 intention has `permissions` (Consul's shape, field names in any case; returned in
 * canonical PascalCase) and no action, or `deny` (what it stores: see `Intention.action`).
 */
export function validateIntention(input: unknown): Intention {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new MalformedIntentionError('intention', 'must be an object')
  }
  const obj = input as Record<string, unknown>
  for (const field of ['source', 'destination'] as const) {
    if (!isIntentionName(obj[field])) {
      throw new InvalidIntentionNameError(
        field,
        `must be a service name (lowercase a-z, 0-9, '-', 1-63 chars, no '-' at either end) or '*', got ${show(obj[field])}`,
      )
    }
  }
  const permissions = obj.permissions === undefined ? undefined : validatePermissions(obj.permissions)
  if (permissions !== undefined) {
    if (obj.action !== undefined && obj.action !== 'deny')
      throw new InvalidIntentionActionError('action', 'must not be set with permissions')
  } else if (obj.action !== 'allow' && obj.action !== 'deny') {
    throw new InvalidIntentionActionError('action', `must be 'allow' or 'deny', got ${show(obj.action)}`)
  }
  const intention: Intention = {
    source: obj.source as string,
    destination: obj.destination as string,
    action: permissions !== undefined ? 'deny' : (obj.action as IntentionAction),
  }
  if (permissions !== undefined) intention.permissions = permissions
  if (obj.description !== undefined) {
    if (typeof obj.description !== 'string' || obj.description.length > MAX_INTENTION_DESCRIPTION_LENGTH) {
      throw new MalformedIntentionError(
        'description',
        `must be a string of at most ${MAX_INTENTION_DESCRIPTION_LENGTH} characters`,
      )
    }
    intention.description = obj.description
  }
  return intention
}

/**
 * Validates L7 permissions (Consul's `Permissions`): a non-empty list, each `{ Action, HTTP }`,
 * no unknown field, regular expressions that compile. Throws naming the field
 * (`permissions: 0.HTTP.PathRegex: ...`).
 */
export function validatePermissions(input: unknown): IntentionPermission[] {
  const r = intentionPermissionsSchema.safeParse(input)
  if (r.success) return r.data
  const issue = r.error.issues[0]!
  const keys = issue.code === 'unrecognized_keys' ? issue.keys : []
  const path = [...issue.path, ...keys.slice(0, 1)].map(String).join('.')
  const message = issue.code === 'unrecognized_keys' ? 'unknown field' : issue.message
  throw new MalformedIntentionError('permissions', `${path === '' ? '' : `${path}: `}${message}`)
}

/** Validates a whole set: every intention, and no two for the same (source, destination). */
export function validateIntentionSet(input: unknown): Intention[] {
  if (!Array.isArray(input)) throw new MalformedIntentionError('intention', 'intention set must be an array')
  const seen = new Map<string, number>()
  return input.map((item, i) => {
    const intention = validateIntention(item)
    const key = pairKey(intention.source, intention.destination)
    const first = seen.get(key)
    if (first !== undefined)
      throw new DuplicateIntentionError(intention.source, intention.destination, [first, i])
    seen.set(key, i)
    return intention
  })
}

/** Validates a default action. */
export function validateDefaultAction(value: unknown): IntentionAction {
  if (value !== 'allow' && value !== 'deny') {
    throw new InvalidIntentionActionError('defaultAction', `must be 'allow' or 'deny', got ${show(value)}`)
  }
  return value
}

/** Precedence from the table at the top: 4 (exact to exact) down to 1 (any to any). */
export function intentionPrecedence(intention: Pick<Intention, 'source' | 'destination'>): 1 | 2 | 3 | 4 {
  const dstExact = intention.destination !== WILDCARD
  const srcExact = intention.source !== WILDCARD
  if (dstExact) return srcExact ? 4 : 3
  return srcExact ? 2 : 1
}

/**
 * Decides one connection by scanning the list: fine for a one-off; use `IntentionIndex` on the
 * data path. `intentions` must be a validated set (see `validateIntentionSet`).
 */
export function decide(
  intentions: readonly Intention[],
  source: string,
  destination: string,
  defaultAction: IntentionAction = 'deny',
): IntentionDecision {
  checkQuery(source, destination)
  let best: Intention | undefined
  let bestPrecedence = 0
  for (const intention of intentions) {
    if (intention.source !== WILDCARD && intention.source !== source) continue
    if (intention.destination !== WILDCARD && intention.destination !== destination) continue
    const p = intentionPrecedence(intention)
    if (p > bestPrecedence) {
      best = intention
      bestPrecedence = p
    }
  }
  if (best === undefined) return { action: defaultAction }
  return best.permissions !== undefined
    ? { action: best.action, matched: best, permissions: best.permissions }
    : { action: best.action, matched: best }
}

/**
 * An immutable lookup structure over an intention set, validated on construction (throws the
 * same coded errors as `validateIntentionSet`). Build once per committed policy change; `decide`
 * does at most four map lookups and allocates nothing. `matched` is the index's own frozen,
 * normalised copy of the intention (unknown fields dropped), not the caller's object.
 */
export class IntentionIndex {
  readonly defaultAction: IntentionAction
  readonly size: number
  /** destination -> source -> intention, exact on both sides. */
  private readonly exact = new Map<string, Map<string, Intention>>()
  /** destination -> intention with source `*`. */
  private readonly anySource = new Map<string, Intention>()
  /** source -> intention with destination `*`. */
  private readonly anyDestination = new Map<string, Intention>()
  private readonly anyToAny: Intention | undefined
  private readonly defaultDecision: IntentionDecision
  private readonly decisions = new WeakMap<Intention, IntentionDecision>()

  constructor(intentions: readonly unknown[], defaultAction: IntentionAction = 'deny') {
    this.defaultAction = validateDefaultAction(defaultAction)
    this.defaultDecision = Object.freeze({ action: this.defaultAction })
    const list = validateIntentionSet(intentions)
    let anyToAny: Intention | undefined
    for (const intention of list) {
      Object.freeze(intention)
      this.decisions.set(
        intention,
        Object.freeze({
          action: intention.action,
          matched: intention,
          ...(intention.permissions !== undefined ? { permissions: deepFreeze(intention.permissions) } : {}),
        }),
      )
      const { source, destination } = intention
      if (destination !== WILDCARD && source !== WILDCARD) {
        let bySource = this.exact.get(destination)
        if (!bySource) {
          bySource = new Map()
          this.exact.set(destination, bySource)
        }
        bySource.set(source, intention)
      } else if (destination !== WILDCARD) {
        this.anySource.set(destination, intention)
      } else if (source !== WILDCARD) {
        this.anyDestination.set(source, intention)
      } else {
        anyToAny = intention
      }
    }
    this.anyToAny = anyToAny
    this.size = list.length
  }

  /** The decision for a connection from service `source` to service `destination`. */
  decide(source: string, destination: string): IntentionDecision {
    checkQuery(source, destination)
    const matched =
      this.exact.get(destination)?.get(source) ??
      this.anySource.get(destination) ??
      this.anyDestination.get(source) ??
      this.anyToAny
    return matched ? this.decisions.get(matched)! : this.defaultDecision
  }
}

function checkQuery(source: string, destination: string): void {
  if (!isDnsLabel(source))
    throw new InvalidIntentionQueryError(`source is not a service name: ${show(source)}`)
  if (!isDnsLabel(destination)) {
    throw new InvalidIntentionQueryError(`destination is not a service name: ${show(destination)}`)
  }
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}

function pairKey(source: string, destination: string): string {
  // Names cannot contain ' ', so this key is unambiguous.
  return `${source} ${destination}`
}

function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value)
  return value === null ? 'null' : typeof value
}
