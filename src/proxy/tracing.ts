/**
 * Distributed tracing of proxied requests: W3C Trace Context (`traceparent`, `tracestate`) and
 * one OpenTelemetry span per request, handed to a `SpanExporter` (`otlp-exporter.ts`) when it ends.
 *
 * - A listener with a `Tracer` starts a span per request: kind SERVER on the inbound side (the
 *   request arriving from the mesh), CLIENT on the outbound side (the local app calling an
 *   upstream). The span continues the incoming `traceparent` when it is valid; a missing or
 *   malformed one (W3C Trace Context §3.2: wrong length or version, upper-case or non-hex digits,
 *   an all-zero id, several headers) is ignored and a new trace starts, so a caller cannot break
 *   or inject anything but a well-formed parent.
 * - The request sent on carries `span.traceparent`: the same trace id, the span's own id as
 *   parent. A valid `tracestate` is passed on (§3.3); an invalid one is dropped.
 * - Sampling is parent-based (OpenTelemetry's default `ParentBased(TraceIdRatioBased)`): a
 *   request with a parent follows the parent's sampled flag; a new trace is sampled with
 *   probability `sampleRatio`, decided from the trace id. Unsampled spans still get an id and
 *   propagate (flag 00) but record nothing and are not exported.
 * - Attributes follow the OpenTelemetry HTTP semantic conventions (`http.request.method`,
 *   `url.path`, `http.response.status_code`, `server.address`, `error.type`,
 *   `rpc.grpc.status_code`), plus `peermesh.route`, `peermesh.upstream`,
 *   `peermesh.source_service`. Status: ERROR for a failure, a 5xx, a 4xx on a CLIENT span, or an
 *   error gRPC status; otherwise unset (semconv: "left unset" on success).
 *
 * Nothing here does I/O or can fail the request: the exporter is called synchronously and must
 * only queue.
 */
import { randomFillSync } from 'node:crypto'
import { type Clock, systemClock } from '../common/clock.ts'
import { InvalidProxyConfigError } from './errors.ts'

export const TRACEPARENT_HEADER = 'traceparent'
export const TRACESTATE_HEADER = 'tracestate'

/** OTLP `Span.SpanKind`. */
export const SpanKind = { SERVER: 2, CLIENT: 3 } as const
export type SpanKind = (typeof SpanKind)[keyof typeof SpanKind]

/** OTLP `Status.StatusCode`. */
export const SpanStatusCode = { UNSET: 0, OK: 1, ERROR: 2 } as const
export type SpanStatusCode = (typeof SpanStatusCode)[keyof typeof SpanStatusCode]

/** The parent a request arrived with: a valid `traceparent` (and its `tracestate`, if valid). */
export interface ParentContext {
  /** 32 lower-case hex digits, not all zero. */
  traceId: string
  /** 16 lower-case hex digits, not all zero. */
  spanId: string
  sampled: boolean
  traceState?: string
}

/** A traceparent header is `00-` + 32 + `-` + 16 + `-` + 2 characters (§3.2.2). */
const TRACEPARENT_V0_LENGTH = 55
const HEX_ID = /^[0-9a-f]+$/
const ZERO_TRACE_ID = '0'.repeat(32)
const ZERO_SPAN_ID = '0'.repeat(16)

/**
 * The parent in a `traceparent` header value, or undefined when it is absent or invalid (W3C
 * Trace Context §3.2.2.1-§3.2.2.5): version 2 hex digits, not `ff`; for version 00 exactly 55
 * characters; for a later version at least 55, the next one a `-` (§4.3: parse what version 00
 * defines); ids lower-case hex and not all zero; flags 2 hex digits. Several values (a repeated
 * header) are invalid.
 */
export function parseTraceparent(value: unknown): Omit<ParentContext, 'traceState'> | undefined {
  if (typeof value !== 'string' || value.length < TRACEPARENT_V0_LENGTH) return undefined
  const version = value.slice(0, 2)
  if (!isLowerHex(version) || version === 'ff') return undefined
  if (
    version === '00'
      ? value.length !== TRACEPARENT_V0_LENGTH
      : value.length > TRACEPARENT_V0_LENGTH && value[TRACEPARENT_V0_LENGTH] !== '-'
  )
    return undefined
  if (value[2] !== '-' || value[35] !== '-' || value[52] !== '-') return undefined
  const traceId = value.slice(3, 35)
  const spanId = value.slice(36, 52)
  const flags = value.slice(53, 55)
  if (!isLowerHex(traceId) || !isLowerHex(spanId) || !isLowerHex(flags)) return undefined
  if (traceId === ZERO_TRACE_ID || spanId === ZERO_SPAN_ID) return undefined
  return { traceId, spanId, sampled: (Number.parseInt(flags, 16) & 1) === 1 }
}

function isLowerHex(s: string): boolean {
  return HEX_ID.test(s)
}

/** Most list members a tracestate may have (§3.3.1.1). */
const TRACESTATE_MAX_MEMBERS = 32
/** Length a vendor must propagate at least (§3.3.1.5); longer values are cut to it. */
const TRACESTATE_MAX_LENGTH = 512
/** Members longer than this go first when a tracestate must be cut (§3.3.1.5). */
const TRACESTATE_LONG_MEMBER = 128
const TRACESTATE_KEY = /^(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})$/
const TRACESTATE_VALUE = /^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$/

/**
 * A `tracestate` header value (several headers joined with `,`) checked and normalized (§3.3):
 * members `key=value` with the grammar's keys and values, at most 32, no key twice, empty members
 * skipped; cut to 512 characters by dropping members over 128 characters, then the last ones.
 * Undefined when absent, empty or invalid: an invalid tracestate is not propagated.
 */
export function parseTracestate(value: unknown): string | undefined {
  const joined = Array.isArray(value) ? value.join(',') : value
  if (typeof joined !== 'string' || joined.length > 8 * 1024) return undefined
  const members: string[] = []
  const keys = new Set<string>()
  for (const raw of joined.split(',')) {
    const member = raw.replace(/^[ \t]+|[ \t]+$/g, '')
    if (member === '') continue
    const eq = member.indexOf('=')
    if (eq <= 0) return undefined
    const key = member.slice(0, eq)
    if (!TRACESTATE_KEY.test(key) || !TRACESTATE_VALUE.test(member.slice(eq + 1)) || keys.has(key))
      return undefined
    keys.add(key)
    members.push(member)
    if (members.length > TRACESTATE_MAX_MEMBERS) return undefined
  }
  let kept = members
  if (kept.join(',').length > TRACESTATE_MAX_LENGTH) {
    kept = kept.filter((m) => m.length <= TRACESTATE_LONG_MEMBER)
    while (kept.join(',').length > TRACESTATE_MAX_LENGTH) kept.pop()
  }
  return kept.length === 0 ? undefined : kept.join(',')
}

/** Header values as Node gives them (`IncomingHttpHeaders`, HTTP/1.1 or HTTP/2), by lower-case name. */
export type TraceHeaders = { readonly [name: string]: string | readonly string[] | undefined }

/** The parent in a request's headers; undefined when there is none or it is invalid. */
export function parentFromHeaders(headers: TraceHeaders): ParentContext | undefined {
  const parent = parseTraceparent(headers[TRACEPARENT_HEADER])
  if (parent === undefined) return undefined
  const traceState = parseTracestate(headers[TRACESTATE_HEADER])
  return traceState === undefined ? parent : { ...parent, traceState }
}

/** `00-<trace id>-<span id>-<flags>`. */
export function formatTraceparent(traceId: string, spanId: string, sampled: boolean): string {
  return `00-${traceId}-${spanId}-${sampled ? '01' : '00'}`
}

/** New trace and span ids: random, lower-case hex, never all zero. */
export interface IdGenerator {
  traceId(): string
  spanId(): string
}

/** Ids from the system CSPRNG, drawn 4 KiB at a time (one syscall per ~170 spans). */
export function randomIdGenerator(): IdGenerator {
  const pool = Buffer.allocUnsafe(4096)
  let at = pool.length
  const hex = (bytes: number): string => {
    for (;;) {
      if (at + bytes > pool.length) {
        randomFillSync(pool)
        at = 0
      }
      const s = pool.toString('hex', at, at + bytes)
      at += bytes
      if (!/^0+$/.test(s)) return s
    }
  }
  return { traceId: () => hex(16), spanId: () => hex(8) }
}

/**
 * TraceIdRatioBased: whether a new trace with this id is sampled at `ratio` — the id's last 13
 * hex digits (52 random bits, exact in a double) read as a fraction of 2^52, below `ratio`. The
 * same id gives the same answer on every node.
 */
export function sampledByRatio(traceId: string, ratio: number): boolean {
  if (ratio >= 1) return true
  if (!(ratio > 0)) return false
  return Number.parseInt(traceId.slice(-13), 16) / 2 ** 52 < ratio
}

export type AttributeValue = string | number | boolean

/** A span once ended, as an exporter receives it. */
export interface FinishedSpan {
  /** The `service.name` of the span's resource: the sidecar's service. */
  serviceName: string
  traceId: string
  spanId: string
  parentSpanId: string | undefined
  traceState: string | undefined
  name: string
  kind: SpanKind
  /** Wall-clock milliseconds since the epoch (sub-millisecond precision). */
  startMs: number
  endMs: number
  attributes: ReadonlyArray<readonly [string, AttributeValue]>
  status: { code: SpanStatusCode; message?: string }
}

/** Where ended spans go. `export` must not block or throw: it queues, and drops when full. */
export interface SpanExporter {
  export(span: FinishedSpan): void
}

/** What a listener knows of a request when it starts its span. */
export interface SpanStart {
  method: string
  /** Path without the query string (the query may carry secrets; it is never recorded). */
  path?: string
  /** Semconv `server.address`: the Host the request names (SERVER), the endpoint dialed (CLIENT). */
  serverAddress?: string
  serverPort?: number
  /** `1.1` or `2`. */
  protocolVersion?: string
  /** The service-router route taken (`peermesh.route`): its index, or `default`. */
  route?: string
  /** The upstream listener's service (`peermesh.upstream`). */
  upstream?: string
  /** The calling service (`peermesh.source_service`): the sidecar's own (CLIENT), the peer's SPIFFE service (SERVER). */
  sourceService?: string
  /** Default: the tracer's clock now. */
  startMs?: number
}

/** How the request ended. */
export interface SpanOutcome {
  /** The status the client got (0 or absent: none, the exchange was cut). */
  statusCode?: number
  /** `grpc-status` of a gRPC response. */
  grpcStatus?: number
  /** A proxy failure (`timeout`, `connect`, `reset`, `no_endpoint`, ...): `error.type`, status ERROR. */
  error?: string
  /** Further attributes known only at the end (e.g. `peermesh.attempts`). */
  attributes?: Readonly<Record<string, AttributeValue | undefined>>
  /** Default: the tracer's clock now. */
  endMs?: number
}

/** Longest string attribute value recorded (paths and addresses come from clients). */
export const MAX_ATTRIBUTE_LENGTH = 1024

/** Methods semconv names as such; any other is `_OTHER` (bounded cardinality, §http.request.method). */
const KNOWN_METHODS = new Set([
  'CONNECT',
  'DELETE',
  'GET',
  'HEAD',
  'OPTIONS',
  'PATCH',
  'POST',
  'PUT',
  'QUERY',
  'TRACE',
])

/** gRPC statuses that make a SERVER span an error (semconv rpc/grpc); on a CLIENT span, all but OK. */
const GRPC_SERVER_ERRORS = new Set([2, 4, 12, 13, 14, 15])

/** One proxied request's span. Call `end` once; later calls do nothing. */
export class Span {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId: string | undefined
  readonly sampled: boolean
  readonly traceState: string | undefined
  /** The `traceparent` the request sent on carries: this trace, this span as parent. */
  readonly traceparent: string
  private readonly attributes: [string, AttributeValue][] = []
  private ended = false

  constructor(
    private readonly tracer: Tracer,
    readonly kind: SpanKind,
    private readonly name: string,
    ids: {
      traceId: string
      spanId: string
      parentSpanId: string | undefined
      sampled: boolean
      traceState: string | undefined
    },
    private readonly startMs: number,
    /** Wall clock minus the tracer's clock at the start: exported times follow the system time. */
    private readonly wallOffsetMs: number,
  ) {
    this.traceId = ids.traceId
    this.spanId = ids.spanId
    this.parentSpanId = ids.parentSpanId
    this.sampled = ids.sampled
    this.traceState = ids.traceState
    this.traceparent = formatTraceparent(this.traceId, this.spanId, this.sampled)
  }

  /** Records an attribute (strings cut to MAX_ATTRIBUTE_LENGTH); nothing when unsampled. */
  setAttribute(key: string, value: AttributeValue | undefined): void {
    if (!this.sampled || this.ended || value === undefined) return
    if (typeof value === 'number' && !Number.isFinite(value)) return
    this.attributes.push([
      key,
      typeof value === 'string' && value.length > MAX_ATTRIBUTE_LENGTH
        ? value.slice(0, MAX_ATTRIBUTE_LENGTH)
        : value,
    ])
  }

  end(outcome: SpanOutcome = {}): void {
    if (this.ended) return
    if (!this.sampled) {
      this.ended = true
      return
    }
    const { statusCode, grpcStatus, error } = outcome
    if (statusCode !== undefined && statusCode > 0) this.setAttribute('http.response.status_code', statusCode)
    if (grpcStatus !== undefined) this.setAttribute('rpc.grpc.status_code', grpcStatus)
    for (const [k, v] of Object.entries(outcome.attributes ?? {})) this.setAttribute(k, v)
    const client = this.kind === SpanKind.CLIENT
    let errorType = error
    if (errorType === undefined && statusCode !== undefined && statusCode >= (client ? 400 : 500))
      errorType = String(statusCode)
    const grpcError =
      grpcStatus !== undefined && (client ? grpcStatus !== 0 : GRPC_SERVER_ERRORS.has(grpcStatus))
    if (errorType !== undefined) this.setAttribute('error.type', errorType)
    this.ended = true
    this.tracer.finish({
      serviceName: this.tracer.serviceName,
      traceId: this.traceId,
      spanId: this.spanId,
      parentSpanId: this.parentSpanId,
      traceState: this.traceState,
      name: this.name,
      kind: this.kind,
      startMs: this.startMs + this.wallOffsetMs,
      endMs: (outcome.endMs ?? this.tracer.now()) + this.wallOffsetMs,
      attributes: this.attributes,
      status:
        errorType !== undefined || grpcError
          ? { code: SpanStatusCode.ERROR, ...(errorType !== undefined ? { message: errorType } : {}) }
          : { code: SpanStatusCode.UNSET },
    })
  }
}

export interface TracerInit {
  /** The resource's `service.name`: the sidecar's service. */
  serviceName: string
  exporter: SpanExporter
  /** Share of new traces sampled, 0 to 1 (requests with a parent follow it). Default 1. */
  sampleRatio?: number
  /**
   * Span times. Default `systemClock`. Durations are measured on `now()` (the listeners' clock:
   * `SpanStart.startMs` and `SpanOutcome.endMs` are on it); exported times are shifted to
   * `wallNow()` at the span's start, so they match other machines' clocks.
   */
  clock?: Clock
  /** Default: random ids from the CSPRNG. */
  ids?: IdGenerator
}

/**
 * Starts the spans of one sidecar's listeners. A listener without a tracer does no tracing at
 * all and passes `traceparent` on untouched.
 */
export class Tracer {
  readonly serviceName: string
  readonly sampleRatio: number
  private readonly exporter: SpanExporter
  private readonly clock: Clock
  private readonly ids: IdGenerator

  constructor(init: TracerInit) {
    this.serviceName = init.serviceName
    this.sampleRatio = checkSampleRatio(init.sampleRatio ?? 1)
    this.exporter = init.exporter
    this.clock = init.clock ?? systemClock
    this.ids = init.ids ?? randomIdGenerator()
  }

  /** A SERVER span for a request that arrived with `headers` (inbound). */
  startServerSpan(headers: TraceHeaders, start: SpanStart): Span {
    return this.start(SpanKind.SERVER, parentFromHeaders(headers), start)
  }

  /** A CLIENT span for a request the local app sent with `headers` (outbound). */
  startClientSpan(headers: TraceHeaders, start: SpanStart): Span {
    return this.start(SpanKind.CLIENT, parentFromHeaders(headers), start)
  }

  /** Starts a span under `parent` (undefined: a new trace). */
  start(kind: SpanKind, parent: ParentContext | undefined, start: SpanStart): Span {
    const traceId = parent?.traceId ?? this.ids.traceId()
    const sampled = parent !== undefined ? parent.sampled : sampledByRatio(traceId, this.sampleRatio)
    const method = KNOWN_METHODS.has(start.method) ? start.method : '_OTHER'
    const span = new Span(
      this,
      kind,
      method === '_OTHER' ? 'HTTP' : method,
      {
        traceId,
        spanId: this.ids.spanId(),
        parentSpanId: parent?.spanId,
        sampled,
        traceState: parent?.traceState,
      },
      start.startMs ?? this.clock.now(),
      sampled ? this.clock.wallNow() - this.clock.now() : 0,
    )
    if (!sampled) return span
    span.setAttribute('http.request.method', method)
    if (method === '_OTHER') span.setAttribute('http.request.method_original', start.method)
    span.setAttribute('url.path', start.path)
    span.setAttribute('server.address', start.serverAddress)
    span.setAttribute('server.port', start.serverPort)
    span.setAttribute('network.protocol.name', 'http')
    span.setAttribute('network.protocol.version', start.protocolVersion)
    span.setAttribute('peermesh.route', start.route)
    span.setAttribute('peermesh.upstream', start.upstream)
    span.setAttribute('peermesh.source_service', start.sourceService)
    return span
  }

  /** @internal Called by `Span.end`. */
  finish(span: FinishedSpan): void {
    try {
      this.exporter.export(span)
    } catch {
      // An exporter must not throw; if one does, the request path is not the place to learn it.
    }
  }

  /** @internal */
  now(): number {
    return this.clock.now()
  }
}

function checkSampleRatio(r: unknown): number {
  if (typeof r !== 'number' || !(r >= 0 && r <= 1))
    throw new InvalidProxyConfigError('sampleRatio', 'must be a number from 0 to 1')
  return r
}

/**
 * Why `value` cannot be an OTLP/HTTP endpoint (the collector's base URL; spans go to
 * `{endpoint}/v1/traces`), or undefined when it can: an absolute `http:` or `https:` URL of at most
 * 2048 characters with a host, and no credentials, query or fragment (they would end up in logs).
 */
export function otlpEndpointProblem(value: unknown): string | undefined {
  if (typeof value !== 'string' || value.length === 0 || value.length > 2048)
    return 'must be an http(s) URL of at most 2048 characters'
  let url: URL
  try {
    url = new URL(value)
  } catch {
    return 'must be an http(s) URL, e.g. http://127.0.0.1:4318'
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return 'must be an http: or https: URL'
  if (url.hostname === '') return 'must name a host'
  if (url.username !== '' || url.password !== '') return 'must not carry credentials'
  if (url.search !== '' || url.hash !== '' || value.includes('?') || value.includes('#'))
    return 'must not have a query or fragment'
  return undefined
}

/** `{endpoint}/v1/traces` (OTLP/HTTP's default traces path under the collector's base URL). */
export function tracesUrl(endpoint: string): URL {
  const url = new URL(endpoint)
  url.pathname = `${url.pathname.replace(/\/+$/, '')}/v1/traces`
  return url
}
