/**
 * A lean HTTP/1.1 client for the outbound listener's HTTP mode: one request at a time on each
 * keep-alive connection (no pipelining), over connections a per-endpoint `Http1Pool` opens with
 * the caller's `connect` (mutual TLS in the proxy).
 *
 * Responses are parsed by Node's own llhttp binding (`HTTPParser` of `_http_common`, the parser of
 * Node's `http` client and server), strict (no lenient flags), with the head bounded by
 * `maxHeaderBytes`. Every byte from the upstream is hostile: a malformed response, a head over the
 * bound, a `101` nobody asked for, or bytes arriving while no request is outstanding make the
 * connection unusable (it is destroyed) and fail the exchange with `protocol`. A connection goes
 * back to the pool only after a complete, well-framed response, with nothing after it, to a
 * request that was written in full, when the upstream did not ask to close.
 *
 * Request bodies: a buffered body goes out with the head in one write; a streamed body is copied
 * from the app's request with backpressure, as is (content-length) or chunk-encoded.
 */
import { createRequire } from 'node:module'
import type { Readable } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import { ProxyError } from './errors.ts'

/** The upstream's response is not well-formed HTTP/1.1 (or not a response to what was asked). */
export class UpstreamProtocolError extends ProxyError {
  static override readonly code = 'PEERMESH_ERR_UPSTREAM_PROTOCOL'
}

/** A request head built from the app's request and the traffic policy has an invalid name or value. */
export class InvalidRequestHeadError extends ProxyError {
  static override readonly code = 'PEERMESH_ERR_INVALID_REQUEST_HEAD'
}

/** The subset of Node's llhttp binding used here (`_http_common`, undocumented but stable since v12). */
interface LlhttpParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenientFlags: number): void
  execute(data: Buffer): number | Error
  finish(): undefined | Error
  close(): void
  [callback: number]: unknown
}
interface LlhttpParserClass {
  new (): LlhttpParser
  RESPONSE: number
  kOnMessageBegin: number
  kOnHeaders: number
  kOnHeadersComplete: number
  kOnBody: number
  kOnMessageComplete: number
  kLenientNone: number
}
const { HTTPParser } = createRequire(import.meta.url)('_http_common') as { HTTPParser: LlhttpParserClass }
const kOnMessageBegin = HTTPParser.kOnMessageBegin | 0
const kOnHeaders = HTTPParser.kOnHeaders | 0
const kOnHeadersComplete = HTTPParser.kOnHeadersComplete | 0
const kOnBody = HTTPParser.kOnBody | 0
const kOnMessageComplete = HTTPParser.kOnMessageComplete | 0

/**
 * Where an exchange failed. `connect`: no TLS session was made (nothing reached the upstream).
 * `reset`: the connection closed or failed before the response head. `protocol`: the upstream
 * sent something that is not a valid response. `aborted`: the response was cut after its head.
 */
export type Http1FailureStage = 'connect' | 'reset' | 'protocol' | 'aborted'

export interface Http1ResponseHead {
  status: number
  statusMessage: string
  /** Name, value, name, value... as received. */
  rawHeaders: string[]
}

/** What the caller of `Http1Pool.request` is told, in order: head, body chunks, end; or an error. */
export interface Http1Handler {
  /** The final response head (1xx interim responses are skipped). */
  onResponse(head: Http1ResponseHead): void
  /** A body chunk; false asks for the upstream to pause until `Http1Exchange.resume()`. */
  onBody(chunk: Buffer): boolean
  /** The response is complete; `rawTrailers` as received (chunked responses only). */
  onEnd(rawTrailers: string[]): void
  /** Called at most once, and never after `onEnd`. */
  onError(error: Error, stage: Http1FailureStage): void
}

export interface Http1Request {
  method: string
  /** The encoded head (`encodeRequestHead`). */
  head: Buffer
  /** A buffered body, written with the head. */
  body?: Buffer
  /** A body streamed from this source (after `head`); `chunked` encodes it. */
  stream?: Readable
  chunked?: boolean
}

/** What the pool needs to open a connection; the socket's `secureConnect` marks it established. */
export type Http1Connect = () => TLSSocket

export interface Http1PoolOptions {
  connect: Http1Connect
  /** Idle connections kept. */
  maxIdle: number
  /** Connections open at once (in use or connecting); requests beyond wait in order. */
  maxConnections: number
  /** Bound of a response head (status line, headers, trailers), in bytes. */
  maxHeaderBytes: number
  /** Monotonic milliseconds, for idle expiry. */
  now: () => number
}

/** One request on a pooled connection; `abort()` gives up on it (the connection is destroyed). */
export interface Http1Exchange {
  abort(): void
  /** Resumes reading the response after `onBody` returned false. */
  resume(): void
}

const CRLF = '\r\n'
const LAST_CHUNK = Buffer.from('0\r\n\r\n', 'latin1')
/** RFC 9110 §5.6.2 token. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
/** Field values: no control characters but HTAB (RFC 9110 §5.5), as Node's `http` checks. */
const INVALID_VALUE = /[^\t\x20-\x7e\x80-\xff]/
/** Request targets: visible ASCII and obs-text, as Node's `http.request` checks. */
const INVALID_PATH = /[^\u0021-\u00ff]/
/** Methods whose requests carry no body by default: no `content-length: 0` is added for them. */
const NO_DEFAULT_BODY = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT'])

/**
 * The request head: `method path HTTP/1.1`, `headers` (name, value pairs, in order; framing
 * headers are the caller's: `content-length` passes through), then `transfer-encoding: chunked`
 * when `chunked`, or `content-length: 0` for a bodiless method that usually has a body (as
 * Node's client does). Throws InvalidRequestHeadError on a bad method, target, name or value.
 */
export function encodeRequestHead(
  method: string,
  path: string,
  headers: readonly string[],
  framing: 'none' | 'length' | 'chunked',
): Buffer {
  if (!TOKEN.test(method)) throw new InvalidRequestHeadError('invalid method')
  if (path.length === 0 || INVALID_PATH.test(path))
    throw new InvalidRequestHeadError('invalid request target')
  let head = `${method} ${path} HTTP/1.1\r\n`
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!
    const value = headers[i + 1]!
    if (!TOKEN.test(name)) throw new InvalidRequestHeadError('invalid header name')
    if (INVALID_VALUE.test(value)) throw new InvalidRequestHeadError(`invalid value of header ${name}`)
    head += `${name}: ${value}\r\n`
  }
  if (framing === 'chunked') head += `Transfer-Encoding: chunked\r\n`
  else if (framing === 'none' && !NO_DEFAULT_BODY.has(method)) head += `Content-Length: 0\r\n`
  return Buffer.from(`${head}\r\n`, 'latin1')
}

/** `Keep-Alive: timeout=N` (RFC 2068 §19.7.1.1), in ms; undefined when absent or unreadable. */
export function keepAliveTimeoutMs(value: string): number | undefined {
  const m = /(?:^|[\s,])timeout\s*=\s*(\d{1,9})/i.exec(value)
  return m === null ? undefined : Number(m[1]) * 1000
}

/** Idle connections are dropped this long before the upstream's announced keep-alive timeout. */
const KEEP_ALIVE_MARGIN_MS = 1000

/** One upstream connection and its parser; carries one exchange at a time. */
class Http1Connection {
  established = false
  /** Set once it may never carry another request (closed, failed, or told to close). */
  dead = false
  /** Counted by the pool as busy (carrying a request or being opened for one). */
  inUse = false
  /** The exchange in progress (its handler), undefined while idle. */
  handler: Http1Handler | undefined
  /** Idle since (pool clock), and how long it may stay idle (from the upstream's Keep-Alive). */
  idleSince = 0
  idleLimitMs = Number.POSITIVE_INFINITY
  private readonly parser: LlhttpParser
  private lastError: Error | undefined
  private request: Http1Request | undefined
  /** The request's bytes were all handed to the socket. */
  private requestWritten = false
  private head = false
  private responded = false
  private complete = false
  /** Bytes of another message followed the response. */
  private extra = false
  private keepAlive = false
  private protocolError: string | undefined
  private partialHeaders: string[] = []
  private trailers: string[] = []
  private readonly onStreamData = (chunk: Buffer): void => this.writeBody(chunk)
  private readonly onStreamEnd = (): void => this.endBody()
  private readonly onSocketDrain = (): void => {
    this.request?.stream?.resume()
  }

  constructor(
    readonly socket: TLSSocket,
    private readonly pool: Http1Pool,
    maxHeaderBytes: number,
  ) {
    const parser = new HTTPParser()
    parser.initialize(HTTPParser.RESPONSE, {}, maxHeaderBytes, HTTPParser.kLenientNone)
    parser[kOnMessageBegin] = () => {
      if (this.complete || this.handler === undefined) this.extra = true
    }
    parser[kOnHeaders] = (headers: string[]) => {
      for (const h of headers) this.partialHeaders.push(h)
    }
    parser[kOnHeadersComplete] = this.onHeadersComplete
    parser[kOnBody] = (chunk: Buffer) => {
      const handler = this.handler
      if (handler === undefined || this.complete || this.extra || !this.responded) return
      if (!handler.onBody(chunk)) socket.pause()
    }
    parser[kOnMessageComplete] = this.onMessageComplete
    this.parser = parser
    socket.once('secureConnect', () => {
      this.established = true
    })
    socket.on('data', this.onData)
    socket.on('end', this.onEnd)
    socket.on('error', (error) => {
      this.lastError = error // the 'close' that follows reports it
    })
    socket.once('close', this.onClose)
    socket.on('drain', this.onSocketDrain)
  }

  /** Starts `request` on this (idle or new) connection; returns the exchange's handle. */
  start(request: Http1Request, handler: Http1Handler): Http1Exchange {
    this.handler = handler
    this.request = request
    this.requestWritten = false
    this.head = request.method === 'HEAD'
    this.responded = false
    this.complete = false
    this.extra = false
    this.keepAlive = false
    this.protocolError = undefined
    this.trailers = []
    const socket = this.socket
    if (socket.isPaused()) socket.resume()
    if (request.stream === undefined) {
      if (request.body === undefined || request.body.length === 0) socket.write(request.head)
      else {
        socket.cork()
        socket.write(request.head)
        socket.write(request.body)
        socket.uncork()
      }
      this.requestWritten = true
    } else {
      socket.write(request.head)
      request.stream.on('data', this.onStreamData)
      request.stream.once('end', this.onStreamEnd)
    }
    return new ExchangeHandle(this, handler)
  }

  /** Gives up on the exchange of `handler`, if it is still this connection's. */
  abort(handler: Http1Handler): void {
    if (this.handler !== handler) return
    this.detach()
    this.destroy()
  }

  resume(handler: Http1Handler): void {
    if (this.handler === handler && this.socket.isPaused()) this.socket.resume()
  }

  destroy(): void {
    this.dead = true
    this.socket.destroy()
  }

  private writeBody(chunk: Buffer): void {
    if (chunk.length === 0) return
    const socket = this.socket
    let ok: boolean
    if (this.request!.chunked) {
      socket.cork()
      socket.write(`${chunk.length.toString(16)}${CRLF}`, 'latin1')
      socket.write(chunk)
      ok = socket.write(CRLF, 'latin1')
      socket.uncork()
    } else ok = socket.write(chunk)
    if (!ok) this.request!.stream!.pause()
  }

  private endBody(): void {
    if (this.request!.chunked) this.socket.write(LAST_CHUNK)
    this.requestWritten = true
    this.detachStream()
    // The response may have completed before the body did.
    if (this.complete) this.settle()
  }

  private detachStream(): void {
    const stream = this.request?.stream
    if (stream === undefined) return
    stream.off('data', this.onStreamData)
    stream.off('end', this.onStreamEnd)
    // A body left unsent (early answer, abort) is read and dropped, not left paused mid-stream.
    if (stream.isPaused()) stream.resume()
  }

  private detach(): void {
    this.detachStream()
    this.handler = undefined
    this.request = undefined
  }

  private readonly onHeadersComplete = (
    _versionMajor: number,
    _versionMinor: number,
    headers: string[] | undefined,
    _method: unknown,
    _url: unknown,
    statusCode: number,
    statusMessage: string,
    upgrade: boolean,
    shouldKeepAlive: boolean,
  ): number => {
    let raw = headers
    if (raw === undefined) {
      raw = this.partialHeaders
      this.partialHeaders = []
    }
    if (this.complete || this.handler === undefined) {
      this.extra = true
      return 1
    }
    if (upgrade || statusCode < 100 || statusCode > 599) {
      // Nothing here asks for an upgrade: a 101 (or a status out of range) is no answer to it.
      this.protocolError = upgrade ? 'unrequested upgrade' : `status ${statusCode}`
      return 1
    }
    // Interim responses (1xx but 101) precede the real one: skip them (RFC 9110 §15.2).
    if (statusCode < 200) return 1
    this.responded = true
    this.keepAlive = shouldKeepAlive
    for (let i = 0; i < raw.length; i += 2) {
      if (raw[i]!.length === 10 && raw[i]!.toLowerCase() === 'keep-alive') {
        const ms = keepAliveTimeoutMs(raw[i + 1]!)
        if (ms !== undefined) this.idleLimitMs = ms - KEEP_ALIVE_MARGIN_MS
      }
    }
    this.handler.onResponse({ status: statusCode, statusMessage, rawHeaders: raw })
    return this.head ? 1 : 0
  }

  private readonly onMessageComplete = (): void => {
    if (this.complete || this.extra || this.handler === undefined) {
      this.extra = true
      return
    }
    if (!this.responded) {
      // The end of a skipped interim response (or of a rejected head).
      this.partialHeaders = []
      return
    }
    this.complete = true
    if (this.partialHeaders.length > 0) {
      this.trailers = this.partialHeaders
      this.partialHeaders = []
    }
  }

  private readonly onData = (data: Buffer): void => {
    if (this.handler === undefined) {
      // An idle connection has nothing to say: anything it sends is not a response to us.
      this.destroy()
      return
    }
    const ret = this.parser.execute(data)
    if (typeof ret !== 'number') this.fail(new UpstreamProtocolError(`malformed response: ${ret.message}`))
    else if (this.protocolError !== undefined) this.fail(new UpstreamProtocolError(this.protocolError))
    else if (this.complete) this.settle()
  }

  private readonly onEnd = (): void => {
    if (this.handler === undefined) return
    // A body delimited by the end of the connection completes now; anything else was cut.
    const ret = this.parser.finish()
    if (ret === undefined && this.complete) this.settle()
    else this.fail(new Error('upstream closed the connection before the end of the response'))
  }

  private readonly onClose = (): void => {
    this.dead = true
    this.pool.closed(this)
    if (this.handler === undefined) return
    if (this.complete) {
      // Complete, but the request body was still being sent: the response stands.
      this.settle()
      return
    }
    this.fail(this.lastError ?? new Error('upstream closed the connection'))
  }

  /** The response is complete: hand it over, then keep or drop the connection. */
  private settle(): void {
    const handler = this.handler
    if (handler === undefined) return
    if (!this.requestWritten && !this.dead) {
      // The upstream answered before the whole body was sent: that body cannot be cut cleanly.
      this.detach()
      this.destroy()
      handler.onEnd(this.trailers)
      return
    }
    const reusable = this.keepAlive && !this.extra && !this.dead
    this.detach()
    if (!reusable) this.destroy()
    handler.onEnd(this.trailers)
    if (reusable) this.pool.release(this)
  }

  private fail(error: Error): void {
    const handler = this.handler
    if (handler === undefined) return
    const stage: Http1FailureStage = this.responded
      ? 'aborted'
      : error instanceof UpstreamProtocolError
        ? 'protocol'
        : this.established
          ? 'reset'
          : 'connect'
    this.detach()
    this.destroy()
    handler.onError(error, stage)
  }

  /** Frees the native parser (after the current parse, never inside it). */
  freeParser(): void {
    setImmediate(() => this.parser.close())
  }
}

/**
 * The keep-alive connections to one endpoint. Idle connections are reused last-in first-out
 * (the warmest first) and dropped before the upstream's announced keep-alive timeout; at most
 * `maxConnections` are open at once and further requests wait their turn, as with `http.Agent`'s
 * `maxSockets`.
 */
export class Http1Pool {
  private readonly idle: Http1Connection[] = []
  /** Every connection not yet closed. */
  private readonly all = new Set<Http1Connection>()
  /** Connections carrying a request, or being opened for one. */
  private busy = 0
  private readonly waiting: { request: Http1Request; handler: Http1Handler; slot: WaitingSlot }[] = []
  private destroyed = false
  private maxConnections: number

  constructor(private readonly options: Http1PoolOptions) {
    this.maxConnections = options.maxConnections
  }

  /** Connections open (busy and idle): for tests and metrics. */
  get size(): { busy: number; idle: number; waiting: number } {
    return { busy: this.busy, idle: this.idle.length, waiting: this.waiting.length }
  }

  setMaxConnections(max: number): void {
    this.maxConnections = max
    this.pump()
  }

  /** Sends `request` on an idle connection, a new one, or the next one free. */
  request(request: Http1Request, handler: Http1Handler): Http1Exchange {
    if (this.destroyed) {
      handler.onError(new Error('pool closed'), 'connect')
      return NOOP_EXCHANGE
    }
    const conn = this.idleConnection()
    if (conn !== undefined) return this.use(conn, request, handler)
    if (this.busy < this.maxConnections) return this.open(request, handler)
    const slot = new WaitingSlot()
    this.waiting.push({ request, handler, slot })
    slot.onCancel = () => {
      const i = this.waiting.findIndex((w) => w.slot === slot)
      if (i >= 0) this.waiting.splice(i, 1)
    }
    return slot
  }

  /** Closes every connection; requests in flight fail with `reset`, waiting ones with `connect`. */
  destroy(): void {
    this.destroyed = true
    for (const conn of this.idle.splice(0)) conn.destroy()
    for (const w of this.waiting.splice(0)) w.handler.onError(new Error('pool closed'), 'connect')
    for (const conn of this.all) conn.destroy()
  }

  private open(request: Http1Request, handler: Http1Handler): Http1Exchange {
    const conn = new Http1Connection(this.options.connect(), this, this.options.maxHeaderBytes)
    this.all.add(conn)
    return this.use(conn, request, handler)
  }

  private use(conn: Http1Connection, request: Http1Request, handler: Http1Handler): Http1Exchange {
    conn.inUse = true
    this.busy++
    return conn.start(request, handler)
  }

  private idleConnection(): Http1Connection | undefined {
    const now = this.options.now()
    for (;;) {
      const conn = this.idle.pop()
      if (conn === undefined) return undefined
      if (!conn.dead && now - conn.idleSince < conn.idleLimitMs) return conn
      conn.destroy() // its 'close' forgets it
    }
  }

  /** A connection finished its exchange with a reusable response. */
  release(conn: Http1Connection): void {
    if (this.destroyed || conn.dead) {
      conn.destroy()
      return
    }
    const next = this.waiting.shift()
    if (next !== undefined) {
      // Handed over as it is: still busy.
      next.slot.bind(conn.start(next.request, next.handler))
      return
    }
    conn.inUse = false
    this.busy--
    if (this.idle.length >= this.options.maxIdle) {
      conn.destroy()
      return
    }
    conn.idleSince = this.options.now()
    this.idle.push(conn)
  }

  /** A connection closed (whatever it was doing). */
  closed(conn: Http1Connection): void {
    if (!this.all.delete(conn)) return
    conn.freeParser()
    if (conn.inUse) {
      conn.inUse = false
      this.busy--
    } else {
      const i = this.idle.indexOf(conn)
      if (i >= 0) this.idle.splice(i, 1)
    }
    this.pump()
  }

  /** Opens connections for waiting requests while there is room. */
  private pump(): void {
    while (!this.destroyed && this.waiting.length > 0) {
      const conn = this.idleConnection()
      if (conn === undefined && this.busy >= this.maxConnections) return
      const next = this.waiting.shift()!
      next.slot.bind(
        conn !== undefined
          ? this.use(conn, next.request, next.handler)
          : this.open(next.request, next.handler),
      )
    }
  }
}

/** A request waiting for a connection; becomes that connection's exchange once it has one. */
class WaitingSlot implements Http1Exchange {
  onCancel: (() => void) | undefined
  private conn: Http1Exchange | undefined
  bind(conn: Http1Exchange): void {
    this.conn = conn
    this.onCancel = undefined
  }
  abort(): void {
    if (this.conn !== undefined) this.conn.abort()
    else this.onCancel?.()
  }
  resume(): void {
    this.conn?.resume()
  }
}

/** The handle of one exchange on a connection: stale once the connection moved on. */
class ExchangeHandle implements Http1Exchange {
  constructor(
    private readonly conn: Http1Connection,
    private readonly handler: Http1Handler,
  ) {}
  abort(): void {
    this.conn.abort(this.handler)
  }
  resume(): void {
    this.conn.resume(this.handler)
  }
}

const NOOP_EXCHANGE: Http1Exchange = { abort() {}, resume() {} }
