/**
 * What the data plane needs from the rest of the agent, as narrow interfaces the agent implements
 * (or fills through the `Static*` sources in `sources.ts`). Nothing here touches the network:
 * every call on the data path is answered from local memory.
 *
 * Events are delivered synchronously through `on(type, listener)`, which returns a function that
 * removes the listener.
 */
import type { Registry } from 'prom-client'
import type { Clock } from '../common/clock.ts'
import type { Unsubscribe } from '../common/events.ts'
import type { Tracer } from './tracing.ts'

/** Removes a listener added with `on`. */
export type { Unsubscribe } from '../common/events.ts'

/** The TLS identity of one service on this node: its leaf, and the roots it trusts. */
export interface ServiceCertificate {
  /** Leaf certificate (PEM) carrying `spiffe://<trust-domain>/svc/<service>`. */
  certPem: string
  /** PKCS#8 private key of the leaf (PEM). */
  keyPem: string
  /** Intermediates sent after the leaf, e.g. the cross-signed new root during a root rotation. */
  intermediatesPem?: readonly string[]
  /** Trusted roots (PEM): peers must chain to one of them. Old and new side by side in a rotation. */
  rootsPem: readonly string[]
}

export interface CertificateSourceEvents {
  /** The leaf or the trusted roots changed; `current()` returns the new value. */
  'cert:rotated': ServiceCertificate
}

/** The current certificate of one service, and an event when it is replaced. */
export interface CertificateSource {
  /** Undefined until the first leaf is issued; a sidecar cannot start without one. */
  current(): ServiceCertificate | undefined
  on(type: 'cert:rotated', listener: (cert: ServiceCertificate) => void): Unsubscribe
}

/** One instance of an upstream service that may receive new connections. */
export interface Endpoint {
  /** Stable instance id (e.g. `<node>/<serviceId>`); with address and port, the endpoint's identity. */
  id: string
  /** Host to dial: the instance's node or service address. */
  address: string
  /** The instance's sidecar inbound (mTLS) port — not the app's own port. */
  port: number
  /** Relative weight (> 0) from the catalog: `weights.passing` or `weights.warning`. */
  weight: number
  /** Instance tags; traffic splits select subsets by tag. */
  tags: readonly string[]
  /** Instance metadata; resolver subsets may select on it (`Service.Meta.version == "v2"`). */
  meta?: Readonly<Record<string, string>>
  /** False when the instance is only `warning` (resolver subsets with OnlyPassing skip it). */
  passing?: boolean
  /** Service name (the expected SPIFFE service of the endpoint's certificate). */
  service: string
}

export interface EndpointSourceEvents {
  /** The healthy set changed; `current()` returns the new list. */
  'endpoints:change': readonly Endpoint[]
}

/**
 * The healthy instances of one upstream service. The agent derives it from the catalog: instances
 * whose status is passing or warning and that have a sidecar. An instance that leaves this set gets
 * no new connections; connections already open to it are left alone.
 */
export interface EndpointSource {
  current(): readonly Endpoint[]
  on(type: 'endpoints:change', listener: (endpoints: readonly Endpoint[]) => void): Unsubscribe
}

/**
 * `l7`: an intention with L7 permissions covers the pair: the connection may be admitted where each
 * request is checked (an `http` inbound with a request gate), and refused where it cannot be (tcp).
 */
export type AuthorizationDecision = 'allow' | 'deny' | 'l7'

/**
 * Authorization of a connection from service `source` to service `destination` (intentions,
 * held locally). Must answer synchronously and quickly: it runs on every inbound connection.
 */
export interface Authorizer {
  decide(source: string, destination: string): AuthorizationDecision
  /** The policy changed: open connections are checked again and the denied ones closed. */
  on(type: 'authz:change', listener: () => void): Unsubscribe
}

/** A structured log call, pino's `(fields, message)` shape. */
export type LogFn = (fields: Record<string, unknown>, message: string) => void

/** The subset of a pino logger the proxy uses. */
export interface ProxyLogger {
  info: LogFn
  warn: LogFn
  debug: LogFn
}

/** A logger that drops everything. */
export const silentLogger: ProxyLogger = {
  info: () => {},
  warn: () => {},
  debug: () => {},
}

export type AccessLogMode = 'off' | 'errors' | 'all'

/** `accessLog` as a mode. */
export function accessLogMode(v: boolean | AccessLogMode | undefined): AccessLogMode {
  return v === true ? 'all' : v === false || v === undefined ? 'off' : v
}

/** Whether an access line is written for this outcome under `mode`. */
export function shouldLogAccess(mode: AccessLogMode, status: number, result: string): boolean {
  return mode === 'all' || (mode === 'errors' && (status >= 500 || result !== 'ok'))
}

/** What every listener of a sidecar (inbound and outbound) is built with besides its own settings. */
export interface ListenerEnvironment {
  /** Metrics land here. Default: a private registry. */
  registry?: Registry
  logger?: ProxyLogger
  /**
   * Access log lines, one per connection (L4) or request (HTTP): `all`, only failures (`errors`:
   * a 5xx status or a proxy error), or `off`. `true` is `all`, `false` is `off`. Default `off`.
   */
  accessLog?: boolean | AccessLogMode
  /** Durations, ejection times, retry budgets and timeouts. Default `systemClock`. */
  clock?: Clock
  /** A span per HTTP request (`tracing.ts`). Default none: no tracing, `traceparent` passed on untouched. */
  tracer?: Tracer
}
