import type { Logger } from 'pino'
import type {
  Authorizer,
  CertificateSource,
  Endpoint,
  EndpointSource,
  SplitConfig,
  Unsubscribe,
} from '../../proxy/index.ts'
import { Sidecar } from '../../proxy/index.ts'
import { type Cancel, type Clock, systemClock } from '../../common/clock.ts'
import { TypedEmitter } from '../../common/events.ts'
import type { AgentContext, AgentModule } from '../agent/agent.ts'
import {
  type Catalog,
  type HealthEntry,
  hostOf,
  type LocalServiceRegistry,
  type ServiceDefinition,
} from '../catalog/index.ts'
import { SIDECAR_DEFAULTS } from '../agent/defaults.ts'

const { noLeafRetryMs: NO_LEAF_RETRY_MS, leafWaitMs: LEAF_WAIT_MS } = SIDECAR_DEFAULTS

/** The catalog as the sidecars read it: healthy instances of a destination, and its changes. */
export type EndpointCatalog = Pick<Catalog, 'health' | 'on'>

/** What the sidecars need from the catalog module. */
export interface SidecarCatalog {
  readonly catalog: EndpointCatalog
  /** This agent's registrations; set once the catalog module has started. */
  readonly local?: Pick<LocalServiceRegistry, 'list' | 'on'> | undefined
}

export interface SidecarModuleComponents {
  catalog: SidecarCatalog
  security: MeshSecurity
  /** Default `systemClock`. */
  clock?: Clock
}

/**
 * What the sidecars need from the mesh's security layer (the connect module): a leaf certificate
 * kept fresh for each local service, the intentions, the trust domain and traffic splits.
 */
export interface MeshSecurity {
  trustDomain(): string
  /** Resolves true once the service's first leaf exists (false if the signal fired first). */
  ready?(service: string, signal: AbortSignal): Promise<boolean>
  /**
   * Whether this agent may publish the service (issue #12: its enrollment or a grant covers it).
   * False: the leader refuses its leaf, so its sidecar does not wait for one. Absent: true.
   */
  entitled?(service: string): boolean
  /** A certificate source for a service hosted here; its leaf is issued and rotated by the mesh CA. */
  certificates(service: string): CertificateSource
  /** Intentions held locally (no network on the data path). */
  authorizer(): Authorizer
  /** The service-splitter config for a destination, if any, and changes to it. */
  split?(destination: string): SplitConfig | undefined
  onSplitChange?(listener: (destination: string) => void): Unsubscribe
}

/** Instances of a service that may receive new connections: passing or warning, with a sidecar. */
export function endpointsOf(entries: readonly HealthEntry[]): Endpoint[] {
  const out: Endpoint[] = []
  for (const e of entries) {
    const sidecar = e.service.sidecar
    if (sidecar === undefined || e.status === 'critical') continue
    const weight = e.status === 'passing' ? e.service.weights.passing : e.service.weights.warning
    if (weight <= 0) continue
    out.push({
      id: `${e.node.peerId}/${e.service.id}`,
      // The sidecar's inbound listens on its node's address, whatever address the app has.
      address: e.node.address,
      port: sidecar.port,
      weight,
      tags: e.service.tags,
      service: e.service.name,
    })
  }
  return out.sort((a, b) => a.id.localeCompare(b.id))
}

/** The healthy instances of one destination, recomputed when the catalog changes. */
export class CatalogEndpointSource implements EndpointSource {
  private events = new TypedEmitter<{ 'endpoints:change': readonly Endpoint[] }>()
  private endpoints: Endpoint[]
  private key: string
  private readonly off: Unsubscribe

  constructor(
    private readonly catalog: EndpointCatalog,
    readonly destination: string,
  ) {
    this.endpoints = endpointsOf(catalog.health(destination))
    this.key = JSON.stringify(this.endpoints)
    this.off = catalog.on('catalog:change', () => this.refresh())
  }

  current(): readonly Endpoint[] {
    return this.endpoints
  }

  /** The protocol the destination's sidecars announce, if any instance is known. */
  protocol(): 'tcp' | 'http' | undefined {
    return this.catalog.health(this.destination).find((e) => e.service.sidecar !== undefined)?.service.sidecar
      ?.protocol
  }

  on(type: 'endpoints:change', listener: (endpoints: readonly Endpoint[]) => void): Unsubscribe {
    return this.events.on(type, listener)
  }

  /** Stops following the catalog and drops every listener. */
  close(): void {
    this.off()
    this.events = new TypedEmitter()
  }

  private refresh(): void {
    const next = endpointsOf(this.catalog.health(this.destination))
    const key = JSON.stringify(next)
    if (key === this.key) return
    this.key = key
    this.endpoints = next
    this.events.emit('endpoints:change', next)
  }
}

interface Running {
  sidecar: Sidecar
  sources: CatalogEndpointSource[]
  definitionKey: string
}

/**
 * Runs a sidecar for every local service registered with a `connect.sidecarService` block, and
 * stops it on deregistration. Endpoints come from the gossip catalog, certificates and
 * intentions from the mesh security layer.
 */
export class SidecarModule implements AgentModule {
  readonly name = 'sidecars'
  private readonly running = new Map<string, Running>()
  private log?: Logger
  private ctx?: AgentContext
  private queue: Promise<void> = Promise.resolve()
  private stopped = false
  private readonly abort = new AbortController()
  private readonly catalog: SidecarCatalog
  private readonly security: MeshSecurity
  private readonly clock: Clock
  private subscriptions: Unsubscribe[] = []
  private cancelRetry?: Cancel
  /** Services whose sidecar was not started as not entitled, logged once each. */
  private readonly notEntitledLogged = new Set<string>()

  constructor(components: SidecarModuleComponents) {
    this.catalog = components.catalog
    this.security = components.security
    this.clock = components.clock ?? systemClock
  }

  /** The sidecar of a local service, if running (tests, metrics). */
  sidecar(serviceId: string): Sidecar | undefined {
    return this.running.get(serviceId)?.sidecar
  }

  async start(ctx: AgentContext): Promise<void> {
    this.ctx = ctx
    this.log = ctx.log.child({ component: 'sidecar' })
    const local = this.catalog.local
    if (local === undefined) throw new Error('catalog module must start before sidecars')
    this.subscriptions.push(local.on('service:change', () => this.reconcile()))
    const offSplit = this.security.onSplitChange?.(() => this.reconcile())
    if (offSplit !== undefined) this.subscriptions.push(offSplit)
    // Not awaited: a sidecar waits for its first leaf, which needs a Raft leader, which may need
    // this agent to join first.
    this.reconcile()
  }

  async stop(): Promise<void> {
    this.stopped = true
    this.abort.abort()
    for (const off of this.subscriptions) off()
    this.subscriptions = []
    this.cancelRetry?.()
    await this.queue
    await Promise.all([...this.running.keys()].map((id) => this.stopOne(id)))
  }

  /** Brings the running sidecars in line with the registered services (serialised). */
  private reconcile(): void {
    this.queue = this.queue
      .then(() => this.reconcileNow())
      .catch((err: unknown) => {
        this.log?.error({ err }, 'sidecar reconcile failed')
      })
  }

  private async reconcileNow(): Promise<void> {
    if (this.stopped) return
    const wanted = new Map<string, ServiceDefinition>()
    for (const def of this.catalog.local!.list()) if (def.connect?.sidecarService) wanted.set(def.id, def)
    for (const id of [...this.running.keys()]) {
      const def = wanted.get(id)
      if (def === undefined || this.keyOf(def) !== this.running.get(id)!.definitionKey) await this.stopOne(id)
    }
    for (const [id, def] of wanted) {
      if (this.running.has(id)) continue
      try {
        await this.startOne(def)
      } catch (err) {
        this.log?.error({ err, service: def.name }, 'cannot start sidecar')
      }
    }
  }

  /**
   * Where inbound listeners bind: the host of the agent's first libp2p listen address (so a node
   * listening on 0.0.0.0 takes mesh traffic on every interface, and one on loopback stays local).
   * Not the announced address, which `--advertise` may set to an address of a NAT in front.
   */
  private bindAddress(): string {
    const host = hostOf(this.ctx?.config.listen[0] ?? '/ip4/127.0.0.1')
    return host === '' || host === '::' ? '0.0.0.0' : host
  }

  private keyOf(def: ServiceDefinition): string {
    const dests = def.connect!.sidecarService.upstreams.map((u) => u.destinationName)
    const splits = dests.map((d) => this.security.split?.(d))
    return JSON.stringify([def.connect, splits])
  }

  private async startOne(def: ServiceDefinition): Promise<void> {
    const ctx = this.ctx!
    const sc = def.connect!.sidecarService
    // Waiting for a leaf the leader refuses would hold every other sidecar's start for a minute.
    if (this.security.entitled?.(def.name) === false) {
      if (!this.notEntitledLogged.has(def.name)) {
        this.notEntitledLogged.add(def.name)
        this.log?.warn(
          { service: def.name },
          'sidecar not started: this agent may not publish this service (not enrolled yet, or no enrollment or grant gives it service:write); will look again',
        )
      }
      this.cancelRetry?.()
      this.cancelRetry = this.clock.setTimeout(() => this.reconcile(), NO_LEAF_RETRY_MS)
      return
    }
    this.notEntitledLogged.delete(def.name)
    if (this.security.ready !== undefined) {
      const signal = AbortSignal.any([this.abort.signal, AbortSignal.timeout(LEAF_WAIT_MS)])
      if (!(await this.security.ready(def.name, signal))) {
        if (!this.stopped) {
          this.log?.warn({ service: def.name }, 'no leaf certificate yet; will retry on the next change')
          this.cancelRetry?.()
          this.cancelRetry = this.clock.setTimeout(() => this.reconcile(), NO_LEAF_RETRY_MS)
        }
        return
      }
      if (this.stopped) return
    }
    const sources = sc.upstreams.map(
      (u) => new CatalogEndpointSource(this.catalog.catalog, u.destinationName),
    )
    const sidecar = new Sidecar({
      service: def.name,
      trustDomain: this.security.trustDomain(),
      // The inbound listens where the agent listens (loopback by default).
      inbound: { port: sc.port, localServicePort: sc.localServicePort, bindAddress: this.bindAddress() },
      upstreams: sc.upstreams.map((u, i) => {
        const split = this.security.split?.(u.destinationName)
        return {
          destinationName: u.destinationName,
          localBindPort: u.localBindPort,
          protocol: sources[i]!.protocol() ?? 'tcp',
          endpoints: sources[i]!,
          ...(split !== undefined ? { split } : {}),
        }
      }),
      certificates: this.security.certificates(def.name),
      authorizer: this.security.authorizer(),
      registry: ctx.metrics,
      logger: this.log!,
      accessLog: true,
    })
    await sidecar.start()
    this.running.set(def.id, { sidecar, sources, definitionKey: this.keyOf(def) })
    this.log?.info({ service: def.name, inbound: sc.port, upstreams: sc.upstreams }, 'sidecar:start')
  }

  private async stopOne(id: string): Promise<void> {
    const r = this.running.get(id)
    if (r === undefined) return
    this.running.delete(id)
    await r.sidecar.stop().catch(() => {})
    for (const s of r.sources) s.close()
    this.log?.info({ service: r.sidecar.service }, 'sidecar:stop')
  }
}
