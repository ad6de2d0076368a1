import { pack } from '../../common/msgpack.ts'
import { isDnsLabel } from '../../identity/ca/spiffe.ts'
import { PayloadTooLargeError } from './errors.ts'
import {
  CHECK_STATUSES,
  type CheckStatus,
  isCheckId,
  isMetaKey,
  isPlainText,
  isServiceAddress,
  isServiceId,
  isServiceName,
  SERVICE_LIMITS,
  type ServiceDefinition,
  type ServiceInstanceFields,
} from './service-definition.ts'

/**
 * The catalog's part of a node's gossip record: its services and the status of their checks.
 * The agent puts it in the record's `meta` under `CATALOG_META_KEY`; the gossip layer signs it,
 * versions it and carries it opaquely. Keys are short because every alive message carries the
 * whole record in one datagram (`maxRecordBytes`, 1024 bytes by default, for everything).
 *
 *   { v: 1, s: [ { i?: id (omitted = name), n: name, a?: address, p: port, t?: tags, m?: meta,
 *                  w?: [passing, warning] (omitted = [1, 1]), x?: [sidecarPort, 0 tcp | 1 http],
 *                  c?: [[checkId, status 0 passing | 1 warning | 2 critical, name?], ...] } ] }
 *
 * A check id equal to the default `service:<id>` is sent as 0, `service:<id>:<n>` as n.
 * Only what other nodes need travels: no upstreams (local to the sidecar), no check output
 * (it changes on every probe; only status transitions change the payload).
 */
export interface NodePayload {
  v: 1
  s: ServiceEntry[]
}

interface ServiceEntry {
  i?: string
  n: string
  a?: string
  p: number
  t?: string[]
  m?: Record<string, string>
  w?: [number, number]
  x?: [number, 0 | 1]
  c?: CheckEntry[]
}

type CheckEntry = [string | number, 0 | 1 | 2] | [string | number, 0 | 1 | 2, string]

/** Key of the catalog payload in the gossip record's `meta`. */
export const CATALOG_META_KEY = 'svc'

/**
 * Default limit on the encoded payload. The whole gossip record (id, name, addresses, tags and
 * meta) must fit in `maxRecordBytes` (1024 by default); a peer id and a few multiaddrs take about
 * 400 bytes, which leaves this much for services. Raise both together for nodes with many services.
 */
export const DEFAULT_MAX_PAYLOAD_BYTES = 512

/** Most services accepted in a payload received from the network (bounds the work per update). */
export const MAX_PAYLOAD_SERVICES = 256

/** A service instance as another node announced it (checks carry only their status). */
export interface AnnouncedService extends ServiceInstanceFields {
  /** The sidecar's inbound port, when the service has one. */
  sidecar?: { port: number; protocol: 'tcp' | 'http' }
  checks: AnnouncedCheck[]
}

export interface AnnouncedCheck {
  id: string
  name: string
  status: CheckStatus
}

export type PayloadDecodeResult = { ok: true; services: AnnouncedService[] } | { ok: false; reason: string }

/**
 * Builds the payload for this node's `services`, with each check's current status from
 * `statusOf` (a check without a status yet counts as its definition's initial status).
 * Throws `PayloadTooLargeError` if it does not fit in `maxBytes` once encoded.
 */
export function encodeNodePayload(
  services: readonly ServiceDefinition[],
  statusOf: (checkId: string) => CheckStatus | undefined,
  maxBytes = DEFAULT_MAX_PAYLOAD_BYTES,
): NodePayload {
  const payload: NodePayload = { v: 1, s: services.map((d) => encodeService(d, statusOf)) }
  const bytes = payloadBytes(payload)
  if (bytes > maxBytes) {
    throw new PayloadTooLargeError(
      `this node's services take ${bytes} bytes in its gossip record, more than the ${maxBytes} allowed: ` +
        'register fewer services, tags, meta or checks (or raise the gossip record size)',
      bytes,
      maxBytes,
    )
  }
  return payload
}

/** Encoded size of a payload in bytes (msgpack, as the gossip record carries it). */
export function payloadBytes(payload: NodePayload): number {
  return pack(payload).length
}

function encodeService(
  d: ServiceDefinition,
  statusOf: (checkId: string) => CheckStatus | undefined,
): ServiceEntry {
  const e: ServiceEntry = { n: d.name, p: d.port }
  if (d.id !== d.name) e.i = d.id
  if (d.address !== undefined) e.a = d.address
  if (d.tags.length > 0) e.t = [...d.tags]
  if (Object.keys(d.meta).length > 0) e.m = { ...d.meta }
  if (d.weights.passing !== 1 || d.weights.warning !== 1) e.w = [d.weights.passing, d.weights.warning]
  const sc = d.connect?.sidecarService
  if (sc !== undefined) e.x = [sc.port, sc.protocol === 'http' ? 1 : 0]
  if (d.checks.length > 0) {
    e.c = d.checks.map((c, i): CheckEntry => {
      const status = CHECK_STATUSES.indexOf(statusOf(c.id) ?? c.status) as 0 | 1 | 2
      const id = c.id === `service:${d.id}` ? 0 : c.id === `service:${d.id}:${i + 1}` ? i + 1 : c.id
      return c.name === defaultCheckName(d.name) ? [id, status] : [id, status, c.name]
    })
  }
  return e
}

const defaultCheckName = (service: string) => `Service '${service}' check`

/**
 * Validates and decodes a payload received from the network (hostile input). Never throws:
 * returns `{ ok: false, reason }` for anything that is not a well-formed v1 payload within the
 * limits a local registration must respect. `undefined` (a node with no catalog payload) is an
 * empty service list.
 */
export function decodeNodePayload(raw: unknown): PayloadDecodeResult {
  try {
    if (raw === undefined) return { ok: true, services: [] }
    if (!isRecord(raw)) return fail('payload must be an object')
    if (raw['v'] !== 1) return fail('unknown payload version')
    const list = raw['s']
    if (!Array.isArray(list)) return fail('s must be an array')
    if (list.length > MAX_PAYLOAD_SERVICES) return fail(`more than ${MAX_PAYLOAD_SERVICES} services`)
    const services: AnnouncedService[] = []
    const ids = new Set<string>()
    const checkIds = new Set<string>()
    for (const [n, entry] of list.entries()) {
      const r = decodeService(entry, checkIds)
      if (typeof r === 'string') return fail(`s.${n}: ${r}`)
      if (ids.has(r.id)) return fail(`s.${n}: duplicate service id`)
      ids.add(r.id)
      services.push(r)
    }
    return { ok: true, services }
  } catch {
    // Defensive only: getters or proxies cannot come out of msgpack, but nothing here may throw.
    return fail('payload could not be read')
  }
}

const fail = (reason: string): PayloadDecodeResult => ({ ok: false, reason })

function decodeService(e: unknown, checkIds: Set<string>): AnnouncedService | string {
  const L = SERVICE_LIMITS
  if (!isRecord(e)) return 'service must be an object'
  const name = e['n']
  if (!isServiceName(name)) return 'bad name'
  const id = e['i'] ?? name
  if (!isServiceId(id)) return 'bad id'
  if (e['a'] !== undefined && !isServiceAddress(e['a'])) return 'bad address'
  if (!isPort(e['p'])) return 'bad port'
  const tags = e['t'] ?? []
  if (!Array.isArray(tags) || tags.length > L.tags || !tags.every((t) => isPlainText(t, L.tagLength))) {
    return 'bad tags'
  }
  const meta = e['m'] ?? {}
  if (!isRecord(meta)) return 'bad meta'
  const metaEntries = Object.entries(meta)
  if (
    metaEntries.length > L.metaPairs ||
    !metaEntries.every(([k, v]) => isMetaKey(k) && typeof v === 'string' && v.length <= L.metaValueLength)
  ) {
    return 'bad meta'
  }
  const w = e['w'] ?? [1, 1]
  if (!Array.isArray(w) || w.length !== 2 || !isWeight(w[0], 1) || !isWeight(w[1], 0)) return 'bad weights'
  const out: AnnouncedService = {
    id,
    name,
    port: e['p'],
    tags: [...new Set(tags as string[])],
    meta: Object.fromEntries(metaEntries as [string, string][]),
    weights: { passing: w[0], warning: w[1] },
    checks: [],
  }
  if (e['a'] !== undefined) out.address = e['a']
  const x = e['x']
  if (x !== undefined) {
    if (
      !Array.isArray(x) ||
      x.length !== 2 ||
      !isPort(x[0]) ||
      (x[1] !== 0 && x[1] !== 1) ||
      !isDnsLabel(name)
    )
      return 'bad sidecar'
    out.sidecar = { port: x[0], protocol: x[1] === 1 ? 'http' : 'tcp' }
  }
  const checks = e['c'] ?? []
  if (!Array.isArray(checks) || checks.length > L.checks) return 'bad checks'
  for (const c of checks) {
    if (!Array.isArray(c) || c.length < 2 || c.length > 3) return 'bad check'
    const [rawId, st, cname] = c as unknown[]
    let checkId: string
    if (rawId === 0) checkId = `service:${id}`
    else if (typeof rawId === 'number' && Number.isInteger(rawId) && rawId >= 1 && rawId <= L.checks) {
      checkId = `service:${id}:${rawId}`
    } else if (isCheckId(rawId)) checkId = rawId
    else return 'bad check id'
    if (checkIds.has(checkId)) return 'duplicate check id'
    checkIds.add(checkId)
    if (st !== 0 && st !== 1 && st !== 2) return 'bad check status'
    if (cname !== undefined && !isPlainText(cname, 256)) return 'bad check name'
    out.checks.push({ id: checkId, name: cname ?? defaultCheckName(name), status: CHECK_STATUSES[st]! })
  }
  return out
}

function isRecord(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false
  const proto = Object.getPrototypeOf(v)
  return proto === Object.prototype || proto === null
}

function isPort(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535
}

function isWeight(v: unknown, min: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= min && v <= 65535
}
