import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { networkInterfaces } from 'node:os'
import type { Logger } from 'pino'
import { JSON_VALUE_LIMITS, plainValueProblem } from '../../common/plain-value.ts'
import {
  type Authorizer,
  DENY_ALL,
  MANAGE_ALL,
  type PermissionCheck,
  type PermissionNeed,
} from '../../acl/index.ts'
import { ApiError, ListenError } from '../agent/errors.ts'
import { type AclResolver, requestSecret, requirePermission } from './acl-auth.ts'
import { type ApiAddresses, guardRefusal, hostOfHostHeader, isLoopbackHost } from './request-guard.ts'

/** What a route handler gets: the parsed request and a signal aborted when the client goes away. */
export interface ApiRequest {
  method: string
  path: string
  params: Record<string, string>
  query: URLSearchParams
  /** Parsed JSON body (undefined when the request had none). */
  body: unknown
  headers: IncomingMessage['headers']
  signal: AbortSignal
  /** Who sent it and what they may do (ACLs): see `RequestAuth`. */
  auth: RequestAuth
}

/**
 * A request's ACL identity. With ACLs off (or no resolver, as in unit tests) everything passes.
 */
export interface RequestAuth {
  /**
   * Throws a 403 naming the missing permission (Consul's message) unless the request's token
   * passes `check`; returns the token's AccessorID (logged with every authorized write).
   */
  require(check: PermissionCheck, what: PermissionNeed): string
  /** The request's authorizer, to filter lists (everything when ACLs are off). */
  authorizer(): Authorizer
  /** The secret the request presented, carried to the leader with a forwarded write. */
  secret(): string | undefined
}

/** A handler returns a JSON-able value, or an `ApiReply` for a status/content type of its own. */
export type ApiHandler = (req: ApiRequest) => unknown | Promise<unknown>

/**
 * The request's deadline: its `?timeout=` in milliseconds (1 to `maxMs`, at most `maxDigits`
 * digits; anything else is a 400), else `defaultMs`; also aborted when the client goes away.
 */
export function requestDeadline(
  req: ApiRequest,
  limits: { defaultMs: number; maxMs: number; maxDigits: number },
): AbortSignal {
  const t = req.query.get('timeout')
  let ms = limits.defaultMs
  if (t !== null) {
    const n = Number(t)
    if (!new RegExp(`^\\d{1,${limits.maxDigits}}$`).test(t) || n < 1 || n > limits.maxMs)
      throw new ApiError(`timeout: expected milliseconds from 1 to ${limits.maxMs}`, 400)
    ms = n
  }
  // One controller and one timer, cleared when the request ends (its signal aborts when the
  // response closes): `AbortSignal.any` over `AbortSignal.timeout` cost every write a combined
  // signal and a timer left to fire seconds later (about 4% of a busy leader's CPU). A request of
  // this server makes it without a second controller for `req.signal` (RequestSignals).
  const own = (req as { [DEADLINE]?: (ms: number) => AbortSignal })[DEADLINE]
  if (own !== undefined) return own(ms)
  if (req.signal.aborted) return req.signal
  const deadline = new AbortController()
  const timer = setTimeout(() => deadline.abort(timeoutReason()), ms)
  timer.unref()
  req.signal.addEventListener(
    'abort',
    () => {
      clearTimeout(timer)
      deadline.abort(req.signal.reason)
    },
    { once: true },
  )
  return deadline.signal
}

const timeoutReason = (): DOMException =>
  new DOMException('The operation was aborted due to timeout', 'TimeoutError')

/** Where a request of this server keeps its own way to make a deadline (see requestDeadline). */
const DEADLINE = Symbol('deadline')

/**
 * The signals of one request, made only when asked for: `signal()` (the request's, aborted when
 * the response closes) and `deadline(ms)` (aborted at the deadline, or when the response closes).
 * A write needs only its deadline, so it gets one controller and one timer, and the response's
 * close aborts it without an event listener on another signal.
 */
class RequestSignals {
  private closed = false
  private controller: AbortController | undefined
  private deadlines: { controller: AbortController; timer: NodeJS.Timeout }[] = []

  constructor(res: ServerResponse) {
    res.once('close', () => this.close())
  }

  signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController()
      if (this.closed) this.controller.abort(RESPONSE_CLOSED)
    }
    return this.controller.signal
  }

  deadline(ms: number): AbortSignal {
    const controller = new AbortController()
    if (this.closed) {
      controller.abort(RESPONSE_CLOSED)
      return controller.signal
    }
    const timer = setTimeout(() => controller.abort(timeoutReason()), ms)
    timer.unref()
    this.deadlines.push({ controller, timer })
    return controller.signal
  }

  private close(): void {
    this.closed = true
    this.controller?.abort(RESPONSE_CLOSED)
    for (const d of this.deadlines) {
      clearTimeout(d.timer)
      d.controller.abort(RESPONSE_CLOSED)
    }
    this.deadlines = []
  }
}

/**
 * The reason every request's signal aborts with once its response has closed (sent, or the client
 * went away). One shared instance: `abort()` without a reason builds a DOMException, stack trace
 * and all, for every request, which showed in a busy leader's profile (about 0.7% of its CPU).
 */
const RESPONSE_CLOSED = new DOMException('the response closed', 'AbortError')

export class ApiReply {
  constructor(
    readonly status: number,
    readonly body: string | Uint8Array,
    readonly contentType = 'application/json',
    readonly headers: Record<string, string> = {},
  ) {}
}

/**
 * What every `/v1` read says of the Raft leader in Consul's headers (`X-Consul-KnownLeader`,
 * `X-Consul-LastContact`): whether this agent knows one, and ms since it last heard from it.
 */
export type LeaderInfo = () => { known: boolean; lastContactMs: number }

/** Consul's default datacenter name. */
export const DEFAULT_DATACENTER = 'dc1'

interface Route {
  method: string
  parts: string[]
  handler: ApiHandler
  options: RouteOptions
}

/** How a route takes its request (default: a JSON body, refused unless declared JSON). */
export interface RouteOptions {
  /**
   * The body as bytes (`Uint8Array`, or undefined when empty), of any content type: Consul's KV
   * `PUT` takes a value, not JSON. Only for PUT/DELETE routes, which a browser cannot send
   * cross-origin without a CORS preflight this API never grants.
   */
  rawBody?: boolean
}

/** Largest request body accepted; the API takes small JSON documents only. */
const MAX_BODY_BYTES = 1 << 20

/** Limits of the HTTP server against slow clients (slowloris). */
export interface HttpApiLimits {
  /** A request's headers must arrive within this time. Default 10 s: a client sends them at once. */
  headersTimeoutMs: number
  /**
   * The whole request (headers and body) must arrive within this time. Default 30 s: bodies are
   * at most 1 MiB from a local client. It does not bound the response: blocking queries wait longer.
   */
  requestTimeoutMs: number
  /** How often node checks those two deadlines. Default 1 s (node's 30 s would double them). */
  checkIntervalMs: number
}

export const DEFAULT_HTTP_API_LIMITS: HttpApiLimits = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  checkIntervalMs: 1_000,
}

/**
 * The agent's local HTTP API: a tiny router over node:http. Layers add routes with `route()`.
 * Unknown paths get 404, known paths with another method 405, bad JSON 400, handler errors
 * their `ApiError` status or 500 — always as `{ "error": "..." }` JSON.
 *
 * Before routing, `guardRefusal` (request-guard.ts) refuses what a browser could be made to send:
 * a foreign `Host` (DNS rebinding) or `Origin` gets 403, a write declared as a form or text/plain
 * 415; nothing is read or run for them. Every `/v1` path also answers Consul's `?dc=` (500 "No path
 * to datacenter" for another one) and `?pretty`, and every `/v1` read carries
 * `X-Consul-KnownLeader` and `X-Consul-LastContact`.
 */
export class HttpApi {
  private readonly routes: Route[] = []
  private server?: Server
  private acl?: AclResolver
  private addresses: ApiAddresses = { port: 0, hosts: new Set() }
  private leaderInfo: LeaderInfo = () => ({ known: false, lastContactMs: 0 })
  /** This cluster's datacenter name (`--datacenter`): `?dc=` must name it, views show it. */
  datacenter = DEFAULT_DATACENTER
  private readonly limits: HttpApiLimits
  private readonly audit: AuditLines

  constructor(
    private readonly log: Logger,
    limits: Partial<HttpApiLimits> = {},
  ) {
    this.limits = { ...DEFAULT_HTTP_API_LIMITS, ...limits }
    this.audit = new AuditLines(log)
  }

  /**
   * Adds a route; `pattern` segments starting with ':' are parameters (`/v1/health/service/:name`),
   * a last segment starting with '*' matches the rest of the path, empty included (`/v1/kv/*key`;
   * the handler reads it from `req.path`, which keeps empty segments and a trailing '/').
   */
  route(method: string, pattern: string, handler: ApiHandler, options: RouteOptions = {}): void {
    this.routes.push({ method: method.toUpperCase(), parts: splitPath(pattern), handler, options })
  }

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const server = createServer(
      {
        headersTimeout: this.limits.headersTimeoutMs,
        requestTimeout: this.limits.requestTimeoutMs,
        connectionsCheckingInterval: this.limits.checkIntervalMs,
      },
      (req, res) => {
        void this.dispatch(req, res)
      },
    )
    server.keepAliveTimeout = 30_000
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        const why = err.code === 'EADDRINUSE' ? 'address already in use' : (err.code ?? err.message)
        reject(new ListenError(`cannot listen for the HTTP API on ${host}:${port}: ${why}`, { cause: err }))
      })
      server.listen(port, host, () => resolve())
    })
    const addr = server.address()
    const bound =
      typeof addr === 'object' && addr !== null ? { host: addr.address, port: addr.port } : { host, port }
    this.addresses = { port: bound.port, hosts: apiHosts(host, bound.host) }
    if (!isLoopbackHost(host)) {
      // The agent's config refuses this unless ACLs are on (config.ts); still worth a line.
      this.log.warn(
        { http: `${bound.host}:${bound.port}` },
        'the HTTP API listens on a non-loopback address: every request there needs a token',
      )
    }
    return bound
  }

  async close(): Promise<void> {
    this.audit.flush()
    const server = this.server
    if (server === undefined) return
    this.server = undefined
    await new Promise<void>((resolve) => {
      server.close(() => resolve())
      server.closeAllConnections()
    })
  }

  /** Where `/v1` reads learn the Raft leader state for their headers (the Raft module). */
  useLeaderInfo(info: LeaderInfo): void {
    this.leaderInfo = info
  }

  /** Checks tokens from now on (ACLs); without it every request may do everything. */
  useAcl(resolver: AclResolver): void {
    this.acl = resolver
  }

  /**
   * The anonymous token's authorizer (for requests that can carry no token: DNS), or undefined
   * while no ACL resolver is in use (then everything is allowed). An anonymous token this agent
   * cannot resolve grants nothing.
   */
  anonymousAuthorizer(): Authorizer | undefined {
    if (this.acl === undefined) return undefined
    try {
      return this.acl.resolve(undefined).authorizer
    } catch {
      return DENY_ALL
    }
  }

  private leaderHeaders(): Record<string, string> {
    let l = { known: false, lastContactMs: 0 }
    try {
      l = this.leaderInfo()
    } catch (err) {
      this.log.debug({ err }, 'leader state unavailable for the X-Consul headers')
    }
    return {
      'X-Consul-KnownLeader': String(l.known),
      'X-Consul-LastContact': String(Math.max(0, Math.round(l.lastContactMs))),
    }
  }

  private authOf(
    headers: IncomingMessage['headers'],
    query: URLSearchParams,
    accessor: { id?: string },
  ): RequestAuth {
    const acl = this.acl
    const req = { headers, query }
    return {
      require: (check, what) => {
        if (acl === undefined || !acl.config.enabled) return ''
        accessor.id = requirePermission(req, acl, check, what)
        return accessor.id
      },
      authorizer: () => (acl === undefined ? MANAGE_ALL : acl.resolveRequest(req).authorizer),
      secret: () => requestSecret(req),
    }
  }

  private match(
    method: string,
    path: string,
  ): { route?: Route; params: Record<string, string>; known: boolean } {
    const parts = splitPath(path)
    let known = false
    for (const route of this.routes) {
      const rest = route.parts.at(-1)?.startsWith('*') === true
      const fixed = rest ? route.parts.length - 1 : route.parts.length
      if (rest ? parts.length < fixed : parts.length !== fixed) continue
      const params: Record<string, string> = {}
      let ok = true
      for (let i = 0; i < fixed; i++) {
        const want = route.parts[i]!
        const got = parts[i]!
        if (want.startsWith(':')) {
          try {
            params[want.slice(1)] = decodeURIComponent(got)
          } catch {
            ok = false
            break
          }
        } else if (want !== got) {
          ok = false
          break
        }
      }
      if (!ok) continue
      known = true
      if (route.method === method) return { route, params, known }
    }
    return { params: {}, known }
  }

  private async dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const signals = new RequestSignals(res)
    let closeAfter = false
    try {
      let url: URL
      try {
        url = new URL(req.url ?? '/', 'http://localhost')
      } catch {
        // Not a URL (`http://[/x`, a port past 65535): refused like a bad path, body unread.
        closeAfter = true
        throw new ApiError('invalid request target', 400)
      }
      const method = (req.method ?? 'GET').toUpperCase()
      // Refused before routing and before the body is read; the unread body means the connection
      // cannot be reused.
      const { route, params, known } = this.match(method === 'HEAD' ? 'GET' : method, url.pathname)
      const rawBody = route?.options.rawBody === true && (method === 'PUT' || method === 'DELETE')
      const refusal = guardRefusal({ method, headers: req.headers }, this.addresses, { rawBody })
      if (refusal !== undefined) {
        closeAfter = true
        this.log.debug({ method, path: url.pathname, why: refusal.message }, 'http api request refused')
        throw new ApiError(refusal.message, refusal.status)
      }
      const dotted = pathResolutionProblem(req.url ?? '/')
      if (dotted !== undefined) {
        closeAfter = true
        throw new ApiError(dotted, 400)
      }
      const declared = Number(req.headers['content-length'] ?? 0)
      if (declared > MAX_BODY_BYTES) {
        closeAfter = true
        throw new ApiError(`request body larger than ${MAX_BODY_BYTES} bytes`, 413)
      }
      if (route === undefined) {
        await drain(req)
        throw known
          ? new ApiError(`method ${method} not allowed on ${url.pathname}`, 405)
          : new ApiError(`no such API path: ${url.pathname}`, 404)
      }
      const v1 = url.pathname.startsWith('/v1/')
      const dc = url.searchParams.get('dc')
      if (v1 && dc !== null && dc !== '' && dc !== this.datacenter) {
        // Consul's answer (a plain-text 500) for a datacenter it has no route to.
        await drain(req)
        send(res, 500, 'No path to datacenter', 'text/plain; charset=utf-8')
        return
      }
      const body = rawBody ? await readRawBody(req) : await readJsonBody(req)
      const accessor: { id?: string } = {}
      const result = await route.handler({
        method,
        path: url.pathname,
        params,
        query: url.searchParams,
        body,
        headers: req.headers,
        get signal() {
          return signals.signal()
        },
        [DEADLINE]: (ms: number) => signals.deadline(ms),
        auth: this.authOf(req.headers, url.searchParams, accessor),
      } as ApiRequest)
      // The audit line is written after the reply (see AuditLines): a synchronous write to the
      // log's pipe (and the wake-up of its reader) need not delay the client.
      try {
        const reply = result instanceof ApiReply ? result : new ApiReply(200, JSON.stringify(result ?? null))
        const headers =
          v1 && (method === 'GET' || method === 'HEAD')
            ? { ...this.leaderHeaders(), ...reply.headers }
            : reply.headers
        const pretty = url.searchParams.has('pretty') && reply.contentType === 'application/json'
        send(res, reply.status, pretty ? prettyJson(reply.body) : reply.body, reply.contentType, headers)
      } finally {
        if (accessor.id !== undefined && method !== 'GET' && method !== 'HEAD')
          this.audit.add({ method, path: url.pathname, accessorId: accessor.id })
      }
    } catch (err) {
      if (err instanceof ApiError) {
        // A 413 stops reading mid-body: the connection must close, or the client's next request
        // on it would wait behind the unread rest.
        const close = closeAfter || err.status === 413
        send(
          res,
          err.status,
          JSON.stringify({ error: err.message }),
          'application/json',
          close ? { connection: 'close' } : {},
        )
      } else {
        this.log.error({ err }, 'http api handler failed')
        send(res, 500, JSON.stringify({ error: 'internal error' }))
      }
    }
  }
}

/** One authorized write, as the audit log names it. */
interface AuditRecord {
  method: string
  path: string
  accessorId: string
}

/**
 * The audit log of authorized writes: the writes replied to in one event-loop turn are logged
 * together at its end, in one line (one synchronous write to the log's pipe per turn, not per
 * write): `authorized write` with `method`, `path`, `accessorId` for one, `authorized writes`
 * with `writes` (those three fields each) for more. Nothing is dropped: `flush` (on close) writes
 * what is pending.
 */
class AuditLines {
  private pending: AuditRecord[] = []
  private scheduled: NodeJS.Immediate | undefined

  constructor(private readonly log: Logger) {}

  add(rec: AuditRecord): void {
    this.pending.push(rec)
    this.scheduled ??= setImmediate(() => this.flush())
  }

  flush(): void {
    if (this.scheduled !== undefined) clearImmediate(this.scheduled)
    this.scheduled = undefined
    const recs = this.pending
    if (recs.length === 0) return
    this.pending = []
    if (recs.length === 1) this.log.info(recs[0], 'authorized write')
    else this.log.info({ writes: recs }, 'authorized writes')
  }
}

/** Consul's `?pretty` output: indented by 4 spaces, with a final newline. */
function prettyJson(body: string | Uint8Array): string | Uint8Array {
  try {
    const text = typeof body === 'string' ? body : Buffer.from(body).toString('utf8')
    return `${JSON.stringify(JSON.parse(text), null, 4)}\n`
  } catch {
    return body
  }
}

/**
 * The host names besides the loopback ones that a `Host` or `Origin` may use: the configured and
 * bound addresses, and every local interface address when bound to the wildcard address.
 */
function apiHosts(configured: string, bound: string): Set<string> {
  const hosts = new Set<string>()
  for (const h of [configured, bound]) {
    const name = hostOfHostHeader(h.includes(':') && !h.startsWith('[') ? `[${h}]` : h)
    if (name !== undefined) hosts.add(name)
  }
  if (hosts.has('0.0.0.0') || hosts.has('::')) {
    for (const list of Object.values(networkInterfaces()))
      for (const a of list ?? []) hosts.add(a.address.toLowerCase())
  }
  return hosts
}

/**
 * Why the request's raw path must be refused: a `.` or `..` segment (`%2e` counts as a dot) or a
 * backslash, which URL parsing resolves into another path (`/v1/kv/x/..?recurse` would be the
 * whole KV store). A client means a literal key by them; no client of this API sends them.
 */
export function pathResolutionProblem(rawUrl: string): string | undefined {
  const path = rawUrl.split(/[?#]/, 1)[0]!
  if (path.includes('\\')) return 'path: a backslash is not allowed (percent-encode it: %5C)'
  for (const seg of path.split('/')) {
    const dots = seg.replace(/%2e/gi, '.')
    if (dots === '.' || dots === '..')
      return `path: a "${dots}" segment is not allowed (it would name another path)`
  }
  return undefined
}

function splitPath(p: string): string[] {
  return p.split('/').filter((s) => s.length > 0)
}

function send(
  res: ServerResponse,
  status: number,
  body: string | Uint8Array,
  contentType = 'application/json',
  headers: Record<string, string> = {},
): void {
  if (res.headersSent || res.destroyed) return
  res.writeHead(status, {
    'content-type': contentType,
    'content-length': Buffer.byteLength(body),
    ...headers,
  })
  res.end(body)
}

/** Discards the request's body. */
function drain(req: IncomingMessage): Promise<void> {
  return new Promise((resolve, reject) => {
    req.on('error', reject)
    req.on('end', resolve)
    req.resume()
  })
}

/**
 * The request's body, at most MAX_BODY_BYTES (413 beyond, and reading stops), undefined when
 * empty. Read with 'data' events: an async iterator over the stream cost a busy leader about 2%
 * of its CPU (a write's body is one chunk).
 */
function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const onData = (chunk: Buffer): void => {
      size += chunk.length
      if (size > MAX_BODY_BYTES) {
        req.off('data', onData)
        req.pause()
        reject(new ApiError(`request body larger than ${MAX_BODY_BYTES} bytes`, 413))
        return
      }
      chunks.push(chunk)
    }
    req.on('data', onData)
    req.on('error', reject)
    req.on('end', () => {
      if (size > MAX_BODY_BYTES) return
      resolve(size === 0 ? undefined : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks))
    })
  })
}

async function readRawBody(req: IncomingMessage): Promise<Uint8Array | undefined> {
  const body = await readBody(req)
  return body === undefined ? undefined : new Uint8Array(body)
}

async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const raw = await readBody(req)
  if (raw === undefined) return undefined
  const text = raw.toString('utf8')
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch {
    throw new ApiError('request body is not valid JSON', 400)
  }
  // Nothing deeper or larger than plain data gets to a handler (or to Raft).
  const problem = plainValueProblem(body, JSON_VALUE_LIMITS)
  if (problem !== undefined) throw new ApiError(`request body refused: ${problem}`, 400)
  return body
}
