/**
 * Schemas of the traffic config entries, in Consul's shapes (`service-defaults`,
 * `proxy-defaults`, `service-resolver`, `service-router`, `service-splitter`): what a user writes
 * is what Consul documents, PascalCase fields included. A write is checked against its kind's
 * schema before it is proposed, and again when applied; anything unknown or impossible is
 * refused with the path of the field (`Routes.0.Match.HTTP.PathRegex: ...`), and nothing is
 * written.
 *
 * Field names match case-insensitively, with `_` ignored (Consul decodes `connect_timeout_ms` and
 * `ConnectTimeoutMs` alike); `parseConfigEntry` returns the canonical PascalCase form, which is
 * what the sidecars read. The stored value is the one written (so every agent applies the same
 * bytes); readers parse it again.
 *
 * Durations are Consul's strings (`"500ms"`, `"15s"`, `"1m30s"`), parsed to milliseconds.
 *
 * Regular expressions (`PathRegex`, header and query `Regex`) follow RE2's rules, as in Consul and
 * Envoy: a write is refused unless V8's linear-time engine can run the pattern
 * (`linear-regexp.ts`), because the proxies match them against what clients send. Entries stored
 * before that rule are read with `readingStoredPatterns`, which asks only for a regular
 * expression; the proxy then fails closed where the linear engine cannot compile one.
 */
import { z } from 'zod'
import { isRegExpSyntax, linearRegexpProblem } from '../../common/linear-regexp.ts'
import { isDnsLabel } from '../../identity/ca/spiffe.ts'

/** Longest duration accepted anywhere: an hour (a longer request or ejection is a mistake). */
export const MAX_DURATION_MS = 3_600_000
/** Most routes, subsets, splits, failover targets, header rules... in one entry. */
const MAX_ITEMS = 256
/**
 * Longest regular expression (path, header, query): a bound on compile time and on the linear
 * engine's cost per character matched, which grows with the pattern.
 */
const MAX_REGEX_LENGTH = 1024

const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/y
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** Milliseconds of a Consul/Go duration string (`"1m30s"`, `"250ms"`), or undefined if malformed. */
export function parseDurationMs(text: string): number | undefined {
  if (text.length === 0 || text.length > 32) return undefined
  let total = 0
  DURATION_PART.lastIndex = 0
  while (DURATION_PART.lastIndex < text.length) {
    const m = DURATION_PART.exec(text)
    if (m === null) return undefined
    total += Number(m[1]) * UNIT_MS[m[2]!]!
  }
  return total
}

/** A duration string, > 0 and at most an hour, as milliseconds. */
const duration = z.string().transform((s, ctx) => {
  const ms = parseDurationMs(s)
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: `"${s}" is not a duration like "500ms", "15s" or "1m30s"` })
    return z.NEVER
  }
  if (!(ms > 0) || ms > MAX_DURATION_MS) {
    ctx.addIssue({ code: 'custom', message: 'must be more than 0 and at most 1h' })
    return z.NEVER
  }
  return ms
})

/** A mesh service name: a lowercase DNS label, as in SPIFFE ids (`isDnsLabel`). */
const serviceName = z
  .string()
  .refine(
    isDnsLabel,
    "must be a service name (lowercase a-z, 0-9, '-', 1-63 characters, no '-' at either end)",
  )
const subsetName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, 'must be a subset name (letters, digits, _ . -)')
const headerName = z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$/, 'must be an HTTP header name')
const headerValue = z
  .string()
  .max(8192)
  .refine((v) => !/[\r\n\0]/.test(v), 'must not contain CR, LF or NUL')
const meta = z.record(z.string().max(128), z.string().max(1024))
const positiveInt = (max: number) => z.number().int().min(1).max(max)

/** True only while `readingStoredPatterns` runs (synchronously, like every parse here). */
let storedPatterns = false

/**
 * Runs `read` (a parse of data already in the store: a snapshot, a log entry being applied, an
 * entry a sidecar reads) with the rule patterns were written under before the linear-time rule:
 * a regular expression, linear or not. Refusing such an entry there would not remove it from the
 * store; it would drop the whole entry (its protocol, its other routes) or fail the read. The
 * proxies compile patterns with the linear engine only, and fail closed for one it cannot run.
 */
export function readingStoredPatterns<T>(read: () => T): T {
  const outer = storedPatterns
  storedPatterns = true
  try {
    return read()
  } finally {
    storedPatterns = outer
  }
}

/** A regular expression the linear-time engine runs (RE2's rules); see `readingStoredPatterns`. */
const regex = z
  .string()
  .min(1)
  .max(MAX_REGEX_LENGTH)
  .superRefine((s, ctx) => {
    const problem = linearRegexpProblem(s)
    if (problem === undefined || (storedPatterns && isRegExpSyntax(s))) return
    ctx.addIssue({ code: 'custom', message: problem })
  })

function squash(key: string): string {
  return key.replace(/_/g, '').toLowerCase()
}

/**
 * A strict object whose keys match the shape's case-insensitively (`_` ignored), renamed to the
 * shape's spelling before the check. A key that matches none is kept as written, and refused.
 */
function entry<T extends z.ZodRawShape>(shape: T) {
  const canonical = new Map(Object.keys(shape).map((k) => [squash(k), k]))
  return z.preprocess((input) => {
    if (input === null || typeof input !== 'object' || Array.isArray(input)) return input
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(input)) {
      const name = canonical.get(squash(k)) ?? k
      out[name in out ? k : name] = v
    }
    return out
  }, z.strictObject(shape))
}

// --- Consul's small shapes ---------------------------------------------------------------------

const limits = entry({
  /** Concurrent connections to the upstream (L4: client connections; HTTP: per endpoint). */
  MaxConnections: positiveInt(1_000_000).optional(),
  /** Requests waiting for a slot once MaxConcurrentRequests are in flight. 0: no queue. */
  MaxPendingRequests: z.number().int().min(0).max(1_000_000).optional(),
  /** Requests in flight to the upstream at once (HTTP). */
  MaxConcurrentRequests: positiveInt(1_000_000).optional(),
})

const passiveHealthCheck = entry({
  /** Envoy's analysis interval. Accepted for compatibility; the detector here is consecutive-failure only. */
  Interval: duration.optional(),
  /** Failures in a row that eject an endpoint. */
  MaxFailures: positiveInt(1000).optional(),
  /** Percent chance that MaxFailures 5xx responses eject; 0: 5xx responses never eject. */
  EnforcingConsecutive5xx: z.number().int().min(0).max(100).optional(),
  /** Most endpoints ejected at once, in percent. */
  MaxEjectionPercent: z.number().int().min(0).max(100).optional(),
  /** First ejection time; the n-th lasts n times this. */
  BaseEjectionTime: duration.optional(),
})

const upstreamSettingsShape = {
  ConnectTimeoutMs: positiveInt(600_000).optional(),
  Limits: limits.optional(),
  PassiveHealthCheck: passiveHealthCheck.optional(),
}
const upstreamDefaults = entry(upstreamSettingsShape)
const upstreamOverride = entry({ Name: serviceName, ...upstreamSettingsShape })

const upstreamConfig = entry({
  /** Applies to every upstream of the service. */
  Defaults: upstreamDefaults.optional(),
  /** Per upstream, over Defaults. */
  Overrides: z
    .array(upstreamOverride)
    .max(MAX_ITEMS)
    .refine((list) => new Set(list.map((o) => o.Name)).size === list.length, 'names an upstream twice')
    .optional(),
})

export const PROTOCOLS = ['tcp', 'http', 'http2', 'grpc'] as const
export type Protocol = (typeof PROTOCOLS)[number]
const protocol = z.enum(PROTOCOLS)

// --- service-defaults, proxy-defaults ----------------------------------------------------------

/** A path matcher: at most one of PathExact, PathPrefix, PathRegex (shared by rate limits and L7 intentions). */
const pathMatchFields = {
  PathExact: z.string().startsWith('/', 'must start with /').max(8192).optional(),
  PathPrefix: z.string().startsWith('/', 'must start with /').max(8192).optional(),
  /** Matches the whole path (anchored at both ends). */
  PathRegex: regex.optional(),
}
const PATH_MATCHERS = ['PathExact', 'PathPrefix', 'PathRegex'] as const

/** Requests per second of one token bucket: more than 0, at most a million. */
const requestsPerSecond = z.number().gt(0).max(1_000_000)
/** A bucket's size; 0 or absent: RequestsPerSecond (one second's worth). */
const requestsMaxBurst = z.number().int().min(0).max(10_000_000)

const rateLimitRoute = entry({
  ...pathMatchFields,
  RequestsPerSecond: requestsPerSecond,
  RequestsMaxBurst: requestsMaxBurst.optional(),
}).superRefine((r, ctx) => {
  const set = PATH_MATCHERS.filter((k) => r[k] !== undefined)
  if (set.length === 0)
    ctx.addIssue({ code: 'custom', message: 'needs one of PathExact, PathPrefix or PathRegex' })
  if (set.length > 1)
    ctx.addIssue({ code: 'custom', path: [set[1]!], message: `cannot be combined with ${set[0]}` })
})

/**
 * Consul's `RateLimits` of service-defaults, enforced on the service's inbound sidecar: a token
 * bucket per source service (and per route), so one noisy caller is stopped without starving the
 * others. Over the limit: 429 (gRPC RESOURCE_EXHAUSTED).
 */
const rateLimits = entry({
  InstanceLevel: entry({
    /** Requests per second each source may send to the instance; absent: no instance-wide limit. */
    RequestsPerSecond: requestsPerSecond.optional(),
    RequestsMaxBurst: requestsMaxBurst.optional(),
    /** Checked in order; the first whose path matches applies instead of the instance-wide limit. */
    Routes: z.array(rateLimitRoute).max(MAX_ITEMS).optional(),
  })
    .superRefine((l, ctx) => {
      if (l.RequestsMaxBurst !== undefined && l.RequestsPerSecond === undefined)
        ctx.addIssue({ code: 'custom', path: ['RequestsMaxBurst'], message: 'needs RequestsPerSecond' })
    })
    .optional(),
})

export const serviceDefaultsSchema = entry({
  /** The service's protocol, as its callers' sidecars speak to it. */
  Protocol: protocol.optional(),
  /** Timeout of a request to this service. Consul applies it on the service's inbound; here the
   * callers' outbound sidecars apply it (the inbound relays bytes). */
  LocalRequestTimeoutMs: positiveInt(MAX_DURATION_MS).optional(),
  /** How this service's sidecar reaches its upstreams. */
  UpstreamConfig: upstreamConfig.optional(),
  /** Local rate limits on this service's inbound (http services). */
  RateLimits: rateLimits.optional(),
  Meta: meta.optional(),
})

export const proxyDefaultsSchema = entry({
  /** Consul's opaque proxy config; the keys peermesh reads are listed (others are refused). */
  Config: entry({
    protocol: protocol.optional(),
    connect_timeout_ms: positiveInt(600_000).optional(),
    local_request_timeout_ms: positiveInt(MAX_DURATION_MS).optional(),
  }).optional(),
  /** Mesh-wide upstream settings (a peermesh extension: Consul has them per service only). */
  UpstreamConfig: entry({ Defaults: upstreamDefaults.optional() }).optional(),
  Meta: meta.optional(),
})

// --- service-resolver --------------------------------------------------------------------------

/**
 * A subset filter, the two forms of Consul's filter language that select instances, joined by
 * `and`: `Service.Tags contains "v2"` and `Service.Meta.version == "v2"` (also `!=`, and
 * `"v2" in Service.Tags`). Returns the parsed terms, or an error message.
 */
export type FilterTerm =
  | { kind: 'tag'; tag: string; negate: boolean }
  | { kind: 'meta'; key: string; value: string; negate: boolean }

const TAG_TERM = /^Service\.Tags\s+(not\s+)?contains\s+"([^"\\]{1,255})"$/
const TAG_IN_TERM = /^"([^"\\]{1,255})"\s+(not\s+)?in\s+Service\.Tags$/
const META_TERM = /^Service\.Meta\.([A-Za-z0-9_-]{1,128})\s*(==|!=)\s*"([^"\\]{0,1024})"$/

export function parseSubsetFilter(text: string): FilterTerm[] | string {
  if (text.trim().length === 0) return 'is empty'
  if (text.length > 4096) return 'is longer than 4096 characters'
  const terms: FilterTerm[] = []
  for (const raw of text.split(/\s+and\s+/)) {
    const part = raw.trim()
    let m = TAG_TERM.exec(part)
    if (m) {
      terms.push({ kind: 'tag', tag: m[2]!, negate: m[1] !== undefined })
      continue
    }
    m = TAG_IN_TERM.exec(part)
    if (m) {
      terms.push({ kind: 'tag', tag: m[1]!, negate: m[2] !== undefined })
      continue
    }
    m = META_TERM.exec(part)
    if (m) {
      terms.push({ kind: 'meta', key: m[1]!, value: m[3]!, negate: m[2] === '!=' })
      continue
    }
    return `cannot read "${part}": supported are Service.Tags contains "x", "x" in Service.Tags, Service.Meta.key == "x" (or !=), joined by and`
  }
  return terms
}

const subsetFilter = z.string().superRefine((s, ctx) => {
  const r = parseSubsetFilter(s)
  if (typeof r === 'string') ctx.addIssue({ code: 'custom', message: r })
})

const failoverTarget = entry({
  Service: serviceName.optional(),
  ServiceSubset: subsetName.optional(),
})

const failover = entry({
  Service: serviceName.optional(),
  ServiceSubset: subsetName.optional(),
  /** Tried in order; exclusive with Service/ServiceSubset. */
  Targets: z.array(failoverTarget).min(1).max(MAX_ITEMS).optional(),
}).superRefine((f, ctx) => {
  if (f.Targets !== undefined && (f.Service !== undefined || f.ServiceSubset !== undefined))
    ctx.addIssue({
      code: 'custom',
      path: ['Targets'],
      message: 'cannot be combined with Service or ServiceSubset',
    })
  if (f.Targets === undefined && f.Service === undefined && f.ServiceSubset === undefined)
    ctx.addIssue({ code: 'custom', message: 'needs Service, ServiceSubset or Targets' })
})

export const LB_POLICIES = ['least_request', 'round_robin', 'random', 'ring_hash', 'maglev'] as const
export type LoadBalancerPolicy = (typeof LB_POLICIES)[number]

const hashPolicy = entry({
  Field: z.enum(['header', 'cookie', 'query_parameter']).optional(),
  FieldValue: z.string().min(1).max(256).optional(),
  CookieConfig: entry({
    Session: z.boolean().optional(),
    TTL: duration.optional(),
    Path: z.string().max(1024).optional(),
  }).optional(),
  /** Hash on the client's address (for a sidecar: the local app, so one value; accepted as Consul does). */
  SourceIP: z.boolean().optional(),
  Terminal: z.boolean().optional(),
}).superRefine((h, ctx) => {
  if (h.SourceIP === true && h.Field !== undefined)
    ctx.addIssue({ code: 'custom', path: ['SourceIP'], message: 'cannot be combined with Field' })
  if (h.SourceIP !== true && h.Field === undefined)
    ctx.addIssue({ code: 'custom', path: ['Field'], message: 'is required unless SourceIP is true' })
  if (h.Field !== undefined && h.FieldValue === undefined)
    ctx.addIssue({ code: 'custom', path: ['FieldValue'], message: 'is required with Field' })
  if (h.CookieConfig !== undefined && h.Field !== 'cookie')
    ctx.addIssue({ code: 'custom', path: ['CookieConfig'], message: 'only applies to Field "cookie"' })
})

const loadBalancer = entry({
  Policy: z.enum(LB_POLICIES).optional(),
  LeastRequestConfig: entry({ ChoiceCount: z.number().int().min(2).max(100).optional() }).optional(),
  RingHashConfig: entry({
    MinimumRingSize: positiveInt(8_388_608).optional(),
    MaximumRingSize: positiveInt(8_388_608).optional(),
  }).optional(),
  HashPolicies: z.array(hashPolicy).max(16).optional(),
}).superRefine((lb, ctx) => {
  const hashing = lb.Policy === 'ring_hash' || lb.Policy === 'maglev'
  if (lb.HashPolicies !== undefined && !hashing)
    ctx.addIssue({ code: 'custom', path: ['HashPolicies'], message: 'needs Policy ring_hash or maglev' })
  if (lb.LeastRequestConfig !== undefined && lb.Policy !== 'least_request')
    ctx.addIssue({ code: 'custom', path: ['LeastRequestConfig'], message: 'needs Policy least_request' })
  if (lb.RingHashConfig !== undefined && lb.Policy !== 'ring_hash')
    ctx.addIssue({ code: 'custom', path: ['RingHashConfig'], message: 'needs Policy ring_hash' })
})

export const serviceResolverSchema = entry({
  /** The subset used when a request names none. Must be one of Subsets. */
  DefaultSubset: subsetName.optional(),
  Subsets: z
    .record(subsetName, entry({ Filter: subsetFilter.optional(), OnlyPassing: z.boolean().optional() }))
    .refine((r) => Object.keys(r).length <= MAX_ITEMS, `at most ${MAX_ITEMS} subsets`)
    .optional(),
  /** Sends every request for this service elsewhere; exclusive with Subsets and Failover. */
  Redirect: entry({ Service: serviceName.optional(), ServiceSubset: subsetName.optional() }).optional(),
  /** Per subset name (or "*" for any), where to go when no instance is healthy. */
  Failover: z
    .record(z.union([z.literal('*'), subsetName]), failover)
    .refine((r) => Object.keys(r).length <= MAX_ITEMS, `at most ${MAX_ITEMS} entries`)
    .optional(),
  ConnectTimeout: duration.optional(),
  RequestTimeout: duration.optional(),
  LoadBalancer: loadBalancer.optional(),
  Meta: meta.optional(),
}).superRefine((r, ctx) => {
  const subsets = r.Subsets ?? {}
  if (r.DefaultSubset !== undefined && !(r.DefaultSubset in subsets))
    ctx.addIssue({
      code: 'custom',
      path: ['DefaultSubset'],
      message: `"${r.DefaultSubset}" is not in Subsets`,
    })
  for (const key of Object.keys(r.Failover ?? {}))
    if (key !== '*' && !(key in subsets))
      ctx.addIssue({ code: 'custom', path: ['Failover', key], message: `"${key}" is not in Subsets` })
  if (r.Redirect !== undefined) {
    if (r.Redirect.Service === undefined && r.Redirect.ServiceSubset === undefined)
      ctx.addIssue({ code: 'custom', path: ['Redirect'], message: 'needs Service or ServiceSubset' })
    if (r.Failover !== undefined)
      ctx.addIssue({ code: 'custom', path: ['Redirect'], message: 'cannot be combined with Failover' })
  }
})

// --- service-router ----------------------------------------------------------------------------

const headerMatch = entry({
  Name: headerName,
  Present: z.boolean().optional(),
  Exact: z.string().max(8192).optional(),
  Prefix: z.string().max(8192).optional(),
  Suffix: z.string().max(8192).optional(),
  Regex: regex.optional(),
  Invert: z.boolean().optional(),
}).superRefine((h, ctx) => {
  const set = (['Present', 'Exact', 'Prefix', 'Suffix', 'Regex'] as const).filter((k) => h[k] !== undefined)
  if (set.length > 1)
    ctx.addIssue({ code: 'custom', path: [set[1]!], message: `cannot be combined with ${set[0]}` })
})

const queryMatch = entry({
  Name: z.string().min(1).max(256),
  Present: z.boolean().optional(),
  Exact: z.string().max(8192).optional(),
  Regex: regex.optional(),
}).superRefine((q, ctx) => {
  const set = (['Present', 'Exact', 'Regex'] as const).filter((k) => q[k] !== undefined)
  if (set.length > 1)
    ctx.addIssue({ code: 'custom', path: [set[1]!], message: `cannot be combined with ${set[0]}` })
})

const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'] as const

const httpMatch = entry({
  PathExact: z.string().startsWith('/', 'must start with /').max(8192).optional(),
  PathPrefix: z.string().startsWith('/', 'must start with /').max(8192).optional(),
  PathRegex: regex.optional(),
  Header: z.array(headerMatch).max(MAX_ITEMS).optional(),
  QueryParam: z.array(queryMatch).max(MAX_ITEMS).optional(),
  Methods: z.array(z.enum(HTTP_METHODS)).max(HTTP_METHODS.length).optional(),
}).superRefine((m, ctx) => {
  const set = (['PathExact', 'PathPrefix', 'PathRegex'] as const).filter((k) => m[k] !== undefined)
  if (set.length > 1)
    ctx.addIssue({ code: 'custom', path: [set[1]!], message: `cannot be combined with ${set[0]}` })
})

/**
 * One L7 permission of an intention (Consul's `Permissions[]` on service-intentions): an action
 * and the requests it applies to. `HTTP` must set at least one criterion; a header rule sets
 * exactly one of Present (true), Exact, Prefix, Suffix, Regex.
 */
export const intentionPermissionSchema = entry({
  Action: z.enum(['allow', 'deny']),
  HTTP: entry({
    ...pathMatchFields,
    Methods: z.array(z.enum(HTTP_METHODS)).min(1).max(HTTP_METHODS.length).optional(),
    Header: z.array(headerMatch).min(1).max(MAX_ITEMS).optional(),
  }).superRefine((m, ctx) => {
    const set = PATH_MATCHERS.filter((k) => m[k] !== undefined)
    if (set.length > 1)
      ctx.addIssue({ code: 'custom', path: [set[1]!], message: `cannot be combined with ${set[0]}` })
    if (set.length === 0 && m.Methods === undefined && m.Header === undefined)
      ctx.addIssue({ code: 'custom', message: 'should not be empty: set a path, Methods or Header' })
    m.Header?.forEach((h, i) => {
      const n = (['Present', 'Exact', 'Prefix', 'Suffix', 'Regex'] as const).filter((k) => h[k] !== undefined)
      if (n.length === 0)
        ctx.addIssue({
          code: 'custom',
          path: ['Header', i],
          message: 'needs one of Present, Exact, Prefix, Suffix or Regex',
        })
      if (h.Present === false)
        ctx.addIssue({
          code: 'custom',
          path: ['Header', i, 'Present'],
          message: 'must be true (use Invert to match an absent header)',
        })
    })
  }),
})

/** The permissions of one intention: evaluated in order, the first match decides. */
export const intentionPermissionsSchema = z.array(intentionPermissionSchema).min(1).max(MAX_ITEMS)

/**
 * Consul's `service-intentions` entry: every intention whose destination is the entry's `Name`
 * (a service or `*`), one per source. It is a view of the intention store, not a config entry of
 * its own: writing it replaces those intentions in one Raft command (`intention.replace`), so the
 * entry and `/v1/connect/intentions` are always the same data. A source is L4 (`Action`) or L7
 * (`Permissions`), never both.
 */
export const serviceIntentionsSchema = entry({
  Sources: z
    .array(
      entry({
        Name: z.union([z.literal('*'), serviceName]),
        Action: z.enum(['allow', 'deny']).optional(),
        Permissions: intentionPermissionsSchema.optional(),
        Description: z.string().max(512).optional(),
        /** Consul's source type: only `consul`. */
        Type: z.literal('consul').optional(),
        /** Read-only in Consul (computed); accepted and ignored, as Consul does. */
        Precedence: z.number().optional(),
      }).superRefine((src, ctx) => {
        if (src.Action !== undefined && src.Permissions !== undefined)
          ctx.addIssue({ code: 'custom', path: ['Permissions'], message: 'cannot be combined with Action' })
        if (src.Action === undefined && src.Permissions === undefined)
          ctx.addIssue({ code: 'custom', message: 'needs Action or Permissions' })
      }),
    )
    .max(MAX_ITEMS)
    .superRefine((list, ctx) => {
      const seen = new Set<string>()
      list.forEach((src, i) => {
        if (seen.has(src.Name))
          ctx.addIssue({ code: 'custom', path: [i, 'Name'], message: `"${src.Name}" is listed twice` })
        seen.add(src.Name)
      })
    }),
  Meta: meta.optional(),
})

export type ServiceIntentions = z.output<typeof serviceIntentionsSchema>

export type IntentionPermission = z.output<typeof intentionPermissionSchema>
export type RateLimits = z.output<typeof rateLimits>

const headerRewrite = entry({
  Add: z.record(headerName, headerValue).optional(),
  Set: z.record(headerName, headerValue).optional(),
  Remove: z.array(headerName).max(MAX_ITEMS).optional(),
})

/** Consul's service-router `RetryOn` values. */
export const RETRY_ON = [
  '5xx',
  'gateway-error',
  'reset',
  'connect-failure',
  'envoy-ratelimited',
  'retriable-4xx',
  'refused-stream',
  'cancelled',
  'deadline-exceeded',
  'internal',
  'resource-exhausted',
  'unavailable',
] as const
export type RetryOnCondition = (typeof RETRY_ON)[number]

const routeDestination = entry({
  /** Default: the router's own service. */
  Service: serviceName.optional(),
  ServiceSubset: subsetName.optional(),
  /** Replaces the matched PathPrefix. */
  PrefixRewrite: z.string().max(8192).optional(),
  RequestTimeout: duration.optional(),
  /** Retries after the first attempt. */
  NumRetries: z.number().int().min(0).max(9).optional(),
  RetryOnConnectFailure: z.boolean().optional(),
  RetryOnStatusCodes: z.array(z.number().int().min(100).max(599)).max(64).optional(),
  /** Consul's retry conditions: HTTP (`5xx`, `gateway-error`, `reset`, `connect-failure`,
   * `refused-stream`, `retriable-4xx`) and gRPC statuses (`cancelled`, `deadline-exceeded`, ...). */
  RetryOn: z.array(z.enum(RETRY_ON)).max(RETRY_ON.length).optional(),
  RequestHeaders: headerRewrite.optional(),
  ResponseHeaders: headerRewrite.optional(),
})

const route = entry({
  Match: entry({ HTTP: httpMatch.optional() }).optional(),
  Destination: routeDestination.optional(),
})

export const serviceRouterSchema = entry({
  /** Checked in order; the first match wins; no match goes to the service itself. */
  Routes: z.array(route).max(MAX_ITEMS).optional(),
  Meta: meta.optional(),
})

// --- service-splitter --------------------------------------------------------------------------

export const serviceSplitterSchema = entry({
  Splits: z
    .array(
      entry({
        Weight: z.number().min(0).max(100),
        /** Default: the splitter's own service. */
        Service: serviceName.optional(),
        ServiceSubset: subsetName.optional(),
        RequestHeaders: headerRewrite.optional(),
        ResponseHeaders: headerRewrite.optional(),
      }),
    )
    .min(1)
    .max(MAX_ITEMS)
    .refine((s) => Math.abs(s.reduce((sum, x) => sum + x.Weight, 0) - 100) < 1e-6, 'weights must sum to 100'),
  Meta: meta.optional(),
})

// --- the kinds ---------------------------------------------------------------------------------

export type ServiceDefaults = z.output<typeof serviceDefaultsSchema>
export type ProxyDefaults = z.output<typeof proxyDefaultsSchema>
export type ServiceResolver = z.output<typeof serviceResolverSchema>
export type ServiceRouter = z.output<typeof serviceRouterSchema>
export type ServiceSplitter = z.output<typeof serviceSplitterSchema>
export type UpstreamSettings = z.output<typeof upstreamDefaults>
export type HeaderRewrite = z.output<typeof headerRewrite>

/** The traffic kinds and their schemas. */
export const TRAFFIC_ENTRY_SCHEMAS = {
  'service-defaults': serviceDefaultsSchema,
  'proxy-defaults': proxyDefaultsSchema,
  'service-resolver': serviceResolverSchema,
  'service-router': serviceRouterSchema,
  'service-splitter': serviceSplitterSchema,
} as const

export type TrafficEntryKind = keyof typeof TRAFFIC_ENTRY_SCHEMAS

export interface TrafficEntryTypes {
  'service-defaults': ServiceDefaults
  'proxy-defaults': ProxyDefaults
  'service-resolver': ServiceResolver
  'service-router': ServiceRouter
  'service-splitter': ServiceSplitter
}

/** The one name a proxy-defaults entry may have (Consul's rule). */
export const PROXY_DEFAULTS_NAME = 'global'

/**
 * Why `value` is not a valid entry of `kind` named `name` ("path: reason"), or undefined. Names
 * are checked too: a proxy-defaults entry must be `global`, the others a service name.
 */
export function configEntryProblem(kind: TrafficEntryKind, name: string, value: unknown): string | undefined {
  if (kind === 'proxy-defaults' ? name !== PROXY_DEFAULTS_NAME : !serviceName.safeParse(name).success)
    return kind === 'proxy-defaults'
      ? `name: a proxy-defaults entry must be named "${PROXY_DEFAULTS_NAME}"`
      : "name: must be a service name (lowercase a-z, 0-9, '-', 1-63 characters, no '-' at either end)"
  return configEntryProblemOf(TRAFFIC_ENTRY_SCHEMAS[kind], value)
}

/** Why `value` does not satisfy `schema` ("path: reason"), or undefined. */
export function configEntryProblemOf(schema: z.ZodType, value: unknown): string | undefined {
  const r = schema.safeParse(value)
  if (r.success) return undefined
  const issue = r.error.issues[0]!
  const keys = issue.code === 'unrecognized_keys' ? issue.keys : []
  const path = [...issue.path, ...(keys.length === 1 ? keys : [])].map(String).join('.')
  const message =
    issue.code === 'unrecognized_keys'
      ? `unknown field${keys.length > 1 ? `s ${keys.join(', ')}` : ''}`
      : issue.message
  return `${path || 'value'}: ${message}`
}

/**
 * The canonical (PascalCase, durations in ms) form of a stored entry, or undefined if invalid. Its
 * patterns need only be regular expressions (`readingStoredPatterns`).
 */
export function parseConfigEntry<K extends TrafficEntryKind>(
  kind: K,
  value: unknown,
): TrafficEntryTypes[K] | undefined {
  const r = readingStoredPatterns(() => TRAFFIC_ENTRY_SCHEMAS[kind].safeParse(value))
  return r.success ? (r.data as TrafficEntryTypes[K]) : undefined
}

export function isTrafficEntryKind(kind: string): kind is TrafficEntryKind {
  return Object.hasOwn(TRAFFIC_ENTRY_SCHEMAS, kind)
}
