import { ApiReply, type ApiRequest, type HttpApi } from '../api/server.ts'
import { ApiError } from '../agent/errors.ts'
import type { UiAsset } from './assets.ts'

/**
 * The page's Content-Security-Policy: scripts, styles and API calls from this agent only; no
 * inline script or style, no eval, no frames, no plugins, no forms posted anywhere. The page
 * builds its DOM with `textContent`, so names and check output from the catalog cannot inject
 * markup, and even if they could, nothing inline would run.
 */
export const UI_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ')

/** Headers on every UI response (besides type, length, validators). */
export const UI_SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': UI_CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
}

/**
 * Caching: every file is revalidated (`no-cache` with a strong ETag, 304 when unchanged), so an
 * upgraded agent never serves a page with a stale script, and a reload costs one round trip
 * per file and no body.
 */
const CACHE_CONTROL = 'no-cache'

/** Whether the client accepts gzip (`Accept-Encoding`, ignoring q-values other than q=0). */
export function acceptsGzip(header: string | string[] | undefined): boolean {
  const v = Array.isArray(header) ? header.join(',') : (header ?? '')
  return v.split(',').some((part) => {
    const [coding, ...params] = part.trim().toLowerCase().split(';')
    if (coding !== 'gzip' && coding !== '*') return false
    return !params.some((p) => /^\s*q=0(\.0*)?\s*$/.test(p))
  })
}

/** The reply for one asset: 304 when the client holds this version, gzip when accepted. */
export function assetReply(asset: UiAsset, req: Pick<ApiRequest, 'headers'>): ApiReply {
  const headers: Record<string, string> = {
    ...UI_SECURITY_HEADERS,
    'cache-control': CACHE_CONTROL,
    etag: asset.etag,
    vary: 'Accept-Encoding',
  }
  const held = req.headers['if-none-match']
  if (typeof held === 'string' && held.split(',').some((t) => t.trim().replace(/^W\//, '') === asset.etag))
    return new ApiReply(304, '', asset.contentType, headers)
  if (acceptsGzip(req.headers['accept-encoding']))
    return new ApiReply(200, asset.gzip, asset.contentType, { ...headers, 'content-encoding': 'gzip' })
  return new ApiReply(200, asset.body, asset.contentType, headers)
}

/**
 * Routes of the web UI on the agent's HTTP API: `GET /ui` (the page), `GET /ui/:file` (its
 * scripts and style sheet), and `GET /` redirecting to `/ui`. Nothing here needs a token: the
 * page is the same for everyone, and every call it makes carries the token the user logged in
 * with (checked by the API routes as for any other client).
 */
export function registerUiRoutes(http: HttpApi, assets: ReadonlyMap<string, UiAsset>): void {
  const page = assets.get('')
  if (page === undefined) throw new Error('UI assets have no page')
  http.route('GET', '/ui', (req) => assetReply(page, req))
  http.route('GET', '/ui/:file', (req) => {
    const asset = req.params['file'] === '' ? undefined : assets.get(req.params['file']!)
    if (asset === undefined) throw new ApiError(`no such UI file: ${req.path}`, 404)
    return assetReply(asset, req)
  })
  http.route(
    'GET',
    '/',
    () =>
      new ApiReply(302, 'see /ui\n', 'text/plain; charset=utf-8', {
        location: '/ui',
        'cache-control': 'no-cache',
      }),
  )
}
