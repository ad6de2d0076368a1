/**
 * Prometheus metrics of the data plane, registered once per registry and shared by every sidecar
 * of the agent. Each listener binds its label values once (`ListenerMetrics`), so the data path
 * increments pre-resolved children without building label objects.
 *
 * Labels: `service` is the sidecar's own service; `direction` is `inbound` or `outbound`;
 * `upstream` is the destination service (for inbound: the sidecar's service); `route` is the
 * service-router route a request took, by its index in the router (`0`, `1`, ...), or `default`
 * (no route matched, no router, L4 mode, inbound): bounded by the router's 256 routes, and at
 * most MAX_ROUTE_LABELS values per listener in any case.
 *
 * Golden signals (HTTP mode; inbound: services whose protocol is http), per upstream and route:
 * - requests: `peermesh_proxy_requests_total`;
 * - responses: `peermesh_proxy_responses_total` counts every response the client got, by `code`,
 *   `class` (`2xx`..`5xx`) and `grpc_status` (empty unless the response is gRPC), proxy-made ones
 *   (502, 503, 504) included, so the success rate is
 *   `sum(rate(responses_total{class!="5xx"})) / sum(rate(responses_total))`;
 * - latency: `peermesh_proxy_request_duration_seconds` by `class` (p99 by `histogram_quantile`);
 * - retries: `peermesh_proxy_retries_total`;
 * - timeouts and other failures: `peermesh_proxy_errors_total{reason="timeout"}` — one family
 *   with a `reason` label rather than a counter per failure, so `sum without (reason)` counts
 *   each failed request once;
 * - ejections: `peermesh_proxy_ejections_total` (per upstream: an endpoint is ejected, not a route);
 * - limit rejections: `peermesh_proxy_limit_rejections_total` (per upstream: the limit is).
 *
 * `peermesh_proxy_latency_seconds` measures, per direction and mode:
 * - outbound L4: time to the first response byte, retries included;
 * - outbound HTTP: request received to last response byte sent;
 * - inbound: handshake done to the local app connected.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'

type Labels = 'service' | 'direction' | 'upstream'
type RouteLabels = Labels | 'route'
export type Direction = 'inbound' | 'outbound'

/** The `route` label of a request that took no service-router route. */
export const DEFAULT_ROUTE = 'default'
/** Distinct `route` values one listener records; later ones are counted as `other`. */
export const MAX_ROUTE_LABELS = 300
/** The `route` label past MAX_ROUTE_LABELS. */
export const OTHER_ROUTE = 'other'

/**
 * The `route` label of `route` under `routes`: its index in the router, or `default` for the
 * implicit route (any object that is not one of `routes`' destinations).
 */
export function routeLabelOf(routes: readonly { destination: unknown }[], route: unknown): string {
  for (let i = 0; i < routes.length; i++)
    if (routes[i]!.destination === route) return ROUTE_INDEX_LABELS[i] ?? String(i)
  return DEFAULT_ROUTE
}

const ROUTE_INDEX_LABELS = Array.from({ length: 256 }, (_, i) => String(i))

/**
 * The `grpc_status` label: `''` for a response that is not gRPC, the code for 0-16 (gRPC's
 * codes), `2` (UNKNOWN) for anything else a peer may send, as gRPC clients read it.
 */
export function grpcStatusLabel(status: number | string | undefined): string {
  if (status === undefined || status === '') return ''
  const n = typeof status === 'number' ? status : /^\d{1,2}$/.test(status) ? Number(status) : -1
  return Number.isInteger(n) && n >= 0 && n <= 16 ? String(n) : '2'
}

/** Latency buckets (seconds): sub-millisecond proxy hops up to multi-second slow requests. */
const LATENCY_BUCKETS = [
  0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]

export class ProxyMetrics {
  private static readonly byRegistry = new WeakMap<Registry, ProxyMetrics>()

  /** The metrics of `registry`, created on first use. */
  static for(registry: Registry): ProxyMetrics {
    let m = ProxyMetrics.byRegistry.get(registry)
    if (!m) {
      m = new ProxyMetrics(registry)
      ProxyMetrics.byRegistry.set(registry, m)
    }
    return m
  }

  readonly connections: Counter<Labels>
  readonly activeConnections: Gauge<Labels>
  readonly requests: Counter<RouteLabels>
  readonly errors: Counter<RouteLabels | 'reason'>
  readonly retries: Counter<RouteLabels>
  readonly ejections: Counter<Labels>
  readonly denied: Counter<'service' | 'source'>
  readonly latency: Histogram<Labels>
  readonly bytes: Counter<Labels | 'flow'>
  readonly responses: Counter<RouteLabels | 'code' | 'class' | 'grpc_status'>
  readonly requestDuration: Histogram<RouteLabels | 'class'>
  readonly limitRejections: Counter<Labels | 'reason'>

  private constructor(registry: Registry) {
    const registers = [registry]
    const labelNames = ['service', 'direction', 'upstream'] as const
    const routeLabelNames = [...labelNames, 'route'] as const
    this.connections = new Counter({
      name: 'peermesh_proxy_connections_total',
      help: 'Client connections accepted by a listener.',
      labelNames,
      registers,
    })
    this.activeConnections = new Gauge({
      name: 'peermesh_proxy_active_connections',
      help: 'Client connections open now.',
      labelNames,
      registers,
    })
    this.requests = new Counter({
      name: 'peermesh_proxy_requests_total',
      help: 'Requests proxied: HTTP requests in HTTP mode, connections in L4 mode; by service-router route.',
      labelNames: routeLabelNames,
      registers,
    })
    this.errors = new Counter({
      name: 'peermesh_proxy_errors_total',
      help: 'Failed requests or connections, by route and reason (connect, reset, timeout, no_endpoint, denied, local_connect, tls, conn_limit, handshake_limit; multiplexed L4: stream_limit, protocol; HTTP/1.1 requests refused on their header fields: duplicate_header, unsupported_transfer_coding).',
      labelNames: [...routeLabelNames, 'reason'],
      registers,
    })
    this.retries = new Counter({
      name: 'peermesh_proxy_retries_total',
      help: 'Attempts on another endpoint after a failure before the first response byte (or a retried status), by route.',
      labelNames: routeLabelNames,
      registers,
    })
    this.ejections = new Counter({
      name: 'peermesh_proxy_ejections_total',
      help: 'Endpoints ejected by passive outlier detection.',
      labelNames,
      registers,
    })
    this.denied = new Counter({
      name: 'peermesh_proxy_inbound_denied_total',
      help: 'Inbound connections refused by intention, by source service.',
      labelNames: ['service', 'source'],
      registers,
    })
    this.latency = new Histogram({
      name: 'peermesh_proxy_latency_seconds',
      help: 'Outbound L4: time to the first response byte (retries included); outbound HTTP: request duration; inbound: time to connect to the local app.',
      labelNames,
      buckets: LATENCY_BUCKETS,
      registers,
    })
    this.bytes = new Counter({
      name: 'peermesh_proxy_bytes_total',
      help: 'Bytes relayed, counted when a connection closes; flow=rx from clients, tx to clients.',
      labelNames: [...labelNames, 'flow'],
      registers,
    })
    this.responses = new Counter({
      name: 'peermesh_proxy_responses_total',
      help: 'HTTP responses sent to clients, by route, status code, class and gRPC status (empty unless gRPC); proxy-generated 502/503/504 included.',
      labelNames: [...routeLabelNames, 'code', 'class', 'grpc_status'],
      registers,
    })
    this.requestDuration = new Histogram({
      name: 'peermesh_proxy_request_duration_seconds',
      help: 'HTTP request duration, request received to last response byte, by route and response class.',
      labelNames: [...routeLabelNames, 'class'],
      buckets: LATENCY_BUCKETS,
      registers,
    })
    this.limitRejections = new Counter({
      name: 'peermesh_proxy_limit_rejections_total',
      help: 'Requests (HTTP) or connections (L4) refused by a limit, by reason (concurrency-limit).',
      labelNames: [...labelNames, 'reason'],
      registers,
    })
  }

  /** Children bound to one listener's labels. */
  listener(service: string, direction: Direction, upstream: string): ListenerMetrics {
    return new ListenerMetrics(this, { service, direction, upstream })
  }
}

/** A listener's pre-bound metric children. */
export class ListenerMetrics {
  readonly connections: Counter.Internal
  readonly active: Gauge.Internal<Labels>
  /** Requests on the `default` route (L4 connections, inbound, no router). */
  readonly requests: Counter.Internal
  /** Retries on the `default` route. */
  readonly retries: Counter.Internal
  readonly ejections: Counter.Internal
  readonly latency: Histogram.Internal<Labels>
  readonly bytesRx: Counter.Internal
  readonly bytesTx: Counter.Internal
  private readonly deniedBySource = new Map<string, Counter.Internal>()
  private readonly rejectionsByReason = new Map<string, Counter.Internal>()
  private readonly routes = new Map<string, RouteMetrics>()
  private readonly defaultRoute: RouteMetrics

  constructor(
    private readonly metrics: ProxyMetrics,
    private readonly labels: Record<Labels, string>,
  ) {
    this.connections = metrics.connections.labels(labels)
    this.active = metrics.activeConnections.labels(labels)
    this.ejections = metrics.ejections.labels(labels)
    this.latency = metrics.latency.labels(labels)
    this.bytesRx = metrics.bytes.labels({ ...labels, flow: 'rx' })
    this.bytesTx = metrics.bytes.labels({ ...labels, flow: 'tx' })
    this.defaultRoute = this.route(DEFAULT_ROUTE)
    this.requests = this.defaultRoute.requests
    this.retries = this.defaultRoute.retries
  }

  /** The children of one `route` label value (see `routeLabelOf`), created on first use. */
  route(route: string): RouteMetrics {
    let r = this.routes.get(route)
    if (r === undefined) {
      if (this.routes.size >= MAX_ROUTE_LABELS && route !== OTHER_ROUTE) return this.route(OTHER_ROUTE)
      r = new RouteMetrics(this.metrics, { ...this.labels, route })
      this.routes.set(route, r)
    }
    return r
  }

  /** One request proxied along `route` (default `default`). */
  request(route?: string): void {
    ;(route === undefined ? this.defaultRoute : this.route(route)).requests.inc()
  }

  /** One retry of a request along `route` (default `default`). */
  retry(route?: string): void {
    ;(route === undefined ? this.defaultRoute : this.route(route)).retries.inc()
  }

  /** One failed request or connection, by `reason` (`timeout`, `connect`, ...), along `route`. */
  error(reason: string, route?: string): void {
    ;(route === undefined ? this.defaultRoute : this.route(route)).error(reason)
  }

  /**
   * One HTTP response with `status`, after `seconds`; `route` (default `default`) and
   * `grpcStatus` (a gRPC response's `grpc-status`; absent: not gRPC) label it.
   */
  response(
    status: number,
    seconds: number,
    options?: { route?: string; grpcStatus?: number | string },
  ): void {
    const r = options?.route === undefined ? this.defaultRoute : this.route(options.route)
    r.response(status, seconds, options?.grpcStatus)
  }

  rejected(reason: string): void {
    let child = this.rejectionsByReason.get(reason)
    if (!child) {
      child = this.metrics.limitRejections.labels({ ...this.labels, reason })
      this.rejectionsByReason.set(reason, child)
    }
    child.inc()
  }

  denied(source: string): void {
    let child = this.deniedBySource.get(source)
    if (!child) {
      child = this.metrics.denied.labels({ service: this.labels.service, source })
      this.deniedBySource.set(source, child)
    }
    child.inc()
  }

  /** Adds a closed connection's byte counts. */
  addBytes(rx: number, tx: number): void {
    if (rx > 0) this.bytesRx.inc(rx)
    if (tx > 0) this.bytesTx.inc(tx)
  }
}

/** The children of one listener and route. */
export class RouteMetrics {
  readonly requests: Counter.Internal
  readonly retries: Counter.Internal
  private readonly errorsByReason = new Map<string, Counter.Internal>()
  /** By status (not gRPC), and by status × 32 + gRPC code (gRPC). */
  private readonly byCode = new Map<number, Counter.Internal>()
  private readonly byGrpcCode = new Map<number, Counter.Internal>()
  private readonly durationByClass = new Map<number, Histogram.Internal<string>>()

  constructor(
    private readonly metrics: ProxyMetrics,
    private readonly labels: Record<RouteLabels, string>,
  ) {
    this.requests = metrics.requests.labels(labels)
    this.retries = metrics.retries.labels(labels)
  }

  error(reason: string): void {
    let child = this.errorsByReason.get(reason)
    if (!child) {
      child = this.metrics.errors.labels({ ...this.labels, reason })
      this.errorsByReason.set(reason, child)
    }
    child.inc()
  }

  response(status: number, seconds: number, grpcStatus?: number | string): void {
    const grpc = grpcStatusLabel(grpcStatus)
    // Codes are 100-999 from Node's parsers and grpc codes 0-16: the maps stay small.
    const map = grpc === '' ? this.byCode : this.byGrpcCode
    const key = grpc === '' ? status : status * 32 + Number(grpc)
    let count = map.get(key)
    const cls = Math.floor(status / 100)
    if (count === undefined) {
      count = this.metrics.responses.labels({
        ...this.labels,
        code: String(status),
        class: `${cls}xx`,
        grpc_status: grpc,
      })
      map.set(key, count)
    }
    let duration = this.durationByClass.get(cls)
    if (duration === undefined) {
      duration = this.metrics.requestDuration.labels({ ...this.labels, class: `${cls}xx` })
      this.durationByClass.set(cls, duration)
    }
    count.inc()
    duration.observe(seconds)
  }
}
