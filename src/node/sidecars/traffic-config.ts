/**
 * From the policy store's traffic config entries (Consul's shapes, `config-entries.ts`) to the
 * proxy's `TrafficPolicy` for one upstream of one sidecar. Pure: the entries in, the policy out.
 *
 * Precedence, lowest first, for the upstream settings (connect timeout, limits, passive health):
 * built-in defaults < proxy-defaults `global` (`Config.connect_timeout_ms`, `UpstreamConfig.Defaults`)
 * < the source service's service-defaults `UpstreamConfig.Defaults` < its
 * `UpstreamConfig.Overrides` entry for the upstream. A resolver's `ConnectTimeout` wins over all of
 * them for its service. Request timeout: the route's `RequestTimeout`, else the target service's
 * resolver `RequestTimeout`, else its service-defaults `LocalRequestTimeoutMs`, else proxy-defaults
 * `Config.local_request_timeout_ms`, else 15 s.
 *
 * The protocol of a destination: its service-defaults `Protocol`, else proxy-defaults
 * `Config.protocol`, else what its sidecars announce in the catalog, else tcp.
 */
import {
  type FilterTerm,
  type HeaderRewrite,
  PROXY_DEFAULTS_NAME,
  type Protocol,
  type ProxyDefaults,
  parseConfigEntry,
  parseSubsetFilter,
  type ServiceDefaults,
  type ServiceResolver,
  type ServiceRouter,
  type ServiceSplitter,
  type TRAFFIC_ENTRY_SCHEMAS,
  type UpstreamSettings,
} from '../../raft/policy/config-entries.ts'
import { compileLinearFullMatch } from '../../common/linear-regexp.ts'
import type { ConfigEntry } from '../../raft/policy/policy-store.ts'
import { DEFAULT_OUTLIER_MAX_EJECTION_MS } from '../../proxy/constants.ts'
import {
  compileRetryOn,
  type EndpointSelector,
  type HashPolicy,
  type HeaderOps,
  type RequestView,
  type Route,
  type RouteDestination,
  type ServiceResolution,
  type SplitLeg,
  type TrafficPolicy,
} from '../../proxy/traffic.ts'
import type { Endpoint } from '../../proxy/types.ts'

/** What the sidecars read of the policy store. */
export interface ConfigEntryReader {
  listConfigEntries(kind?: string): ConfigEntry[]
  onChange(listener: (index: number) => void): () => void
  /** Raft index of the last change to an entry of `kind`; absent: every change re-reads all. */
  configModifyIndex?(kind: string): number
}

/** The config entry kinds `readTrafficEntries` reads. */
const TRAFFIC_KINDS = [
  'service-defaults',
  'proxy-defaults',
  'service-resolver',
  'service-router',
  'service-splitter',
]

/**
 * A stamp that moves whenever a traffic entry may have changed (undefined: the reader cannot
 * tell). The store's change listeners run after every applied batch, nearly all of them writes of
 * other kinds: comparing this first spares re-parsing every traffic entry each time.
 */
export function trafficEntriesStamp(reader: ConfigEntryReader | undefined): string | undefined {
  if (reader?.configModifyIndex === undefined) return undefined
  return TRAFFIC_KINDS.map((k) => reader.configModifyIndex!(k)).join(',')
}

/** The traffic entries, parsed to their canonical form (invalid stored ones are skipped). */
export interface TrafficEntries {
  /** Changes whenever any traffic entry changes (kind, name and modify index of each). */
  key: string
  serviceDefaults: ReadonlyMap<string, ServiceDefaults>
  proxyDefaults: ProxyDefaults | undefined
  resolvers: ReadonlyMap<string, ServiceResolver>
  routers: ReadonlyMap<string, ServiceRouter>
  splitters: ReadonlyMap<string, ServiceSplitter>
}

export function readTrafficEntries(reader: ConfigEntryReader | undefined): TrafficEntries {
  const keys: string[] = []
  const byKind = <K extends keyof typeof TRAFFIC_ENTRY_SCHEMAS>(kind: K) => {
    const out = new Map<string, NonNullable<ReturnType<typeof parseConfigEntry<K>>>>()
    for (const e of reader?.listConfigEntries(kind) ?? []) {
      const v = parseConfigEntry(kind, e.value)
      if (v === undefined) continue
      out.set(e.name, v)
      keys.push(`${kind}/${e.name}@${e.modifyIndex}`)
    }
    return out
  }
  const serviceDefaults = byKind('service-defaults')
  const proxyDefaults = byKind('proxy-defaults').get(PROXY_DEFAULTS_NAME)
  const resolvers = byKind('service-resolver')
  const routers = byKind('service-router')
  const splitters = byKind('service-splitter')
  return { key: keys.sort().join(','), serviceDefaults, proxyDefaults, resolvers, routers, splitters }
}

export const NO_ENTRIES: TrafficEntries = readTrafficEntries(undefined)

/** The configured protocol of `service`, if an entry sets one. */
export function configuredProtocol(entries: TrafficEntries, service: string): Protocol | undefined {
  return entries.serviceDefaults.get(service)?.Protocol ?? entries.proxyDefaults?.Config?.protocol
}

/** The policy of the `source` sidecar's listener for `upstream`. */
export function compileUpstreamPolicy(
  entries: TrafficEntries,
  source: string,
  upstream: string,
): TrafficPolicy {
  const sd = entries.serviceDefaults.get(source)
  const pd = entries.proxyDefaults
  const settings = mergeSettings(
    pd?.UpstreamConfig?.Defaults,
    sd?.UpstreamConfig?.Defaults,
    sd?.UpstreamConfig?.Overrides?.find((o) => o.Name === upstream),
  )
  const resolvers = new Map<string, ServiceResolution>()
  for (const [name, r] of entries.resolvers) resolvers.set(name, compileResolver(r))
  const splitters = new Map<string, SplitLeg[]>()
  for (const [name, s] of entries.splitters) splitters.set(name, compileSplitter(s))
  const serviceRequestTimeoutMs = new Map<string, number>()
  for (const [name, d] of entries.serviceDefaults)
    if (d.LocalRequestTimeoutMs !== undefined) serviceRequestTimeoutMs.set(name, d.LocalRequestTimeoutMs)
  const connectTimeoutMs = settings.ConnectTimeoutMs ?? pd?.Config?.connect_timeout_ms
  const requestTimeoutMs = pd?.Config?.local_request_timeout_ms
  const phc = settings.PassiveHealthCheck
  const policy: TrafficPolicy = {
    routes: (entries.routers.get(upstream)?.Routes ?? []).map((r) => compileRoute(r)),
    splitters,
    resolvers,
    serviceRequestTimeoutMs,
    ...(connectTimeoutMs !== undefined ? { connectTimeoutMs } : {}),
    ...(requestTimeoutMs !== undefined ? { requestTimeoutMs } : {}),
    ...(settings.Limits !== undefined
      ? {
          limits: {
            ...(settings.Limits.MaxConnections !== undefined
              ? { maxConnections: settings.Limits.MaxConnections }
              : {}),
            ...(settings.Limits.MaxPendingRequests !== undefined
              ? { maxPendingRequests: settings.Limits.MaxPendingRequests }
              : {}),
            ...(settings.Limits.MaxConcurrentRequests !== undefined
              ? { maxConcurrentRequests: settings.Limits.MaxConcurrentRequests }
              : {}),
          },
        }
      : {}),
    ...(phc !== undefined
      ? {
          outlier: {
            ...(phc.MaxFailures !== undefined ? { consecutiveFailures: phc.MaxFailures } : {}),
            ...(phc.BaseEjectionTime !== undefined
              ? {
                  baseEjectionMs: phc.BaseEjectionTime,
                  maxEjectionMs: Math.max(DEFAULT_OUTLIER_MAX_EJECTION_MS, phc.BaseEjectionTime),
                }
              : {}),
            ...(phc.MaxEjectionPercent !== undefined ? { maxEjectionPercent: phc.MaxEjectionPercent } : {}),
            // Envoy's default enforcement of consecutive 5xx is 100%.
            count5xx: (phc.EnforcingConsecutive5xx ?? 100) > 0,
          },
        }
      : {}),
  }
  return policy
}

/** Later settings win, field by field (Limits and PassiveHealthCheck merged per field). */
function mergeSettings(...layers: (UpstreamSettings | undefined)[]): UpstreamSettings {
  const out: UpstreamSettings = {}
  for (const l of layers) {
    if (l === undefined) continue
    if (l.ConnectTimeoutMs !== undefined) out.ConnectTimeoutMs = l.ConnectTimeoutMs
    if (l.Limits !== undefined) out.Limits = { ...out.Limits, ...l.Limits }
    if (l.PassiveHealthCheck !== undefined)
      out.PassiveHealthCheck = { ...out.PassiveHealthCheck, ...l.PassiveHealthCheck }
  }
  return out
}

export function compileResolver(r: ServiceResolver): ServiceResolution {
  const subsets = new Map<string, EndpointSelector>()
  for (const [name, s] of Object.entries(r.Subsets ?? {})) {
    const terms = s.Filter === undefined ? [] : parseSubsetFilter(s.Filter)
    subsets.set(name, subsetSelector(typeof terms === 'string' ? [] : terms, s.OnlyPassing === true))
  }
  const failover = new Map<string, { service: string; subset?: string }[]>()
  for (const [key, f] of Object.entries(r.Failover ?? {})) {
    const targets = f.Targets ?? [{ Service: f.Service, ServiceSubset: f.ServiceSubset }]
    failover.set(
      key,
      targets.map((t) => ({
        // An empty service is "this one": resolved against the resolver's service by the proxy.
        service: t.Service ?? '',
        ...(t.ServiceSubset !== undefined ? { subset: t.ServiceSubset } : {}),
      })),
    )
  }
  const lb = r.LoadBalancer
  const hashPolicies: HashPolicy[] = (lb?.HashPolicies ?? []).map((h) =>
    h.SourceIP === true
      ? { field: 'source_ip', name: '', terminal: h.Terminal === true }
      : {
          field: h.Field!,
          name: h.Field === 'header' ? h.FieldValue!.toLowerCase() : h.FieldValue!,
          terminal: h.Terminal === true,
        },
  )
  return {
    ...(r.DefaultSubset !== undefined ? { defaultSubset: r.DefaultSubset } : {}),
    subsets,
    ...(r.Redirect !== undefined
      ? {
          redirect: {
            service: r.Redirect.Service ?? '',
            ...(r.Redirect.ServiceSubset !== undefined ? { subset: r.Redirect.ServiceSubset } : {}),
          },
        }
      : {}),
    failover,
    ...(r.ConnectTimeout !== undefined ? { connectTimeoutMs: r.ConnectTimeout } : {}),
    ...(r.RequestTimeout !== undefined ? { requestTimeoutMs: r.RequestTimeout } : {}),
    ...(lb?.Policy !== undefined ? { loadBalancer: { policy: lb.Policy, hashPolicies } } : {}),
  }
}

/** Instances matching every term (and passing, with OnlyPassing). */
export function subsetSelector(terms: readonly FilterTerm[], onlyPassing: boolean): EndpointSelector {
  return (e: Endpoint) => {
    if (onlyPassing && e.passing === false) return false
    for (const t of terms) {
      const hit = t.kind === 'tag' ? e.tags.includes(t.tag) : e.meta?.[t.key] === t.value
      if (hit === t.negate) return false
    }
    return true
  }
}

function compileSplitter(s: ServiceSplitter): SplitLeg[] {
  return s.Splits.map((x) => ({
    weight: x.Weight,
    ...(x.Service !== undefined ? { service: x.Service } : {}),
    ...(x.ServiceSubset !== undefined ? { subset: x.ServiceSubset } : {}),
    ...headerOpsFields(x.RequestHeaders, x.ResponseHeaders),
  }))
}

function headerOpsFields(
  req: HeaderRewrite | undefined,
  res: HeaderRewrite | undefined,
): { requestHeaders?: HeaderOps; responseHeaders?: HeaderOps } {
  return {
    ...(req !== undefined ? { requestHeaders: headerOps(req) } : {}),
    ...(res !== undefined ? { responseHeaders: headerOps(res) } : {}),
  }
}

function headerOps(h: HeaderRewrite): HeaderOps {
  return {
    ...(h.Add !== undefined ? { add: Object.entries(h.Add) } : {}),
    ...(h.Set !== undefined ? { set: Object.entries(h.Set) } : {}),
    ...(h.Remove !== undefined ? { remove: h.Remove.map((n) => n.toLowerCase()) } : {}),
  }
}

type RouterRoute = NonNullable<ServiceRouter['Routes']>[number]

/**
 * A service-router route as the proxy matches it. Regular expressions (`PathRegex`, header and
 * query `Regex`) match the whole value, as Envoy's safe_regex, on V8's linear-time engine
 * (`linear-regexp.ts`): the request is the client's. A route with a pattern that engine cannot run
 * (stored before writes were checked for it) matches no request, so its traffic goes on to the
 * next route or the default destination; it never throws.
 */
export function compileRoute(r: RouterRoute): Route {
  const checks: ((req: RequestView) => boolean)[] = []
  let uncompiled = false
  const fullRegex = (source: string): RegExp | undefined => {
    const re = compileLinearFullMatch(source)
    if (re === undefined) uncompiled = true
    return re
  }
  const http = r.Match?.HTTP
  if (http?.PathExact !== undefined) {
    const p = http.PathExact
    checks.push((req) => req.path === p)
  }
  if (http?.PathPrefix !== undefined) {
    const p = http.PathPrefix
    checks.push((req) => req.path.startsWith(p))
  }
  if (http?.PathRegex !== undefined) {
    const re = fullRegex(http.PathRegex)
    checks.push((req) => re?.test(req.path) === true)
  }
  for (const h of http?.Header ?? []) {
    const name = h.Name.toLowerCase()
    const test = valueTest(h, fullRegex)
    const invert = h.Invert === true
    checks.push((req) => test(req.header(name)) !== invert)
  }
  for (const q of http?.QueryParam ?? []) {
    const test = valueTest(q, fullRegex)
    checks.push((req) => test(req.query(q.Name)))
  }
  if (http?.Methods !== undefined && http.Methods.length > 0) {
    const methods = new Set<string>(http.Methods)
    checks.push((req) => methods.has(req.method))
  }
  const d = r.Destination
  const dest: RouteDestination = {
    ...(d?.Service !== undefined ? { service: d.Service } : {}),
    ...(d?.ServiceSubset !== undefined ? { subset: d.ServiceSubset } : {}),
    ...(d?.PrefixRewrite !== undefined && http?.PathPrefix !== undefined
      ? { prefixRewrite: [http.PathPrefix, d.PrefixRewrite] as const }
      : {}),
    ...(d?.RequestTimeout !== undefined ? { requestTimeoutMs: d.RequestTimeout } : {}),
    ...(d?.NumRetries !== undefined ? { numRetries: d.NumRetries } : {}),
    ...(d?.RetryOnConnectFailure !== undefined ? { retryOnConnectFailure: d.RetryOnConnectFailure } : {}),
    ...(d?.RetryOnStatusCodes !== undefined ? { retryOnStatusCodes: d.RetryOnStatusCodes } : {}),
    ...(d?.RetryOn !== undefined ? { retryOn: compileRetryOn(d.RetryOn) } : {}),
    ...headerOpsFields(d?.RequestHeaders, d?.ResponseHeaders),
  }
  const match = uncompiled ? () => false : (req: RequestView) => checks.every((c) => c(req))
  return { match, destination: dest }
}

/** Consul's header/query value match: Present, Exact, Prefix, Suffix, Regex; none set: present. */
function valueTest(
  m: {
    Present?: boolean | undefined
    Exact?: string | undefined
    Prefix?: string | undefined
    Suffix?: string | undefined
    Regex?: string | undefined
  },
  fullRegex: (source: string) => RegExp | undefined,
): (v: string | undefined) => boolean {
  if (m.Exact !== undefined) return (v) => v === m.Exact
  if (m.Prefix !== undefined) return (v) => v?.startsWith(m.Prefix!) === true
  if (m.Suffix !== undefined) return (v) => v?.endsWith(m.Suffix!) === true
  if (m.Regex !== undefined) {
    const re = fullRegex(m.Regex)
    return (v) => v !== undefined && re?.test(v) === true
  }
  if (m.Present === false) return (v) => v === undefined
  return (v) => v !== undefined
}
