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
import {
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
}

export class UpstreamCore {
  readonly source: string
  readonly destination: string
  readonly trustDomain: string
  readonly bindAddress: string
  readonly bindPort: number
  readonly maxAttempts: number
  readonly connectTimeoutMs: number
  readonly logger: ProxyLogger
  readonly accessLog: boolean
  readonly clock: Clock
  readonly pool: EndpointPool
  readonly budget: RetryBudget
  readonly tls: ClientTlsMaterial
  readonly metrics: ListenerMetrics
  readonly checkServerIdentity: ReturnType<typeof serverIdentityCheck>
  readonly authorizer: Authorizer | undefined

  constructor(
    init: UpstreamListenerInit,
    hooks: Pick<ConstructorParameters<typeof EndpointPool>[0], 'onAdded' | 'onRetired'> = {},
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
    this.connectTimeoutMs = init.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS
    if (!(this.connectTimeoutMs > 0)) throw new InvalidProxyConfigError('connectTimeoutMs', 'must be > 0')
    this.logger = init.logger ?? silentLogger
    this.accessLog = init.accessLog ?? false
    this.clock = init.clock ?? systemClock
    this.authorizer = init.authorizer
    const registry = init.registry ?? new PromRegistry()
    this.metrics = ProxyMetrics.for(registry).listener(this.source, 'outbound', this.destination)
    this.budget = new RetryBudget(init.retryBudget)
    this.tls = new ClientTlsMaterial(init.certificates)
    this.checkServerIdentity = serverIdentityCheck(this.trustDomain, this.destination)
    this.pool = new EndpointPool({
      source: init.endpoints,
      outlier: validateOutlierConfig(init.outlier),
      clock: this.clock,
      rng: init.rng ?? Math.random,
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
    })
    if (init.split !== undefined) this.pool.setSplit(validateSplitConfig(init.split))
  }

  /**
   * Starts the shared parts (certificates, endpoint pool) and binds `server`; on a bind failure
   * undoes the start. Returns the bound port.
   */
  async open(server: Server, options: { signal?: AbortSignal } = {}): Promise<number> {
    this.tls.start()
    this.pool.start()
    try {
      return await listen(server, this.bindPort, this.bindAddress, options)
    } catch (error) {
      this.pool.stop()
      this.tls.stop()
      throw error
    }
  }

  /** Stops listening, destroys the listener's client sockets, then the pool and certificates. */
  async close(server: Server, clients: Iterable<{ destroy(): void }>): Promise<void> {
    const closed = closeServer(server)
    for (const socket of clients) socket.destroy()
    await closed
    this.pool.stop() // destroys every endpoint's connections
    this.tls.stop()
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
