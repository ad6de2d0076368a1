import { txnOpPermission } from '../../acl/command-permission.ts'
import { hasLoneSurrogate, KV_LIMITS, MAX_UINT64, type TxnOp } from '../../raft/policy/kv-commands.ts'
import { PolicyErrorCodes } from '../../raft/policy/policy-commands.ts'
import { ApiError } from '../agent/errors.ts'
import { consistentRead, type KvApi, kvWrite, readHeaders, untilApplied } from './kv-http.ts'
import type { TxnResultEntry } from '../../raft/policy/kv-state.ts'
import { kvEntryText, resultError } from './kv-routes.ts'
import { ApiReply, type HttpApi } from './server.ts'

const READ_VERBS: ReadonlySet<string> = new Set([
  'get',
  'get-tree',
  'check-index',
  'check-session',
  'check-not-exists',
])
const VERBS: ReadonlySet<string> = new Set([
  ...READ_VERBS,
  'set',
  'cas',
  'lock',
  'unlock',
  'delete',
  'delete-tree',
  'delete-cas',
])
const KV_FIELDS = new Map(
  ['Verb', 'Key', 'Value', 'Flags', 'Index', 'Session', 'Namespace', 'Partition'].map((f) => [
    f.toLowerCase(),
    f,
  ]),
)

/**
 * Largest txn reply, in bytes (roughly: keys and values as JSON). 64 `get-tree` operations on the
 * whole store would otherwise answer 64 copies of it; twice the policy state's cap is room for
 * any sensible reply.
 */
export const MAX_TXN_REPLY_BYTES = 16 * 1024 * 1024

/** A 413 when `entries` would make a reply past `MAX_TXN_REPLY_BYTES`. */
function checkReplySize(entries: readonly TxnResultEntry[]): void {
  let bytes = 0
  for (const r of entries) {
    bytes += 160 + r.entry.key.length * 6 + (r.withValue ? r.entry.value.length : 0)
    if (bytes > MAX_TXN_REPLY_BYTES)
      throw new ApiError(
        `transaction results larger than ${MAX_TXN_REPLY_BYTES} bytes; read fewer or smaller trees`,
        413,
      )
  }
}

/**
 * A `/v1/txn` body: a list of at most 64 `{ "KV": { Verb, Key, Value?, Flags?, Index?, Session? } }`
 * operations (Consul's; field names in any case). Other kinds of operation (Node, Service, Check)
 * are refused: peermesh's catalog lives in gossip, not in Raft. Throws a 400 naming the operation.
 */
export function parseTxnBody(body: unknown): TxnOp[] {
  if (!Array.isArray(body)) throw new ApiError('body: expected a list of operations', 400)
  if (body.length === 0) throw new ApiError('body: no operations', 400)
  if (body.length > KV_LIMITS.maxTxnOps)
    throw new ApiError(
      `Transaction contains too many operations (${body.length} > ${KV_LIMITS.maxTxnOps})`,
      413,
    )
  return body.map((raw, i) => {
    const where = `operation ${i}`
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
      throw new ApiError(`${where}: expected an object`, 400)
    const kinds = Object.keys(raw)
    const kv =
      kinds.length === 1 && kinds[0]!.toLowerCase() === 'kv'
        ? (raw as Record<string, unknown>)[kinds[0]!]
        : undefined
    if (kv === undefined) throw new ApiError(`${where}: only KV operations are supported`, 400)
    if (kv === null || typeof kv !== 'object' || Array.isArray(kv))
      throw new ApiError(`${where}: KV: expected an object`, 400)
    const f: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(kv)) {
      const name = KV_FIELDS.get(k.toLowerCase())
      if (name === undefined) throw new ApiError(`${where}: ${k}: unknown field`, 400)
      f[name] = v
    }
    const verb = f['Verb']
    if (typeof verb !== 'string' || !VERBS.has(verb))
      throw new ApiError(`${where}: unknown Verb ${JSON.stringify(verb)}`, 400)
    const key = f['Key'] ?? ''
    if (typeof key !== 'string' || key.length > KV_LIMITS.maxKeyLength || hasLoneSurrogate(key))
      throw new ApiError(
        `${where}: Key: expected a string of at most ${KV_LIMITS.maxKeyLength} characters`,
        400,
      )
    const op: TxnOp = { verb: verb as TxnOp['verb'], key }
    const value = f['Value']
    if (value !== undefined && value !== null) {
      if (typeof value !== 'string' || value.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(value))
        throw new ApiError(`${where}: Value: expected base64`, 400)
      if ((value.length / 4) * 3 > KV_LIMITS.maxValueBytes + 2)
        throw new ApiError(`${where}: Value: larger than ${KV_LIMITS.maxValueBytes} bytes`, 413)
      op.value = value
    } else if (verb === 'set' || verb === 'cas' || verb === 'lock' || verb === 'unlock') {
      op.value = ''
    }
    const index = f['Index']
    if (index !== undefined && index !== null) {
      if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 0)
        throw new ApiError(`${where}: Index: expected a non-negative integer`, 400)
      op.index = index
    }
    const flags = f['Flags']
    if (flags !== undefined && flags !== null) {
      // A uint64; JSON numbers past 2^53 arrive rounded (JSON.parse), as in any JS Consul client.
      const digits =
        typeof flags === 'number' && Number.isInteger(flags) && flags >= 0 && flags < 2 ** 64
          ? BigInt(flags).toString()
          : typeof flags === 'string' && /^\d{1,20}$/.test(flags) && BigInt(flags) <= MAX_UINT64
            ? BigInt(flags).toString()
            : undefined
      if (digits === undefined)
        throw new ApiError(`${where}: Flags: expected an unsigned 64-bit integer`, 400)
      op.flags = digits
    }
    const session = f['Session']
    if (session !== undefined && session !== null && session !== '') {
      if (typeof session !== 'string' || session.length > 64 || hasLoneSurrogate(session))
        throw new ApiError(`${where}: Session: expected a session ID`, 400)
      op.session = session
    }
    return op
  })
}

/** Consul's txn reply: `{ Results: [{KV: entry}], Errors: null }`, or the errors (409). */
function reply(status: number, body: unknown, headers: Record<string, string> = {}): ApiReply {
  return new ApiReply(status, JSON.stringify(body), 'application/json', headers)
}

/**
 * `PUT /v1/txn`: KV operations applied all or none (Consul's verbs: set, cas, lock, unlock, get,
 * get-tree, check-index, check-session, check-not-exists, delete, delete-tree, delete-cas). A
 * read-only transaction is answered from this agent's state (`?consistent`: through the leader);
 * one that writes goes through Raft. Failure: 409 with `Errors: [{OpIndex, What}]`, nothing
 * applied. ACLs: each operation needs its own permission (read for reads, write for writes, write
 * on every key under a deleted tree); `get-tree` results the token may not read are left out.
 */
export function registerTxnRoutes(http: HttpApi, api: KvApi): void {
  http.route('PUT', '/v1/txn', async (req) => {
    const ops = parseTxnBody(req.body)
    for (const op of ops) req.auth.require(...txnOpPermission(op))
    const readOnly = ops.every((o) => READ_VERBS.has(o.verb))
    const now = api.wallNow()
    let entries: TxnResultEntry[]
    if (readOnly) {
      await consistentRead(api, req)
      const r = api.kv.dryRunTxn(ops, now)
      if (!Array.isArray(r)) return failed(r.message)
      entries = r
      checkReplySize(entries)
    } else {
      // Estimated on the state here before anything is written (the txn's own writes add at most
      // its body's size to each tree it reads).
      checkReplySize(currentEntries(api, ops))
      const out = await kvWrite(api, req, { op: 'txn', ops, now })
      if (!out.result.ok) {
        if (out.result.code === PolicyErrorCodes.txnFailed) return failed(out.result.message)
        throw resultError(out.result)
      }
      await untilApplied(api, req, out.index)
      // Remembered for the most recent transactions; past that (or after a snapshot install), the
      // operations' keys as the state holds them now.
      entries = api.kv.txnResultsAt(out.index) ?? currentEntries(api, ops)
    }
    const authz = req.auth.authorizer()
    const results = entries
      .filter((r) => authz.keyRead(r.entry.key))
      .map((r) => `{"KV":${kvEntryText(r.entry, r.withValue)}}`)
    const body = `{"Results":[${results.join(',')}],"Errors":null}`
    return new ApiReply(200, body, 'application/json', readHeaders(api, api.stateIndex))
  })
}

function currentEntries(api: KvApi, ops: readonly TxnOp[]): TxnResultEntry[] {
  const out: TxnResultEntry[] = []
  for (const op of ops) {
    if (op.verb === 'get-tree') {
      for (const entry of api.kv.list(op.key)) out.push({ entry, withValue: true })
    } else if (!['delete', 'delete-tree', 'delete-cas', 'check-not-exists'].includes(op.verb)) {
      const entry = api.kv.get(op.key)
      if (entry !== undefined) out.push({ entry, withValue: op.verb === 'get' })
    }
  }
  return out
}

/** The 409 of a failed transaction; the state's message is `op N: what`. */
function failed(message: string): ApiReply {
  const m = /^op (\d+): (.*)$/s.exec(message)
  const error = m === null ? { OpIndex: 0, What: message } : { OpIndex: Number(m[1]), What: m[2] }
  return reply(409, { Results: null, Errors: [error] })
}
