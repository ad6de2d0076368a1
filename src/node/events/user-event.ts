import { isRegExpSyntax, linearRegexpProblem, tryCompileLinear } from '../../common/linear-regexp.ts'
import { pack, unpack } from '../../common/msgpack.ts'

/**
 * A user event as the agent sees it (Consul's `UserEvent`, agent/user_event.go): a name, an
 * opaque payload and optional filters saying which agents it is for. The gossip core carries
 * it as an opaque body (`encodeEventBody`) with its id and Lamport time.
 */
export interface UserEventRecord {
  id: string
  name: string
  payload: Uint8Array
  /** Regular expression (RE2 rules: `linear-regexp.ts`) on node names; empty: every node. */
  nodeFilter: string
  /** Regular expression (RE2 rules) on service names registered on the agent; empty: any. */
  serviceFilter: string
  /** Regular expression (RE2 rules) on the tags of the services `serviceFilter` matches; needs it. */
  tagFilter: string
  version: number
  /** Lamport time the origin gave it. */
  ltime: number
}

/** Consul's JSON shape of an event (`PUT /v1/event/fire/:name`, `GET /v1/event/list`). */
export interface UserEventJson {
  ID: string
  Name: string
  /** Base64 of the payload; null when empty (Go's `[]byte(nil)`). */
  Payload: string | null
  NodeFilter: string
  ServiceFilter: string
  TagFilter: string
  Version: number
  LTime: number
}

/** Consul's `userEventMaxVersion`: events of a newer version are ignored. */
export const USER_EVENT_VERSION = 1

/** Limits on what an event may carry (Consul's payload limit is 512 bytes by default). */
export const USER_EVENT_LIMITS = Object.freeze({
  payloadBytes: 512,
  nameLength: 128,
  filterLength: 128,
})

/**
 * Why a fired event is refused: the message says what to fix. A filter must be a regular
 * expression the linear-time engine runs (`linear-regexp.ts`): an event arrives by gossip from
 * any member, and a backtracking pattern would hold every agent's event loop.
 */
export function userEventProblem(e: {
  name: string
  payload: Uint8Array
  nodeFilter: string
  serviceFilter: string
  tagFilter: string
}): string | undefined {
  const L = USER_EVENT_LIMITS
  if (e.name === '') return 'Missing name'
  if (e.name.length > L.nameLength) return `name: at most ${L.nameLength} characters`
  if (e.payload.length > L.payloadBytes)
    return `payload: ${e.payload.length} bytes, more than the limit of ${L.payloadBytes}`
  if (e.tagFilter !== '' && e.serviceFilter === '') return 'Cannot provide tag filter without service filter'
  for (const [what, f] of [
    ['node', e.nodeFilter],
    ['service', e.serviceFilter],
    ['tag', e.tagFilter],
  ] as const) {
    if (f.length > L.filterLength) return `${what} filter: at most ${L.filterLength} characters`
    if (f === '') continue
    if (!isRegExpSyntax(f)) return `Invalid ${what} filter: not a regular expression`
    const problem = linearRegexpProblem(f)
    if (problem !== undefined) return `Invalid ${what} filter: ${problem}`
  }
  return undefined
}

/** The body the gossip core carries: `[version, name, payload, nodeFilter, serviceFilter, tagFilter]`. */
export function encodeEventBody(e: Omit<UserEventRecord, 'id' | 'ltime'>): Uint8Array {
  return pack([e.version, e.name, e.payload, e.nodeFilter, e.serviceFilter, e.tagFilter])
}

/**
 * Decodes a body from the network; undefined for anything malformed or out of limits, filters
 * the linear-time engine cannot run included (`userEventProblem`).
 */
export function decodeEventBody(id: string, ltime: number, body: Uint8Array): UserEventRecord | undefined {
  let v: unknown
  try {
    v = unpack(body)
  } catch {
    return undefined
  }
  if (!Array.isArray(v) || v.length !== 6) return undefined
  const [version, name, payload, nodeFilter, serviceFilter, tagFilter] = v as unknown[]
  if (!Number.isSafeInteger(version) || (version as number) < 0) return undefined
  if (typeof name !== 'string' || !(payload instanceof Uint8Array)) return undefined
  if (typeof nodeFilter !== 'string' || typeof serviceFilter !== 'string' || typeof tagFilter !== 'string')
    return undefined
  const e = {
    id,
    ltime,
    version: version as number,
    name,
    payload: new Uint8Array(payload),
    nodeFilter,
    serviceFilter,
    tagFilter,
  }
  return userEventProblem(e) === undefined ? e : undefined
}

export function userEventJson(e: UserEventRecord): UserEventJson {
  return {
    ID: e.id,
    Name: e.name,
    Payload: e.payload.length === 0 ? null : Buffer.from(e.payload).toString('base64'),
    NodeFilter: e.nodeFilter,
    ServiceFilter: e.serviceFilter,
    TagFilter: e.tagFilter,
    Version: e.version,
    LTime: e.ltime,
  }
}

/** What an agent is, for an event's filters: its node name and its services with their tags. */
export interface EventTarget {
  node: string
  services: { name: string; tags: string[] }[]
}

/**
 * Whether an event is for this agent (Consul's `shouldProcessUserEvent`): a version it knows,
 * the node filter matching its name, and, with a service filter, one of its services matching it
 * (with one of that service's tags matching the tag filter, if any). Regular expressions match
 * anywhere in the name, as Go's `MatchString`, and run in linear time (`linear-regexp.ts`); one
 * that the linear engine does not compile matches nothing, so such an event applies nowhere.
 */
export function eventAppliesTo(e: UserEventRecord, target: EventTarget): boolean {
  if (e.version > USER_EVENT_VERSION) return false
  if (e.nodeFilter !== '' && tryCompileLinear(e.nodeFilter)?.test(target.node) !== true) return false
  if (e.serviceFilter === '') return true
  const service = tryCompileLinear(e.serviceFilter)
  const tag = e.tagFilter === '' ? undefined : tryCompileLinear(e.tagFilter)
  if (service === undefined || (e.tagFilter !== '' && tag === undefined)) return false
  return target.services.some(
    (s) => service.test(s.name) && (tag === undefined || s.tags.some((t) => tag.test(t))),
  )
}

/**
 * Consul's index of an event list (agent/event_endpoint.go `uuidToUint64`): the two halves of
 * the last event's UUID XORed, as a decimal uint64; "1" for an empty list (never 0, so a watch
 * does not loop). Not monotonic: a blocking query waits while it equals the client's.
 */
export function eventListIndex(lastId: string | undefined): string {
  if (lastId === undefined) return '1'
  const hex = lastId.replace(/-/g, '')
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) return '1'
  const low = BigInt(`0x${hex.slice(0, 16)}`)
  const high = BigInt(`0x${hex.slice(16)}`)
  return (low ^ high).toString()
}
