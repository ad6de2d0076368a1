/**
 * The inbound side of an `http` service, per request: HTTP/1.1 is terminated on the verified TLS
 * connection, each request is put to the request gate (L7 intentions, rate limits) with the
 * caller's SPIFFE service, and allowed requests are forwarded to the local app over a keep-alive
 * pool. A refused request never reaches the app: it gets 403 (`x-peermesh-reject: intention`) or
 * 429 (`x-peermesh-reject: rate-limit`) from the sidecar, on the same keep-alive connection.
 *
 * Paths are normalized before the gate (`normalizeRequestPath`) and forwarded normalized, so the
 * app routes exactly what the permissions matched; a path that cannot be normalized safely gets
 * 400. Upgrades (WebSocket) pass the gate with their request, then become a byte relay.
 *
 * Metrics as the outbound side: `peermesh_proxy_requests_total` per request,
 * `peermesh_proxy_responses_total{code,class}` for every response the caller got (the sidecar's
 * own 400/403/429 included; an unreachable app resets the connection, as the L4 relay does, so the caller retries elsewhere), `peermesh_proxy_inbound_denied_total{source}` for requests denied
 * by intention, `peermesh_proxy_limit_rejections_total{reason="rate-limit"}` for rate-limited ones,
 * `peermesh_proxy_latency_seconds` for the time to the app's response head.
 */
import http from 'node:http'
import net from 'node:net'
import type tls from 'node:tls'
import type { Clock } from '../common/clock.ts'
import { HOP_BY_HOP_HEADERS } from './constants.ts'
import { normalizeRequestPath } from './l7-permissions.ts'
import type { ListenerMetrics } from './metrics.ts'
import { TRACEPARENT_HEADER, TRACESTATE_HEADER, type Span, type Tracer } from './tracing.ts'
import type { GateDecision, RequestGate } from './request-gate.ts'
import { type AccessLogMode, type ProxyLogger, shouldLogAccess } from './types.ts'

/** Header naming why the sidecar refused a request (`intention` or `rate-limit`). */
export const INBOUND_REJECT_HEADER = 'x-peermesh-reject'

/** Idle connections to the local app are closed after this (below Node's 5 s keep-alive default). */
const APP_IDLE_TIMEOUT_MS = 4_000

/** Rate-limit refusals are logged at most this often per listener (a retry storm is one line a second). */
const RATE_LIMIT_LOG_INTERVAL_MS = 1000

export interface InboundHttpInit {
  service: string
  localServiceAddress: string
  localServicePort: number
  /** Read on every request: the sidecar swaps what it answers when the policy changes. */
  gate: RequestGate
  metrics: ListenerMetrics
  logger: ProxyLogger
  clock: Clock
  accessLog: AccessLogMode
  /** With a tracer, each request gets a SERVER span and the app gets its `traceparent`. */
  tracer?: Tracer
}

/** Serves the HTTP/1.1 requests of verified inbound connections; one per listener. */
export class InboundHttp {
  private readonly server: http.Server
  private readonly agent: http.Agent
  private readonly sources = new WeakMap<net.Socket, string>()
  private rateLimitLog = { at: Number.NEGATIVE_INFINITY, suppressed: 0 }

  constructor(private readonly init: InboundHttpInit) {
    // Never listens: the TLS listener hands it connections it has verified.
    this.server = http.createServer({
      // The caller's sidecar decides how long a request or an idle connection may last (as the
      // L4 relay did); only a head must arrive in time.
      requestTimeout: 0,
      keepAliveTimeout: 0,
      headersTimeout: 60_000,
    })
    this.server.on('request', (req, res) => this.onRequest(req, res))
    this.server.on('checkContinue', (req, res) => this.onRequest(req, res, true))
    this.server.on('upgrade', (req, socket, head) => this.onUpgrade(req, socket as net.Socket, head))
    this.server.on('clientError', (_err, socket) => {
      if (socket.writable)
        socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n')
      socket.destroy()
    })
    // Idle pooled connections are dropped before a typical app drops them (Node's server keeps
    // them 5 s): reusing one the app is closing would fail the request that picked it.
    this.agent = new http.Agent({ keepAlive: true, scheduling: 'lifo', timeout: APP_IDLE_TIMEOUT_MS })
  }

  /** Serves a verified connection from `source`. */
  serve(socket: tls.TLSSocket, source: string): void {
    this.sources.set(socket, source)
    this.server.emit('connection', socket)
  }

  /** Closes the pooled connections to the app. */
  close(): void {
    this.agent.destroy()
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse, expectsContinue = false): void {
    const { metrics: m, clock } = this.init
    const startedAt = clock.now()
    const source = this.sources.get(req.socket) ?? 'unknown'
    m.requests.inc()
    const url = req.url ?? '/'
    const q = url.indexOf('?')
    const rawPath = q < 0 ? url : url.slice(0, q)
    const method = req.method ?? 'GET'
    let status = 0
    let result = 'ok'
    let span: Span | undefined
    res.once('close', () => {
      if (status === 0 && !res.headersSent) result = 'client_closed'
      else m.response(status || res.statusCode, (clock.now() - startedAt) / 1000)
      span?.end({
        statusCode: status || (res.headersSent ? res.statusCode : 0),
        ...(result === 'ok' ? {} : { error: result }),
        endMs: clock.now(),
      })
      if (shouldLogAccess(this.init.accessLog, status, result)) {
        this.init.logger.info(
          {
            direction: 'inbound',
            src: source,
            dst: this.init.service,
            method,
            path: rawPath,
            status,
            result,
            durationMs: Math.round((clock.now() - startedAt) * 1000) / 1000,
          },
          'access',
        )
      }
    })
    const path = normalizeRequestPath(rawPath)
    if (path === undefined) {
      result = 'bad_path'
      status = 400
      this.reply(
        res,
        400,
        'bad_path',
        `peermesh: path ${JSON.stringify(rawPath.slice(0, 200))} is not allowed\n`,
      )
      return
    }
    const decision = this.init.gate.check({ source, method, path, headers: req.headers })
    if (!decision.allow) {
      result = decision.reason
      status = decision.status
      this.refuse(res, decision, source, method, path)
      return
    }
    if (expectsContinue) res.writeContinue()
    const headers: string[] = []
    const raw = req.rawHeaders
    const tracer = this.init.tracer
    let hasHost = false
    for (let i = 0; i < raw.length; i += 2) {
      const lower = raw[i]!.toLowerCase()
      if (lower === 'host') hasHost = true
      // With a tracer, the trace headers are replaced by the span's below.
      if (tracer !== undefined && (lower === TRACEPARENT_HEADER || lower === TRACESTATE_HEADER)) continue
      if (!HOP_BY_HOP_HEADERS.has(lower)) headers.push(raw[i]!, raw[i + 1]!)
    }
    if (tracer !== undefined) {
      span = tracer.startServerSpan(
        { traceparent: req.headers.traceparent, tracestate: req.headers.tracestate },
        {
          method,
          path,
          serverAddress: this.init.service,
          protocolVersion: req.httpVersion,
          upstream: this.init.service,
          sourceService: source,
          startMs: startedAt,
        },
      )
      headers.push(TRACEPARENT_HEADER, span.traceparent)
      if (span.traceState !== undefined) headers.push(TRACESTATE_HEADER, span.traceState)
    }
    // Forwarded as HTTP/1.1, which requires a Host: an HTTP/1.0 caller may have sent none.
    if (!hasHost) headers.push('host', `${this.init.localServiceAddress}:${this.init.localServicePort}`)
    const upReq = http.request({
      agent: this.agent,
      host: this.init.localServiceAddress,
      port: this.init.localServicePort,
      method,
      path: q < 0 ? path : path + url.slice(q),
      headers,
      setHost: false,
    })
    upReq.on('response', (upRes) => {
      m.latency.observe((clock.now() - startedAt) / 1000)
      status = upRes.statusCode ?? 502
      const out: string[] = []
      const rawRes = upRes.rawHeaders
      for (let i = 0; i < rawRes.length; i += 2) {
        if (!HOP_BY_HOP_HEADERS.has(rawRes[i]!.toLowerCase())) out.push(rawRes[i]!, rawRes[i + 1]!)
      }
      res.writeHead(status, upRes.statusMessage, out)
      upRes.pipe(res)
      upRes.on('error', () => res.destroy())
      upRes.on('aborted', () => res.destroy())
    })
    upReq.on('error', (error: Error & { code?: string }) => {
      if (res.headersSent) {
        result = 'reset'
        res.destroy()
        return
      }
      result = 'local_connect'
      m.error('local_connect')
      this.init.logger.debug(
        { src: source, dst: this.init.service, error: error.message, code: error.code },
        'inbound local app unreachable',
      )
      // As the L4 relay does: the connection is reset before any response byte, so the caller's
      // sidecar retries on another instance and counts a failure against this one (a 502 here
      // would be a response, handed to the app that called).
      req.socket.destroy()
    })
    // The caller went away: stop the app's side too.
    res.once('close', () => {
      if (!res.writableFinished) upReq.destroy()
    })
    req.pipe(upReq)
  }

  private refuse(
    res: http.ServerResponse,
    decision: Extract<GateDecision, { allow: false }>,
    source: string,
    method: string,
    path: string,
  ): void {
    const { metrics: m, logger, service } = this.init
    if (decision.reason === 'intention') {
      m.denied(source)
      logger.info(
        { src: source, dst: service, method, path, reason: 'intention' },
        `inbound request denied src=${source} dst=${service} ${method} ${path}`,
      )
      this.reply(
        res,
        decision.status,
        'intention',
        `peermesh: ${source} -> ${service} ${method} ${path} denied by intention\n`,
      )
      return
    }
    m.rejected('rate-limit')
    const now = this.init.clock.now()
    if (now - this.rateLimitLog.at >= RATE_LIMIT_LOG_INTERVAL_MS) {
      logger.info(
        {
          src: source,
          dst: service,
          method,
          path,
          reason: 'rate-limit',
          suppressed: this.rateLimitLog.suppressed,
        },
        `inbound request rate-limited src=${source} dst=${service} ${method} ${path}`,
      )
      this.rateLimitLog = { at: now, suppressed: 0 }
    } else {
      this.rateLimitLog.suppressed++
    }
    this.reply(res, decision.status, 'rate-limit', `peermesh: ${source} -> ${service} over the rate limit\n`)
  }

  private reply(res: http.ServerResponse, status: number, reject: string | undefined, body: string): void {
    res.writeHead(status, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      ...(reject !== undefined ? { [INBOUND_REJECT_HEADER]: reject } : {}),
    })
    res.end(body)
  }

  /** An upgrade (WebSocket): the request passes the gate, then the connection is relayed as bytes. */
  private onUpgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    const source = this.sources.get(socket) ?? 'unknown'
    const { metrics: m } = this.init
    m.requests.inc()
    const url = req.url ?? '/'
    const q = url.indexOf('?')
    const rawPath = q < 0 ? url : url.slice(0, q)
    const method = req.method ?? 'GET'
    const path = normalizeRequestPath(rawPath)
    const decision: GateDecision | undefined =
      path === undefined ? undefined : this.init.gate.check({ source, method, path, headers: req.headers })
    if (decision === undefined || !decision.allow) {
      const status = decision === undefined ? 400 : decision.status
      if (decision !== undefined) {
        if (decision.reason === 'intention') m.denied(source)
        else m.rejected('rate-limit')
      }
      m.response(status, 0)
      const reject = decision === undefined ? '' : `${INBOUND_REJECT_HEADER}: ${decision.reason}\r\n`
      socket.end(
        `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n${reject}connection: close\r\ncontent-length: 0\r\n\r\n`,
      )
      return
    }
    const local = net.connect({ host: this.init.localServiceAddress, port: this.init.localServicePort })
    local.setNoDelay(true)
    socket.on('error', () => local.destroy())
    local.on('error', () => {
      m.error('local_connect')
      socket.destroy()
    })
    let lines = `${method} ${q < 0 ? path! : path! + url.slice(q)} HTTP/${req.httpVersion}\r\n`
    for (let i = 0; i < req.rawHeaders.length; i += 2)
      lines += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`
    local.write(`${lines}\r\n`)
    if (head.length > 0) local.write(head)
    socket.pipe(local)
    local.pipe(socket)
    socket.on('close', () => local.destroy())
    local.on('close', () => socket.destroy())
  }
}
