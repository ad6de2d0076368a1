import { randomUUID } from 'node:crypto'
import type { Logger } from 'pino'
import type { Unsubscribe } from '../../common/events.ts'
import type { UserEvent } from '../../gossip/index.ts'
import type { AgentContext, AgentModule } from '../agent/agent.ts'
import { registerEventRoutes } from '../api/event-routes.ts'
import { UserEventBuffer } from './event-buffer.ts'
import {
  decodeEventBody,
  encodeEventBody,
  eventAppliesTo,
  type EventTarget,
  type UserEventRecord,
} from './user-event.ts'

/** What user events need from gossip (the gossip module implements it). */
export interface EventGossip {
  /** Fires an event to every member; returns it as delivered here (with its Lamport time). */
  fireUserEvent(id: string, body: Uint8Array): UserEvent
  /** User events new to this node, its own included. */
  onUserEvent(listener: (e: UserEvent) => void): Unsubscribe
}

export interface EventModuleComponents {
  gossip: EventGossip
  /** The services registered on this agent, for events' service and tag filters. */
  localServices(): EventTarget['services']
}

/**
 * User events (Consul's `consul event`): fired through this agent's API, carried to every agent
 * by gossip (signed by the firing node), kept by each agent they are for in a ring of the last
 * 256 (`GET /v1/event/list`). The firing agent checks `event:write`; the others trust its
 * signature, as Consul's agents trust Serf.
 */
export class EventModule implements AgentModule {
  readonly name = 'events'
  /** The events this agent kept (set once started). */
  buffer?: UserEventBuffer
  private off?: Unsubscribe
  private log?: Logger

  constructor(private readonly components: EventModuleComponents) {}

  start(ctx: AgentContext): void {
    const log = ctx.log.child({ component: 'events' })
    this.log = log
    const buffer = new UserEventBuffer(ctx.clock)
    this.buffer = buffer
    const { gossip, localServices } = this.components
    this.off = gossip.onUserEvent((u) =>
      this.receive(u, { node: ctx.config.name, services: localServices() }),
    )
    registerEventRoutes(ctx.http, {
      events: buffer,
      fire: (e) => {
        const id = randomUUID()
        const fired = gossip.fireUserEvent(id, encodeEventBody(e))
        return { ...e, id, ltime: fired.ltime }
      },
    })
  }

  stop(): void {
    this.off?.()
  }

  private receive(u: UserEvent, target: EventTarget): void {
    const e: UserEventRecord | undefined = decodeEventBody(u.id, u.ltime, u.body)
    if (e === undefined) {
      this.log?.warn({ id: u.id, origin: u.origin }, 'ignored a malformed user event')
      return
    }
    if (!eventAppliesTo(e, target)) return
    this.buffer?.add(e)
    this.log?.info({ event: e.name, id: e.id, origin: u.origin, ltime: e.ltime }, 'user event')
  }
}
