import { isIP } from 'node:net'
import { z } from 'zod'
import { isDnsLabel } from '../../identity/ca/spiffe.ts'
import { formatDuration, parseDuration } from './duration.ts'
import { ServiceDefinitionError } from './errors.ts'

/** Health of one check, and of an instance (the worst of its checks). Ordered best to worst. */
export type CheckStatus = 'passing' | 'warning' | 'critical'
export const CHECK_STATUSES: readonly CheckStatus[] = ['passing', 'warning', 'critical']

/** Limits on a definition (the gossip payload limit applies on top, to a node's whole set). */
export const SERVICE_LIMITS = Object.freeze({
  idLength: 128,
  tags: 32, // Consul has no limit; 32 is far more than any real service and keeps payloads small
  tagLength: 128,
  metaPairs: 64, // Consul's limit
  metaKeyLength: 128, // Consul's limit
  metaValueLength: 512, // Consul's limit
  checks: 8,
  upstreams: 64,
  /** Shortest check interval: faster probing only loads the service and the agent. */
  minIntervalMs: 100,
  /** Longest check interval or TTL (a day): anything longer is a typo. */
  maxIntervalMs: 86_400_000,
  /** Default probe timeout (Consul's), capped at the interval. */
  defaultTimeoutMs: 10_000,
})

interface CheckCommon {
  /** Unique on this agent. Defaults to `service:<serviceId>` (or `service:<serviceId>:<n>`, n from 1). */
  id: string
  name: string
  /** Status before the first result (Consul: critical, so a new instance gets no traffic yet). */
  status: CheckStatus
  notes?: string
}

export interface TcpCheckDefinition extends CheckCommon {
  kind: 'tcp'
  /** `host:port` (`[v6]:port` for IPv6). Passing if a TCP connection opens within the timeout. */
  tcp: string
  intervalMs: number
  timeoutMs: number
}

export interface HttpCheckDefinition extends CheckCommon {
  kind: 'http'
  /** http:// or https:// URL. 2xx passing, 429 warning, anything else or a timeout critical. */
  http: string
  method: string
  header: Record<string, string[]>
  intervalMs: number
  timeoutMs: number
}

export interface TtlCheckDefinition extends CheckCommon {
  kind: 'ttl'
  /** Critical unless updated (`PUT /v1/agent/check/pass|warn|fail/:id`) at least this often. */
  ttlMs: number
}

export type CheckDefinition = TcpCheckDefinition | HttpCheckDefinition | TtlCheckDefinition

export interface UpstreamDefinition {
  /** Service name to reach. */
  destinationName: string
  /** Port on 127.0.0.1 where the local app finds it. */
  localBindPort: number
}

export interface SidecarDefinition {
  /** Inbound (mTLS) listener of the sidecar, what other nodes dial. */
  port: number
  /** Where the sidecar forwards inbound traffic on this machine (defaults to the service port). */
  localServicePort: number
  protocol: 'tcp' | 'http'
  upstreams: UpstreamDefinition[]
}

/** What a registration and its announcement in gossip have in common. */
export interface ServiceInstanceFields {
  id: string
  /** DNS label (lowercase letters, digits, '-'): `<name>.service.peermesh`. */
  name: string
  /** IP or host name; undefined means "the agent's address". */
  address?: string
  port: number
  tags: string[]
  meta: Record<string, string>
  weights: { passing: number; warning: number }
}

/** A service registration after validation, with every default filled in. */
export interface ServiceDefinition extends ServiceInstanceFields {
  checks: CheckDefinition[]
  connect?: { sidecarService: SidecarDefinition }
}

const L = SERVICE_LIMITS
const HOST_NAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/
const SERVICE_ID = new RegExp(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,${L.idLength - 1}}$`)
/** Check ids may also start with "_" (Consul's `_service_maintenance:<id>`, `_node_maintenance`). */
const CHECK_ID = new RegExp(`^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,${L.idLength - 1}}$`)
const META_KEY = new RegExp(`^[A-Za-z0-9_-]{1,${L.metaKeyLength}}$`)
// biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/
const HTTP_METHOD = /^[A-Z]{1,16}$/

/**
 * A service name, as Consul allows it: letters of either case, digits, `-` and `_`, 1-63 of them,
 * starting and ending with a letter or digit. Consul accepts still more (it only warns that such
 * a name is not discoverable in DNS); peermesh refuses what is not a DNS label once `_` is taken
 * as a label character (dots, spaces, slashes: unsafe in DNS names, SPIFFE paths and ACL rules).
 * A service with a sidecar (Connect) needs a lowercase DNS label, as its SPIFFE id and intentions
 * do (`isDnsLabel`).
 */
const SERVICE_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$/
export const isServiceName = (s: unknown): s is string => typeof s === 'string' && SERVICE_NAME.test(s)

/**
 * The zod schema of a service definition, built at the first registration and kept: zod schemas
 * are large objects (a few KiB each, these some 200 KiB), and an agent that registers no service
 * never needs them.
 */
function buildServiceSchema() {
  const serviceName = z
    .string()
    .regex(
      SERVICE_NAME,
      'must be 1-63 letters, digits, "-" or "_", starting and ending with a letter or digit',
    )

  const dnsLabel = z
    .string()
    .refine(
      isDnsLabel,
      'must be a DNS label: 1-63 lowercase letters, digits or "-", not starting or ending with "-"',
    )
  const port = z.int('must be an integer port').min(1, 'must be 1-65535').max(65535, 'must be 1-65535')
  const plainText = (max: number) =>
    z
      .string()
      .min(1, 'must not be empty')
      .max(max, `must be at most ${max} characters`)
      .refine((s) => !CONTROL.test(s), 'must not contain control characters')
  const duration = (min: number) =>
    z.string().refine(
      (s) => {
        const ms = parseDuration(s)
        return ms !== undefined && ms >= min && ms <= L.maxIntervalMs
      },
      `must be a duration like "10s" or "500ms", from ${formatDuration(min)} to 24h`,
    )
  const address = z
    .string()
    .refine((s) => isIP(s) !== 0 || HOST_NAME.test(s), 'must be an IP address or a host name')

  const checkSchema = z
    .strictObject({
      id: z
        .string()
        .regex(CHECK_ID, 'must be 1-128 letters, digits or "_.:-", starting with a letter, digit or "_"')
        .optional(),
      name: plainText(256).optional(),
      notes: plainText(1024).optional(),
      status: z.enum(CHECK_STATUSES as [CheckStatus, ...CheckStatus[]]).optional(),
      tcp: z
        .string()
        .refine((s) => parseHostPort(s) !== undefined, 'must be "host:port" ("[v6]:port" for IPv6)')
        .optional(),
      http: z
        .string()
        .refine((s) => {
          if (!URL.canParse(s)) return false
          const u = new URL(s)
          return u.protocol === 'http:' || u.protocol === 'https:'
        }, 'must be an http:// or https:// URL')
        .optional(),
      method: z.string().regex(HTTP_METHOD, 'must be an HTTP method in capitals ("GET")').optional(),
      header: z.record(z.string().min(1).max(256), z.array(z.string().max(4096)).max(16)).optional(),
      ttl: duration(1000).optional(),
      interval: duration(L.minIntervalMs).optional(),
      timeout: duration(1).optional(),
    })
    .superRefine((c, ctx) => {
      const kinds = [c.tcp, c.http, c.ttl].filter((k) => k !== undefined).length
      if (kinds !== 1) {
        ctx.addIssue({ code: 'custom', message: 'needs exactly one of "tcp", "http" or "ttl"', path: [] })
        return
      }
      if (c.ttl !== undefined) {
        for (const f of ['interval', 'timeout', 'method', 'header'] as const) {
          if (c[f] !== undefined)
            ctx.addIssue({ code: 'custom', message: 'not allowed on a TTL check', path: [f] })
        }
        return
      }
      if (c.interval === undefined) {
        ctx.addIssue({ code: 'custom', message: 'is required for a TCP or HTTP check', path: ['interval'] })
      }
      if (c.tcp !== undefined) {
        for (const f of ['method', 'header'] as const) {
          if (c[f] !== undefined)
            ctx.addIssue({ code: 'custom', message: 'not allowed on a TCP check', path: [f] })
        }
      }
    })

  const upstreamSchema = z.strictObject({ destinationName: dnsLabel, localBindPort: port })

  const sidecarSchema = z
    .strictObject({
      port,
      localServicePort: port.optional(),
      protocol: z.enum(['tcp', 'http']).optional(),
      upstreams: z.array(upstreamSchema).max(L.upstreams, `at most ${L.upstreams} upstreams`).optional(),
    })
    .superRefine((s, ctx) => {
      const seen = new Set<number>()
      for (const [i, u] of (s.upstreams ?? []).entries()) {
        if (seen.has(u.localBindPort)) {
          ctx.addIssue({
            code: 'custom',
            message: 'is used by another upstream',
            path: ['upstreams', i, 'localBindPort'],
          })
        }
        seen.add(u.localBindPort)
      }
    })

  return z.strictObject({
    name: serviceName,
    id: z
      .string()
      .regex(SERVICE_ID, 'must be 1-128 letters, digits or "_.:-", starting with a letter or digit')
      .optional(),
    address: address.optional(),
    port,
    tags: z.array(plainText(L.tagLength)).max(L.tags, `at most ${L.tags} tags`).optional(),
    meta: z
      .record(
        z.string().regex(META_KEY, `must be 1-${L.metaKeyLength} letters, digits, "_" or "-"`),
        z.string().max(L.metaValueLength, `values must be at most ${L.metaValueLength} characters`),
      )
      .refine((m) => Object.keys(m).length <= L.metaPairs, `at most ${L.metaPairs} pairs`)
      .optional(),
    weights: z
      .strictObject({
        passing: z.int().min(1, 'must be 1-65535').max(65535, 'must be 1-65535').optional(),
        warning: z.int().min(0, 'must be 0-65535').max(65535, 'must be 0-65535').optional(),
      })
      .optional(),
    checks: z.array(checkSchema).max(L.checks, `at most ${L.checks} checks`).optional(),
    connect: z.strictObject({ sidecarService: sidecarSchema }).optional(),
  })
}

let serviceSchema: ReturnType<typeof buildServiceSchema> | undefined

/** The JSON shape of a definition (camelCase Consul), as accepted and as written back. */
export type ServiceDefinitionJson = z.input<ReturnType<typeof buildServiceSchema>>

/**
 * Validates a service definition (a JSON value from a file, an HTTP body or the agent config)
 * and fills in defaults. `source` names where it came from, for the error message. Read as Consul
 * reads one (see `consulServiceBody`): field names in any case, snake_case, `Check` and `Checks`,
 * a `{ "service": {...} }` wrapper. Throws `ServiceDefinitionError` naming the first bad field
 * (`checks.0.interval`).
 */
export function parseServiceDefinition(json: unknown, source: string): ServiceDefinition {
  const input = consulServiceBody(json, source)
  serviceSchema ??= buildServiceSchema()
  const r = serviceSchema.safeParse(input)
  if (!r.success) {
    const issue = r.error.issues[0]!
    let path = issue.path.map(String)
    let message = issue.message
    if (issue.code === 'unrecognized_keys') {
      path = [...path, issue.keys[0] ?? '']
      message = 'unknown field'
    } else if (issue.code === 'invalid_key') {
      message = `key ${issue.issues[0]?.message ?? 'is not valid'}`
    } else if (issue.code === 'invalid_type' && valueAt(input, issue.path) === undefined) {
      message = 'is required'
    }
    const field = path.join('.')
    throw new ServiceDefinitionError(
      `invalid service definition in ${source}: ${field === '' ? '' : `${field}: `}${message}`,
      field,
    )
  }
  const v = r.data
  if (v.connect !== undefined && !isDnsLabel(v.name)) {
    throw new ServiceDefinitionError(
      `invalid service definition in ${source}: name: a service with a sidecar (connect) needs a lowercase DNS label (letters, digits, "-"), as its SPIFFE id and intentions do`,
      'name',
    )
  }
  const id = v.id ?? v.name
  const checks = (v.checks ?? []).map((c, i, all): CheckDefinition => {
    const common: CheckCommon = {
      id: c.id ?? (all.length === 1 ? `service:${id}` : `service:${id}:${i + 1}`),
      name: c.name ?? `Service '${v.name}' check`,
      status: c.status ?? 'critical',
    }
    if (c.notes !== undefined) common.notes = c.notes
    if (c.ttl !== undefined) return { ...common, kind: 'ttl', ttlMs: parseDuration(c.ttl)! }
    const intervalMs = parseDuration(c.interval!)!
    const timeoutMs = Math.min(
      c.timeout !== undefined ? parseDuration(c.timeout)! : L.defaultTimeoutMs,
      intervalMs,
    )
    if (c.tcp !== undefined) return { ...common, kind: 'tcp', tcp: c.tcp, intervalMs, timeoutMs }
    return {
      ...common,
      kind: 'http',
      http: c.http!,
      method: c.method ?? 'GET',
      header: c.header ?? {},
      intervalMs,
      timeoutMs,
    }
  })
  const seen = new Map<string, number>()
  for (const [i, c] of checks.entries()) {
    if (seen.has(c.id)) {
      throw new ServiceDefinitionError(
        `invalid service definition in ${source}: checks.${i}.id: "${c.id}" is used by check ${seen.get(c.id)}`,
        `checks.${i}.id`,
      )
    }
    seen.set(c.id, i)
  }
  const def: ServiceDefinition = {
    id,
    name: v.name,
    port: v.port,
    tags: [...new Set(v.tags ?? [])],
    meta: { ...(v.meta ?? {}) },
    weights: { passing: v.weights?.passing ?? 1, warning: v.weights?.warning ?? 1 },
    checks,
  }
  if (v.address !== undefined) def.address = v.address
  const sc = v.connect?.sidecarService
  if (sc !== undefined) {
    def.connect = {
      sidecarService: {
        port: sc.port,
        localServicePort: sc.localServicePort ?? v.port,
        protocol: sc.protocol ?? 'tcp',
        upstreams: (sc.upstreams ?? []).map((u) => ({ ...u })),
      },
    }
  }
  return def
}

/** The JSON form of a definition, which `parseServiceDefinition` reads back to an equal value. */
export function serviceDefinitionToJson(def: ServiceDefinition): ServiceDefinitionJson {
  const out: ServiceDefinitionJson = {
    name: def.name,
    id: def.id,
    port: def.port,
    tags: [...def.tags],
    meta: { ...def.meta },
    weights: { ...def.weights },
    checks: def.checks.map((c) => {
      const base = {
        id: c.id,
        name: c.name,
        status: c.status,
        ...(c.notes !== undefined ? { notes: c.notes } : {}),
      }
      switch (c.kind) {
        case 'ttl':
          return { ...base, ttl: formatDuration(c.ttlMs) }
        case 'tcp':
          return {
            ...base,
            tcp: c.tcp,
            interval: formatDuration(c.intervalMs),
            timeout: formatDuration(c.timeoutMs),
          }
        default:
          return {
            ...base,
            http: c.http,
            method: c.method,
            header: structuredClone(c.header),
            interval: formatDuration(c.intervalMs),
            timeout: formatDuration(c.timeoutMs),
          }
      }
    }),
  }
  if (def.address !== undefined) out.address = def.address
  if (def.connect !== undefined) {
    const sc = def.connect.sidecarService
    out.connect = {
      sidecarService: {
        port: sc.port,
        localServicePort: sc.localServicePort,
        protocol: sc.protocol,
        upstreams: sc.upstreams.map((u) => ({ ...u })),
      },
    }
  }
  return out
}

/**
 * How Consul decodes a body, per object: which fields exist (canonical name, then where to recurse),
 * which it knows but peermesh accepts and ignores (they change nothing here), and which are
 * features peermesh refuses rather than silently drop.
 */
interface BodyShape {
  fields: Record<string, BodyShape | 'value' | { each: BodyShape }>
  /** Other spellings (lowercased, without "_") of a canonical field. */
  aliases?: Record<string, string>
  ignored?: string[]
  unsupported?: Record<string, string>
}

const CHECK_SHAPE: BodyShape = {
  fields: {
    id: 'value',
    name: 'value',
    notes: 'value',
    status: 'value',
    tcp: 'value',
    http: 'value',
    method: 'value',
    header: 'value',
    ttl: 'value',
    interval: 'value',
    timeout: 'value',
  },
  aliases: { checkid: 'id' },
  ignored: [
    'serviceid',
    'deregistercriticalserviceafter',
    'tlsservername',
    'tlsskipverify',
    'successbeforepassing',
    'failuresbeforewarning',
    'failuresbeforecritical',
    'outputmaxsize',
    'disableredirects',
    'type',
  ],
  unsupported: {
    args: 'script checks',
    scriptargs: 'script checks',
    grpc: 'gRPC checks',
    grpcusetls: 'gRPC checks',
    h2ping: 'H2 ping checks',
    udp: 'UDP checks',
    dockercontainerid: 'Docker checks',
    shell: 'script checks',
    aliasnode: 'alias checks',
    aliasservice: 'alias checks',
    osservice: 'OS service checks',
    body: 'HTTP check bodies',
  },
}

const SIDECAR_SHAPE: BodyShape = {
  fields: {
    port: 'value',
    localserviceport: 'value',
    protocol: 'value',
    upstreams: { each: { fields: { destinationname: 'value', localbindport: 'value' } } },
  },
}

const SERVICE_SHAPE: BodyShape = {
  fields: {
    name: 'value',
    id: 'value',
    address: 'value',
    port: 'value',
    tags: 'value',
    meta: 'value',
    weights: { fields: { passing: 'value', warning: 'value' } },
    checks: { each: CHECK_SHAPE },
    check: CHECK_SHAPE,
    connect: {
      fields: { sidecarservice: SIDECAR_SHAPE },
      unsupported: { native: 'Connect-native services' },
    },
  },
  aliases: { service: 'name' },
  ignored: ['enabletagoverride', 'taggedaddresses', 'namespace', 'partition', 'token', 'locality'],
  unsupported: {
    kind: 'service kinds (proxies and gateways are sidecars here)',
    proxy: 'proxy registrations (use connect.sidecarService)',
    socketpath: 'unix socket services',
  },
}

/** Canonical camelCase names of the lowercased fields. */
const CANONICAL: Record<string, string> = {
  localserviceport: 'localServicePort',
  destinationname: 'destinationName',
  localbindport: 'localBindPort',
  sidecarservice: 'sidecarService',
}

/**
 * Rewrites a body the way Consul reads it into peermesh's canonical camelCase fields: names match
 * in any case and with or without "_" (`Name`, `name`, `ID`, `CheckID`, `check_id`,
 * `sidecar_service`); `Check` (python-consul's `check`) joins `Checks` first; empty strings
 * and nulls mean "not given", as Go's decoder leaves them; fields Consul has that change nothing
 * here are dropped; features peermesh lacks are refused by name. A field given twice in two
 * spellings is refused. Unknown fields stay, for the schema to refuse.
 */
function consulServiceBody(json: unknown, source: string): unknown {
  let body = json
  if (isObject(json) && Object.keys(json).length === 1) {
    const [k, v] = Object.entries(json)[0]!
    if (k.toLowerCase() === 'service' && isObject(v)) body = v
  }
  const out = canonicalize(body, SERVICE_SHAPE, [], source)
  if (!isObject(out) || out['check'] === undefined) return out
  const { check, ...rest } = out
  const checks = rest['checks']
  return {
    ...rest,
    checks: [check, ...(Array.isArray(checks) ? checks : checks === undefined ? [] : [checks])],
  }
}

function canonicalize(value: unknown, shape: BodyShape, path: string[], source: string): unknown {
  if (!isObject(value)) return value
  const out: Record<string, unknown> = {}
  const from: Record<string, string> = {}
  for (const [key, v] of Object.entries(value)) {
    const loose = key.toLowerCase().replaceAll('_', '')
    const canonicalKey = shape.aliases?.[loose] ?? loose
    const fail = (message: string) =>
      new ServiceDefinitionError(
        `invalid service definition in ${source}: ${[...path, key].join('.')}: ${message}`,
        [...path, key].join('.'),
      )
    const sub = shape.fields[canonicalKey]
    if (sub === undefined) {
      if (shape.ignored?.includes(loose)) continue
      const feature = shape.unsupported?.[loose]
      if (feature !== undefined) {
        if (v === null || v === '' || v === false || (Array.isArray(v) && v.length === 0)) continue
        throw fail(`${feature} are not supported by peermesh`)
      }
      out[key] = v
      continue
    }
    if (v === null || v === '') continue
    const name = CANONICAL[canonicalKey] ?? canonicalKey
    if (from[name] !== undefined) throw fail(`given twice (also as "${from[name]}")`)
    from[name] = key
    if (sub === 'value') out[name] = v
    else if ('each' in sub)
      out[name] = Array.isArray(v)
        ? v.map((e, i) => canonicalize(e, sub.each, [...path, name, String(i)], source))
        : v
    else out[name] = canonicalize(v, sub, [...path, name], source)
  }
  return out
}

/** Splits "host:port" / "[v6]:port"; undefined if it is not one. */
export function parseHostPort(s: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s)
  if (m === null) return undefined
  const host = m[1] ?? m[2]!
  const p = Number(m[3])
  if (p < 1 || p > 65535) return undefined
  if (m[1] !== undefined ? isIP(host) !== 6 : isIP(host) === 0 && !HOST_NAME.test(host)) return undefined
  return { host, port: p }
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let v = root
  for (const k of path) {
    if (typeof v !== 'object' || v === null || !Object.hasOwn(v, k)) return undefined
    v = (v as Record<PropertyKey, unknown>)[k]
  }
  return v
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Predicates shared with the decoder of payloads received from the network. */
export const isServiceId = (s: unknown): s is string => typeof s === 'string' && SERVICE_ID.test(s)
export const isCheckId = (s: unknown): s is string => typeof s === 'string' && CHECK_ID.test(s)
export const isMetaKey = (s: unknown): s is string => typeof s === 'string' && META_KEY.test(s)
export const isServiceAddress = (s: unknown): s is string =>
  typeof s === 'string' && (isIP(s) !== 0 || HOST_NAME.test(s))
export const isPlainText = (s: unknown, max: number): s is string =>
  typeof s === 'string' && s.length > 0 && s.length <= max && !CONTROL.test(s)
