import { need } from '../../acl/index.ts'
import { KV_LIMITS, MAX_UINT64 } from '../../raft/policy/kv-commands.ts'
import type { KvEntry } from '../../raft/policy/kv-state.ts'
import { type PolicyCommand, PolicyErrorCodes, type PolicyResult } from '../../raft/policy/policy-commands.ts'
import { ApiError } from '../agent/errors.ts'
import { blockOn, consistentRead, flagParam, type KvApi, kvWrite, readHeaders, uintParam } from './kv-http.ts'
import { ApiReply, type ApiRequest, type HttpApi } from './server.ts'

/**
 * A KV entry as Consul shows it (`structs.DirEntry`), as JSON text: `{ LockIndex, Key, Flags,
 * Value (base64, null when empty), Session?, CreateIndex, ModifyIndex }`. Text, not an object:
 * `Flags` is a uint64 and must reach Go clients exactly (its digits were checked by `kvFlags`).
 */
export function kvEntryText(e: KvEntry, withValue = true): string {
  const value = withValue && e.value.length > 0 ? JSON.stringify(e.value) : 'null'
  const session = e.session !== undefined ? `,"Session":${JSON.stringify(e.session)}` : ''
  const flags = /^\d{1,20}$/.test(e.flags) ? e.flags : '0'
  return `{"LockIndex":${e.lockIndex},"Key":${JSON.stringify(e.key)},"Flags":${flags},"Value":${value}${session},"CreateIndex":${e.createIndex},"ModifyIndex":${e.modifyIndex}}`
}

/** `?flags=`: a uint64, as canonical digits (400 otherwise). */
export function flagsParam(req: ApiRequest): string | undefined {
  const v = req.query.get('flags')
  if (v === null) return undefined
  if (!/^\d{1,20}$/.test(v) || BigInt(v) > MAX_UINT64)
    throw new ApiError('flags: expected an unsigned 64-bit integer', 400)
  return BigInt(v).toString()
}

const KV_PREFIX = '/v1/kv/'

/** The key of a `/v1/kv/<key>` path: everything after the prefix, percent-decoded (may be empty). */
export function keyOfPath(path: string): string {
  const raw = path.startsWith(KV_PREFIX) ? path.slice(KV_PREFIX.length) : ''
  let key: string
  try {
    key = decodeURIComponent(raw)
  } catch {
    throw new ApiError('key: invalid percent-encoding', 400)
  }
  if (key.length > KV_LIMITS.maxKeyLength)
    throw new ApiError(`key: longer than ${KV_LIMITS.maxKeyLength} characters`, 400)
  return key
}

/** Keys under `prefix`, each cut after the first `separator` past the prefix (Consul's `?keys&separator=`). */
export function listKeys(entries: readonly KvEntry[], prefix: string, separator: string): string[] {
  const out: string[] = []
  const seen = new Set<string>()
  for (const e of entries) {
    let k = e.key
    if (separator.length > 0) {
      const at = k.indexOf(separator, prefix.length)
      if (at >= 0) k = k.slice(0, at + separator.length)
    }
    if (!seen.has(k)) {
      seen.add(k)
      out.push(k)
    }
  }
  return out
}

function json(body: unknown, headers: Record<string, string>, status = 200): ApiReply {
  return new ApiReply(status, JSON.stringify(body), 'application/json', headers)
}

/**
 * Consul's KV HTTP API (`/v1/kv/<key>`):
 * - `GET` → `[entry]` (404 when missing); `?recurse` every entry under the prefix; `?keys` the
 *   key names (`&separator=`); `?raw` the value's bytes; `?index=&wait=` blocks until the data
 *   returned changes; `?consistent` reads through the leader. Entries the token may not read are
 *   left out (Consul's filtering); none left is a 404.
 * - `PUT` (body: the value's bytes) `?flags=&cas=&acquire=&release=` → `true`/`false` (a failed cas
 *   or lock is `false`, as in Consul).
 * - `DELETE` `?recurse&cas=` → `true`/`false`.
 * ACLs: `key:read` / `key:write` on the key (`key_prefix` rules), write on every key under a
 * prefix for a recursive delete.
 */
export function registerKvRoutes(http: HttpApi, api: KvApi): void {
  http.route('GET', '/v1/kv/*key', (req) => getKv(api, req))
  http.route('PUT', '/v1/kv/*key', (req) => putKv(api, req), { rawBody: true })
  http.route('DELETE', '/v1/kv/*key', (req) => deleteKv(api, req), { rawBody: true })
}

async function getKv(api: KvApi, req: ApiRequest): Promise<ApiReply> {
  const key = keyOfPath(req.path)
  const recurse = flagParam(req, 'recurse')
  const keys = req.query.has('keys')
  const prefix = recurse || keys
  if (!prefix) req.auth.require(...need.keyRead(key))
  await consistentRead(api, req)
  await blockOn(api, req, () => api.kv.indexOf(key, prefix))
  const headers = readHeaders(api, api.kv.indexOf(key, prefix))
  const authz = req.auth.authorizer()
  if (keys) {
    const sep = req.query.get('separator') ?? ''
    const list = listKeys(
      api.kv.list(key).filter((e) => authz.keyRead(e.key)),
      key,
      sep,
    )
    if (list.length === 0) return new ApiReply(404, '', 'text/plain', headers)
    return json(list, headers)
  }
  const entries = recurse
    ? api.kv.list(key).filter((e) => authz.keyRead(e.key))
    : [api.kv.get(key)].filter((e) => e !== undefined)
  if (entries.length === 0) return new ApiReply(404, '', 'text/plain', headers)
  if (!recurse && flagParam(req, 'raw'))
    return new ApiReply(200, Buffer.from(entries[0]!.value, 'base64'), 'application/octet-stream', headers)
  return new ApiReply(200, `[${entries.map((e) => kvEntryText(e)).join(',')}]`, 'application/json', headers)
}

function base64Value(body: unknown): string {
  if (body === undefined) return ''
  if (!(body instanceof Uint8Array)) throw new ApiError('body: expected the value bytes', 400)
  if (body.length > KV_LIMITS.maxValueBytes)
    throw new ApiError(
      `Request body(${body.length} bytes) too large, max size: ${KV_LIMITS.maxValueBytes} bytes`,
      413,
    )
  return Buffer.from(body).toString('base64')
}

async function putKv(api: KvApi, req: ApiRequest): Promise<unknown> {
  const key = keyOfPath(req.path)
  if (key.length === 0) throw new ApiError('Missing key name', 400)
  const acquire = req.query.get('acquire') ?? undefined
  const release = req.query.get('release') ?? undefined
  conflictingFlags(req, ['cas', 'acquire', 'release'])
  const flags = flagsParam(req)
  const cas = uintParam(req, 'cas')
  const value = base64Value(req.body)
  req.auth.require(...need.keyWrite(key))
  const cmd: PolicyCommand = {
    op: 'kv.set',
    key,
    value,
    now: api.wallNow(),
    ...(flags !== undefined ? { flags } : {}),
    ...(cas !== undefined ? { cas } : {}),
    ...(acquire !== undefined ? { acquire } : {}),
    ...(release !== undefined ? { release } : {}),
  }
  return boolReply(await kvWrite(api, req, cmd))
}

async function deleteKv(api: KvApi, req: ApiRequest): Promise<unknown> {
  const key = keyOfPath(req.path)
  // Consul's: a recursive delete cannot be conditional (dropping the cas would delete the tree).
  conflictingFlags(req, ['recurse', 'cas'])
  const recurse = flagParam(req, 'recurse')
  const cas = uintParam(req, 'cas')
  if (!recurse && key.length === 0) throw new ApiError('Missing key name', 400)
  req.auth.require(...(recurse ? need.keyWritePrefix(key) : need.keyWrite(key)))
  const cmd: PolicyCommand = {
    op: 'kv.delete',
    key,
    ...(recurse ? { recurse: true } : {}),
    ...(cas !== undefined ? { cas } : {}),
  }
  return boolReply(await kvWrite(api, req, cmd))
}

/** Consul's `conflictingFlags`: a 400 when more than one of `names` is in the query. */
function conflictingFlags(req: ApiRequest, names: readonly string[]): void {
  const given = names.filter((n) => req.query.has(n))
  if (given.length > 1) throw new ApiError(`Conflicting flags: ${given.join(', ')}`, 400)
}

/** `true`, `false` for a failed cas or lock (Consul's answer), else the refusal's status. */
function boolReply(out: { result: PolicyResult }): boolean {
  const r = out.result
  if (r.ok) return true
  switch (r.code) {
    case PolicyErrorCodes.casFailed:
    case PolicyErrorCodes.kvLockHeld:
      return false
    default:
      throw resultError(r)
  }
}

/** The HTTP error of a refused write. */
export function resultError(r: { code: string; message: string }): ApiError {
  switch (r.code) {
    case PolicyErrorCodes.tooLarge:
      return new ApiError(r.message, 413)
    case PolicyErrorCodes.permissionDenied:
      return new ApiError(r.message, 403)
    case PolicyErrorCodes.notFound:
      // Consul answers an unknown session in an acquire with a 500 "invalid session"; a 400 says
      // better that the request is at fault.
      return new ApiError(r.message, 400)
    default:
      return new ApiError(r.message, 400)
  }
}
