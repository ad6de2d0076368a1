/**
 * The intention, the policy domain's one type for "who may connect to whom" (Consul's
 * service-intentions): written through Raft, held in the policy store, decided on by the
 * sidecars' `IntentionIndex` (src/proxy/intentions.ts).
 */
import { isDnsLabel } from '../../identity/ca/spiffe.ts'
import type { IntentionPermission } from './config-entries.ts'

export type { IntentionPermission } from './config-entries.ts'

export type IntentionAction = 'allow' | 'deny'

/** The source or destination that matches every service. */
export const WILDCARD = '*'

export interface Intention {
  /** Service name or `*`. */
  source: string
  /** Service name or `*`. */
  destination: string
  /**
   * L4 intentions: the decision. L7 intentions (with `permissions`): always `deny`, the answer to
   * a check that sees only the connection (Consul's, for an intention with Permissions), so
   * anything that does not read `permissions` fails closed.
   */
  action: IntentionAction
  /**
   * L7 intentions (Consul's `Permissions`): checked per request on the destination's inbound,
   * in order, the first match decides; no match falls back to the default action. Only for
   * http destinations: a tcp inbound refuses the connection.
   */
  permissions?: IntentionPermission[]
  /** Free text for humans; not used in decisions. */
  description?: string
  meta?: Record<string, string>
}

/** An intention as the policy store holds it: with the Raft indexes that created and last changed it. */
export interface StoredIntention extends Intention {
  createdIndex: number
  modifyIndex: number
}

/** True for a service name (a DNS label) or `*`. */
export function isIntentionName(value: unknown): value is string {
  return value === WILDCARD || isDnsLabel(value)
}
