import { unpack } from '../../common/msgpack.ts'
import { type PlainValueLimits, plainValueProblem } from '../../common/plain-value.ts'
import { intentionPermissionsSchema, readingStoredPatterns } from './config-entries.ts'
import type { StoredIntention } from './intention.ts'
import { entryBytes, type PolicyResult } from './policy-commands.ts'
import type { ChainLink } from './policy-signing.ts'
import type { ConfigEntry, RawCaRoots } from './policy-store.ts'

/**
 * Reading a policy store snapshot: the whole of it is checked (as data, then its shape) before the
 * store changes anything, so a malformed snapshot throws and leaves the state as it was.
 */

/** A snapshot is data: records of data no deeper than a command's values, with the CA's bytes. */
const SNAPSHOT_VALUE_LIMITS: PlainValueLimits = Object.freeze({
  maxDepth: 40,
  maxNodes: 50_000_000,
  maxStringLength: 16 << 20,
  allowBytes: true,
})

export interface SnapshotState {
  index: number
  intentions: StoredIntention[]
  configEntries: ConfigEntry[]
  ca: RawCaRoots
  dedupe: { clientId: string; seq: number; result: PolicyResult }[]
  /** Intentions and config entries, as `entryBytes` measures them. */
  stateBytes: number
  /** The ACL state (checked by `AclState.restore`); undefined in a snapshot from before ACLs. */
  acl: unknown
  /** The KV state (checked by `KvState.restore`); undefined in a snapshot from before the KV store. */
  kv: unknown
  /** What the entry after the snapshot must link to (policy-signing.ts), if it continues a batch. */
  chain: ChainLink | undefined
}

const isRecord = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array)
const isIndex = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
const isString = (v: unknown): v is string => typeof v === 'string'

function bad(what: string): never {
  throw new RangeError(`malformed policy store snapshot: ${what}`)
}

function arrayOf(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) bad(`${what} is not an array`)
  return v
}

export function restoreSnapshotState(bytes: Uint8Array, version: number): SnapshotState {
  const s = unpack(bytes)
  if (!isRecord(s) || s['version'] !== version) throw new RangeError('unsupported policy store snapshot')
  const problem = plainValueProblem(s, SNAPSHOT_VALUE_LIMITS)
  if (problem !== undefined) bad(problem)
  if (!isIndex(s['index'])) bad('index')
  let stateBytes = 0
  const intentions = arrayOf(s['intentions'], 'intentions').map((i) => {
    if (!isRecord(i) || !isString(i['source']) || !isString(i['destination'])) bad('intention')
    if ((i['action'] !== 'allow' && i['action'] !== 'deny') || !isIndex(i['createdIndex'])) bad('intention')
    if (!isIndex(i['modifyIndex'])) bad('intention')
    if (i['description'] !== undefined && !isString(i['description'])) bad('intention description')
    if (i['meta'] !== undefined && !isRecord(i['meta'])) bad('intention meta')
    if (i['permissions'] !== undefined) {
      // Patterns stored before the linear-time rule are read (a proxy fails closed on them).
      const r = readingStoredPatterns(() => intentionPermissionsSchema.safeParse(i['permissions']))
      if (!r.success || i['action'] !== 'deny') bad('intention permissions')
    }
    const it = i as unknown as StoredIntention
    stateBytes += entryBytes.intention(it)
    return it
  })
  const configEntries = arrayOf(s['configEntries'], 'configEntries').map((e) => {
    if (!isRecord(e) || !isString(e['kind']) || !isString(e['name']) || !isRecord(e['value']))
      bad('config entry')
    if (!isIndex(e['createdIndex']) || !isIndex(e['modifyIndex'])) bad('config entry')
    const entry = e as unknown as ConfigEntry
    stateBytes += entryBytes.config(entry)
    return entry
  })
  const ca = s['ca']
  if (!isRecord(ca) || !isIndex(ca['modifyIndex'])) bad('ca')
  const roots = ca['roots'] === undefined ? [] : arrayOf(ca['roots'], 'ca.roots')
  const active = ca['activeRootId']
  if (active !== undefined && active !== null && !isString(active)) bad('ca.activeRootId')
  const dedupe = arrayOf(s['dedupe'], 'dedupe').map((d) => {
    if (!isRecord(d) || !isString(d['clientId']) || !isIndex(d['seq']) || !isRecord(d['result']))
      bad('dedupe')
    if (typeof d['result']['ok'] !== 'boolean') bad('dedupe result')
    return { clientId: d['clientId'], seq: d['seq'], result: d['result'] as unknown as PolicyResult }
  })
  const c = s['chain']
  let chain: ChainLink | undefined
  if (c !== undefined) {
    if (!isRecord(c) || !isIndex(c['index']) || !isString(c['root'])) bad('chain')
    const hash = c['hash']
    if (!(hash instanceof Uint8Array) || hash.length !== 32) bad('chain hash')
    chain = { index: c['index'], hash: Buffer.from(hash), root: c['root'] }
  }
  return {
    chain,
    index: s['index'],
    intentions,
    configEntries,
    ca: { roots, activeRootId: isString(active) ? active : undefined, modifyIndex: ca['modifyIndex'] },
    dedupe,
    stateBytes,
    acl: s['acl'],
    kv: s['kv'],
  }
}
