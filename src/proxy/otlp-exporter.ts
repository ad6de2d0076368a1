/**
 * Sends ended spans to an OpenTelemetry collector over OTLP/HTTP with the JSON encoding
 * (opentelemetry-proto `docs/specification.md`, "JSON Protobuf Encoding"): `POST
 * {endpoint}/v1/traces`, `Content-Type: application/json`, an `ExportTraceServiceRequest` with
 * lowerCamelCase keys, trace and span ids as hex strings, enums as integers and 64-bit integers
 * (times in unix nanoseconds, integer attributes) as decimal strings. Written by hand: no SDK.
 *
 * Best effort, never in the request path's way: `export()` only appends to a bounded queue (a
 * full queue drops the span and counts it); batches leave on a timer or when a batch is full, one
 * request at a time, each cut at `exportTimeoutMs`. A failed batch is dropped and counted, not
 * retried: a collector that is down costs the proxy nothing but the counter.
 *
 * Metrics: `peermesh_tracing_spans_exported_total`, and
 * `peermesh_tracing_spans_dropped_total{reason="queue_full"|"export_failed"}`.
 */
import http from 'node:http'
import https from 'node:https'
import { Counter, type Registry } from 'prom-client'
import { type Cancel, type Clock, systemClock } from '../common/clock.ts'
import { InvalidProxyConfigError } from './errors.ts'
import {
  type AttributeValue,
  type FinishedSpan,
  otlpEndpointProblem,
  type SpanExporter,
  tracesUrl,
} from './tracing.ts'
import { type ProxyLogger, silentLogger } from './types.ts'

/** The exporter's defaults (OpenTelemetry's BatchSpanProcessor names), each with its reason. */
export const OTLP_EXPORTER_DEFAULTS = {
  /** Spans held while waiting to leave (OTel's default): a burst of ~2k requests between flushes. */
  maxQueueSize: 2048,
  /** Spans per request (OTel's default): ~0.5 MB of JSON, far under the collectors' 4-20 MiB limits. */
  maxExportBatchSize: 512,
  /** A batch leaves at most this long after its first span: traces show up within a second (OTel: 5 s). */
  scheduledDelayMs: 1_000,
  /** One export request: a collector on the LAN answers in milliseconds; a hung one is cut. */
  exportTimeoutMs: 10_000,
} as const

export interface OtlpHttpExporterInit {
  /** The collector's base URL, e.g. `http://127.0.0.1:4318`; spans go to `{endpoint}/v1/traces`. */
  endpoint: string
  maxQueueSize?: number
  maxExportBatchSize?: number
  scheduledDelayMs?: number
  exportTimeoutMs?: number
  /** `service.version` of every resource, and the instrumentation scope's version. */
  version?: string
  /** Extra resource attributes of every span (e.g. `host.name`). */
  resourceAttributes?: Readonly<Record<string, string>>
  /** Export counters land here. Default: none. */
  registry?: Registry
  logger?: ProxyLogger
  clock?: Clock
}

class ExporterMetrics {
  private static readonly byRegistry = new WeakMap<Registry, ExporterMetrics>()

  static for(registry: Registry): ExporterMetrics {
    let m = ExporterMetrics.byRegistry.get(registry)
    if (m === undefined) {
      m = new ExporterMetrics(registry)
      ExporterMetrics.byRegistry.set(registry, m)
    }
    return m
  }

  readonly exported: Counter
  readonly dropped: Counter<'reason'>

  private constructor(registry: Registry) {
    this.exported = new Counter({
      name: 'peermesh_tracing_spans_exported_total',
      help: 'Spans the OTLP collector accepted.',
      registers: [registry],
    })
    this.dropped = new Counter({
      name: 'peermesh_tracing_spans_dropped_total',
      help: 'Spans not delivered, by reason (queue_full: the export queue was full; export_failed: the collector refused the batch, failed or timed out).',
      labelNames: ['reason'],
      registers: [registry],
    })
  }
}

/** Counts since start (also in the registry's counters, when given one). */
export interface ExporterStats {
  exported: number
  droppedQueueFull: number
  droppedExportFailed: number
  /** Export requests sent (batches). */
  requests: number
}

export class OtlpHttpExporter implements SpanExporter {
  readonly url: URL
  readonly stats: ExporterStats = { exported: 0, droppedQueueFull: 0, droppedExportFailed: 0, requests: 0 }
  private readonly maxQueueSize: number
  private readonly maxBatch: number
  private readonly delayMs: number
  private readonly timeoutMs: number
  private readonly version: string | undefined
  private readonly resourceAttributes: readonly (readonly [string, string])[]
  private readonly clock: Clock
  private readonly logger: ProxyLogger
  private readonly metrics: ExporterMetrics | undefined
  private readonly agent: http.Agent
  private readonly transport: typeof http | typeof https
  private queue: FinishedSpan[] = []
  private cancelTimer: Cancel | undefined
  private inFlight: Promise<void> | undefined
  private state: 'new' | 'running' | 'stopped' = 'new'
  /** The last export failed: the next failure is not logged again (one line per outage). */
  private failing = false

  constructor(init: OtlpHttpExporterInit) {
    const problem = otlpEndpointProblem(init.endpoint)
    if (problem !== undefined) throw new InvalidProxyConfigError('otlpEndpoint', problem)
    this.url = tracesUrl(init.endpoint)
    this.maxQueueSize = positiveInt('maxQueueSize', init.maxQueueSize ?? OTLP_EXPORTER_DEFAULTS.maxQueueSize)
    this.maxBatch = positiveInt(
      'maxExportBatchSize',
      init.maxExportBatchSize ?? OTLP_EXPORTER_DEFAULTS.maxExportBatchSize,
    )
    if (this.maxBatch > this.maxQueueSize)
      throw new InvalidProxyConfigError('maxExportBatchSize', 'must not be larger than maxQueueSize')
    this.delayMs = positiveInt(
      'scheduledDelayMs',
      init.scheduledDelayMs ?? OTLP_EXPORTER_DEFAULTS.scheduledDelayMs,
    )
    this.timeoutMs = positiveInt(
      'exportTimeoutMs',
      init.exportTimeoutMs ?? OTLP_EXPORTER_DEFAULTS.exportTimeoutMs,
    )
    this.version = init.version
    this.resourceAttributes = Object.entries(init.resourceAttributes ?? {})
    this.clock = init.clock ?? systemClock
    this.logger = init.logger ?? silentLogger
    this.metrics = init.registry !== undefined ? ExporterMetrics.for(init.registry) : undefined
    this.transport = this.url.protocol === 'https:' ? https : http
    // One request at a time: one connection, kept alive between batches.
    this.agent = new this.transport.Agent({ keepAlive: true, maxSockets: 1 })
  }

  /** Spans queued before the start leave with the first batch. */
  start(): void {
    if (this.state !== 'new') return
    this.state = 'running'
    if (this.queue.length > 0) this.cancelTimer = this.clock.setTimeout(() => this.flush(), this.delayMs)
  }

  /** Queues a span (drops it, counted, when the queue is full or the exporter stopped). Never throws. */
  export(span: FinishedSpan): void {
    if (this.state === 'stopped' || this.queue.length >= this.maxQueueSize) {
      this.stats.droppedQueueFull++
      this.metrics?.dropped.inc({ reason: 'queue_full' })
      return
    }
    this.queue.push(span)
    if (this.inFlight !== undefined || this.state !== 'running') return
    if (this.queue.length >= this.maxBatch) {
      this.cancelTimer?.()
      this.cancelTimer = this.clock.defer(() => this.flush())
    } else if (this.cancelTimer === undefined) {
      this.cancelTimer = this.clock.setTimeout(() => this.flush(), this.delayMs)
    }
  }

  /** Spans waiting to leave. */
  get queued(): number {
    return this.queue.length
  }

  /**
   * Stops taking spans, sends what is queued (each batch within the export timeout), then closes
   * the connection. When `signal` fires, the export under way is cut and the rest dropped.
   */
  async stop(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.state === 'stopped') return
    const wasRunning = this.state === 'running'
    this.state = 'stopped'
    this.cancelTimer?.()
    this.cancelTimer = undefined
    const signal = options.signal
    // Destroying the agent's sockets fails the request under way: its batch is counted as dropped.
    const cut = (): void => this.agent.destroy()
    if (signal?.aborted) cut()
    signal?.addEventListener('abort', cut, { once: true })
    try {
      await this.inFlight
      while (wasRunning && this.queue.length > 0 && !signal?.aborted) await this.send()
    } finally {
      signal?.removeEventListener('abort', cut)
      this.dropQueued()
      this.agent.destroy()
    }
  }

  private dropQueued(): void {
    if (this.queue.length === 0) return
    this.stats.droppedExportFailed += this.queue.length
    this.metrics?.dropped.inc({ reason: 'export_failed' }, this.queue.length)
    this.queue = []
  }

  private flush(): void {
    this.cancelTimer = undefined
    if (this.inFlight !== undefined || this.queue.length === 0 || this.state !== 'running') return
    this.inFlight = this.send().finally(() => {
      this.inFlight = undefined
      if (this.state !== 'running' || this.queue.length === 0) return
      // More came in meanwhile: a full batch goes at once, a partial one after the delay.
      if (this.queue.length >= this.maxBatch) this.cancelTimer = this.clock.defer(() => this.flush())
      else this.cancelTimer = this.clock.setTimeout(() => this.flush(), this.delayMs)
    })
  }

  /** Sends one batch from the head of the queue; resolves when done, whatever the outcome. */
  private send(): Promise<void> {
    const batch = this.queue.splice(0, this.maxBatch)
    let body: string
    try {
      body = encodeExportRequest(batch, this.resourceAttributes, this.version)
    } catch (err) {
      this.failed(batch.length, `encoding failed: ${String(err)}`)
      return Promise.resolve()
    }
    this.stats.requests++
    return new Promise((resolve) => {
      let settled = false
      const done = (ok: boolean, why: string): void => {
        if (settled) return
        settled = true
        cancelTimeout()
        if (ok) {
          this.stats.exported += batch.length
          this.metrics?.exported.inc(batch.length)
          if (this.failing) this.logger.info({ url: this.url.href }, 'tracing: span export works again')
          this.failing = false
        } else this.failed(batch.length, why)
        resolve()
      }
      const req = this.transport.request(this.url, {
        method: 'POST',
        agent: this.agent,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      })
      const cancelTimeout = this.clock.setTimeout(() => {
        done(false, `no answer within ${this.timeoutMs} ms`)
        req.destroy()
      }, this.timeoutMs)
      req.on('response', (res) => {
        const status = res.statusCode ?? 0
        // The answer's body (an ExportTraceServiceResponse or a Status) is not needed.
        res.resume()
        res.on('error', () => {})
        done(status >= 200 && status < 300, `HTTP ${status}`)
      })
      req.on('error', (err: Error & { code?: string }) => done(false, err.code ?? err.message))
      req.end(body)
    })
  }

  private failed(n: number, why: string): void {
    this.stats.droppedExportFailed += n
    this.metrics?.dropped.inc({ reason: 'export_failed' }, n)
    if (!this.failing)
      this.logger.warn({ url: this.url.href, error: why, dropped: n }, `tracing: span export failed (${why})`)
    this.failing = true
  }
}

function positiveInt(field: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1)
    throw new InvalidProxyConfigError(field, 'must be a positive integer')
  return v
}

/** Name and version of the instrumentation scope of every span. */
export const SCOPE_NAME = 'peermesh-proxy'

/** Epoch milliseconds (with a fraction) as OTLP's fixed64 unix nanoseconds, a decimal string. */
export function unixNanos(ms: number): string {
  const whole = Math.floor(ms)
  const nanos = Math.min(999_999, Math.round((ms - whole) * 1e6))
  return (BigInt(whole) * 1_000_000n + BigInt(nanos)).toString()
}

type OtlpAnyValue =
  | { stringValue: string }
  | { intValue: string }
  | { doubleValue: number }
  | { boolValue: boolean }

function anyValue(v: AttributeValue): OtlpAnyValue {
  if (typeof v === 'string') return { stringValue: v }
  if (typeof v === 'boolean') return { boolValue: v }
  return Number.isInteger(v) ? { intValue: String(v) } : { doubleValue: v }
}

function keyValues(
  entries: Iterable<readonly [string, AttributeValue]>,
): { key: string; value: OtlpAnyValue }[] {
  const out: { key: string; value: OtlpAnyValue }[] = []
  for (const [key, v] of entries) out.push({ key, value: anyValue(v) })
  return out
}

/**
 * An OTLP JSON `ExportTraceServiceRequest` for `spans`: one `resourceSpans` per service (its
 * `service.name`), one scope, the spans in order.
 */
export function encodeExportRequest(
  spans: readonly FinishedSpan[],
  resourceAttributes: readonly (readonly [string, string])[] = [],
  version?: string,
): string {
  const byService = new Map<string, FinishedSpan[]>()
  for (const s of spans) {
    let list = byService.get(s.serviceName)
    if (list === undefined) {
      list = []
      byService.set(s.serviceName, list)
    }
    list.push(s)
  }
  const resourceSpans = []
  for (const [service, list] of byService) {
    const attrs: (readonly [string, string])[] = [['service.name', service], ...resourceAttributes]
    if (version !== undefined) attrs.push(['service.version', version])
    resourceSpans.push({
      resource: { attributes: keyValues(attrs) },
      scopeSpans: [
        {
          scope: { name: SCOPE_NAME, ...(version !== undefined ? { version } : {}) },
          spans: list.map((s) => ({
            traceId: s.traceId,
            spanId: s.spanId,
            ...(s.parentSpanId !== undefined ? { parentSpanId: s.parentSpanId } : {}),
            ...(s.traceState !== undefined ? { traceState: s.traceState } : {}),
            name: s.name,
            kind: s.kind,
            startTimeUnixNano: unixNanos(s.startMs),
            endTimeUnixNano: unixNanos(Math.max(s.endMs, s.startMs)),
            attributes: keyValues(s.attributes),
            status: s.status,
          })),
        },
      ],
    })
  }
  return JSON.stringify({ resourceSpans })
}
