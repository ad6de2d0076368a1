/**
 * The inbound side of HTTP/2 and gRPC services: a mutual TLS connection that negotiated ALPN
 * `h2` (its caller's SPIFFE service already verified and allowed by the L4 intention check in
 * `inbound.ts`) is served as HTTP/2, and each stream is forwarded on its own to the local app
 * over h2c — one session to 127.0.0.1:`localServicePort`, opened again after it fails.
 *
 * Before a request reaches the app it passes the `RequestGate` (L7 intentions, rate limits) with
 * the caller's service; a denied one gets a trailers-only response with the gate's `grpcStatus`
 * (gRPC requests) or its HTTP `status` (others), and never reaches the app. The gate sees the
 * `:path` normalized as the HTTP/1.1 inbound does (`normalizeRequestPath`), and the app gets that
 * path with the original query; a path that cannot be normalized gets 400 (gRPC: INTERNAL), and a
 * CONNECT (a tunnel, no `:path`) 405.
 *
 * When the app cannot be reached, the stream is refused (REFUSED_STREAM): the request was not
 * processed, and the caller's sidecar sends it to another instance. When the app's session dies
 * with the request sent and no response yet, a gRPC caller gets UNAVAILABLE (14) in a
 * trailers-only response, others a 502; a stream reset by the app is reset with the same code.
 * A response status Node cannot send (nghttp2 accepts 600-999) gets the caller a 502 (gRPC:
 * UNAVAILABLE), not marked as a reset.
 */
import http2 from 'node:http2'
import net from 'node:net'
import type tls from 'node:tls'
import type { Cancel, Clock } from '../common/clock.ts'
import { UpstreamResetError } from './errors.ts'
import {
  forwardedHeaders,
  GRPC_STATUS,
  isGrpc,
  isRelayableStatus,
  NGHTTP2_CANCEL,
  NGHTTP2_FLAG_END_STREAM,
  NGHTTP2_NO_ERROR,
  NGHTTP2_PROTOCOL_ERROR,
  NGHTTP2_REFUSED_STREAM,
  passesTrailers,
  relayResponse,
  respondGrpcStatus,
  tryRespond,
  trySendTrailers,
} from './h2-common.ts'
import { INBOUND_REJECT_HEADER } from './inbound-http.ts'
import { normalizeRequestPath } from './l7-permissions.ts'
import type { ListenerMetrics } from './metrics.ts'
import { PROXY_ERROR_HEADER } from './outbound-http.ts'
import type { GateDecision, RequestGate } from './request-gate.ts'
import type { ProxyLogger } from './types.ts'
import { type Span, TRACEPARENT_HEADER, TRACESTATE_HEADER, type Tracer } from './tracing.ts'

export interface H2InboundInit {
  /** This instance's service. */
  service: string
  localServiceAddress: string
  localServicePort: number
  gate: RequestGate
  metrics: ListenerMetrics
  logger: ProxyLogger
  clock: Clock
  /** With a tracer, each stream gets a SERVER span and the app gets its `traceparent`. */
  tracer?: Tracer
}

interface Caller {
  source: string
  socket: tls.TLSSocket
}

/** The local app's session, and whether it connected. */
interface LocalLink {
  session: http2.ClientHttp2Session
  connected: boolean
}

export class H2InboundHandler {
  /** Never listens: connections are handed to it with `serve`. */
  private readonly server = http2.createServer()
  private readonly callers = new Map<http2.Http2Session, Caller>()
  /** The caller of the connection being handed over (`serve` → the server's `session` event). */
  private handoff: Caller | undefined
  private local: LocalLink | undefined

  constructor(private readonly init: H2InboundInit) {
    this.server.on('session', (session: http2.ServerHttp2Session) => {
      const caller = this.handoff
      if (caller === undefined) {
        session.destroy()
        return
      }
      this.callers.set(session, caller)
      session.on('error', () => {})
      session.once('close', () => this.callers.delete(session))
    })
    this.server.on('stream', (stream, headers, flags) =>
      this.onStream(stream, headers, (flags & NGHTTP2_FLAG_END_STREAM) !== 0),
    )
  }

  /** Serves one accepted connection (ALPN `h2`) from `source`. */
  serve(socket: tls.TLSSocket, source: string): void {
    const m = this.init.metrics
    m.active.inc()
    socket.on('error', () => {})
    socket.once('close', () => {
      m.active.dec()
      m.addBytes(socket.bytesRead, socket.bytesWritten)
    })
    this.handoff = { source, socket }
    try {
      this.server.emit('connection', socket)
    } finally {
      this.handoff = undefined
    }
  }

  /** Intentions changed: closes the connections of callers now denied. */
  recheck(allowed: (source: string) => boolean): void {
    for (const [session, caller] of this.callers) {
      if (allowed(caller.source)) continue
      this.init.metrics.denied(caller.source)
      session.destroy()
      caller.socket.destroy()
    }
  }

  /** Closes every caller connection and the session to the app. */
  close(): void {
    for (const [session, caller] of this.callers) {
      session.destroy()
      caller.socket.destroy()
    }
    this.callers.clear()
    this.local?.session.destroy()
    this.local = undefined
  }

  /**
   * A request refused before the gate, as the HTTP/1.1 inbound refuses it: `status` with
   * `x-peermesh-reject: <reason>`, or for gRPC a trailers-only INTERNAL (what gRPC maps HTTP 400
   * to, and what Envoy answers a gRPC request its path normalization rejects with).
   */
  private refuse(
    down: http2.ServerHttp2Stream,
    source: string,
    method: string,
    path: string,
    grpc: boolean,
    status: number,
    reason: string,
    startedAt: number,
  ): void {
    const m = this.init.metrics
    this.init.logger.info(
      { src: source, dst: this.init.service, method, path: path.slice(0, 200), reason },
      `inbound request refused src=${source} dst=${this.init.service} ${method} ${JSON.stringify(path.slice(0, 200))} (${reason})`,
    )
    if (grpc) {
      respondGrpcStatus(down, GRPC_STATUS.INTERNAL, `${reason}: request not allowed`, {
        [INBOUND_REJECT_HEADER]: reason,
      })
    } else tryRespond(down, { ':status': status, [INBOUND_REJECT_HEADER]: reason }, { endStream: true })
    const elapsed = (this.init.clock.now() - startedAt) / 1000
    m.response(grpc ? 200 : status, elapsed, grpc ? { grpcStatus: GRPC_STATUS.INTERNAL } : undefined)
  }

  private localLink(): LocalLink {
    const existing = this.local
    if (existing !== undefined && !existing.session.closed && !existing.session.destroyed) return existing
    const { localServiceAddress: host, localServicePort: port } = this.init
    const session = http2.connect(`http://${host}:${port}`, {
      createConnection: () => net.connect({ host, port, noDelay: true }),
    })
    const link: LocalLink = { session, connected: false }
    session.once('connect', () => {
      link.connected = true
    })
    session.on('error', (error: Error & { code?: string }) => {
      this.init.metrics.error('local_connect')
      this.init.logger.debug(
        { dst: this.init.service, error: error.message, code: error.code },
        'inbound local app session failed',
      )
    })
    session.once('close', () => {
      if (this.local === link) this.local = undefined
    })
    this.local = link
    return link
  }

  /** `headersOnly`: the request ended with its headers (no body). */
  private onStream(
    down: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    headersOnly: boolean,
  ): void {
    const m = this.init.metrics
    const clock = this.init.clock
    const startedAt = clock.now()
    const caller = this.callers.get(down.session as http2.ServerHttp2Session)
    down.on('error', () => {})
    if (caller === undefined) {
      down.close(NGHTTP2_CANCEL)
      return
    }
    m.requests.inc()
    const grpc = isGrpc(headers)
    const method = headers[':method'] ?? 'GET'
    const url = headers[':path']
    if (method === 'CONNECT' || url === undefined) {
      // A tunnel (CONNECT has no :path) would carry bytes no rule sees: not served.
      const status = method === 'CONNECT' ? 405 : 400
      this.refuse(down, caller.source, method, url ?? '', grpc, status, 'bad_request', startedAt)
      return
    }
    const q = url.indexOf('?')
    const rawPath = q < 0 ? url : url.slice(0, q)
    // The gate and the app see the same path, normalized as the HTTP/1.1 inbound does
    // (inbound-http.ts); a path that cannot be matched safely gets 400.
    const path = normalizeRequestPath(rawPath)
    if (path === undefined) {
      this.refuse(down, caller.source, method, rawPath, grpc, 400, 'bad_path', startedAt)
      return
    }
    let decision: GateDecision
    try {
      decision = this.init.gate.check({ source: caller.source, method, path, headers })
    } catch {
      // A gate that cannot answer denies, as the authorizer does.
      decision = { allow: false, reason: 'intention', status: 403, grpcStatus: GRPC_STATUS.PERMISSION_DENIED }
    }
    if (!decision.allow) {
      // Counted and logged as the HTTP/1.1 inbound does (inbound-http.ts).
      if (decision.reason === 'rate-limit') m.rejected('rate-limit')
      else m.denied(caller.source)
      this.init.logger.info(
        { src: caller.source, dst: this.init.service, method, path, reason: decision.reason },
        `inbound request denied src=${caller.source} dst=${this.init.service} ${method} ${path.slice(0, 200)} (${decision.reason})`,
      )
      if (grpc) respondGrpcStatus(down, decision.grpcStatus, `denied: ${decision.reason}`)
      else tryRespond(down, { ':status': decision.status }, { endStream: true })
      m.response(
        grpc ? 200 : decision.status,
        (clock.now() - startedAt) / 1000,
        grpc ? { grpcStatus: decision.grpcStatus } : undefined,
      )
      return
    }

    const forwarded = forwardedHeaders(headers)
    forwarded[':path'] = q < 0 ? path : path + url.slice(q)
    let span: Span | undefined
    const tracer = this.init.tracer
    if (tracer !== undefined) {
      span = tracer.startServerSpan(
        { traceparent: headers.traceparent, tracestate: headers.tracestate },
        {
          method,
          path,
          serverAddress: this.init.service,
          protocolVersion: '2',
          upstream: this.init.service,
          sourceService: caller.source,
          startMs: startedAt,
        },
      )
      forwarded[TRACEPARENT_HEADER] = span.traceparent
      if (span.traceState !== undefined) forwarded[TRACESTATE_HEADER] = span.traceState
      else delete forwarded[TRACESTATE_HEADER]
    }

    const link = this.localLink()
    let up: http2.ClientHttp2Stream
    try {
      up = link.session.request(forwarded, { endStream: headersOnly })
    } catch {
      span?.end({ error: 'refused', endMs: clock.now() })
      down.close(NGHTTP2_REFUSED_STREAM)
      return
    }
    let responded = false
    let status = 0
    let grpcStatus: string | undefined
    up.on('error', () => {})
    up.on('trailers', (trailers) => {
      const g = trailers['grpc-status']
      if (typeof g === 'string') grpcStatus = g
    })
    let holding: Cancel | undefined
    up.on('response', (resHeaders, flags) => {
      if (down.closed) return
      if (!isRelayableStatus(resHeaders[':status'])) {
        // Node cannot send it (600-999), or it is no final response: the app is broken, and the
        // caller gets a 502 (gRPC: UNAVAILABLE), not marked as a reset, so it is not retried.
        responded = true
        up.close(NGHTTP2_PROTOCOL_ERROR)
        m.error('bad_response')
        this.init.logger.info(
          { dst: this.init.service, status: resHeaders[':status'] },
          'inbound local app sent an invalid response status',
        )
        if (grpc) {
          status = 200
          grpcStatus = String(GRPC_STATUS.UNAVAILABLE)
          respondGrpcStatus(down, GRPC_STATUS.UNAVAILABLE, 'local app sent an invalid response status')
        } else {
          status = 502
          tryRespond(down, { ':status': 502 }, { endStream: true })
        }
        return
      }
      status = resHeaders[':status'] ?? 0
      const g = resHeaders['grpc-status']
      if (typeof g === 'string') grpcStatus = g
      if (grpc && (flags & NGHTTP2_FLAG_END_STREAM) === 0) {
        holding = holdGrpcResponse(up, down, forwardedHeaders(resHeaders), clock, () => {
          holding = undefined
          responded = true
        })
        return
      }
      responded = true
      relayResponse(
        up,
        down,
        forwardedHeaders(resHeaders),
        flags,
        grpc || passesTrailers(headers, resHeaders),
      )
    })
    up.once('close', () => {
      holding?.()
      if (responded || down.closed) return
      if (!link.connected || up.rstCode === NGHTTP2_REFUSED_STREAM) {
        // Never reached the app: the caller's sidecar may send it elsewhere.
        down.close(NGHTTP2_REFUSED_STREAM)
      } else if (grpc || link.session.destroyed || link.session.closed) {
        // The app's stream ended before a response went out: its session is going (a killed app's
        // streams can close, code 0, before the session does) or it reset the call. A gRPC caller
        // gets UNAVAILABLE marked as a reset, which its sidecar retries on another instance.
        m.error('reset')
        if (grpc) {
          status = 200
          grpcStatus = String(GRPC_STATUS.UNAVAILABLE)
          respondGrpcStatus(down, GRPC_STATUS.UNAVAILABLE, 'local app reset before response headers', {
            [PROXY_ERROR_HEADER]: UpstreamResetError.code,
          })
        } else {
          status = 502
          tryRespond(
            down,
            { ':status': 502, [PROXY_ERROR_HEADER]: UpstreamResetError.code },
            { endStream: true },
          )
        }
      } else down.close(up.rstCode)
    })
    down.once('close', () => {
      if (!up.closed) up.close(NGHTTP2_CANCEL)
      const complete = status > 0 && down.rstCode === NGHTTP2_NO_ERROR
      if (complete)
        m.response(
          status,
          (clock.now() - startedAt) / 1000,
          grpc && grpcStatus !== undefined ? { grpcStatus } : undefined,
        )
      span?.end({
        statusCode: complete ? status : 0,
        ...(grpc && grpcStatus !== undefined && /^\d{1,2}$/.test(grpcStatus)
          ? { grpcStatus: Number(grpcStatus) }
          : {}),
        ...(complete ? {} : { error: 'reset' }),
        endMs: clock.now(),
      })
    })
    if (!headersOnly) down.pipe(up)
  }
}

/**
 * A gRPC response is held at the inbound until its trailers arrive, for at most
 * `GRPC_HOLD_MS` and `GRPC_HOLD_BYTES`: an app that dies between its response headers and its
 * trailers (a unary call's usual window) then looks to the caller's sidecar like one that died
 * before answering (a trailers-only UNAVAILABLE marked as a reset), so the call is retried on
 * another instance instead of failing. So does a response that ends without a `grpc-status`:
 * the streams of a session the app shuts down (GOAWAY, then its socket closed, as grpc-js's
 * `forceShutdown` does) end without trailers. A streaming response longer than the bounds is
 * forwarded as it comes once they are passed, and if it then ends without a status its trailers
 * say UNAVAILABLE.
 */
const GRPC_HOLD_MS = 50
const GRPC_HOLD_BYTES = 64 * 1024

/**
 * Starts holding `up`'s response; `onForward` runs when the response starts to go `down`
 * (complete, or past the bounds). Returns the cancel of the hold (the stream closed first).
 */
function holdGrpcResponse(
  up: http2.ClientHttp2Stream,
  down: http2.ServerHttp2Stream,
  out: http2.OutgoingHttpHeaders,
  clock: Clock,
  onForward: () => void,
): Cancel {
  const held: Buffer[] = []
  let heldBytes = 0
  let trailers: http2.OutgoingHttpHeaders = {}
  let forwarded = false
  const onData = (chunk: Buffer): void => {
    held.push(chunk)
    heldBytes += chunk.length
    if (heldBytes > GRPC_HOLD_BYTES) forward(false)
  }
  const forward = (complete: boolean): void => {
    if (forwarded || down.closed) return
    forwarded = true
    cancelTimer()
    up.off('data', onData)
    onForward()
    if (!tryRespond(down, out, { waitForTrailers: true })) {
      up.close(NGHTTP2_CANCEL)
      return
    }
    down.on('wantTrailers', () => trySendTrailers(down, withGrpcStatus(trailers)))
    for (const chunk of held) down.write(chunk)
    held.length = 0
    if (complete) down.end()
    else {
      up.pipe(down)
      up.once('close', () => {
        if (down.closed) return
        if (up.rstCode !== NGHTTP2_NO_ERROR) down.close(up.rstCode)
        else if (!down.writableEnded) down.end() // closed without its end: trailers say UNAVAILABLE
      })
    }
  }
  const cancelTimer = clock.setTimeout(() => forward(false), GRPC_HOLD_MS)
  up.on('trailers', (t: http2.IncomingHttpHeaders) => {
    trailers = forwardedHeaders(t)
  })
  up.on('data', onData)
  up.once('end', () => {
    // A stream of a session the app shut down ends too (GOAWAY, then its socket closed), with
    // or without a reset code, but without trailers: that is the app dying before it answered,
    // which the stream's close handler turns into a retried UNAVAILABLE; only a call the app
    // completed (its grpc-status sent) is forwarded.
    if (trailers['grpc-status'] !== undefined) forward(true)
    else cancelTimer()
  })
  return cancelTimer
}

/**
 * The trailers of a gRPC response the app ended without a status (its session shut down while the
 * response streamed): UNAVAILABLE, rather than a call that ends with no status at all.
 */
function withGrpcStatus(trailers: http2.OutgoingHttpHeaders): http2.OutgoingHttpHeaders {
  if (trailers['grpc-status'] !== undefined) return trailers
  return {
    ...trailers,
    'grpc-status': String(GRPC_STATUS.UNAVAILABLE),
    'grpc-message': 'local app ended the call without a status',
  }
}
