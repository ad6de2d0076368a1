import { Registry as PromRegistry } from 'prom-client'
import { InvalidProxyConfigError } from './errors.ts'
import { InboundListener, type InboundListenerInit } from './inbound.ts'
import type { UpstreamListenerInit } from './outbound-common.ts'
import { H2OutboundListener } from './outbound-h2.ts'
import { HttpOutboundListener, type HttpOutboundListenerInit } from './outbound-http.ts'
import { OutboundListener, type OutboundListenerInit } from './outbound-tcp.ts'
import type { SplitConfig } from './split.ts'
import type { TrafficPolicy } from './traffic.ts'
import type { Authorizer, CertificateSource, EndpointSource, ListenerEnvironment } from './types.ts'

/** Per-upstream tuning; every field optional, defaults in `constants.ts`. */
export type UpstreamTuning = Partial<
  Pick<
    HttpOutboundListenerInit & OutboundListenerInit,
    | 'maxAttempts'
    | 'connectTimeoutMs'
    | 'outlier'
    | 'retryBudget'
    | 'replayBufferBytes'
    | 'requestTimeoutMs'
    | 'retryBodyBytes'
    | 'maxFreeSockets'
    | 'retryOnStatus'
  >
>

export interface SidecarUpstream extends UpstreamTuning {
  /** The upstream service. */
  destinationName: string
  /** 127.0.0.1 port for the local app; 0 picks a free one (tests). */
  localBindPort: number
  /**
   * The destination service's protocol: `http` balances per request over HTTP/1.1, `http2` and
   * `grpc` per request (stream) over HTTP/2 sessions, `tcp` per connection.
   */
  protocol: 'tcp' | 'http' | 'http2' | 'grpc'
  endpoints: EndpointSource
  split?: SplitConfig
  /** Routes, splits, resolvers, timeouts and limits; replaced later with `setPolicy`. */
  policy?: TrafficPolicy
  /** Instances of other services the policy may send to (see `UpstreamListenerInit`). */
  endpointsFor?: UpstreamListenerInit['endpointsFor']
}

export interface SidecarInit extends ListenerEnvironment {
  service: string
  trustDomain: string
  /** Public mTLS port (0 = any, for tests) and where the local app listens. */
  inbound: Pick<InboundListenerInit, 'port' | 'bindAddress' | 'localServicePort' | 'localServiceAddress'> &
    Partial<Pick<InboundListenerInit, 'handshakeTimeoutMs' | 'protocol' | 'gate'>>
  upstreams: readonly SidecarUpstream[]
  certificates: CertificateSource
  authorizer: Authorizer
  rng?: () => number
  /** Applied to every upstream under its own settings. */
  upstreamDefaults?: UpstreamTuning
}

export type AnyOutboundListener = OutboundListener | HttpOutboundListener | H2OutboundListener

export class Sidecar {
  readonly service: string
  readonly inbound: InboundListener
  private readonly outbound = new Map<string, AnyOutboundListener>()
  private state: 'new' | 'running' | 'stopped' = 'new'

  constructor(init: SidecarInit) {
    const registry = init.registry ?? new PromRegistry()
    const shared = {
      trustDomain: init.trustDomain,
      certificates: init.certificates,
      registry,
      ...(init.logger !== undefined ? { logger: init.logger } : {}),
      ...(init.accessLog !== undefined ? { accessLog: init.accessLog } : {}),
      ...(init.clock !== undefined ? { clock: init.clock } : {}),
      ...(init.tracer !== undefined ? { tracer: init.tracer } : {}),
    }
    this.service = init.service
    this.inbound = new InboundListener({
      ...shared,
      ...init.inbound,
      service: init.service,
      authorizer: init.authorizer,
    })
    for (const u of init.upstreams) {
      if (this.outbound.has(u.destinationName)) {
        throw new InvalidProxyConfigError('upstreams', `${u.destinationName} is listed twice`)
      }
      const { destinationName, localBindPort, protocol, endpoints, split, ...tuning } = u
      const common: UpstreamListenerInit = {
        ...shared,
        ...init.upstreamDefaults,
        ...tuning,
        sourceService: init.service,
        destinationService: destinationName,
        bindPort: localBindPort,
        endpoints,
        authorizer: init.authorizer,
        ...(init.rng !== undefined ? { rng: init.rng } : {}),
        ...(split !== undefined ? { split } : {}),
      }
      this.outbound.set(
        destinationName,
        protocol === 'http'
          ? new HttpOutboundListener(common)
          : protocol === 'http2' || protocol === 'grpc'
            ? new H2OutboundListener(common)
            : new OutboundListener(common),
      )
    }
  }

  /** The outbound listener for `destination`, if configured. */
  upstream(destination: string): AnyOutboundListener | undefined {
    return this.outbound.get(destination)
  }

  get upstreams(): ReadonlyMap<string, AnyOutboundListener> {
    return this.outbound
  }

  /** Starts the inbound, then every upstream; on a failure stops what started and rethrows. */
  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.state !== 'new') throw new InvalidProxyConfigError('state', `sidecar is ${this.state}`)
    this.state = 'running'
    try {
      await this.inbound.start(options)
      for (const listener of this.outbound.values()) await listener.start(options)
    } catch (error) {
      await this.stop()
      throw error
    }
  }

  /** Stops every listener and closes their connections. Safe to call more than once. */
  async stop(): Promise<void> {
    this.state = 'stopped'
    await Promise.all([this.inbound.stop(), ...[...this.outbound.values()].map((l) => l.stop())])
  }

  /** Applies a new traffic split (e.g. from the Raft config) to one upstream. */
  setSplit(destination: string, split: SplitConfig | undefined): void {
    const listener = this.outbound.get(destination)
    if (!listener) throw new InvalidProxyConfigError('destination', `no upstream ${destination}`)
    listener.setSplit(split)
  }

  /** Puts a new traffic policy in force on one upstream; no connection is closed. */
  setPolicy(destination: string, policy: TrafficPolicy): void {
    const listener = this.outbound.get(destination)
    if (!listener) throw new InvalidProxyConfigError('destination', `no upstream ${destination}`)
    listener.setPolicy(policy)
  }
}
