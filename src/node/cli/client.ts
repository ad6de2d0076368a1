import { type IncomingHttpHeaders, request } from 'node:http'
import { DEFAULT_HTTP, parseHostPort } from '../agent/config-constants.ts'
import { AgentUnreachableError, ApiError, ConfigError } from '../agent/errors.ts'

let cliToken: string | undefined

/** The token every client of this process sends unless given another (`--token`, `--token-file`). */
export function setCliToken(token: string | undefined): void {
  cliToken = token
}

function envToken(): string | undefined {
  for (const name of ['PEERMESH_HTTP_TOKEN', 'CONSUL_HTTP_TOKEN']) {
    const v = process.env[name]?.trim()
    if (v) return v
  }
  return undefined
}

/**
 * A small client for the local HTTP API, used by the CLI commands. Errors are one-line
 * `PEERMESH_ERR_*` errors the CLI prints as they are.
 */
export class ApiClient {
  readonly host: string
  readonly port: number
  /** The ACL token sent as `X-Consul-Token`; undefined: anonymous. */
  readonly token: string | undefined

  /**
   * `token`: the ACL token to send (default: what the command line gave, see `setCliToken`, else
   * `$PEERMESH_HTTP_TOKEN`, else `$CONSUL_HTTP_TOKEN`; none of them: anonymous). `false`:
   * anonymous whatever the environment says.
   */
  constructor(address = process.env['PEERMESH_HTTP_ADDR'] ?? DEFAULT_HTTP, token?: string | false) {
    this.token = token === false ? undefined : (token ?? cliToken ?? envToken())
    const hp = parseHostPort(address)
    if (hp === undefined) throw new ConfigError(`--http: ${address} is not HOST:PORT`, 'http')
    this.host = hp.host
    this.port = hp.port
  }

  get<T = unknown>(
    path: string,
    options: { signal?: AbortSignal; onHeaders?: (h: IncomingHttpHeaders) => void } = {},
  ): Promise<T> {
    return this.call<T>('GET', path, undefined, options)
  }

  call<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    options: { signal?: AbortSignal; onHeaders?: (h: IncomingHttpHeaders) => void } = {},
  ): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
    return new Promise<T>((resolve, reject) => {
      const req = request(
        {
          host: this.host,
          port: this.port,
          method,
          path,
          headers: {
            ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
            ...(this.token !== undefined ? { 'x-consul-token': this.token } : {}),
          },
          signal: options.signal ?? AbortSignal.timeout(10_000),
        },
        (res) => {
          options.onHeaders?.(res.headers)
          const chunks: Buffer[] = []
          res.on('data', (c: Buffer) => chunks.push(c))
          res.on('error', reject)
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8')
            let json: unknown
            try {
              json = text.length > 0 ? JSON.parse(text) : undefined
            } catch {
              json = text
            }
            const status = res.statusCode ?? 0
            if (status >= 200 && status < 300) return resolve(json as T)
            const msg =
              json !== null && typeof json === 'object' && 'error' in json
                ? String(json.error)
                : `HTTP ${status}`
            reject(new ApiError(msg, status))
          })
        },
      )
      req.on('error', (err: NodeJS.ErrnoException) => {
        const why = err.code === 'ECONNREFUSED' ? 'connection refused (is the agent running?)' : err.message
        reject(
          new AgentUnreachableError(`cannot reach the agent at ${this.host}:${this.port}: ${why}`, {
            cause: err,
          }),
        )
      })
      req.end(payload)
    })
  }
}
