/**
 * Prometheus metrics of the data plane, registered once per registry and shared by every sidecar
 * of the agent. Each listener binds its label values once (`ListenerMetrics`), so the data path
 * increments pre-resolved children without building label objects.
 *
 * Labels: `service` is the sidecar's own service; `direction` is `inbound` or `outbound`;
 * `upstream` is the destination service (for inbound: the sidecar's service).
 *
 * Golden signals (HTTP mode; inbound: services whose protocol is http): `peermesh_proxy_responses_total`
 * counts every response the client got, by `code` and `class` (`2xx`..`5xx`), proxy-made ones
 * (502, 503, 504) included, so the
 * success rate is `sum(rate(responses_total{class!="5xx"})) / sum(rate(responses_total))`;
 * `peermesh_proxy_request_duration_seconds` is the request latency by `class` (p99 per upstream).
 * Timeouts are `peermesh_proxy_errors_total{reason="timeout"}`; concurrency-limit refusals are
 * `peermesh_proxy_limit_rejections_total`.
 *
 * `peermesh_proxy_latency_seconds` measures, per direction and mode:
 * - outbound L4: time to the first response byte, retries included;
 * - outbound HTTP: request received to last response byte sent;
 * - inbound: handshake done to the local app connected.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'

type Labels = 'service' | 'direction' | 'upstream'
export type Direction = 'inbound' | 'outbound'

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
  readonly requests: Counter<Labels>
  readonly errors: Counter<Labels | 'reason'>
  readonly retries: Counter<Labels>
  readonly ejections: Counter<Labels>
  readonly denied: Counter<'service' | 'source'>
  readonly latency: Histogram<Labels>
  readonly bytes: Counter<Labels | 'flow'>
  readonly responses: Counter<Labels | 'code' | 'class'>
  readonly requestDuration: Histogram<Labels | 'class'>
  readonly limitRejections: Counter<Labels | 'reason'>
  readonly grpcResponses: Counter<Labels | 'grpc_status'>

  private constructor(registry: Registry) {
    const registers = [registry]
    const labelNames = ['service', 'direction', 'upstream'] as const
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
      help: 'Requests proxied: HTTP requests in HTTP mode, connections in L4 mode.',
      labelNames,
      registers,
    })
    this.errors = new Counter({
      name: 'peermesh_proxy_errors_total',
      help: 'Failed requests or connections, by reason (connect, reset, timeout, no_endpoint, denied, local_connect, tls).',
      labelNames: [...labelNames, 'reason'],
      registers,
    })
    this.retries = new Counter({
      name: 'peermesh_proxy_retries_total',
      help: 'Attempts on another endpoint after a failure before the first response byte.',
      labelNames,
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
      help: 'HTTP responses sent to clients, by status code and class (proxy-generated 502/503/504 included).',
      labelNames: [...labelNames, 'code', 'class'],
      registers,
    })
    this.requestDuration = new Histogram({
      name: 'peermesh_proxy_request_duration_seconds',
      help: 'HTTP request duration, request received to last response byte, by response class.',
      labelNames: [...labelNames, 'class'],
      buckets: LATENCY_BUCKETS,
      registers,
    })
    this.limitRejections = new Counter({
      name: 'peermesh_proxy_limit_rejections_total',
      help: 'Requests (HTTP) or connections (L4) refused by a limit, by reason (concurrency-limit).',
      labelNames: [...labelNames, 'reason'],
      registers,
    })
    this.grpcResponses = new Counter({
      name: 'peermesh_proxy_grpc_responses_total',
      help: 'gRPC calls answered (HTTP/2 mode), by grpc-status 0-16 or "unknown"; proxy-made ones included.',
      labelNames: [...labelNames, 'grpc_status'],
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
  readonly requests: Counter.Internal
  readonly retries: Counter.Internal
  readonly ejections: Counter.Internal
  readonly latency: Histogram.Internal<Labels>
  readonly bytesRx: Counter.Internal
  readonly bytesTx: Counter.Internal
  private readonly errorsByReason = new Map<string, Counter.Internal>()
  private readonly deniedBySource = new Map<string, Counter.Internal>()
  private readonly byCode = new Map<
    number,
    { count: Counter.Internal; duration: Histogram.Internal<string> }
  >()
  private readonly rejectionsByReason = new Map<string, Counter.Internal>()
  private readonly byGrpcStatus = new Map<string, Counter.Internal>()

  constructor(
    private readonly metrics: ProxyMetrics,
    private readonly labels: Record<Labels, string>,
  ) {
    this.connections = metrics.connections.labels(labels)
    this.active = metrics.activeConnections.labels(labels)
    this.requests = metrics.requests.labels(labels)
    this.retries = metrics.retries.labels(labels)
    this.ejections = metrics.ejections.labels(labels)
    this.latency = metrics.latency.labels(labels)
    this.bytesRx = metrics.bytes.labels({ ...labels, flow: 'rx' })
    this.bytesTx = metrics.bytes.labels({ ...labels, flow: 'tx' })
  }

  error(reason: string): void {
    let child = this.errorsByReason.get(reason)
    if (!child) {
      child = this.metrics.errors.labels({ ...this.labels, reason })
      this.errorsByReason.set(reason, child)
    }
    child.inc()
  }

  /** One HTTP response with `status`, after `seconds`. */
  response(status: number, seconds: number): void {
    let c = this.byCode.get(status)
    if (c === undefined) {
      const cls = `${Math.floor(status / 100)}xx`
      c = {
        count: this.metrics.responses.labels({ ...this.labels, code: String(status), class: cls }),
        duration: this.metrics.requestDuration.labels({ ...this.labels, class: cls }),
      }
      // Codes are 100-599 from Node's parser; the map stays small.
      this.byCode.set(status, c)
    }
    c.count.inc()
    c.duration.observe(seconds)
  }

  /** One gRPC call answered with `grpcStatus` (from the network: anything but 0-16 is `unknown`). */
  grpcResponse(grpcStatus: string): void {
    const code = /^(?:\d|1[0-6])$/.test(grpcStatus) ? grpcStatus : 'unknown'
    let child = this.byGrpcStatus.get(code)
    if (!child) {
      child = this.metrics.grpcResponses.labels({ ...this.labels, grpc_status: code })
      this.byGrpcStatus.set(code, child)
    }
    child.inc()
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
