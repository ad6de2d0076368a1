import type { TypedEmitter } from '../../common/events.ts'
import type { MemberView, SwimEventType } from '../../gossip/index.ts'
import type { LeafCredentials } from '../../identity/index.ts'
import type { IntentionChange } from '../connect/connect-module.ts'

/**
 * Every agent-level event, by name (`noun:verb`) and payload. One map for the whole agent: a
 * module that emits a new event adds it here, so a listener's payload is always typed.
 */
export interface AgentEvents extends MemberEvents {
  /** The seed dialer reached a seed (its peer id): gossip joins through it. */
  'seed:joined': string
  /** The Raft leader or term changed, as this agent sees it. */
  'leader:change': { leader: string | undefined; term: number }
  /** The mesh CA's roots changed (created, rotated, old root dropped). */
  'ca:change': { activeRootId: string | undefined; roots: number }
  /** A local service got a new leaf certificate. */
  'cert:rotated': { service: string; current: LeafCredentials }
  /** The committed intentions (or the default action) changed. */
  'intention:change': IntentionChange
}

/** Gossip's membership events, each with the member as gossip sees it after the change. */
export type MemberEvents = { [K in SwimEventType]: MemberView }

/** The agent's event bus: modules emit on it and subscribe to it (and unsubscribe on stop). */
export type AgentEventBus = TypedEmitter<AgentEvents>
