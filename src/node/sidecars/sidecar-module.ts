import { registerSidecarRoutes } from '../api/sidecar-routes.ts'
import type { Logger } from 'pino'
import type {
  Authorizer,
  CertificateSource,
  Endpoint,
  EndpointSource,
  SplitConfig,
  Unsubscribe,
} from '../../proxy/index.ts'
import type { InboundGate } from '../../proxy/inbound-gate.ts'
import type { OtlpHttpExporter } from '../../proxy/otlp-exporter.ts'
import type { Sidecar } from '../../proxy/sidecar.ts'
import type { IntentionIndex } from '../../proxy/intentions.ts'
import type { RateLimits } from '../../raft/policy/config-entries.ts'
import { VERSION } from '../agent/version.ts'
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
import { releaseYoungGeneration } from '../agent/young-generation.ts'
import type { TrafficPolicy } from '../../proxy/traffic.ts'
import {
  type ConfigEntryReader,
  compileUpstreamPolicy,
  configuredProtocol,
  NO_ENTRIES,
  readTrafficEntries,
  trafficEntriesStamp,
  type TrafficEntries,
} from './traffic-config.ts'

type DataPlane = typeof import('./data-plane.ts')
let dataPlane: Promise<DataPlane> | undefined

/**
 * The data plane, loaded once, when the first sidecar or the span exporter is built (never on a
 * request's path: a sidecar's listeners are bound after it resolved).
 */
function loadDataPlane(): Promise<DataPlane> {
  dataPlane ??= import('./data-plane.ts')
  return dataPlane
}

const {
  noLeafRetryMs: NO_LEAF_RETRY_MS,
  leafWaitMs: LEAF_WAIT_MS,
  tracingStopMs: TRACING_STOP_MS,
} = SIDECAR_DEFAULTS

/** The catalog as the sidecars read it: healthy instances of a destination, and its changes. */
export type EndpointCatalog = Pick<Catalog, 'health' | 'on'>

/** What the sidecars need from the catalog module. */
export interface SidecarCatalog {
  readonly catalog: EndpointCatalog
  /** This agent's registrations; set once the catalog module has started. */
  readonly local?: Pick<LocalServiceRegistry, 'list' | 'on' | 'get'> | undefined
}

export interface SidecarModuleComponents {
  catalog: SidecarCatalog
  security: MeshSecurity
  /**
   * The policy store's config entries (service-defaults, proxy-defaults, service-router,
   * service-splitter, service-resolver). Without it, only `security.split` shapes traffic.
   */
  config?: ConfigEntryReader
  /** Where a sidecar that cannot listen marks its service critical (the catalog's checks). */
  health?: SidecarHealth
  /** Default `systemClock`. */
  clock?: Clock
}

/** The sidecar's own health check of a local service instance. */
export interface SidecarHealth {
  /** Critical with `output` when its listeners cannot bind; passing once they are bound; cleared on deregistration. */
  setSidecarStatus(serviceId: string, status: 'passing' | 'critical' | undefined, output: string): void
}

/** Whether a service's sidecar listeners are bound (`whenReady`). */
export type SidecarReadiness = { ok: true } | { ok: false; error: string }

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
  /**
   * The intentions in force now, for the inbound request gates (L7 permissions). Absent: no
   * gate, so sources with L7 intentions are refused (fail closed).
   */
  intentionIndex?(): IntentionIndex
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
      meta: e.service.meta,
      passing: e.status === 'passing',
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
  /** The inbound's request gate (L7 intentions, rate limits), if any. */
  gate: InboundGate | undefined
  sources: CatalogEndpointSource[]
  definitionKey: string
  /** Service name and upstream names, to recompile policies. */
  service: string
  upstreams: string[]
}

interface Failed {
  definitionKey: string
  error: string
  /** When to try binding again (the clock's ms). */
  retryAt: number
}

/**
 * A sidecar that could not bind is tried again this often: a taken port is freed by a person or
 * a restarting process, in seconds to minutes; 5 s notices soon and costs one bind attempt.
 */
const BIND_RETRY_MS = 5_000

/** `http` is balanced per request over HTTP/1.1, `http2` and `grpc` per stream; the rest per connection (L4). */
function listenerMode(protocol: string | undefined): 'tcp' | 'http' | 'http2' | 'grpc' {
  return protocol === 'http' || protocol === 'http2' || protocol === 'grpc' ? protocol : 'tcp'
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
  private cancelBindRetry?: Cancel
  /** Services whose sidecar was not started as not entitled, logged once each. */
  private readonly notEntitledLogged = new Set<string>()
  private readonly config: ConfigEntryReader | undefined
  private readonly health: SidecarHealth | undefined
  private entries: TrafficEntries = NO_ENTRIES
  /** `trafficEntriesStamp` of what `entries` was read at. */
  private entriesStamp: string | undefined
  /** Sidecars whose listeners could not bind, until their definition changes. */
  private readonly failed = new Map<string, Failed>()
  /** `whenReady` callers waiting for the next outcome, by service id. */
  private readonly waiters = new Map<string, ((r: SidecarReadiness) => void)[]>()
  /** The agent's span exporter, shared by every sidecar; undefined when tracing is off. */
  private exporter: OtlpHttpExporter | undefined

  constructor(components: SidecarModuleComponents) {
    this.catalog = components.catalog
    this.security = components.security
    this.config = components.config
    this.health = components.health
    this.clock = components.clock ?? systemClock
  }

  /**
   * Resolves once the sidecar of local service `serviceId` has bound its listeners (`ok: true`)
   * or failed to (`ok: false`, e.g. "port 21000 is in use"). At once if that is already known
   * for its current definition; otherwise at the next outcome, or with `ok: false` when `signal`
   * fires (a sidecar waits for its first leaf certificate, which needs a Raft leader).
   */
  whenReady(serviceId: string, options: { signal?: AbortSignal } = {}): Promise<SidecarReadiness> {
    if (this.running.has(serviceId)) return Promise.resolve({ ok: true })
    const failed = this.failed.get(serviceId)
    if (failed !== undefined) return Promise.resolve({ ok: false, error: failed.error })
    return new Promise((resolve) => {
      const signal = options.signal
      if (signal?.aborted) return resolve({ ok: false, error: 'sidecar not started yet' })
      const list = this.waiters.get(serviceId) ?? []
      const settle = (r: SidecarReadiness): void => {
        signal?.removeEventListener('abort', onAbort)
        resolve(r)
      }
      const onAbort = (): void => {
        const l = this.waiters.get(serviceId)
        const i = l?.indexOf(settle) ?? -1
        if (i >= 0) l!.splice(i, 1)
        resolve({ ok: false, error: 'sidecar not started yet' })
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      list.push(settle)
      this.waiters.set(serviceId, list)
    })
  }

  private settle(serviceId: string, r: SidecarReadiness): void {
    const list = this.waiters.get(serviceId)
    if (list === undefined) return
    this.waiters.delete(serviceId)
    for (const w of list) w(r)
  }

  /** The sidecar of a local service, if running (tests, metrics). */
  sidecar(serviceId: string): Sidecar | undefined {
    return this.running.get(serviceId)?.sidecar
  }

  async start(ctx: AgentContext): Promise<void> {
    this.ctx = ctx
    this.log = ctx.log.child({ component: 'sidecar' })
    const tracing = ctx.config.tracing
    if (tracing !== undefined) {
      const { OtlpHttpExporter } = await loadDataPlane()
      this.exporter = new OtlpHttpExporter({
        endpoint: tracing.otlpEndpoint,
        version: VERSION,
        resourceAttributes: { 'host.name': ctx.config.name },
        registry: ctx.metrics,
        logger: this.log,
        clock: this.clock,
      })
      this.exporter.start()
      this.log.info(
        { otlpEndpoint: this.exporter.url.href, sampleRatio: tracing.sampleRatio },
        'tracing: sidecar spans go to the OTLP collector',
      )
    }
    const local = this.catalog.local
    if (local === undefined) throw new Error('catalog module must start before sidecars')
    this.subscriptions.push(local.on('service:change', () => this.reconcile()))
    registerSidecarRoutes(ctx.http, { local, whenReady: (id, options) => this.whenReady(id, options) })
    if (this.config !== undefined) {
      this.entriesStamp = trafficEntriesStamp(this.config)
      this.entries = readTrafficEntries(this.config)
      this.subscriptions.push(this.config.onChange(() => this.onConfigChange()))
    } else {
      const offSplit = this.security.onSplitChange?.(() => this.reconcile())
      if (offSplit !== undefined) this.subscriptions.push(offSplit)
    }
    // Not awaited: a sidecar waits for its first leaf, which needs a Raft leader, which may need
    // this agent to join first.
    this.reconcile()
  }

  /**
   * A config entry changed: running listeners get their new policy at once (no connection is
   * closed); a sidecar whose upstream changes protocol is restarted by the reconcile.
   */
  private onConfigChange(): void {
    const stamp = trafficEntriesStamp(this.config)
    if (stamp !== undefined && stamp === this.entriesStamp) return
    this.entriesStamp = stamp
    const next = readTrafficEntries(this.config)
    if (next.key === this.entries.key) return
    this.entries = next
    for (const r of this.running.values()) {
      r.gate?.setRateLimits(this.rateLimitsOf(r.service))
      for (const dest of r.upstreams) {
        try {
          r.sidecar.setPolicy(dest, this.policyFor(r.service, dest))
        } catch (err) {
          this.log?.warn(
            { service: r.service, upstream: dest, err: String(err) },
            'traffic policy not applied',
          )
        }
      }
    }
    this.reconcile()
  }

  /** The service's `RateLimits` (service-defaults), enforced by its inbound. */
  private rateLimitsOf(service: string): RateLimits | undefined {
    return this.entries.serviceDefaults.get(service)?.RateLimits
  }

  private policyFor(service: string, upstream: string): TrafficPolicy {
    return compileUpstreamPolicy(this.entries, service, upstream)
  }

  async stop(): Promise<void> {
    this.stopped = true
    this.abort.abort()
    for (const off of this.subscriptions) off()
    this.subscriptions = []
    this.cancelRetry?.()
    this.cancelBindRetry?.()
    await this.queue
    await Promise.all([...this.running.keys()].map((id) => this.stopOne(id)))
    // The last spans go out, unless the collector keeps the agent from stopping.
    await this.exporter?.stop({ signal: AbortSignal.timeout(TRACING_STOP_MS) })
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
    for (const [id, f] of [...this.failed]) {
      const def = wanted.get(id)
      if (def === undefined || this.keyOf(def) !== f.definitionKey) {
        this.failed.delete(id)
        if (def === undefined) this.health?.setSidecarStatus(id, undefined, '')
      }
    }
    for (const [id, def] of wanted) {
      if (this.running.has(id)) continue
      // A sidecar that could not bind is tried again every BIND_RETRY_MS (sooner if redefined).
      const failed = this.failed.get(id)
      if (failed !== undefined && this.clock.now() < failed.retryAt) continue
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

  /** What a running sidecar is restarted for: its definition, and its upstreams' protocols. */
  private keyOf(def: ServiceDefinition): string {
    const dests = def.connect!.sidecarService.upstreams.map((u) => u.destinationName)
    if (this.config !== undefined) {
      // Policies are applied to running listeners; only a change of listener mode restarts.
      return JSON.stringify([
        def.connect,
        // The service's own protocol: its inbound counts HTTP responses or not.
        listenerMode(configuredProtocol(this.entries, def.name) ?? def.connect!.sidecarService.protocol),
        dests.map((d) => {
          const p = configuredProtocol(this.entries, d)
          return p === undefined ? undefined : listenerMode(p)
        }),
      ])
    }
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
    const { InboundGate, Sidecar, Tracer } = await loadDataPlane()
    if (this.stopped) return
    const sources = sc.upstreams.map(
      (u) => new CatalogEndpointSource(this.catalog.catalog, u.destinationName),
    )
    const security = this.security
    const gate =
      security.intentionIndex === undefined
        ? undefined
        : new InboundGate({
            service: def.name,
            // Read per request: an intention change applies to the next request on every connection.
            intentions: () => security.intentionIndex!(),
            rateLimits: this.rateLimitsOf(def.name),
            now: () => this.clock.now(),
          })
    releaseYoungGeneration() // a data plane under load needs V8's full new space (young-generation.ts)
    const sidecar = new Sidecar({
      service: def.name,
      trustDomain: this.security.trustDomain(),
      // The inbound listens where the agent listens (loopback by default).
      inbound: {
        port: sc.port,
        localServicePort: sc.localServicePort,
        bindAddress: this.bindAddress(),
        // An http service's inbound serves requests one by one: gated, counted by status code.
        protocol: listenerMode(configuredProtocol(this.entries, def.name) ?? sc.protocol),
        ...(gate !== undefined ? { gate } : {}),
      },
      upstreams: sc.upstreams.map((u, i) => {
        const dest = u.destinationName
        const protocol = listenerMode(configuredProtocol(this.entries, dest) ?? sources[i]!.protocol())
        if (this.config !== undefined) {
          return {
            destinationName: dest,
            localBindPort: u.localBindPort,
            protocol,
            endpoints: sources[i]!,
            policy: this.policyFor(def.name, dest),
            endpointsFor: (service: string) => new CatalogEndpointSource(this.catalog.catalog, service),
          }
        }
        const split = this.security.split?.(dest)
        return {
          destinationName: dest,
          localBindPort: u.localBindPort,
          protocol,
          endpoints: sources[i]!,
          ...(split !== undefined ? { split } : {}),
        }
      }),
      certificates: this.security.certificates(def.name),
      authorizer: this.security.authorizer(),
      registry: ctx.metrics,
      logger: this.log!,
      accessLog: ctx.config.accessLog ?? 'errors',
      ...(this.exporter !== undefined
        ? {
            tracer: new Tracer({
              serviceName: def.name,
              exporter: this.exporter,
              sampleRatio: ctx.config.tracing?.sampleRatio ?? 1,
              clock: this.clock,
            }),
          }
        : {}),
    })
    const definitionKey = this.keyOf(def)
    try {
      await sidecar.start()
    } catch (err) {
      for (const s of sources) s.close()
      const error = bindFailure(err, sc)
      if (error === undefined) throw err
      // A taken port is the user's to fix: no stack trace, the instance critical until then.
      const before = this.failed.get(def.id)
      this.failed.set(def.id, { definitionKey, error, retryAt: this.clock.now() + BIND_RETRY_MS })
      if (before?.error !== error) {
        this.log?.warn(
          { service: def.name, serviceId: def.id },
          `sidecar not started: ${error}; will try again every ${BIND_RETRY_MS / 1000} s`,
        )
      }
      this.health?.setSidecarStatus(def.id, 'critical', error)
      this.settle(def.id, { ok: false, error })
      this.cancelBindRetry?.()
      this.cancelBindRetry = this.clock.setTimeout(() => this.reconcile(), BIND_RETRY_MS)
      return
    }
    this.failed.delete(def.id)
    this.running.set(def.id, {
      sidecar,
      gate,
      sources,
      definitionKey,
      service: def.name,
      upstreams: sc.upstreams.map((u) => u.destinationName),
    })
    this.health?.setSidecarStatus(def.id, 'passing', 'sidecar listeners bound')
    this.settle(def.id, { ok: true })
    this.log?.info({ service: def.name, inbound: sc.port, upstreams: sc.upstreams }, 'sidecar:start')
  }

  private async stopOne(id: string): Promise<void> {
    const r = this.running.get(id)
    if (r === undefined) return
    this.running.delete(id)
    if (!this.catalog.local?.list().some((d) => d.id === id)) this.health?.setSidecarStatus(id, undefined, '')
    await r.sidecar.stop().catch(() => {})
    for (const s of r.sources) s.close()
    this.log?.info({ service: r.sidecar.service }, 'sidecar:stop')
  }
}

/**
 * "port 21000 (inbound) is in use" for a listen error on one of the sidecar's ports, or undefined
 * for any other error (a bug, logged with its stack).
 */
function bindFailure(
  err: unknown,
  sc: { port: number; upstreams: readonly { destinationName: string; localBindPort: number }[] },
): string | undefined {
  const e = err as NodeJS.ErrnoException & { port?: number; address?: string }
  if (e?.syscall !== 'listen') return undefined
  const port = e.port
  const which =
    port === sc.port ? 'inbound' : sc.upstreams.find((u) => u.localBindPort === port)?.destinationName
  const what = which === undefined ? '' : which === 'inbound' ? ' (inbound)' : ` (upstream ${which})`
  const why =
    e.code === 'EADDRINUSE' ? 'is in use' : e.code === 'EACCES' ? 'is not permitted' : `failed (${e.code})`
  return `port ${port}${what} ${why}`
}
