/**
 * The inbound side of an `http` service, per request: HTTP/1.1 is terminated on the verified TLS
 * connection, each request is put to the request gate (L7 intentions, rate limits) with the
 * caller's SPIFFE service, and allowed requests are forwarded to the local app over a keep-alive
 * pool. A refused request never reaches the app: it gets 403 (`x-peermesh-reject: intention`) or
 * 429 (`x-peermesh-reject: rate-limit`) from the sidecar, on the same keep-alive connection.
 *
 * Paths are normalized before the gate (`normalizeRequestPath`) and forwarded normalized, so the
 * app routes exactly what the permissions matched; a path that cannot be normalized safely gets
 * 400. A chunked request body is forwarded chunked, whatever the method. Upgrades (WebSocket) pass
 * the gate with their request, and become a byte relay only when the app answers 101; any other
 * answer ends the caller's connection. A response head Node cannot write (a control character in
 * the app's reason phrase) is answered 502.
 *
 * Before the gate, a request whose header fields the gate and the app would read differently is
 * refused and its connection closed (`http-field-checks.ts`): a field Node keeps one value of
 * (`authorization`, `host`, ...) sent twice gets 400 (the gate would match the first value, the
 * app may read the last), a `transfer-encoding` other than `chunked` 501 (the body would reach the
 * app without its codings). An app response with such a `transfer-encoding` is answered 502.
 *
 * Metrics as the outbound side: `peermesh_proxy_requests_total` per request,
 * `peermesh_proxy_responses_total{code,class}` for every response the caller got (the sidecar's
 * own 400/403/429/501 included; an unreachable app resets the connection, as the L4 relay does, so the caller retries elsewhere), `peermesh_proxy_inbound_denied_total{source}` for requests denied
 * by intention, `peermesh_proxy_errors_total{reason}` with `duplicate_header` or
 * `unsupported_transfer_coding` for requests refused on their header fields, `peermesh_proxy_limit_rejections_total{reason="rate-limit"}` for rate-limited ones,
 * `peermesh_proxy_latency_seconds` for the time to the app's response head.
 */
import http from 'node:http'
import type net from 'node:net'
import type tls from 'node:tls'
import type { Clock } from '../common/clock.ts'
import { HOP_BY_HOP_HEADERS } from './constants.ts'
import {
  FIELD_PROBLEM_STATUS,
  type FieldProblem,
  hasUnsupportedTransferCoding,
  requestFieldProblem,
} from './http-field-checks.ts'
import { formatResponseHead } from './inbound-response-head.ts'
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
    const problem = requestFieldProblem(req.rawHeaders)
    if (problem !== undefined) {
      // Nothing of it reaches the app, and its connection is closed (its body is not read).
      result = problem
      status = FIELD_PROBLEM_STATUS[problem]
      m.error(problem)
      this.reply(res, status, problem, FIELD_PROBLEM_BODY[problem], true)
      return
    }
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
    const tracer = this.init.tracer
    // The body is forwarded with the framing it came with: a chunked body chunked, whatever the
    // method (Node's client frames no GET/HEAD/DELETE/OPTIONS body by itself, and body bytes
    // written unframed would be read by the app as a next request the gate never saw). With a
    // tracer, the trace headers are replaced by the span's below.
    const chunked = req.headers['transfer-encoding'] !== undefined
    const drop = tracer !== undefined ? (chunked ? TRACE_AND_LENGTH : TRACE) : chunked ? LENGTH : undefined
    const hasHost = forwardHeaders(req.rawHeaders, headers, drop)
    if (chunked) headers.push('transfer-encoding', 'chunked')
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
    // Set when the sidecar answered for the app (its head could not be written): the app's
    // connection is dropped then, and its end is no error of the caller's.
    let answered = false
    upReq.on('response', (upRes) => {
      m.latency.observe((clock.now() - startedAt) / 1000)
      // The caller gets 502, the app's connection is dropped with the rest of its answer.
      const badHead = (error: string) => {
        answered = true
        upRes.on('error', () => {})
        upReq.destroy()
        result = 'protocol'
        status = 502
        m.error('protocol')
        this.init.logger.debug(
          { src: source, dst: this.init.service, error },
          'inbound local app sent a response head that cannot be forwarded',
        )
        res.statusMessage = '' // the app's, if writeHead kept it: the 502 gets its own
        this.reply(res, 502, undefined, 'peermesh: the local app sent an invalid response head\n')
      }
      // Node's parser removed the chunked framing only: the body, forwarded re-chunked, would
      // reach the caller without its other codings (gzip, ...).
      if (hasUnsupportedTransferCoding(upRes.rawHeaders)) {
        badHead('unsupported transfer-encoding')
        return
      }
      status = upRes.statusCode ?? 502
      const out: string[] = []
      forwardHeaders(upRes.rawHeaders, out)
      try {
        res.writeHead(status, upRes.statusMessage, out)
      } catch (error) {
        // A head Node will not write (llhttp let through a character Node's writer refuses, as
        // a control character in the reason phrase).
        badHead((error as Error).message)
        return
      }
      upRes.pipe(res)
      upRes.on('error', () => res.destroy())
      upRes.on('aborted', () => res.destroy())
    })
    upReq.on('error', (error: Error & { code?: string }) => {
      if (answered) return
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

  /** A response of the sidecar's own; `close`: the caller's connection is closed after it. */
  private reply(
    res: http.ServerResponse,
    status: number,
    reject: string | undefined,
    body: string,
    close = false,
  ): void {
    res.writeHead(status, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      ...(reject !== undefined ? { [INBOUND_REJECT_HEADER]: reject } : {}),
      ...(close ? { connection: 'close' } : {}),
    })
    res.end(body)
  }

  /**
   * An upgrade (WebSocket): the request passes the gate, is sent to the app, and only when the app
   * answers 101 Switching Protocols does the connection become a byte relay. Any other answer is
   * relayed as a response and the caller's connection closed: bytes after the request are never
   * handed to the app unless it switched protocols (they would be requests the gate never saw).
   */
  private onUpgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    const source = this.sources.get(socket) ?? 'unknown'
    const { metrics: m, clock } = this.init
    const startedAt = clock.now()
    m.requests.inc()
    const url = req.url ?? '/'
    const q = url.indexOf('?')
    const rawPath = q < 0 ? url : url.slice(0, q)
    const method = req.method ?? 'GET'
    // Header fields the gate and the app would read differently: refused before the gate, as a
    // request's are.
    const problem = requestFieldProblem(req.rawHeaders)
    if (problem !== undefined) {
      const status = FIELD_PROBLEM_STATUS[problem]
      m.error(problem)
      m.response(status, 0)
      socket.end(
        `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n${INBOUND_REJECT_HEADER}: ${problem}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`,
      )
      return
    }
    const path = normalizeRequestPath(rawPath)
    const decision: GateDecision | undefined =
      path === undefined ? undefined : this.init.gate.check({ source, method, path, headers: req.headers })
    // Node's server reads no body for an upgrade request: its bytes would arrive as the relay's
    // first bytes, so a request declaring one is refused (a WebSocket handshake has none).
    const cl = req.headers['content-length']
    const hasBody = req.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0')
    if (decision === undefined || !decision.allow || hasBody) {
      const status = decision === undefined || decision.allow ? 400 : decision.status
      if (decision !== undefined && !decision.allow) {
        if (decision.reason === 'intention') m.denied(source)
        else m.rejected('rate-limit')
      }
      m.response(status, 0)
      const reject =
        decision === undefined || decision.allow ? '' : `${INBOUND_REJECT_HEADER}: ${decision.reason}\r\n`
      socket.end(
        `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n${reject}connection: close\r\ncontent-length: 0\r\n\r\n`,
      )
      return
    }
    const headers: string[] = []
    const hasHost = forwardHeaders(req.rawHeaders, headers)
    headers.push('connection', 'upgrade', 'upgrade', req.headers.upgrade ?? '')
    if (!hasHost) headers.push('host', `${this.init.localServiceAddress}:${this.init.localServicePort}`)
    // A connection of its own: it leaves the pool anyway once it switches protocols.
    const upReq = http.request({
      agent: false,
      host: this.init.localServiceAddress,
      port: this.init.localServicePort,
      method,
      path: q < 0 ? path! : path! + url.slice(q),
      headers,
      setHost: false,
    })
    // Set once the caller got a response head (the app's, or the sidecar's 502).
    let answered = false
    const badHead = () => {
      answered = true
      m.error('protocol')
      m.response(502, (clock.now() - startedAt) / 1000)
      socket.end('HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\ncontent-length: 0\r\n\r\n')
      upReq.destroy()
    }
    upReq.on('upgrade', (upRes, upSocket: net.Socket, upHead: Buffer) => {
      const status = upRes.statusCode ?? 101
      const out = formatResponseHead(status, upRes.statusMessage, upRes.rawHeaders)
      if (out === undefined) {
        upSocket.destroy()
        badHead()
        return
      }
      answered = true
      m.latency.observe((clock.now() - startedAt) / 1000)
      m.response(status, (clock.now() - startedAt) / 1000)
      upSocket.setNoDelay(true)
      upSocket.on('error', () => socket.destroy())
      socket.write(out)
      if (upHead.length > 0) socket.write(upHead)
      if (head.length > 0) upSocket.write(head)
      socket.pipe(upSocket)
      upSocket.pipe(socket)
      socket.on('close', () => upSocket.destroy())
      upSocket.on('close', () => socket.destroy())
    })
    upReq.on('response', (upRes) => {
      // Not switching protocols: relayed as the last response on the caller's connection; what
      // the caller sent after its request is discarded.
      const status = upRes.statusCode ?? 502
      if (hasUnsupportedTransferCoding(upRes.rawHeaders)) {
        // Relayed decoded, its codings (gzip, ...) would be lost: as a head that cannot be written.
        upRes.on('error', () => {})
        badHead()
        return
      }
      const out: string[] = []
      // A chunked body is relayed decoded, delimited by the connection's close.
      forwardHeaders(
        upRes.rawHeaders,
        out,
        upRes.headers['transfer-encoding'] !== undefined ? LENGTH : undefined,
      )
      out.push('connection', 'close')
      const text = formatResponseHead(status, upRes.statusMessage, out)
      if (text === undefined) {
        upRes.on('error', () => {})
        badHead()
        return
      }
      answered = true
      m.latency.observe((clock.now() - startedAt) / 1000)
      m.response(status, (clock.now() - startedAt) / 1000)
      socket.resume()
      socket.write(text)
      upRes.on('data', (chunk: Buffer) => {
        if (!socket.write(chunk)) {
          upRes.pause()
          socket.once('drain', () => upRes.resume())
        }
      })
      upRes.on('end', () => socket.destroySoon())
      upRes.on('error', () => socket.destroy())
    })
    upReq.on('error', (error: Error & { code?: string }) => {
      if (answered) {
        socket.destroy()
        return
      }
      m.error('local_connect')
      this.init.logger.debug(
        { src: source, dst: this.init.service, error: error.message, code: error.code },
        'inbound local app unreachable',
      )
      socket.destroy() // as for a request: the caller's sidecar retries elsewhere
    })
    socket.on('error', () => upReq.destroy())
    socket.on('close', () => upReq.destroy())
    upReq.end()
  }
}

/** The body of the sidecar's answer to a request refused on its header fields (`http-field-checks.ts`). */
const FIELD_PROBLEM_BODY: Readonly<Record<FieldProblem, string>> = {
  duplicate_header: 'peermesh: a header field that takes one value was sent more than once\n',
  unsupported_transfer_coding: 'peermesh: transfer-encoding other than chunked is not implemented\n',
}

const TRACE: ReadonlySet<string> = new Set([TRACEPARENT_HEADER, TRACESTATE_HEADER])
const LENGTH: ReadonlySet<string> = new Set(['content-length'])
const TRACE_AND_LENGTH: ReadonlySet<string> = new Set([...TRACE, ...LENGTH])

/**
 * Appends `raw`'s headers (`[name, value, ...]`) to `out`, but the hop-by-hop ones and those
 * `drop` names (lower case); returns whether a Host header was among `raw`.
 */
function forwardHeaders(raw: readonly string[], out: string[], drop?: ReadonlySet<string>): boolean {
  let hasHost = false
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase()
    if (lower === 'host') hasHost = true
    if (!HOP_BY_HOP_HEADERS.has(lower) && drop?.has(lower) !== true) out.push(raw[i]!, raw[i + 1]!)
  }
  return hasHost
}
