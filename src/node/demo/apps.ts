/**
 * The demo's two built-in HTTP apps, served from the demo process on 127.0.0.1: `api` (each
 * instance answers its id and version) and `web` (answers by calling api through its sidecar's
 * upstream listener). They stand for a user's services; the mesh sits between them.
 */
import { createServer, request, type Server } from 'node:http'
import { PROXY_ERROR_HEADER } from '../../proxy/index.ts'
import { DEMO_REQUEST_TIMEOUT_MS } from './constants.ts'

/** Interface every demo app shares: started, and closed at the end whatever its state. */
export interface DemoApp {
  readonly port: number
  close(): Promise<void>
}

/**
 * Idle kept-alive connections are closed by the clients (undici: 4 s, the sidecar's pools) before
 * the server would (Node's default: 5 s, close enough for a late timer on a busy machine to close
 * a connection a client is reusing): the apps keep them for a minute.
 */
const KEEP_ALIVE_TIMEOUT_MS = 60_000

function listen(server: Server, port: number): Promise<void> {
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
}

function closeServer(server: Server): Promise<void> {
  server.closeAllConnections()
  return new Promise((resolve) => server.close(() => resolve()))
}

/** One instance of `api`: answers `<id> <version>`. Can crash (stop abruptly) and come back. */
export class ApiApp implements DemoApp {
  private server: Server | undefined

  constructor(
    readonly id: string,
    readonly version: string,
    readonly port: number,
  ) {}

  async start(): Promise<void> {
    if (this.server !== undefined) return
    const server = createServer((_req, res) => {
      res.setHeader('content-type', 'text/plain')
      res.end(`${this.id} ${this.version}`)
    })
    await listen(server, this.port)
    this.server = server
  }

  /** A crash as the network sees it: every open connection dropped, the port refusing. */
  async crash(): Promise<void> {
    const s = this.server
    this.server = undefined
    if (s !== undefined) await closeServer(s)
  }

  get running(): boolean {
    return this.server !== undefined
  }

  close(): Promise<void> {
    return this.crash()
  }
}

/**
 * `web`: each request calls api through the local sidecar's upstream listener and answers with
 * api's answer (200), or with the sidecar's status and its `x-peermesh-error` code when the call
 * failed (so a refusal by intention is told apart from an outage).
 */
export class WebApp implements DemoApp {
  private readonly server: Server

  constructor(
    readonly node: string,
    readonly port: number,
    readonly upstreamPort: number,
  ) {
    this.server = createServer((_req, res) => {
      void this.callApi().then(({ status, body, error }) => {
        res.writeHead(status, {
          'content-type': 'text/plain',
          ...(error !== undefined ? { [PROXY_ERROR_HEADER]: error } : {}),
        })
        res.end(body)
      })
    })
  }

  start(): Promise<void> {
    return listen(this.server, this.port)
  }

  /**
   * One call to api through the sidecar, on a fresh connection (`agent: false`): a kept-alive
   * connection left idle can be closed by the listener just as it is reused, a failure of this
   * client and not of the mesh, which would blur what the demo measures.
   */
  private callApi(): Promise<{ status: number; body: string; error?: string }> {
    return new Promise((resolve) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: this.upstreamPort,
          path: '/',
          agent: false,
          signal: AbortSignal.timeout(DEMO_REQUEST_TIMEOUT_MS),
        },
        (res) => {
          const chunks: Buffer[] = []
          res.on('data', (c: Buffer) => chunks.push(c))
          res.on('error', (err) => resolve(unreachable(err)))
          res.on('end', () => {
            const error = res.headers[PROXY_ERROR_HEADER]
            resolve({
              status: res.statusCode ?? 502,
              body: Buffer.concat(chunks).toString('utf8'),
              ...(typeof error === 'string' ? { error } : {}),
            })
          })
        },
      )
      req.on('error', (err) => resolve(unreachable(err)))
      req.end()
    })
  }

  close(): Promise<void> {
    return closeServer(this.server)
  }
}

function unreachable(err: Error): { status: number; body: string } {
  return { status: 502, body: `web: api unreachable: ${(err as NodeJS.ErrnoException).code ?? err.message}` }
}
