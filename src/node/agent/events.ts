import type { TypedEmitter } from '../../common/events.ts'
import type { MemberView, SwimEventType } from '../../gossip/index.ts'
import type { ConnectEvents } from '../connect/events.ts'

/**
 * Every agent-level event, by name (`noun:verb`) and payload. One map for the whole agent: a
 * module that emits a new event adds it here, so a listener's payload is always typed.
 */
export interface AgentEvents extends MemberEvents, ConnectEvents {
  /** The seed dialer reached a seed (its peer id): gossip joins through it. */
  'seed:joined': string
  /** The Raft leader or term changed, as this agent sees it. */
  'leader:change': { leader: string | undefined; term: number }
  /** `PUT /v1/agent/leave` asked the agent to leave the cluster and stop (the CLI stops it). */
  'agent:leave': { accessorId: string }
}

/** Gossip's membership events, each with the member as gossip sees it after the change. */
export type MemberEvents = { [K in SwimEventType]: MemberView }

/** The agent's event bus: modules emit on it and subscribe to it (and unsubscribe on stop). */
export type AgentEventBus = TypedEmitter<AgentEvents>
