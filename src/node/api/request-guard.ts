/**
 * What the local HTTP API refuses before any handler runs or any body is read: the browser-borne
 * attacks on a localhost service (issue #12).
 *
 * - DNS rebinding: a page on `evil.example` whose name later resolves to 127.0.0.1 talks to the API
 *   as its own origin; only its `Host` header gives it away. The API answers only to a loopback
 *   name, an IP literal it listens on, or the address it was configured with (403).
 * - Cross-site requests: a page elsewhere may POST to 127.0.0.1 with a "simple" content type
 *   (`text/plain`, a form) and no preflight. Every browser names the page in `Origin` on such a
 *   request (and in `Sec-Fetch-Site`), so a foreign origin is refused (403), and a write whose
 *   body is declared with a type a browser sends without a preflight (`text/plain`, a form) is
 *   refused (415). Any other type (JSON, Consul clients' `application/octet-stream`) needs a CORS
 *   preflight, which this API never grants; a body with no type is accepted from a client that is
 *   not a browser (python-consul sends none).
 *
 * Pure: the decision is a function of the request's method and headers and the API's addresses.
 */
import { isIP } from 'node:net'

export interface GuardedRequest {
  method: string
  headers: Record<string, string | string[] | undefined>
}

/** Where the API listens: what a legitimate `Host` or `Origin` may name. */
export interface ApiAddresses {
  /** The port the API listens on (an Origin must name it). */
  port: number
  /**
   * Host names or IP literals besides the loopback ones that name this API: the address it is
   * bound to and the one it was configured with, or every local interface address when bound to
   * the wildcard address.
   */
  hosts: ReadonlySet<string>
}

export interface GuardRefusal {
  status: 403 | 415
  message: string
}

/** Methods that never change anything here (no route writes on them). */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS'])

/** True for `localhost`, `*.localhost`, 127.0.0.0/8 and ::1 (brackets optional). */
export function isLoopbackHost(host: string): boolean {
  const h = unbracket(host.toLowerCase())
  if (h === 'localhost' || h.endsWith('.localhost')) return true
  if (isIP(h) === 4) return h.startsWith('127.')
  if (isIP(h) === 6) return h === '::1' || h === '0:0:0:0:0:0:0:1' || /^::ffff:127\./.test(h)
  return false
}

/** The host name of a `Host` header value (`name`, `name:port`, `[v6]`, `[v6]:port`), lowercased. */
export function hostOfHostHeader(value: string): string | undefined {
  const v = value.trim().toLowerCase()
  const m = /^(\[[0-9a-f:.]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(v)
  return m === null ? undefined : unbracket(m[1]!)
}

/** Whether a request is a write that carries a body (declared length above 0, or chunked). */
export function hasBody(headers: GuardedRequest['headers']): boolean {
  if (headers['transfer-encoding'] !== undefined) return true
  const len = headers['content-length']
  return len !== undefined && len !== '0'
}

/**
 * Why this request must be refused before its handler runs, or undefined to let it through.
 * Order: `Host` (403), `Origin` and `Sec-Fetch-Site` (403), then the write's content type (415).
 */
export function guardRefusal(
  req: GuardedRequest,
  api: ApiAddresses,
  options: { rawBody?: boolean } = {},
): GuardRefusal | undefined {
  const h = req.headers
  const hostHeader = one(h['host'])
  // HTTP/1.1 requires Host (node answers 400 itself); an HTTP/1.0 request without one cannot come
  // from a browser.
  if (hostHeader !== undefined) {
    const host = hostOfHostHeader(hostHeader)
    if (host === undefined || !(isLoopbackHost(host) || api.hosts.has(host)))
      return {
        status: 403,
        message: `refused: Host "${hostHeader}" does not name this agent's API (a loopback name or its own address); DNS rebinding is not allowed`,
      }
  }
  const origin = one(h['origin'])
  if (origin !== undefined && !isOwnOrigin(origin, api))
    return {
      status: 403,
      message: `refused: Origin "${origin}" is not this agent's API; cross-origin requests are not allowed`,
    }
  const site = one(h['sec-fetch-site'])
  if (site !== undefined && site !== 'same-origin' && site !== 'none')
    return {
      status: 403,
      message: `refused: Sec-Fetch-Site "${site}": cross-site requests are not allowed`,
    }
  // A route taking raw bytes (Consul's KV PUT) is PUT/DELETE: a browser sends those cross-origin
  // only after a CORS preflight, which this API never grants; the Origin checks above still apply.
  if (SAFE_METHODS.has(req.method) || options.rawBody === true) return undefined
  const contentType = one(h['content-type'])
  if (contentType !== undefined) {
    if (isCorsSafelistedContentType(contentType))
      return {
        status: 415,
        message: `refused: Content-Type "${contentType}"; a write must not be declared as a form or text/plain: send Content-Type: application/json (curl: --json, or -H 'Content-Type: application/json' with -d)`,
      }
    return undefined
  }
  // No Content-Type. Non-browser clients (python-consul's requests calls, scripts) send JSON
  // without one, and are accepted. (curl -d is not one of them: it says form-urlencoded, refused
  // above, since that is also what a cross-site HTML form sends.) A browser always labels a body it sends (fetch with a Blob
  // of no type is the exception), and always sends Origin or Sec-Fetch-* on a write: refuse those.
  if (hasBody(h) && looksLikeBrowser(h))
    return {
      status: 415,
      message:
        'refused: a write with a body and no Content-Type from a browser; send Content-Type: application/json',
    }
  return undefined
}

/**
 * The content types a browser sends cross-origin without a CORS preflight (the Fetch standard's
 * CORS-safelisted `Content-Type` essences): `text/plain`, `application/x-www-form-urlencoded`,
 * `multipart/form-data`. Every other type (JSON, Consul clients' `application/octet-stream` KV
 * bodies) needs a preflight, which this API never grants, so it cannot come from a foreign page.
 */
export function isCorsSafelistedContentType(value: string): boolean {
  const essence = value.split(';')[0]!.trim().toLowerCase()
  return (
    essence === 'text/plain' ||
    essence === 'application/x-www-form-urlencoded' ||
    essence === 'multipart/form-data'
  )
}

/** `application/json`, optionally with parameters (`; charset=utf-8`); case-insensitive. */
export function isJsonContentType(value: string): boolean {
  return value.split(';')[0]!.trim().toLowerCase() === 'application/json'
}

function looksLikeBrowser(h: GuardedRequest['headers']): boolean {
  if (h['origin'] !== undefined) return true
  return Object.keys(h).some((k) => k.startsWith('sec-fetch-'))
}

/** `http://` + a loopback literal or `localhost` or one of the API's hosts + the API's port. */
function isOwnOrigin(origin: string, api: ApiAddresses): boolean {
  let url: URL
  try {
    url = new URL(origin)
  } catch {
    return false // "null" (sandboxed frames, file://) and junk
  }
  if (url.protocol !== 'http:' || (url.port || '80') !== String(api.port)) return false
  if (url.origin !== origin.toLowerCase() && url.origin !== origin) return false
  const host = unbracket(url.hostname)
  return host === 'localhost' || host === '127.0.0.1' || host === '::1' || api.hosts.has(host)
}

function one(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v
}

function unbracket(h: string): string {
  return h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h
}
