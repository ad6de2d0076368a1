import { TypedEmitter, type Unsubscribe } from '../../common/events.ts'
import type { CheckRunner } from './checks.ts'
import type { LocalServiceRegistry } from './local-services.ts'
import type { CheckDefinition } from './service-definition.ts'
import { encodeNodePayload, type NodePayload } from './node-payload.ts'

export interface LocalPayloadPublisherInit {
  registry: Pick<LocalServiceRegistry, 'on' | 'list' | 'maxPayloadBytes'>
  checks: Pick<CheckRunner, 'on' | 'sync' | 'start' | 'stop' | 'status'>
  /** Checks added to local instances from outside their definition (the sidecar's own check). */
  extraChecks?: {
    checksFor(serviceId: string): CheckDefinition[]
    on(type: 'sidecar-checks:change', listener: () => void): Unsubscribe
  }
}

/**
 * Keeps this node's catalog payload (what it gossips about itself) in step with its registry
 * and checks. `start()` loads the registry's services into the check runner and starts it;
 * from then on a registration, a deregistration or a check status transition recomputes the
 * payload and emits `payload:change` if it differs. The agent puts `payload()` in its gossip
 * record's meta (`CATALOG_META_KEY`) on start and on every `payload:change`.
 */
export class LocalPayloadPublisher {
  private readonly events = new TypedEmitter<{ 'payload:change': NodePayload }>()
  private readonly registry: LocalPayloadPublisherInit['registry']
  private readonly checks: LocalPayloadPublisherInit['checks']
  private readonly extraChecks: LocalPayloadPublisherInit['extraChecks']
  private subscriptions: Unsubscribe[] = []
  private current: NodePayload
  private json: string
  private started = false

  constructor(init: LocalPayloadPublisherInit) {
    this.registry = init.registry
    this.checks = init.checks
    this.extraChecks = init.extraChecks
    this.current = this.compute()
    this.json = JSON.stringify(this.current)
  }

  on(type: 'payload:change', listener: (payload: NodePayload) => void): Unsubscribe {
    return this.events.on(type, listener)
  }

  /** The payload to gossip now. */
  payload(): NodePayload {
    return structuredClone(this.current)
  }

  start(): void {
    if (this.started) return
    this.started = true
    this.subscriptions = [
      this.registry.on('service:change', this.onServiceChange),
      this.checks.on('check:update', this.refresh),
      ...(this.extraChecks ? [this.extraChecks.on('sidecar-checks:change', this.refresh)] : []),
    ]
    this.checks.sync(this.registry.list())
    this.checks.start()
    this.refresh()
  }

  stop(): void {
    if (!this.started) return
    this.started = false
    for (const off of this.subscriptions) off()
    this.subscriptions = []
    this.checks.stop()
  }

  private readonly onServiceChange = (): void => {
    this.checks.sync(this.registry.list())
    this.refresh()
  }

  private readonly refresh = (): void => {
    const next = this.compute()
    const json = JSON.stringify(next)
    if (json === this.json) return
    this.current = next
    this.json = json
    this.events.emit('payload:change', structuredClone(next))
  }

  private compute(): NodePayload {
    // Cannot exceed the limit: the registry refuses registrations that would, and a status
    // takes the same single byte whatever its value.
    const extra = this.extraChecks
    const services = this.registry.list().map((d) => {
      const more = extra?.checksFor(d.id) ?? []
      return more.length === 0 ? d : { ...d, checks: [...d.checks, ...more] }
    })
    return encodeNodePayload(services, (id) => this.checks.status(id), this.registry.maxPayloadBytes)
  }
}
