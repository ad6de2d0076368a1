import { z } from 'zod'
import { pack, unpack } from '../common/msgpack.ts'
import type { Entry, Message, Snapshot } from './types.ts'
import { MESSAGE_TYPES } from './types.ts'

/**
 * Wire encoding of Raft messages (`/peermesh/raft/1`): msgpack maps, validated on decode. A peer's
 * bytes are never trusted: `decodeMessage` returns a result and never throws.
 */

const MAX_ID = 256
const u = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER)
const id = z.string().min(1).max(MAX_ID)
const bytes = z.instanceof(Uint8Array)

const entrySchema = z.object({
  term: u,
  index: u,
  type: z.enum(['normal', 'conf']),
  data: bytes,
  requestId: z.object({ clientId: z.string().min(1).max(MAX_ID), seq: u }).optional(),
})

const snapshotSchema = z.object({
  metadata: z.object({
    index: u,
    term: u,
    conf: z.object({ voters: z.array(id).max(1024), learners: z.array(id).max(1024) }),
  }),
  data: bytes,
})

const messageSchema = z.object({
  type: z.enum(MESSAGE_TYPES as [Message['type'], ...Message['type'][]]),
  from: id,
  to: id,
  term: u,
  logTerm: u,
  index: u,
  commit: u,
  entries: z.array(entrySchema).max(100_000),
  reject: z.boolean(),
  rejectHint: u,
  context: z.string().max(1024),
  snapshot: snapshotSchema.optional(),
  idleTicks: u.optional(),
})

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
  return pack(o)
}

export function decodeMessage(buf: Uint8Array): DecodeResult {
  let raw: unknown
  try {
    raw = unpack(buf)
  } catch (err) {
    return { ok: false, reason: `not msgpack: ${(err as Error).message}` }
  }
  const r = messageSchema.safeParse(raw)
  if (!r.success) return { ok: false, reason: r.error.issues[0]?.message ?? 'invalid message' }
  const v = r.data
  const entries: Entry[] = v.entries.map((e) => {
    const out: Entry = { term: e.term, index: e.index, type: e.type, data: new Uint8Array(e.data) }
    if (e.requestId !== undefined) out.requestId = { clientId: e.requestId.clientId, seq: e.requestId.seq }
    return out
  })
  const message: Message = {
    type: v.type,
    from: v.from,
    to: v.to,
    term: v.term,
    logTerm: v.logTerm,
    index: v.index,
    commit: v.commit,
    entries,
    reject: v.reject,
    rejectHint: v.rejectHint,
    context: v.context,
  }
  if (v.idleTicks !== undefined) message.idleTicks = v.idleTicks
  if (v.snapshot !== undefined) {
    const s: Snapshot = {
      metadata: {
        index: v.snapshot.metadata.index,
        term: v.snapshot.metadata.term,
        conf: {
          voters: [...v.snapshot.metadata.conf.voters],
          learners: [...v.snapshot.metadata.conf.learners],
        },
      },
      data: new Uint8Array(v.snapshot.data),
    }
    message.snapshot = s
  }
  return { ok: true, message }
}
