import { pack, unpack } from '../common/msgpack.ts'
import type { Entry, Message, RelayedContact, Snapshot } from './types.ts'
import { MESSAGE_TYPES } from './types.ts'

/**
 * Wire encoding of Raft messages (`/peermesh/raft/1`): msgpack maps, validated on decode. A peer's
 * bytes are never trusted: `decodeMessage` returns a result and never throws.
 */

const MAX_ID = 256
const MAX_ENTRIES = 100_000
const MAX_CONTEXT = 1024
/** Longest tick a heartbeat may announce (`tickMs`): a minute, far past any agent's. */
export const MAX_TICK_MS = 60_000
const MAX_MEMBERS = 1024
/** Most voters a heartbeat may relay (`alive`): far more than any configuration has. */
export const MAX_RELAYED = 64
/** Oldest contact a heartbeat may relay (`alive[].ageMs`): a minute, far past any relay's window. */
export const MAX_RELAYED_AGE_MS = 60_000
const TYPES: ReadonlySet<unknown> = new Set(MESSAGE_TYPES)

/**
 * The checks below are written out (no schema library): they run on every message a node receives,
 * entries included. Each field is checked for its type and bounds; extra fields are ignored.
 */
const isU = (v: unknown): v is number =>
  typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= Number.MAX_SAFE_INTEGER
const isId = (v: unknown): v is string => typeof v === 'string' && v.length >= 1 && v.length <= MAX_ID
const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array)
const isIds = (v: unknown): v is string[] => Array.isArray(v) && v.length <= MAX_MEMBERS && v.every(isId)

class Invalid extends Error {}
function need(ok: boolean, what: string): asserts ok {
  if (!ok) throw new Invalid(what)
}

function entryOf(v: unknown): Entry {
  need(isRecord(v), 'entry is not a map')
  const { term, index, type, data, requestId } = v
  need(isU(term) && isU(index), 'entry term/index')
  need(type === 'normal' || type === 'conf', 'entry type')
  need(data instanceof Uint8Array, 'entry data')
  const out: Entry = { term, index, type, data: new Uint8Array(data) }
  if (requestId !== undefined) {
    need(isRecord(requestId) && isId(requestId['clientId']) && isU(requestId['seq']), 'entry requestId')
    out.requestId = { clientId: requestId['clientId'] as string, seq: requestId['seq'] as number }
  }
  return out
}

function snapshotOf(v: unknown): Snapshot {
  need(isRecord(v) && isRecord(v['metadata']) && v['data'] instanceof Uint8Array, 'snapshot')
  const m = v['metadata']
  need(isU(m['index']) && isU(m['term']) && isRecord(m['conf']), 'snapshot metadata')
  const conf = m['conf'] as Record<string, unknown>
  need(isIds(conf['voters']) && isIds(conf['learners']), 'snapshot conf')
  return {
    metadata: {
      index: m['index'] as number,
      term: m['term'] as number,
      conf: { voters: [...(conf['voters'] as string[])], learners: [...(conf['learners'] as string[])] },
    },
    data: new Uint8Array(v['data'] as Uint8Array),
  }
}

function messageOf(v: unknown): Message {
  need(isRecord(v), 'not a map')
  const { type, from, to, term, logTerm, index, commit, entries, reject, rejectHint, context } = v
  need(TYPES.has(type), 'type')
  need(isId(from) && isId(to), 'from/to')
  need(isU(term) && isU(logTerm) && isU(index) && isU(commit) && isU(rejectHint), 'numbers')
  need(Array.isArray(entries) && entries.length <= MAX_ENTRIES, 'entries')
  need(typeof reject === 'boolean', 'reject')
  need(typeof context === 'string' && context.length <= MAX_CONTEXT, 'context')
  const message: Message = {
    type: type as Message['type'],
    from,
    to,
    term,
    logTerm,
    index,
    commit,
    entries: entries.map(entryOf),
    reject,
    rejectHint,
    context,
  }
  if (v['idleTicks'] !== undefined) {
    need(isU(v['idleTicks']), 'idleTicks')
    message.idleTicks = v['idleTicks']
  }
  if (v['tickMs'] !== undefined) {
    need(isU(v['tickMs']) && v['tickMs'] >= 1 && v['tickMs'] <= MAX_TICK_MS, 'tickMs')
    message.tickMs = v['tickMs']
  }
  if (v['snapshot'] !== undefined) message.snapshot = snapshotOf(v['snapshot'])
  if (v['alive'] !== undefined) message.alive = aliveOf(v['alive'])
  return message
}

function aliveOf(v: unknown): RelayedContact[] {
  need(Array.isArray(v) && v.length <= MAX_RELAYED, 'alive')
  return v.map((e: unknown) => {
    need(isRecord(e) && isId(e['id']) && isU(e['ageMs']) && e['ageMs'] <= MAX_RELAYED_AGE_MS, 'alive entry')
    return { id: e['id'] as string, ageMs: e['ageMs'] as number }
  })
}

export type DecodeResult = { ok: true; message: Message } | { ok: false; reason: string }

function entryToWire(e: Entry): Record<string, unknown> {
  const o: Record<string, unknown> = { term: e.term, index: e.index, type: e.type, data: e.data }
  if (e.requestId !== undefined) o['requestId'] = { clientId: e.requestId.clientId, seq: e.requestId.seq }
  return o
}

export function encodeMessage(m: Message): Uint8Array {
  const o: Record<string, unknown> = {
    type: m.type,
    from: m.from,
    to: m.to,
    term: m.term,
    logTerm: m.logTerm,
    index: m.index,
    commit: m.commit,
    entries: m.entries.map(entryToWire),
    reject: m.reject,
    rejectHint: m.rejectHint,
    context: m.context,
  }
  if (m.snapshot !== undefined) o['snapshot'] = { metadata: m.snapshot.metadata, data: m.snapshot.data }
  if (m.idleTicks !== undefined) o['idleTicks'] = m.idleTicks
  if (m.tickMs !== undefined) o['tickMs'] = m.tickMs
  if (m.alive !== undefined) o['alive'] = m.alive.map((e) => ({ id: e.id, ageMs: e.ageMs }))
  return pack(o)
}

export function decodeMessage(buf: Uint8Array): DecodeResult {
  let raw: unknown
  try {
    raw = unpack(buf)
  } catch (err) {
    return { ok: false, reason: `not msgpack: ${(err as Error).message}` }
  }
  try {
    return { ok: true, message: messageOf(raw) }
  } catch (err) {
    if (err instanceof Invalid) return { ok: false, reason: `invalid message: ${err.message}` }
    throw err
  }
}
