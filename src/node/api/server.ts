import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import { JSON_VALUE_LIMITS, plainValueProblem } from '../../common/plain-value.ts'
import { ApiError, ListenError } from '../agent/errors.ts'

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
  return AbortSignal.any([req.signal, AbortSignal.timeout(ms)])
}

export class ApiReply {
  constructor(
    readonly status: number,
    readonly body: string | Uint8Array,
    readonly contentType = 'application/json',
    readonly headers: Record<string, string> = {},
  ) {}
}

interface Route {
  method: string
  parts: string[]
  handler: ApiHandler
}

/** Largest request body accepted; the API takes small JSON documents only. */
const MAX_BODY_BYTES = 1 << 20

/**
 * The agent's local HTTP API: a tiny router over node:http. Layers add routes with `route()`.
 * Unknown paths get 404, known paths with another method 405, bad JSON 400, handler errors
 * their `ApiError` status or 500 — always as `{ "error": "..." }` JSON.
 */
export class HttpApi {
  private readonly routes: Route[] = []
  private server?: Server

  constructor(private readonly log: Logger) {}

  /** Adds a route; `pattern` segments starting with ':' are parameters (`/v1/health/service/:name`). */
  route(method: string, pattern: string, handler: ApiHandler): void {
    this.routes.push({ method: method.toUpperCase(), parts: splitPath(pattern), handler })
  }

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const server = createServer((req, res) => {
      void this.dispatch(req, res)
    })
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
    return typeof addr === 'object' && addr !== null
      ? { host: addr.address, port: addr.port }
      : { host, port }
  }

  async close(): Promise<void> {
    const server = this.server
    if (server === undefined) return
    this.server = undefined
    await new Promise<void>((resolve) => {
      server.close(() => resolve())
      server.closeAllConnections()
    })
  }

  private match(
    method: string,
    path: string,
  ): { route?: Route; params: Record<string, string>; known: boolean } {
    const parts = splitPath(path)
    let known = false
    for (const route of this.routes) {
      if (route.parts.length !== parts.length) continue
      const params: Record<string, string> = {}
      let ok = true
      for (let i = 0; i < parts.length; i++) {
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
    const controller = new AbortController()
    res.on('close', () => controller.abort())
    try {
      const url = new URL(req.url ?? '/', 'http://localhost')
      const method = (req.method ?? 'GET').toUpperCase()
      const { route, params, known } = this.match(method === 'HEAD' ? 'GET' : method, url.pathname)
      if (route === undefined) {
        await drain(req)
        throw known
          ? new ApiError(`method ${method} not allowed on ${url.pathname}`, 405)
          : new ApiError(`no such API path: ${url.pathname}`, 404)
      }
      const body = await readJsonBody(req)
      const result = await route.handler({
        method,
        path: url.pathname,
        params,
        query: url.searchParams,
        body,
        headers: req.headers,
        signal: controller.signal,
      })
      if (result instanceof ApiReply) {
        send(res, result.status, result.body, result.contentType, result.headers)
      } else {
        send(res, 200, JSON.stringify(result ?? null))
      }
    } catch (err) {
      if (err instanceof ApiError) {
        send(res, err.status, JSON.stringify({ error: err.message }))
      } else {
        this.log.error({ err }, 'http api handler failed')
        send(res, 500, JSON.stringify({ error: 'internal error' }))
      }
    }
  }
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

async function drain(req: IncomingMessage): Promise<void> {
  for await (const _ of req) {
    // discard
  }
}

async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > MAX_BODY_BYTES) throw new ApiError(`request body larger than ${MAX_BODY_BYTES} bytes`, 413)
    chunks.push(chunk)
  }
  if (size === 0) return undefined
  const text = Buffer.concat(chunks).toString('utf8')
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
