/**
 * The intention, the policy domain's one type for "who may connect to whom" (Consul's
 * service-intentions): written through Raft, held in the policy store, decided on by the
 * sidecars' `IntentionIndex` (src/proxy/intentions.ts).
 */
import { isDnsLabel } from '../../identity/ca/spiffe.ts'

export type IntentionAction = 'allow' | 'deny'

/** The source or destination that matches every service. */
export const WILDCARD = '*'

export interface Intention {
  /** Service name or `*`. */
  source: string
  /** Service name or `*`. */
  destination: string
  action: IntentionAction
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
