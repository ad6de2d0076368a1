/**
 * The outbound listener in HTTP/2 mode, for upstreams declared `protocol: http2` or `grpc`. The
 * local app speaks h2c with prior knowledge (what a gRPC client does on a plain `host:port`);
 * each request (stream, so each gRPC call) is balanced on its own under the same traffic policy
 * as the HTTP/1.1 listener (`traffic.ts`: routes, splits, resolvers, timeouts, retries, the
 * concurrency limit), over one long-lived HTTP/2 session per endpoint: mutual TLS 1.3 with ALPN
 * `h2`, the source service's leaf and roots, the endpoint's SPIFFE id checked.
 *
 * Request bodies are forwarded as they arrive and, up to `retryBodyBytes`, kept for a replay.
 * Before response headers, an attempt is retried on another endpoint (within `maxAttempts` and
 * the retry budget, or the route's `NumRetries`) when:
 * - the connection could not be made (unless the route sets `RetryOnConnectFailure: false`);
 * - the endpoint refused the stream (REFUSED_STREAM, or above a GOAWAY's last stream id): it was
 *   not processed;
 * - the session died under it, or the endpoint's sidecar lost its app before response headers
 *   (a trailers-only answer with `x-peermesh-error: PEERMESH_ERR_UPSTREAM_RESET`): for gRPC calls
 *   and idempotent methods (a call that got no response header is safe to send again), or any
 *   request when the route retries on `reset`;
 * - the endpoint reset the stream, or answered with a status outside 200-599 (a protocol error,
 *   which Node could not relay): for idempotent methods, or when the route retries on `reset`;
 * - the response matches the route's `RetryOnStatusCodes`, or its `RetryOn` (`5xx`,
 *   `gateway-error`, `retriable-4xx`, and for a trailers-only gRPC response its `grpc-status`:
 *   `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`).
 *
 * Routes match the `:path` normalized as the inbound normalizes it (`normalizeRequestPath`: escapes
 * of unreserved characters decoded, `//` merged, `.` and `..` segments removed), so that
 * `/public/../admin` is routed as `/admin`, the path the destination's app will get; the upstream
 * is sent that path (after a route's prefix rewrite) with the original query. A path that cannot be
 * normalized (an escaped `/` or `\`, a raw `\`, a malformed escape, no leading `/`) is answered
 * here as the inbound would answer it: 400 with `x-peermesh-reject: bad_path`, or for gRPC a
 * trailers-only INTERNAL (13).
 *
 * Responses pass through with their trailers (`grpc-status`, `grpc-message`). Failures of the
 * proxy itself reach a gRPC client as trailers-only responses carrying the gRPC status —
 * UNAVAILABLE (14) for no healthy endpoint or a failed connection, DEADLINE_EXCEEDED (4) for the
 * request timeout, RESOURCE_EXHAUSTED (8) for the concurrency limit — and a plain HTTP/2 client
 * as 502/503/504 like the HTTP/1.1 listener; both carry `x-peermesh-error`.
 */
import { randomUUID } from 'node:crypto'
import http2 from 'node:http2'
import type net from 'node:net'
import tls from 'node:tls'
import type { Cancel } from '../common/clock.ts'
import type { LimitTicket } from './concurrency-limit.ts'
import { DEFAULT_REQUEST_TIMEOUT_MS, DEFAULT_RETRY_BODY_BYTES, IDEMPOTENT_METHODS } from './constants.ts'
import type { EndpointRecord } from './endpoint-pool.ts'
import {
  InvalidProxyConfigError,
  NoHealthyEndpointError,
  UpstreamConnectError,
  UpstreamDeniedError,
  UpstreamResetError,
  UpstreamTimeoutError,
} from './errors.ts'
import {
  forwardedHeaders,
  GRPC_STATUS,
  isGrpc,
  isRelayableStatus,
  NGHTTP2_CANCEL,
  NGHTTP2_FLAG_END_STREAM,
  NGHTTP2_INTERNAL_ERROR,
  NGHTTP2_PROTOCOL_ERROR,
  NGHTTP2_REFUSED_STREAM,
  passesTrailers,
  relayResponse,
  respondGrpcStatus,
  tryRespond,
} from './h2-common.ts'
import { normalizeRequestPath } from './l7-permissions.ts'
import { OutboundListenerBase, UpstreamCore, type UpstreamListenerInit } from './outbound-common.ts'
import {
  CONCURRENCY_LIMIT_CODE,
  PROXY_ERROR_HEADER,
  REJECT_HEADER,
  REQUEST_ID_HEADER,
} from './outbound-http.ts'
import {
  applyHeaderOps,
  type HeaderOps,
  matchRoute,
  type Plan,
  type RequestView,
  type RouteDestination,
  retryOnHttpStatus,
  rewritePath,
} from './traffic.ts'
import { shouldLogAccess } from './types.ts'
import { routeLabelOf } from './metrics.ts'
import { type Span, TRACEPARENT_HEADER, TRACESTATE_HEADER } from './tracing.ts'

export interface H2OutboundListenerInit extends UpstreamListenerInit {
  /** Whole request, first attempt to the end of the response. Default 15 s. */
  requestTimeoutMs?: number
  /** Request bodies up to this size are kept so that the request can be sent again. Default 64 KiB. */
  retryBodyBytes?: number
}

/** One HTTP/2 session to an endpoint, and whether its TLS handshake finished. */
interface Link {
  readonly session: http2.ClientHttp2Session
  connected: boolean
}

export class H2OutboundListener extends OutboundListenerBase {
  readonly core: UpstreamCore
  readonly requestTimeoutMs: number
  readonly retryBodyBytes: number
  protected readonly server: http2.Http2Server
  protected readonly clientSockets = new Set<net.Socket>()
  /** The session of each endpoint, opened on its first request and again after it dies. */
  private readonly links = new WeakMap<EndpointRecord, Link>()
  private readonly openLinks = new Set<Link>()

  constructor(init: H2OutboundListenerInit) {
    super()
    this.core = new UpstreamCore(
      init,
      {
        onRetired: (record) => {
          const link = this.links.get(record)
          this.links.delete(record)
          // Streams in flight finish; the session closes after them.
          if (link !== undefined && !link.session.closed) link.session.close()
        },
      },
      'requests',
    )
    this.requestTimeoutMs = init.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
    if (!(this.requestTimeoutMs > 0)) throw new InvalidProxyConfigError('requestTimeoutMs', 'must be > 0')
    this.retryBodyBytes = init.retryBodyBytes ?? DEFAULT_RETRY_BODY_BYTES
    if (!(this.retryBodyBytes >= 0)) throw new InvalidProxyConfigError('retryBodyBytes', 'must be ≥ 0')
    this.server = http2.createServer()
    this.server.on('stream', (stream, headers, flags) => {
      const url = headers[':path'] ?? '/'
      const q = url.indexOf('?')
      // Routed, and sent on, as the destination's inbound will see it (inbound-h2.ts).
      const path = normalizeRequestPath(q < 0 ? url : url.slice(0, q))
      if (path === undefined) {
        this.refuseBadPath(stream, headers, url)
        return
      }
      const target = q < 0 ? path : path + url.slice(q)
      new H2Exchange(this, stream, headers, target, (flags & NGHTTP2_FLAG_END_STREAM) !== 0)
    })
    this.server.on('sessionError', () => {})
    const m = this.core.metrics
    this.server.on('connection', (socket: net.Socket) => {
      socket.setNoDelay(true)
      m.connections.inc()
      m.active.inc()
      this.clientSockets.add(socket)
      socket.once('close', () => {
        this.clientSockets.delete(socket)
        m.active.dec()
        m.addBytes(socket.bytesRead, socket.bytesWritten)
      })
    })
  }

  override async stop(): Promise<void> {
    await super.stop()
    for (const link of this.openLinks) link.session.destroy()
    this.openLinks.clear()
  }

  /**
   * A `:path` that cannot be normalized (so neither routed safely nor accepted by the inbound):
   * answered as the inbound answers it, 400 with `x-peermesh-reject: bad_path`, or for gRPC a
   * trailers-only INTERNAL.
   */
  private refuseBadPath(
    down: http2.ServerHttp2Stream,
    requestHeaders: http2.IncomingHttpHeaders,
    url: string,
  ): void {
    const core = this.core
    const startedAt = core.clock.now()
    down.on('error', () => {})
    down.resume()
    const grpc = isGrpc(requestHeaders)
    const method = requestHeaders[':method'] ?? 'GET'
    const id = requestHeaders[REQUEST_ID_HEADER]
    const requestId = typeof id === 'string' ? id : randomUUID()
    const headers = { [REJECT_HEADER]: 'bad_path', [REQUEST_ID_HEADER]: requestId }
    if (grpc) respondGrpcStatus(down, GRPC_STATUS.INTERNAL, 'bad_path: request not allowed', headers)
    else tryRespond(down, { ':status': 400, ...headers }, { endStream: true })
    const status = grpc ? 200 : 400
    const elapsedMs = core.clock.now() - startedAt
    const seconds = elapsedMs / 1000
    core.metrics.request()
    core.metrics.latency.observe(seconds)
    core.metrics.response(status, seconds, grpc ? { grpcStatus: GRPC_STATUS.INTERNAL } : undefined)
    core.logger.debug(
      { upstream: core.destination, method, path: url.slice(0, 200) },
      'outbound request refused: its path cannot be normalized',
    )
    if (shouldLogAccess(core.accessLog, status, 'bad_path')) {
      core.logger.info(
        {
          direction: 'outbound',
          upstream: core.destination,
          method,
          path: url.slice(0, 200),
          status,
          ...(grpc ? { grpcStatus: GRPC_STATUS.INTERNAL } : {}),
          requestId,
          attempts: 0,
          result: 'bad_path',
          durationMs: Math.round(elapsedMs * 1000) / 1000,
        },
        'access',
      )
    }
  }

  /** The live session to `record`'s endpoint, opened now if there is none. */
  linkTo(record: EndpointRecord): Link {
    const existing = this.links.get(record)
    if (existing !== undefined && !existing.session.closed && !existing.session.destroyed) return existing
    const core = this.core
    const { address, port, service } = record.endpoint
    const session = http2.connect(`https://${address}:${port}`, {
      createConnection: () => {
        const socket = tls.connect({
          host: address,
          port,
          secureContext: core.tls.secureContext,
          checkServerIdentity: core.identityCheckFor(service),
          ALPNProtocols: ['h2'],
        })
        socket.setNoDelay(true)
        return socket
      },
    })
    const link: Link = { session, connected: false }
    const cancelTimer = core.clock.setTimeout(
      () => session.destroy(new UpstreamConnectError('connect timeout')),
      core.connectTimeoutFor(service),
    )
    session.once('connect', () => {
      cancelTimer()
      link.connected = true
    })
    session.on('error', (error: Error & { code?: string }) => {
      core.logger.debug(
        { upstream: core.destination, endpoint: record.endpoint.id, error: error.code ?? error.message },
        'upstream session error',
      )
    })
    session.once('close', () => {
      cancelTimer()
      this.openLinks.delete(link)
      if (this.links.get(record) === link) this.links.delete(record)
    })
    this.links.set(record, link)
    this.openLinks.add(link)
    return link
  }
}

type Reason = 'connect' | 'reset' | 'timeout' | 'no_endpoint' | 'denied' | 'rejected'

/** How an attempt ended before response headers. */
type AttemptFailure = 'connect' | 'refused' | 'session' | 'reset'

/** One client stream through its attempts. */
class H2Exchange {
  private readonly core: UpstreamCore
  private readonly startedAt: number
  private readonly method: string
  private readonly grpc: boolean
  private readonly requestId: string
  private readonly headers: http2.OutgoingHttpHeaders
  private readonly route: RouteDestination
  private readonly plan: Plan
  private readonly hashKey: string | undefined
  private readonly maxAttempts: number
  private readonly explicitRetries: boolean
  private readonly retryConnect: boolean
  private readonly retryStatuses: ReadonlySet<number> | undefined
  private readonly idempotent: boolean
  private readonly count5xx: boolean
  private readonly tried: EndpointRecord[] = []
  /** The request body so far, while it can still be replayed (and until a first attempt takes it). */
  private chunks: Buffer[] = []
  private bodyBytes = 0
  /** The body outgrew `retryBodyBytes`: no attempt after the one that has it. */
  private overflow = false
  private requestEnded = false
  /** Response headers went to the client: no more attempts. */
  private committed = false
  private up: http2.ClientHttp2Stream | undefined
  private record: EndpointRecord | undefined
  private ticket: LimitTicket | undefined
  private readonly cancelTimer: Cancel
  private timedOut = false
  private status = 0
  private grpcStatus: string | undefined
  private readonly routeLabel: string
  private span: Span | undefined
  private result = 'ok'
  private done = false

  constructor(
    private readonly listener: H2OutboundListener,
    private readonly down: http2.ServerHttp2Stream,
    private readonly requestHeaders: http2.IncomingHttpHeaders,
    /** The `:path` normalized (`normalizeRequestPath`), with the original query. */
    url: string,
    /** The request is its headers alone (END_STREAM on HEADERS): no body to wait for. */
    headersOnly: boolean,
  ) {
    this.requestEnded = headersOnly
    const core = listener.core
    this.core = core
    this.startedAt = core.clock.now()
    core.budget.recordRequest(this.startedAt)
    this.method = requestHeaders[':method'] ?? 'GET'
    this.idempotent = IDEMPOTENT_METHODS.has(this.method)
    this.grpc = isGrpc(requestHeaders)
    const q = url.indexOf('?')
    const path = q < 0 ? url : url.slice(0, q)
    const view = requestView(this.method, path, url, q, requestHeaders)
    const policy = core.policy
    this.route = matchRoute(policy, view)
    this.routeLabel = routeLabelOf(policy.routes, this.route)
    core.metrics.request(this.routeLabel)
    this.plan = core.plan(this.route)
    this.hashKey = core.hashKeyFor(this.plan, view)

    let headers = forwardedHeaders(requestHeaders)
    const id = requestHeaders[REQUEST_ID_HEADER]
    this.requestId = typeof id === 'string' ? id : randomUUID()
    if (id === undefined) headers[REQUEST_ID_HEADER] = this.requestId
    headers[':path'] = rewritePath(this.route, path, url, q)
    headers = withHeaderOps(headers, this.route.requestHeaders, this.plan.leg?.requestHeaders)
    const tracer = core.tracer
    if (tracer !== undefined) {
      // A CLIENT span continuing the app's trace; the upstream gets the span as parent.
      this.span = tracer.startClientSpan(
        { traceparent: requestHeaders.traceparent, tracestate: requestHeaders.tracestate },
        {
          method: this.method,
          path,
          serverAddress: core.destination,
          protocolVersion: '2',
          route: this.routeLabel,
          upstream: core.destination,
          sourceService: core.source,
          startMs: this.startedAt,
        },
      )
      headers[TRACEPARENT_HEADER] = this.span.traceparent
      if (this.span.traceState !== undefined) headers[TRACESTATE_HEADER] = this.span.traceState
      else delete headers[TRACESTATE_HEADER]
    }
    this.headers = headers

    this.explicitRetries = this.route.numRetries !== undefined
    this.maxAttempts = this.route.numRetries !== undefined ? this.route.numRetries + 1 : core.maxAttempts
    this.retryConnect = this.route.retryOnConnectFailure ?? true
    this.retryStatuses =
      this.route.retryOnStatusCodes !== undefined ? new Set(this.route.retryOnStatusCodes) : undefined
    this.count5xx = policy.outlier?.count5xx === true
    this.cancelTimer = core.clock.setTimeout(
      this.onTimeout,
      core.requestTimeoutFor(this.route, this.plan, listener.requestTimeoutMs),
    )

    down.on('error', () => {})
    down.on('close', this.onClose)
    if (!headersOnly) {
      down.on('data', this.onData)
      down.on('end', () => {
        this.requestEnded = true
        const up = this.up
        if (up !== undefined && !up.destroyed && !up.writableEnded) up.end()
      })
    }
    this.admit()
  }

  /** The first attempt, now or once the concurrency limit grants a slot; refused when full. */
  private admit(): void {
    if (this.done) return
    const ticket = this.core.admit(() => this.attempt())
    if (ticket !== false) {
      this.ticket = ticket
      return
    }
    this.fail(
      'rejected',
      GRPC_STATUS.RESOURCE_EXHAUSTED,
      503,
      CONCURRENCY_LIMIT_CODE,
      'concurrency limit reached',
      { [REJECT_HEADER]: 'concurrency-limit' },
    )
  }

  private readonly onData = (chunk: Buffer): void => {
    if (!this.committed && !this.overflow) {
      if (this.bodyBytes + chunk.length <= this.listener.retryBodyBytes) this.bodyBytes += chunk.length
      else this.overflow = true
    }
    const up = this.up
    if (up === undefined || up.destroyed) {
      // No attempt holds the stream yet (waiting for a slot, or between attempts): keep it.
      this.chunks.push(chunk)
      if (this.overflow) this.down.pause()
      return
    }
    if (!this.committed && !this.overflow) this.chunks.push(chunk)
    else if (this.chunks.length > 0) this.chunks = [] // no replay any more
    if (!up.write(chunk)) {
      this.down.pause()
      up.once('drain', () => this.down.resume())
    }
  }

  private attempt(): void {
    if (this.done) return
    const core = this.core
    const record = core.pickEndpoint(this.plan, this.tried, this.hashKey)
    if (record === undefined) {
      this.fail(
        'no_endpoint',
        GRPC_STATUS.UNAVAILABLE,
        503,
        NoHealthyEndpointError.code,
        'no healthy endpoint',
      )
      return
    }
    this.tried.push(record)
    this.record = record
    record.pool.acquire(record)
    let link: Link
    let up: http2.ClientHttp2Stream
    try {
      link = this.listener.linkTo(record)
      up = link.session.request(this.headers, {
        endStream: this.requestEnded && this.chunks.length === 0,
      })
    } catch {
      record.pool.release(record)
      this.attemptFailed(record, 'connect')
      return
    }
    this.up = up
    let released = false
    up.on('error', () => {})
    up.on('response', (headers, flags) => this.onResponse(up, record, headers, flags))
    up.once('close', () => {
      if (!released) {
        released = true
        record.pool.release(record)
      }
      if (this.up !== up || this.committed || this.done || this.timedOut) return
      this.attemptFailed(record, failureOf(up, link))
    })
    // Replay what the client sent so far; from here on `onData` writes to this attempt.
    for (const c of this.chunks) up.write(c)
    if (this.overflow || this.committed) this.chunks = []
    if (this.requestEnded && !up.writableEnded && !up.closed) up.end()
    this.down.resume()
  }

  private onResponse(
    up: http2.ClientHttp2Stream,
    record: EndpointRecord,
    headers: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader,
    flags: number,
  ): void {
    if (this.done || up !== this.up) {
      up.close(NGHTTP2_CANCEL)
      return
    }
    if (!isRelayableStatus(headers[':status'])) {
      // A status Node cannot send on (600-999), or no final response: a protocol error of the
      // endpoint, handled as a reset before response headers (Envoy's protocol_error).
      this.core.logger.debug(
        { upstream: this.core.destination, endpoint: record.endpoint.id, status: headers[':status'] },
        'upstream sent an invalid response status',
      )
      this.up = undefined
      up.close(NGHTTP2_PROTOCOL_ERROR)
      this.attemptFailed(record, 'reset')
      return
    }
    const status = headers[':status']
    const trailersOnly = (flags & NGHTTP2_FLAG_END_STREAM) !== 0
    if (trailersOnly && headers[PROXY_ERROR_HEADER] === UpstreamResetError.code) {
      // The endpoint's sidecar lost its app before response headers (`inbound-h2.ts`): for the
      // caller, the instance's connection died under the request.
      this.up = undefined
      up.close(NGHTTP2_CANCEL)
      this.attemptFailed(record, 'session')
      return
    }
    const grpcStatus = trailersOnly ? headers['grpc-status'] : undefined
    if (this.retriesResponse(status, grpcStatus)) {
      record.pool.reportFailure(record)
      this.up = undefined
      up.close(NGHTTP2_CANCEL)
      this.core.metrics.retry(this.routeLabel)
      this.attempt()
      return
    }
    if (status >= 500 && this.count5xx) record.pool.reportFailure(record)
    else record.pool.reportSuccess(record)
    this.committed = true
    this.chunks = []
    this.status = status
    if (typeof grpcStatus === 'string') this.grpcStatus = grpcStatus
    up.on('trailers', (t: http2.IncomingHttpHeaders) => {
      const g = t['grpc-status']
      if (typeof g === 'string') this.grpcStatus = g
    })
    const out = withHeaderOps(
      forwardedHeaders(headers),
      this.route.responseHeaders,
      this.plan.leg?.responseHeaders,
    )
    relayResponse(up, this.down, out, flags, this.grpc || passesTrailers(this.requestHeaders, headers))
  }

  /** Whether a response (its status; for trailers-only gRPC, its `grpc-status`) is retried. */
  private retriesResponse(status: number, grpcStatus: string | string[] | undefined): boolean {
    const retryOn = this.route.retryOn
    const matches =
      this.retryStatuses?.has(status) === true ||
      (retryOn !== undefined &&
        (retryOnHttpStatus(retryOn, status) ||
          (typeof grpcStatus === 'string' && retryOn.grpcStatuses.has(Number(grpcStatus)))))
    return matches && this.canRetry()
  }

  private canRetry(): boolean {
    return !this.overflow && this.tried.length < this.maxAttempts && this.mayRetry()
  }

  /** Route retries (NumRetries) are the user's to bound; the others spend the retry budget. */
  private mayRetry(): boolean {
    return this.explicitRetries || this.core.budget.tryAcquire(this.core.clock.now())
  }

  /** An attempt ended before response headers: another endpoint, or the failure to the client. */
  private attemptFailed(record: EndpointRecord, failure: AttemptFailure): void {
    const core = this.core
    this.up = undefined
    if (failure !== 'connect' && failure !== 'refused' && core.locallyDenied()) {
      this.fail('denied', GRPC_STATUS.PERMISSION_DENIED, 502, UpstreamDeniedError.code, 'denied by intention')
      return
    }
    // A refused stream counts too: an inbound sidecar refuses streams when its app is down.
    record.pool.reportFailure(record)
    const retryOn = this.route.retryOn
    const allowed =
      failure === 'connect'
        ? this.retryConnect || retryOn?.connectFailure === true
        : failure === 'refused'
          ? true
          : failure === 'session'
            ? this.grpc || this.idempotent || retryOn?.reset === true
            : this.idempotent || retryOn?.reset === true
    if (allowed && this.canRetry()) {
      core.metrics.retry(this.routeLabel)
      core.logger.debug(
        { upstream: core.destination, endpoint: record.endpoint.id, reason: failure },
        `retrying upstream=${core.destination} after ${failure}`,
      )
      this.attempt()
      return
    }
    const connect = failure === 'connect'
    this.fail(
      connect ? 'connect' : 'reset',
      GRPC_STATUS.UNAVAILABLE,
      502,
      connect ? UpstreamConnectError.code : UpstreamResetError.code,
      connect ? 'upstream connect failure' : `upstream ${failure} before response headers`,
    )
  }

  private readonly onTimeout = (): void => {
    if (this.done) return
    this.timedOut = true
    if (this.record !== undefined && !this.committed) this.record.pool.reportFailure(this.record)
    const up = this.up
    if (up !== undefined && !up.closed) up.close(NGHTTP2_CANCEL)
    this.fail('timeout', GRPC_STATUS.DEADLINE_EXCEEDED, 504, UpstreamTimeoutError.code, 'request timeout')
  }

  /** The proxy's own answer: trailers-only for gRPC, a plain status otherwise; a reset once committed. */
  private fail(
    reason: Reason,
    grpcStatus: number,
    httpStatus: number,
    code: string,
    message: string,
    extra: http2.OutgoingHttpHeaders = {},
  ): void {
    this.result = reason
    if (reason !== 'rejected') this.core.metrics.error(reason, this.routeLabel)
    const down = this.down
    if (down.closed || down.destroyed) return
    if (down.headersSent) {
      down.close(NGHTTP2_INTERNAL_ERROR)
      return
    }
    const headers = { [PROXY_ERROR_HEADER]: code, [REQUEST_ID_HEADER]: this.requestId, ...extra }
    if (this.grpc) {
      this.status = 200
      this.grpcStatus = String(grpcStatus)
      respondGrpcStatus(down, grpcStatus, message, headers)
    } else {
      this.status = httpStatus
      if (
        tryRespond(down, { ':status': httpStatus, 'content-type': 'text/plain; charset=utf-8', ...headers })
      )
        down.end(`${code}\n`)
    }
  }

  private readonly onClose = (): void => {
    if (this.done) return
    this.done = true
    this.cancelTimer()
    this.ticket?.release()
    const core = this.core
    const up = this.up
    const complete = this.down.rstCode === http2.constants.NGHTTP2_NO_ERROR
    if (!complete) {
      // The client went away, or the response was cut: stop the upstream side too.
      if (up !== undefined && !up.closed) up.close(NGHTTP2_CANCEL)
      if (this.result === 'ok') this.result = 'client_closed'
    }
    const seconds = (core.clock.now() - this.startedAt) / 1000
    core.metrics.latency.observe(seconds)
    if (this.status > 0 && complete) {
      core.metrics.response(this.status, seconds, {
        route: this.routeLabel,
        ...(this.grpcStatus !== undefined ? { grpcStatus: this.grpcStatus } : {}),
      })
    }
    this.span?.end({
      statusCode: complete ? this.status : 0,
      ...(this.grpcStatus !== undefined && /^\d{1,2}$/.test(this.grpcStatus)
        ? { grpcStatus: Number(this.grpcStatus) }
        : {}),
      ...(this.result === 'ok' ? {} : { error: this.result }),
      endMs: core.clock.now(),
    })
    if (shouldLogAccess(core.accessLog, this.status, this.result)) {
      const e = this.record?.endpoint
      core.logger.info(
        {
          direction: 'outbound',
          upstream: core.destination,
          method: this.method,
          path: this.headers[':path'],
          status: this.status,
          ...(this.grpcStatus !== undefined ? { grpcStatus: Number(this.grpcStatus) } : {}),
          service: e?.service,
          requestId: this.requestId,
          endpoint: e?.id,
          address: e ? `${e.address}:${e.port}` : undefined,
          attempts: this.tried.length,
          result: this.result,
          durationMs: Math.round((core.clock.now() - this.startedAt) * 1000) / 1000,
        },
        'access',
      )
    }
  }
}

/** How a stream that closed before response headers failed. */
function failureOf(up: http2.ClientHttp2Stream, link: Link): AttemptFailure {
  if (!link.connected) return 'connect'
  if (up.rstCode === NGHTTP2_REFUSED_STREAM) return 'refused'
  if (link.session.destroyed || link.session.closed) return 'session'
  return 'reset'
}

/** Header operations of the route and of the split leg, applied to an HTTP/2 headers object. */
function withHeaderOps(
  headers: http2.OutgoingHttpHeaders,
  a: HeaderOps | undefined,
  b: HeaderOps | undefined,
): http2.OutgoingHttpHeaders {
  if (a === undefined && b === undefined) return headers
  const raw: string[] = []
  for (const name in headers) {
    const v = headers[name]
    if (v === undefined) continue
    if (Array.isArray(v)) for (const x of v) raw.push(name, String(x))
    else raw.push(name, String(v))
  }
  const ops = applyHeaderOps(applyHeaderOps(raw, a), b)
  const out: http2.OutgoingHttpHeaders = {}
  for (let i = 0; i < ops.length; i += 2) {
    const name = ops[i]!.toLowerCase()
    const value = ops[i + 1]!
    const prev = out[name]
    out[name] = prev === undefined ? value : Array.isArray(prev) ? [...prev, value] : [String(prev), value]
  }
  return out
}

/** The request as routes see it; the query is parsed only when a route asks. */
function requestView(
  method: string,
  path: string,
  url: string,
  q: number,
  headers: http2.IncomingHttpHeaders,
): RequestView {
  let query: URLSearchParams | undefined
  return {
    method,
    path,
    query(name) {
      if (q < 0) return undefined
      query ??= new URLSearchParams(url.slice(q + 1))
      return query.get(name) ?? undefined
    },
    header(name) {
      const v = headers[name]
      return Array.isArray(v) ? v.join(', ') : v
    },
  }
}
