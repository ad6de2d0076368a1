import type { LeafCredentials } from '../../identity/connect/leaf-rotator.ts'
import type { IntentionAction } from '../../raft/policy/intention.ts'
import type { StoredIntention } from '../../raft/policy/intention.ts'

/** What the connect module announces (the sidecars' certificate sources and authorizer listen). */
export interface ConnectEvents {
  /** The committed CA state changed (created, key granted, rotation started or finished). */
  'ca:change': { activeRootId: string | undefined; roots: number }
  /** A local service has a new leaf. */
  'cert:rotated': { service: string; current: LeafCredentials }
  /** The committed intentions or the default action changed. */
  'intention:change': IntentionChange
}

export interface IntentionChange {
  index: number
  intentions: StoredIntention[]
  defaultAction: IntentionAction
}
