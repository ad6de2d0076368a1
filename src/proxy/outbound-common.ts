/**
 * What both outbound modes (L4 and HTTP) share: configuration, the endpoint pool with outlier
 * detection, the retry budget, the client TLS context, metrics and logging.
 */
import { type Clock, systemClock } from '../common/clock.ts'
import type { Server, Socket } from 'node:net'
import { Registry as PromRegistry } from 'prom-client'
import { validateServiceName, validateTrustDomain } from '../identity/ca/spiffe.ts'
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_MAX_ATTEMPTS } from './constants.ts'
import { EndpointPool } from './endpoint-pool.ts'
import { InvalidProxyConfigError, ListenerStateError } from './errors.ts'
import { type ListenerMetrics, ProxyMetrics } from './metrics.ts'
import { type OutlierConfig, validateOutlierConfig } from './outlier.ts'
import { RetryBudget, type RetryBudgetConfig } from './retry-budget.ts'
import { type SplitConfig, validateSplitConfig } from './split.ts'
import { ClientTlsMaterial, serverIdentityCheck } from './tls-material.ts'
import { ConcurrencyLimit, type LimitTicket } from './concurrency-limit.ts'
import type { Tracer } from './tracing.ts'
import type { EndpointRecord } from './endpoint-pool.ts'
import {
  ALL_ROUTE,
  EMPTY_POLICY,
  hashKeyOf,
  type Plan,
  planTargets,
  type RequestView,
  type RouteDestination,
  type TrafficPolicy,
} from './traffic.ts'
import {
  type AccessLogMode,
  accessLogMode,
  type Authorizer,
  type CertificateSource,
  type EndpointSource,
  type ProxyLogger,
  type ListenerEnvironment,
  silentLogger,
} from './types.ts'

export interface UpstreamListenerInit extends ListenerEnvironment {
  /** The sidecar's service: the identity presented to endpoints. */
  sourceService: string
  /** The upstream service: endpoints must present its SPIFFE id. */
  destinationService: string
  trustDomain: string
  /** Port on `bindAddress` where the local app connects; 0 picks a free port (tests). */
  bindPort: number
  /** Default 127.0.0.1: the outbound side is for the local app only. */
  bindAddress?: string
  /** The source service's leaf and trusted roots. */
  certificates: CertificateSource
  /** Healthy instances of the destination. */
  endpoints: EndpointSource
  /**
   * Optional local view of intentions. When an endpoint closes a connection right after the
   * handshake and this says `deny`, the refusal is reported as `denied` and neither retried nor
   * held against the endpoint. The decision itself is always the destination's.
   */
  authorizer?: Authorizer
  /** Uniform [0, 1). Default Math.random. */
  rng?: () => number
  /** Attempts per connection or request, the first included. Default 3. */
  maxAttempts?: number
  /** Per attempt: TCP connect + TLS handshake. Default 1 s. */
  connectTimeoutMs?: number
  outlier?: Partial<OutlierConfig>
  retryBudget?: Partial<RetryBudgetConfig>
  /** Traffic split over tagged subsets; see `split.ts`. */
  split?: SplitConfig
  /** Routes, splits, resolvers, timeouts and limits from the config entries; see `traffic.ts`. */
  policy?: TrafficPolicy
  /**
   * Healthy instances of another service, for routes, splits and failover that leave the
   * upstream (called once per service; `close` is called when the listener stops). Without it,
   * only the upstream's own instances are reachable.
   */
  endpointsFor?: (service: string) => EndpointSource & { close?(): void }
}

export class UpstreamCore {
  readonly source: string
  readonly destination: string
  readonly trustDomain: string
  readonly bindAddress: string
  readonly bindPort: number
  readonly maxAttempts: number
  /** From the listener's settings; a policy may override it. */
  private readonly baseConnectTimeoutMs: number
  readonly logger: ProxyLogger
  readonly accessLog: AccessLogMode
  /** Uniform [0, 1). */
  readonly rng: () => number
  readonly clock: Clock
  readonly pool: EndpointPool
  readonly budget: RetryBudget
  readonly tls: ClientTlsMaterial
  readonly metrics: ListenerMetrics
  /** Undefined: no tracing. */
  readonly tracer: Tracer | undefined
  readonly checkServerIdentity: ReturnType<typeof serverIdentityCheck>
  readonly authorizer: Authorizer | undefined
  /** The traffic policy now in force; swapped whole by `setPolicy`. */
  policy: TrafficPolicy = EMPTY_POLICY
  /**
   * The plan of the implicit route when no random choice is involved (no splitter on the
   * upstream): computed once per policy instead of once per request.
   */
  private fixedPlan: Plan | undefined
  /** Concurrency limit (HTTP: requests; L4: connections), when the policy sets one. */
  limit: ConcurrencyLimit | undefined
  private readonly baseOutlier: Partial<OutlierConfig> | undefined
  private readonly pools = new Map<string, EndpointPool>()
  private readonly foreignSources: { close?(): void }[] = []
  private readonly poolInit: Omit<ConstructorParameters<typeof EndpointPool>[0], 'source'>
  private readonly endpointsFor: UpstreamListenerInit['endpointsFor']
  private started = false

  constructor(
    init: UpstreamListenerInit,
    hooks: Pick<ConstructorParameters<typeof EndpointPool>[0], 'onAdded' | 'onRetired'> = {},
    /** What the concurrency limit counts: requests (HTTP mode) or connections (L4). */
    readonly limitKind: 'requests' | 'connections' = 'connections',
  ) {
    this.source = validateServiceName(init.sourceService)
    this.destination = validateServiceName(init.destinationService)
    this.trustDomain = validateTrustDomain(init.trustDomain)
    this.bindAddress = init.bindAddress ?? '127.0.0.1'
    this.bindPort = checkPort('bindPort', init.bindPort, true)
    this.maxAttempts = init.maxAttempts ?? DEFAULT_MAX_ATTEMPTS
    if (!Number.isInteger(this.maxAttempts) || this.maxAttempts < 1 || this.maxAttempts > 10) {
      throw new InvalidProxyConfigError('maxAttempts', 'must be an integer from 1 to 10')
    }
    this.baseConnectTimeoutMs = init.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS
    if (!(this.baseConnectTimeoutMs > 0)) throw new InvalidProxyConfigError('connectTimeoutMs', 'must be > 0')
    this.logger = init.logger ?? silentLogger
    this.accessLog = accessLogMode(init.accessLog)
    this.rng = init.rng ?? Math.random
    this.clock = init.clock ?? systemClock
    this.authorizer = init.authorizer
    this.tracer = init.tracer
    const registry = init.registry ?? new PromRegistry()
    this.metrics = ProxyMetrics.for(registry).listener(this.source, 'outbound', this.destination)
    this.budget = new RetryBudget(init.retryBudget)
    this.tls = new ClientTlsMaterial(init.certificates)
    this.checkServerIdentity = serverIdentityCheck(this.trustDomain, this.destination)
    this.baseOutlier = init.outlier
    this.endpointsFor = init.endpointsFor
    this.poolInit = {
      outlier: validateOutlierConfig(init.outlier),
      clock: this.clock,
      rng: this.rng,
      ...hooks,
      onEjected: (record, untilMs) => {
        this.metrics.ejections.inc()
        this.logger.warn(
          {
            upstream: this.destination,
            endpoint: record.endpoint.id,
            address: `${record.endpoint.address}:${record.endpoint.port}`,
            ejectedForMs: Math.round(untilMs - this.clock.now()),
          },
          `outlier ejected upstream=${this.destination} endpoint=${record.endpoint.id}`,
        )
      },
    }
    this.pool = new EndpointPool({ ...this.poolInit, source: init.endpoints })
    this.pools.set(this.destination, this.pool)
    if (init.split !== undefined) this.pool.setSplit(validateSplitConfig(init.split))
    this.setPolicy(init.policy ?? EMPTY_POLICY)
  }

  private readonly identityChecks = new Map<string, ReturnType<typeof serverIdentityCheck>>()

  /** The TLS identity check for an instance of `service` (routes and failover may leave the upstream). */
  identityCheckFor(service: string): ReturnType<typeof serverIdentityCheck> {
    if (service === this.destination) return this.checkServerIdentity
    let check = this.identityChecks.get(service)
    if (check === undefined) {
      check = serverIdentityCheck(this.trustDomain, validateServiceName(service))
      this.identityChecks.set(service, check)
    }
    return check
  }

  /** Connect timeout for an instance of `service`: its resolver's, the policy's, the listener's. */
  connectTimeoutFor(service: string): number {
    return (
      this.policy.resolvers.get(service)?.connectTimeoutMs ??
      this.policy.connectTimeoutMs ??
      this.baseConnectTimeoutMs
    )
  }

  /**
   * Puts a new traffic policy in force: requests and connections that start from now on follow
   * it; those in flight keep the plan they started with, and no connection is closed.
   */
  setPolicy(policy: TrafficPolicy): void {
    const outlier = validateOutlierConfig({ ...this.baseOutlier, ...stripCount5xx(policy.outlier) })
    this.policy = policy
    this.fixedPlan = policy.splitters.has(this.destination)
      ? undefined
      : planTargets(policy, this.destination, ALL_ROUTE, 0)
    this.poolInit.outlier = outlier
    for (const pool of this.pools.values()) pool.setOutlier(outlier)
    const l = policy.limits
    const maxConcurrent = this.limitKind === 'requests' ? l?.maxConcurrentRequests : l?.maxConnections
    if (maxConcurrent === undefined) {
      // Limit lifted: whoever waits in its queue goes now.
      this.limit?.configure({ maxConcurrent: Number.POSITIVE_INFINITY, maxPending: 0 })
      this.limit = undefined
    } else {
      const config = {
        maxConcurrent,
        maxPending: this.limitKind === 'requests' ? (l?.maxPendingRequests ?? 0) : 0,
      }
      if (this.limit === undefined) this.limit = new ConcurrencyLimit(config)
      else this.limit.configure(config)
    }
  }

  /** Where a request along `route` goes (a fresh plan only when a split must be drawn). */
  /**
   * Runs `start` now, or once the destination's concurrency limit grants a slot. Returns the
   * ticket to release when done (undefined without a limit), or `false` when the limit and its
   * queue are full: counted as a `concurrency-limit` rejection, and `start` never runs.
   */
  admit(start: () => void): LimitTicket | undefined | false {
    const limit = this.limit
    if (limit === undefined) {
      start()
      return undefined
    }
    const admission = limit.admit(start)
    if (admission.ok) return admission.ticket
    this.metrics.rejected('concurrency-limit')
    return false
  }

  plan(route: RouteDestination): Plan {
    if (route === ALL_ROUTE && this.fixedPlan !== undefined) return this.fixedPlan
    return planTargets(this.policy, this.destination, route, this.rng())
  }

  /** The ring_hash/maglev key of a request along `plan`, or undefined (least-request pick). */
  hashKeyFor(plan: Plan, view: RequestView): string | undefined {
    const policies = plan.targets[0]?.loadBalancer?.hashPolicies
    return policies !== undefined && policies.length > 0 ? hashKeyOf(policies, view, this.source) : undefined
  }

  /**
   * The request timeout along `route` and `plan`: the route's, else the target service's
   * resolver's, else its service-defaults', else the policy's, else the listener's `fallbackMs`.
   */
  requestTimeoutFor(route: RouteDestination, plan: Plan, fallbackMs: number): number {
    const policy = this.policy
    const service = plan.targets[0]?.service ?? this.destination
    return (
      route.requestTimeoutMs ??
      policy.resolvers.get(service)?.requestTimeoutMs ??
      policy.serviceRequestTimeoutMs.get(service) ??
      policy.requestTimeoutMs ??
      fallbackMs
    )
  }

  /** The pool of `service`'s instances, created (and started, if running) on first use. */
  poolFor(service: string): EndpointPool | undefined {
    let pool = this.pools.get(service)
    if (pool !== undefined) return pool
    if (this.endpointsFor === undefined) return undefined
    const source = this.endpointsFor(service)
    this.foreignSources.push(source)
    pool = new EndpointPool({ ...this.poolInit, source })
    this.pools.set(service, pool)
    if (this.started) pool.start()
    return pool
  }

  /** Every pool (the upstream's and those of other services reached by the policy). */
  get allPools(): Iterable<EndpointPool> {
    return this.pools.values()
  }

  /** The endpoint for the next attempt along `plan`: the first target with a usable instance. */
  pickEndpoint(
    plan: Plan,
    tried: readonly EndpointRecord[],
    hashKey: string | undefined,
  ): EndpointRecord | undefined {
    // First an instance not tried yet, in target order (a retry after a failure moves on to the
    // failover targets); then, if every one was tried, a tried one again.
    for (const retryTried of [false, true]) {
      if (retryTried && tried.length === 0) break
      for (const t of plan.targets) {
        const pool = this.poolFor(t.service)
        if (pool === undefined) continue
        // The plain case keeps the pool's own split (Sidecar.setSplit) and its fallback.
        const plain = t.select === undefined && pool === this.pool && t.loadBalancer === undefined
        const r = plain
          ? pool.pick(tried, retryTried)
          : pool.pickFrom(t.select, t.lenient, tried, t.loadBalancer, hashKey, retryTried)
        if (r !== undefined) return r
      }
    }
    return undefined
  }

  /**
   * Starts the shared parts (certificates, endpoint pool) and binds `server`; on a bind failure
   * undoes the start. Returns the bound port.
   */
  async open(server: Server, options: { signal?: AbortSignal } = {}): Promise<number> {
    this.tls.start()
    this.started = true
    for (const pool of this.pools.values()) pool.start()
    try {
      return await listen(server, this.bindPort, this.bindAddress, options)
    } catch (error) {
      this.stopPools()
      this.tls.stop()
      throw error
    }
  }

  /** Stops listening, destroys the listener's client sockets, then the pool and certificates. */
  async close(server: Server, clients: Iterable<{ destroy(): void }>): Promise<void> {
    const closed = closeServer(server)
    for (const socket of clients) socket.destroy()
    await closed
    this.stopPools() // destroys every endpoint's connections
    this.tls.stop()
  }

  private stopPools(): void {
    this.started = false
    for (const pool of this.pools.values()) pool.stop()
    for (const s of this.foreignSources.splice(0)) s.close?.()
  }

  /** True when the local view of intentions denies source -> destination. */
  locallyDenied(): boolean {
    if (!this.authorizer) return false
    try {
      return this.authorizer.decide(this.source, this.destination) === 'deny'
    } catch {
      return false
    }
  }
}

/**
 * The lifecycle both outbound listeners share: listen once on start, close the server and every
 * client socket on stop, swap the traffic split at any time.
 */
export abstract class OutboundListenerBase {
  abstract readonly core: UpstreamCore
  protected abstract readonly server: Server
  /** Client sockets open on the listener, destroyed by `stop()`. */
  protected abstract readonly clientSockets: Set<Socket>
  private state: 'new' | 'running' | 'stopped' = 'new'
  private boundPort = 0

  /** The bound port (useful with `bindPort: 0`). */
  get port(): number {
    return this.boundPort
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.state !== 'new') throw new ListenerStateError(`outbound listener is ${this.state}`)
    this.boundPort = await this.core.open(this.server, options)
    this.state = 'running'
  }

  /** Stops listening and closes every open connection. */
  async stop(): Promise<void> {
    if (this.state !== 'running') {
      this.state = 'stopped'
      return
    }
    this.state = 'stopped'
    await this.core.close(this.server, this.clientSockets)
  }

  setSplit(split: SplitConfig | undefined): void {
    this.core.pool.setSplit(split === undefined ? undefined : validateSplitConfig(split))
  }

  /** Puts a new traffic policy in force without closing any connection; see `UpstreamCore.setPolicy`. */
  setPolicy(policy: TrafficPolicy): void {
    this.core.setPolicy(policy)
  }
}

function stripCount5xx(o: TrafficPolicy['outlier']): Partial<OutlierConfig> | undefined {
  if (o === undefined) return undefined
  const { count5xx: _, ...rest } = o
  return rest
}

export function checkPort(field: string, port: unknown, allowZero: boolean): number {
  if (typeof port !== 'number' || !Number.isInteger(port) || port < (allowZero ? 0 : 1) || port > 65535) {
    throw new InvalidProxyConfigError(
      field,
      `must be an integer port${allowZero ? ' (0 = any free port)' : ''}`,
    )
  }
  return port
}

/** Listens on `host:port`; rejects on a listen error or abort. Returns the bound port. */
export async function listen(
  server: Server,
  port: number,
  host: string,
  options: { signal?: AbortSignal } = {},
): Promise<number> {
  options.signal?.throwIfAborted()
  await new Promise<void>((resolve, reject) => {
    const onError = (error: Error) => {
      cleanup()
      reject(error)
    }
    const onAbort = () => {
      cleanup()
      server.close()
      reject(options.signal?.reason)
    }
    const cleanup = () => {
      server.off('error', onError)
      options.signal?.removeEventListener('abort', onAbort)
    }
    server.once('error', onError)
    options.signal?.addEventListener('abort', onAbort, { once: true })
    server.listen(port, host, () => {
      cleanup()
      resolve()
    })
  })
  const address = server.address()
  if (address === null || typeof address === 'string')
    throw new ListenerStateError('listener has no TCP address')
  return address.port
}

/** Closes a server and waits for it (open connections must be destroyed by the caller). */
export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve()
    server.close(() => resolve())
  })
}
