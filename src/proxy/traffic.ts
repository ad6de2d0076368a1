/**
 * The traffic policy of one outbound listener: Consul's discovery chain (router → splitter →
 * resolver) compiled into plain data and predicates, and the pure decisions the listeners make
 * from it for each request (HTTP) or connection (L4):
 *
 * 1. `matchRoute`: the first route whose match accepts the request (path, headers, query, method),
 *    else the implicit route to the upstream itself;
 * 2. `planTargets`: the route's service and subset; with no subset, the service's splitter picks
 *    a leg by weight; the resolver then applies its redirect and default subset, and lists the
 *    failover targets, in order, to try when the first has no usable instance.
 *
 * A subset that no resolver defines is the instances carrying its name as a tag (the original
 * service-splitter behaviour); when it is empty, the whole service serves instead. A subset a
 * resolver defines has no such fallback: its failover targets, or a 503, as in Consul.
 *
 * The policy is immutable: a config change builds a new one and the listener swaps it, so
 * requests in flight finish under the policy they started with.
 */
import type { OutlierConfig } from './outlier.ts'
import type { Endpoint } from './types.ts'

/** Endpoint selection of a subset. */
export type EndpointSelector = (endpoint: Endpoint) => boolean

export interface HeaderOps {
  /** Appended (kept beside existing values). */
  add?: readonly (readonly [string, string])[]
  /** Replace any existing value. */
  set?: readonly (readonly [string, string])[]
  /** Removed, lower-case names. */
  remove?: readonly string[]
}

export interface TargetRef {
  /** Empty: the service of the resolver that names it. */
  service: string
  subset?: string | undefined
}

export type LbPolicy = 'least_request' | 'round_robin' | 'random' | 'ring_hash' | 'maglev'

export interface HashPolicy {
  field: 'header' | 'cookie' | 'query_parameter' | 'source_ip'
  /** Header, cookie or parameter name (lower-case for headers). */
  name: string
  terminal: boolean
}

export interface LoadBalancerConfig {
  policy: LbPolicy
  hashPolicies: readonly HashPolicy[]
}

/** A service-resolver, compiled. */
export interface ServiceResolution {
  defaultSubset?: string
  subsets: ReadonlyMap<string, EndpointSelector>
  redirect?: TargetRef
  /** By subset name, or `*` for any. */
  failover: ReadonlyMap<string, readonly TargetRef[]>
  connectTimeoutMs?: number
  requestTimeoutMs?: number
  loadBalancer?: LoadBalancerConfig
}

export interface SplitLeg {
  weight: number
  service?: string
  subset?: string
  requestHeaders?: HeaderOps
  responseHeaders?: HeaderOps
}

/** What a route sees of a request. */
export interface RequestView {
  method: string
  /** Path without the query string. */
  path: string
  /** Decoded query parameters (first value wins). */
  query(name: string): string | undefined
  /** A header's value, several joined by `, `; `name` in lower case. */
  header(name: string): string | undefined
}

export interface RouteDestination {
  service?: string
  subset?: string
  /** `[matched prefix, replacement]`. */
  prefixRewrite?: readonly [string, string]
  requestTimeoutMs?: number
  numRetries?: number
  retryOnConnectFailure?: boolean
  retryOnStatusCodes?: readonly number[]
  /** Consul's `RetryOn`, compiled (`compileRetryOn`). */
  retryOn?: RetryOn
  requestHeaders?: HeaderOps
  responseHeaders?: HeaderOps
}

/**
 * When a route retries, from Consul's `RetryOn` conditions (Envoy's `retry_on` and
 * `retriable-status-codes`/`grpc` retry conditions).
 */
export interface RetryOn {
  /** `5xx`: any 5xx response (connect failures and resets included, as Envoy). */
  any5xx: boolean
  /** `gateway-error`: 502, 503 or 504 (and connect failures and resets). */
  gatewayError: boolean
  /** `retriable-4xx`: 409. */
  retriable4xx: boolean
  /** `reset`: the endpoint reset the stream or the connection before response headers. */
  reset: boolean
  /** `connect-failure`: the connection to the endpoint could not be made. */
  connectFailure: boolean
  /** `refused-stream`: the endpoint refused the stream (HTTP/2 REFUSED_STREAM). */
  refusedStream: boolean
  /** gRPC statuses of a trailers-only response that retry: `cancelled` 1, `deadline-exceeded` 4,
   * `resource-exhausted` 8, `internal` 13, `unavailable` 14. */
  grpcStatuses: ReadonlySet<number>
}

/** gRPC status codes named by `RetryOn` (grpc/doc/statuscodes.md). */
export const GRPC_RETRY_STATUS: Readonly<Record<string, number>> = Object.freeze({
  cancelled: 1,
  'deadline-exceeded': 4,
  'resource-exhausted': 8,
  internal: 13,
  unavailable: 14,
})

/** Consul's `RetryOn` list as flags; unknown names are ignored (the schema refuses them). */
export function compileRetryOn(conditions: readonly string[]): RetryOn {
  const has = (c: string) => conditions.includes(c)
  const grpc = new Set<number>()
  for (const c of conditions) {
    const code = GRPC_RETRY_STATUS[c]
    if (code !== undefined) grpc.add(code)
  }
  return {
    any5xx: has('5xx'),
    gatewayError: has('gateway-error'),
    retriable4xx: has('retriable-4xx'),
    reset: has('reset') || has('5xx') || has('gateway-error'),
    connectFailure: has('connect-failure') || has('5xx') || has('gateway-error'),
    refusedStream: has('refused-stream') || has('5xx'),
    grpcStatuses: grpc,
  }
}

/** Whether a response with HTTP `status` is retried under `r`. */
export function retryOnHttpStatus(r: RetryOn, status: number): boolean {
  if (status >= 500 && r.any5xx) return true
  if ((status === 502 || status === 503 || status === 504) && r.gatewayError) return true
  return status === 409 && r.retriable4xx
}

export interface Route {
  match: (req: RequestView) => boolean
  destination: RouteDestination
}

/** Consul's UpstreamConfig.Limits. */
export interface UpstreamLimits {
  maxConnections?: number
  maxPendingRequests?: number
  maxConcurrentRequests?: number
}

export interface TrafficPolicy {
  /** HTTP only; checked in order. */
  routes: readonly Route[]
  /** By service. */
  splitters: ReadonlyMap<string, readonly SplitLeg[]>
  /** By service. */
  resolvers: ReadonlyMap<string, ServiceResolution>
  /** By service: its service-defaults request timeout. */
  serviceRequestTimeoutMs: ReadonlyMap<string, number>
  connectTimeoutMs?: number
  requestTimeoutMs?: number
  limits?: UpstreamLimits
  /** Passive health; `count5xx`: 5xx responses count as failures (HTTP). */
  outlier?: Partial<OutlierConfig> & { count5xx?: boolean }
}

export const EMPTY_POLICY: TrafficPolicy = Object.freeze({
  routes: [],
  splitters: new Map(),
  resolvers: new Map(),
  serviceRequestTimeoutMs: new Map(),
})

/** One place to send the request, with how to select its instances. */
export interface Target {
  service: string
  subset: string | undefined
  /** Undefined: every instance. */
  select: EndpointSelector | undefined
  /** A tag subset (no resolver defines it): an empty one falls back to the whole service. */
  lenient: boolean
  loadBalancer: LoadBalancerConfig | undefined
}

export interface Plan {
  /** Primary first, then failover in order. */
  targets: Target[]
  /** The split leg taken, if a splitter chose. */
  leg: SplitLeg | undefined
}

/** Redirects followed before giving up (a cycle of redirects ends here). */
const MAX_REDIRECTS = 8

/** The implicit route: to the upstream itself, no settings. */
export const ALL_ROUTE: RouteDestination = Object.freeze({})

/** The first route matching `req`, else the implicit route to the upstream. */
export function matchRoute(policy: TrafficPolicy, req: RequestView): RouteDestination {
  for (const r of policy.routes) if (r.match(req)) return r.destination
  return ALL_ROUTE
}

/** Where a request for `upstream` along `dest` goes; `r` in [0, 1) chooses the split leg. */
export function planTargets(
  policy: TrafficPolicy,
  upstream: string,
  dest: RouteDestination,
  r: number,
): Plan {
  let service = dest.service ?? upstream
  let subset = dest.subset
  let leg: SplitLeg | undefined
  if (subset === undefined) {
    const legs = policy.splitters.get(service)
    if (legs !== undefined && legs.length > 0) {
      leg = legs[pickLeg(legs, r)]
      if (leg !== undefined) {
        service = leg.service ?? service
        subset = leg.subset
      }
    }
  }
  const first = resolve(policy, { service, subset })
  if (first === undefined) return { targets: [], leg }
  const targets = [first.target]
  for (const ref of first.failover) {
    const t = resolve(policy, { service: ref.service, subset: ref.subset })
    if (t !== undefined) targets.push(t.target)
  }
  return { targets, leg }
}

function resolve(
  policy: TrafficPolicy,
  ref: TargetRef,
): { target: Target; failover: readonly TargetRef[] } | undefined {
  let { service, subset } = ref
  let resolver = policy.resolvers.get(service)
  for (let i = 0; resolver?.redirect !== undefined; i++) {
    if (i >= MAX_REDIRECTS) return undefined
    const to: TargetRef = resolver.redirect
    // An empty service in a redirect or failover target is the resolver's own service.
    const next = to.service || service
    subset = to.subset ?? (next === service ? subset : undefined)
    service = next
    resolver = policy.resolvers.get(service)
  }
  subset ??= resolver?.defaultSubset
  const defined = subset === undefined ? undefined : resolver?.subsets.get(subset)
  const target: Target = {
    service,
    subset,
    select: subset === undefined ? undefined : (defined ?? tagSelector(subset)),
    lenient: subset !== undefined && defined === undefined,
    loadBalancer: resolver?.loadBalancer,
  }
  const failover =
    (subset !== undefined ? resolver?.failover.get(subset) : undefined) ?? resolver?.failover.get('*') ?? []
  // A failover target with no service stays on this service; with no subset, its whole set.
  return { target, failover: failover.map((f) => ({ service: f.service || service, subset: f.subset })) }
}

const tagSelectors = new Map<string, EndpointSelector>()

/** Instances tagged `tag`. */
export function tagSelector(tag: string): EndpointSelector {
  let s = tagSelectors.get(tag)
  if (s === undefined) {
    s = (e) => e.tags.includes(tag)
    if (tagSelectors.size < 4096) tagSelectors.set(tag, s)
  }
  return s
}

/** Index of the leg chosen by `r` in [0, 1): legs laid end to end, each over its weight. */
export function pickLeg(legs: readonly SplitLeg[], r: number): number {
  let total = 0
  for (const l of legs) total += l.weight
  let target = Math.min(Math.max(r, 0), 1 - Number.EPSILON) * total
  let last = -1
  for (let i = 0; i < legs.length; i++) {
    const w = legs[i]!.weight
    if (!(w > 0)) continue
    last = i
    if (target < w) return i
    target -= w
  }
  return last
}

/**
 * The request target after the route's prefix rewrite: `url` is the whole target, `path` its part
 * before the query string, `q` the index of `?` in `url` (or -1).
 */
export function rewritePath(route: RouteDestination, path: string, url: string, q: number): string {
  const rw = route.prefixRewrite
  if (rw === undefined || !path.startsWith(rw[0])) return url
  let out = rw[1] + path.slice(rw[0].length)
  if (!out.startsWith('/')) out = `/${out}`
  return q < 0 ? out : out + url.slice(q)
}

/**
 * Applies header operations to raw `[name, value, name, value, ...]` pairs, in Consul's order:
 * remove, then set (replacing), then add.
 */
export function applyHeaderOps(raw: string[], ops: HeaderOps | undefined): string[] {
  if (ops === undefined) return raw
  const drop = new Set(ops.remove ?? [])
  for (const [name] of ops.set ?? []) drop.add(name.toLowerCase())
  let out = raw
  if (drop.size > 0) {
    out = []
    for (let i = 0; i < raw.length; i += 2)
      if (!drop.has(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!)
  }
  for (const [name, value] of ops.set ?? []) out.push(name, value)
  for (const [name, value] of ops.add ?? []) out.push(name, value)
  return out
}

/** The value to hash for ring_hash/maglev, or undefined (then the pick is least-request). */
export function hashKeyOf(
  policies: readonly HashPolicy[],
  req: RequestView,
  source: string,
): string | undefined {
  let key: string | undefined
  for (const p of policies) {
    let v: string | undefined
    if (p.field === 'header') v = req.header(p.name)
    else if (p.field === 'query_parameter') v = req.query(p.name)
    else if (p.field === 'cookie') v = cookieValue(req.header('cookie'), p.name)
    else v = source
    if (v !== undefined) {
      key = key === undefined ? v : `${key}\u0000${v}`
      if (p.terminal) break
    }
  }
  return key
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined
  for (const part of header.split(';')) {
    const eq = part.indexOf('=')
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim()
  }
  return undefined
}

/** 32-bit FNV-1a of a string, finished with a murmur3 mix (spreads short, similar keys). */
export function hash32(s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}
