/**
 * msgpack codec for SWIM messages. Decoding never throws: garbage, unknown types, wrong field
 * types and oversize inputs come back as `{ ok: false, reason }`. Validation is hand-written
 * (not zod) because it runs on every datagram of 10,000-node simulations.
 */
import { createHash } from 'node:crypto'
import { pack, unpack as unpackPlain } from '../common/msgpack.ts'
import { MAX_USER_EVENT_BODY_BYTES, MAX_USER_EVENT_ID_LENGTH, MAX_USER_EVENT_LTIME } from './user-events.ts'
import type {
  DecodedAlive,
  DecodedMessage,
  DecodedSimpleMessage,
  MemberStatus,
  Message,
  NodeRecord,
  PushPullState,
  StateEntry,
} from './messages.ts'

/** Why an input was rejected. */
export type DecodeFailure =
  | 'oversize' // longer than the allowed maximum, rejected before decoding
  | 'decode' // not valid msgpack
  | 'type' // not a message, or an unknown message type
  | 'shape' // a known type with missing or wrongly typed fields, or an invalid record
  | 'members' // a push/pull state listing more members than allowed, refused before decoding them

export type DecodeResult<T> = { ok: true; msg: T } | { ok: false; reason: DecodeFailure }

/** Limits on record fields (on top of the overall `maxRecordBytes`). */
export const RECORD_LIMITS = Object.freeze({
  idLength: 256,
  nameLength: 256,
  addresses: 32,
  addressLength: 512,
  tags: 64,
  tagKeyLength: 128,
  tagValueLength: 512,
  metaDepth: 16,
})

const MAX_PARTS = 256

export function encodeMessage(msg: Message): Uint8Array {
  return pack(canonical(msg))
}

function canonical(msg: Message): object {
  switch (msg.t) {
    case 'ping':
      return { t: msg.t, seq: msg.seq, target: msg.target }
    case 'ping-req':
      return { t: msg.t, seq: msg.seq, target: msg.target, nack: msg.nack }
    case 'ack':
    case 'nack':
      return { t: msg.t, seq: msg.seq }
    case 'alive':
      return { t: msg.t, inc: msg.inc, rec: msg.rec, sig: msg.sig }
    case 'suspect':
    case 'dead':
    case 'fleave':
      return { t: msg.t, id: msg.id, inc: msg.inc, from: msg.from }
    case 'leave':
      return { t: msg.t, id: msg.id, inc: msg.inc, sig: msg.sig }
    case 'user':
      return { t: msg.t, from: msg.from, lt: msg.lt, id: msg.id, body: msg.body, sig: msg.sig }
    case 'sync':
    case 'sync-ack':
      return { t: msg.t, seq: msg.seq, digest: msg.digest }
    case 'compound':
      return { t: msg.t, parts: msg.parts }
  }
}

/** Length of a state digest (`sync`, `sync-ack`): 128 bits of SHA-256. */
export const STATE_DIGEST_BYTES = 16

/** Bytes a compound message adds around its parts: header plus per-part length prefix. */
export const COMPOUND_OVERHEAD = 24
export function compoundPartOverhead(len: number): number {
  return len < 256 ? 2 : len < 65536 ? 3 : 5
}

/** Builds one datagram from already-encoded messages (a single one is sent as is). */
export function packParts(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!
  return pack({ t: 'compound', parts })
}

export function encodeRecord(rec: NodeRecord): Uint8Array {
  return pack({
    id: rec.id,
    name: rec.name,
    addresses: rec.addresses,
    tags: rec.tags,
    meta: rec.meta,
    version: rec.version,
  })
}

/** The bytes an owner signs for an alive message: domain tag, incarnation and record bytes. */
export function aliveSigningBytes(inc: number, rec: Uint8Array): Uint8Array {
  return pack(['peermesh/swim/alive/1', inc, rec])
}

/** The bytes an owner signs to leave. */
export function leaveSigningBytes(id: string, inc: number): Uint8Array {
  return pack(['peermesh/swim/leave/1', id, inc])
}

/** The bytes an origin signs for a user event. */
export function userEventSigningBytes(from: string, lt: number, id: string, body: Uint8Array): Uint8Array {
  return pack(['peermesh/swim/user/1', from, lt, id, body])
}

/** Push/pull entries go on the wire as arrays `[id, st, inc, ri, rec, sig, lsig?]`: compact and fast. */
export function encodeStateEntry(m: StateEntry): Uint8Array {
  return pack(
    m.lsig ? [m.id, m.st, m.inc, m.ri, m.rec, m.sig, m.lsig] : [m.id, m.st, m.inc, m.ri, m.rec, m.sig],
  )
}

const STATE_HEADER = pack({ t: 'state', join: false, members: [] })

/**
 * Frames already-encoded entries (`encodeStateEntry`) as a push/pull state without re-encoding
 * them: `{ t: 'state', join, members: [...] }` with a 32-bit array header.
 */
export function framePushPull(join: boolean, entries: Uint8Array[]): Uint8Array {
  // STATE_HEADER ends with the bool for `join`, the 'members' key and an empty fixarray (0x90).
  const head = STATE_HEADER.length - 1
  let len = head + 5
  for (const e of entries) len += e.length
  const out = new Uint8Array(len)
  out.set(STATE_HEADER.subarray(0, head), 0)
  out[head - 9] = join ? 0xc3 : 0xc2
  out[head] = 0xdd
  new DataView(out.buffer, out.byteOffset, out.byteLength).setUint32(head + 1, entries.length)
  let pos = head + 5
  for (const e of entries) {
    out.set(e, pos)
    pos += e.length
  }
  return out
}

export function encodePushPull(state: PushPullState): Uint8Array {
  return framePushPull(state.join, state.members.map(encodeStateEntry))
}

function unpack(bytes: Uint8Array): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: unpackPlain(bytes) }
  } catch {
    return { ok: false }
  }
}

/**
 * Decodes and validates one datagram. Inputs longer than `maxBytes` are rejected before decoding.
 * Compound messages are decoded part by part; one invalid part rejects the whole datagram.
 */
export function decodeMessage(bytes: Uint8Array, maxBytes: number): DecodeResult<DecodedMessage> {
  if (!(bytes instanceof Uint8Array)) return { ok: false, reason: 'type' }
  if (bytes.length > maxBytes) return { ok: false, reason: 'oversize' }
  const raw = unpack(bytes)
  if (!raw.ok) return { ok: false, reason: 'decode' }
  const v = raw.value
  if (!isPlainObject(v)) return { ok: false, reason: 'type' }
  if (v['t'] === 'compound') {
    const parts = v['parts']
    if (!Array.isArray(parts) || parts.length === 0 || parts.length > MAX_PARTS)
      return { ok: false, reason: 'shape' }
    const out: DecodedSimpleMessage[] = []
    for (const p of parts) {
      if (!(p instanceof Uint8Array)) return { ok: false, reason: 'shape' }
      const inner = unpack(p)
      if (!inner.ok) return { ok: false, reason: 'decode' }
      const r = validateSimple(inner.value, maxBytes)
      if (!r.ok) return r
      out.push(r.msg)
    }
    return { ok: true, msg: { t: 'compound', parts: out } }
  }
  return validateSimple(v, maxBytes)
}

function validateSimple(v: unknown, maxBytes: number): DecodeResult<DecodedSimpleMessage> {
  if (!isPlainObject(v)) return { ok: false, reason: 'type' }
  const bad = { ok: false, reason: 'shape' } as const
  switch (v['t']) {
    case 'ping':
      if (!isSeq(v['seq']) || !isId(v['target'])) return bad
      return { ok: true, msg: { t: 'ping', seq: v['seq'], target: v['target'] } }
    case 'ping-req':
      if (!isSeq(v['seq']) || !isId(v['target']) || typeof v['nack'] !== 'boolean') return bad
      return { ok: true, msg: { t: 'ping-req', seq: v['seq'], target: v['target'], nack: v['nack'] } }
    case 'ack':
    case 'nack':
      if (!isSeq(v['seq'])) return bad
      return { ok: true, msg: { t: v['t'], seq: v['seq'] } }
    case 'alive': {
      const { inc, rec, sig } = v
      if (!isIncarnation(inc) || !(rec instanceof Uint8Array) || !isSig(sig)) return bad
      const record = decodeRecord(rec, maxBytes)
      if (!record.ok) return bad
      const msg: DecodedAlive = { t: 'alive', inc, rec, sig, record: record.msg }
      return { ok: true, msg }
    }
    case 'suspect':
    case 'dead':
    case 'fleave':
      if (!isId(v['id']) || !isIncarnation(v['inc']) || !isId(v['from'])) return bad
      return { ok: true, msg: { t: v['t'], id: v['id'], inc: v['inc'], from: v['from'] } }
    case 'leave':
      if (!isId(v['id']) || !isIncarnation(v['inc']) || !isSig(v['sig'])) return bad
      return { ok: true, msg: { t: 'leave', id: v['id'], inc: v['inc'], sig: v['sig'] } }
    case 'user': {
      const { from, lt, id, body, sig } = v
      if (
        !isId(from) ||
        !isIncarnation(lt) ||
        lt > MAX_USER_EVENT_LTIME ||
        typeof id !== 'string' ||
        id.length === 0 ||
        id.length > MAX_USER_EVENT_ID_LENGTH ||
        !(body instanceof Uint8Array) ||
        body.length > MAX_USER_EVENT_BODY_BYTES ||
        !isSig(sig)
      )
        return bad
      return { ok: true, msg: { t: 'user', from, lt, id, body, sig } }
    }
    case 'sync':
    case 'sync-ack': {
      const { seq, digest } = v
      if (!isSeq(seq) || !(digest instanceof Uint8Array) || digest.length !== STATE_DIGEST_BYTES) return bad
      return { ok: true, msg: { t: v['t'], seq, digest } }
    }
    default:
      return { ok: false, reason: 'type' }
  }
}

/**
 * Fingerprint of one member's state for `stateDigest`: the first `STATE_DIGEST_BYTES` of
 * SHA-256 over (id, status, incarnation, record incarnation, signature). Two nodes holding the
 * same signed record at the same status and incarnations get the same bytes.
 */
export function stateEntryDigest(
  id: string,
  st: MemberStatus,
  inc: number,
  ri: number,
  sig: Uint8Array,
): Uint8Array {
  const bytes = pack(['peermesh/swim/digest/1', id, st, inc, ri, sig])
  return new Uint8Array(createHash('sha256').update(bytes).digest().subarray(0, STATE_DIGEST_BYTES))
}

/** Decodes and validates an encoded `NodeRecord`. */
export function decodeRecord(bytes: Uint8Array, maxBytes: number): DecodeResult<NodeRecord> {
  if (bytes.length > maxBytes) return { ok: false, reason: 'oversize' }
  const raw = unpack(bytes)
  if (!raw.ok) return { ok: false, reason: 'decode' }
  const problem = recordProblem(raw.value)
  if (problem !== undefined) return { ok: false, reason: 'shape' }
  return { ok: true, msg: raw.value as NodeRecord }
}

/** Returns why `v` is not a valid `NodeRecord`, or undefined if it is one. */
export function recordProblem(v: unknown): string | undefined {
  const L = RECORD_LIMITS
  if (!isPlainObject(v)) return 'record must be an object'
  if (!isId(v['id'])) return `id must be a non-empty string of at most ${L.idLength} characters`
  const name = v['name']
  if (typeof name !== 'string' || name.length === 0 || name.length > L.nameLength) {
    return `name must be a non-empty string of at most ${L.nameLength} characters`
  }
  const addrs = v['addresses']
  if (!Array.isArray(addrs) || addrs.length > L.addresses)
    return `addresses must be an array of at most ${L.addresses}`
  for (const a of addrs) {
    if (typeof a !== 'string' || a.length > L.addressLength) return 'addresses must be strings'
  }
  const tags = v['tags']
  if (!isPlainObject(tags)) return 'tags must be an object'
  const keys = Object.keys(tags)
  if (keys.length > L.tags) return `at most ${L.tags} tags`
  for (const k of keys) {
    const tv = tags[k]
    if (k.length > L.tagKeyLength || typeof tv !== 'string' || tv.length > L.tagValueLength) {
      return 'tags must map short strings to strings'
    }
  }
  if (!isPlainObject(v['meta']) || !isJsonLike(v['meta'], L.metaDepth)) {
    return 'meta must be an object of JSON-like values (no binary, no extension types)'
  }
  if (!isIncarnation(v['version'])) return 'version must be a non-negative safe integer'
  return undefined
}

/**
 * Number of members a push/pull state framed by `framePushPull` announces in its header, read
 * without decoding anything; undefined if `bytes` does not start like one (it is then decoded in
 * full and its members counted afterwards).
 */
export function pushPullMemberCount(bytes: Uint8Array): number | undefined {
  const head = STATE_HEADER.length - 1
  if (bytes.length < head + 1) return undefined
  for (let i = 0; i < head; i++) {
    if (i === head - 9) {
      if (bytes[i] !== 0xc2 && bytes[i] !== 0xc3) return undefined
    } else if (bytes[i] !== STATE_HEADER[i]) return undefined
  }
  const tag = bytes[head]!
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (tag >= 0x90 && tag <= 0x9f) return tag - 0x90
  if (tag === 0xdc && bytes.length >= head + 3) return view.getUint16(head + 1)
  if (tag === 0xdd && bytes.length >= head + 5) return view.getUint32(head + 1)
  return undefined
}

/**
 * Decodes and validates a push/pull state. Records stay encoded (`rec` bytes): the receiver
 * decodes only those it does not already hold, with `decodeRecord`. A state listing more than
 * `maxMembers` members is refused (`members`), before decoding when its header says so.
 */
export function decodePushPull(
  bytes: Uint8Array,
  maxBytes: number,
  maxMembers = Number.POSITIVE_INFINITY,
): DecodeResult<PushPullState> {
  if (!(bytes instanceof Uint8Array)) return { ok: false, reason: 'type' }
  if (bytes.length > maxBytes) return { ok: false, reason: 'oversize' }
  if ((pushPullMemberCount(bytes) ?? 0) > maxMembers) return { ok: false, reason: 'members' }
  const raw = unpack(bytes)
  if (!raw.ok) return { ok: false, reason: 'decode' }
  const v = raw.value
  if (!isPlainObject(v) || v['t'] !== 'state') return { ok: false, reason: 'type' }
  const members = v['members']
  if (typeof v['join'] !== 'boolean' || !Array.isArray(members)) return { ok: false, reason: 'shape' }
  if (members.length > maxMembers) return { ok: false, reason: 'members' }
  const out: StateEntry[] = []
  for (const m of members) {
    if (!Array.isArray(m) || m.length < 6 || m.length > 7) return { ok: false, reason: 'shape' }
    const [id, st, inc, ri, rec, sig, lsig] = m as unknown[]
    if (
      !isId(id) ||
      !isStatus(st) ||
      !isIncarnation(inc) ||
      !isIncarnation(ri) ||
      !(rec instanceof Uint8Array) ||
      !isSig(sig)
    ) {
      return { ok: false, reason: 'shape' }
    }
    if (lsig !== undefined && !isSig(lsig)) return { ok: false, reason: 'shape' }
    const e: StateEntry = { id, st, inc, ri, rec, sig }
    if (lsig !== undefined) e.lsig = lsig
    out.push(e)
  }
  return { ok: true, msg: { t: 'state', join: v['join'], members: out } }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false
  const proto = Object.getPrototypeOf(v)
  return proto === Object.prototype || proto === null
}

function isJsonLike(v: unknown, depth: number): boolean {
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return true
  if (typeof v === 'number') return Number.isFinite(v)
  if (depth <= 0) return false
  if (Array.isArray(v)) return v.every((x) => isJsonLike(x, depth - 1))
  if (isPlainObject(v)) return Object.values(v).every((x) => isJsonLike(x, depth - 1))
  return false
}

function isSeq(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff
}

function isIncarnation(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
}

function isId(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && v.length <= RECORD_LIMITS.idLength
}

function isSig(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array && v.length <= 512
}

function isStatus(v: unknown): v is MemberStatus {
  return v === 'alive' || v === 'suspect' || v === 'dead' || v === 'left'
}
