import { errorCode } from '../../common/errors.ts'
import type { PolicyCommand, PolicyResult } from '../../raft/policy/policy-commands.ts'
import type { KvState } from '../../raft/policy/kv-state.ts'
import { ApiError } from '../agent/errors.ts'
import { API_RAFT_TIMEOUT_MS } from '../agent/defaults.ts'
import { DEFAULT_BLOCKING_WAIT_MS, MAX_BLOCKING_WAIT_MS, parseDuration } from '../catalog/index.ts'
import { NoLeaderError, RaftNotRunningError, WriteTimeoutError } from '../raft/errors.ts'
import { type ApiRequest, requestDeadline } from './server.ts'

/**
 * What the KV, session and txn routes share: the module they talk to (`KvApi`), Consul's query
 * metadata headers, strict parsing of numeric parameters, blocking queries and write errors.
 *
 * Implemented here, locally, until server.ts has them for every route: `X-Consul-Index`,
 * `X-Consul-KnownLeader`, `X-Consul-LastContact` on reads; `?consistent` (ReadIndex through the
 * leader); `?stale`, `?dc`, `?token` accepted (the token by acl-auth).
 */

/** What the routes use of the agent: the committed KV state and the Raft write path. */
export interface KvApi {
  /** The KV state applied here. */
  readonly kv: KvState
  /** Raft index of the policy state applied here. */
  readonly stateIndex: number
  /** Resolves once the policy state here passes `after`, or after `waitMs`. */
  waitForChange(after: number, waitMs: number, signal?: AbortSignal): Promise<number>
  /** A write through the Raft leader; resolves with its result once applied there. */
  write(
    cmd: PolicyCommand,
    options: { signal: AbortSignal; token?: string },
  ): Promise<{ index: number; result: PolicyResult }>
  /** ReadIndex: resolves once the state here reflects every write committed before the call. */
  linearizableRead(options: { signal: AbortSignal }): Promise<unknown>
  /** Whether a Raft leader is known here. */
  knownLeader(): boolean
  /** This agent's wall clock (ms since the epoch): the `now` of the commands it proposes. */
  wallNow(): number
  /** This agent's node name (a session's default `Node`). */
  readonly nodeName: string
  /**
   * A node's health as the catalog sees it: undefined if unknown, else its gossip status and the
   * status of each of its checks by id.
   */
  nodeHealth(node: string): NodeHealth | undefined
}

export interface NodeHealth {
  alive: boolean
  checks: Map<string, string>
}

export const CONSUL_INDEX_HEADER = 'X-Consul-Index'

/** Consul's query metadata headers for a read at `index`. */
export function readHeaders(api: KvApi, index: number): Record<string, string> {
  return {
    [CONSUL_INDEX_HEADER]: String(index),
    'X-Consul-KnownLeader': api.knownLeader() ? 'true' : 'false',
    // The state read is this agent's applied state; peermesh does not track a follower's lag.
    'X-Consul-LastContact': '0',
  }
}

/** A non-negative integer query parameter (Consul's uint64, within safe integers), or undefined. */
export function uintParam(req: ApiRequest, name: string): number | undefined {
  const v = req.query.get(name)
  if (v === null) return undefined
  if (!/^\d{1,16}$/.test(v) || !Number.isSafeInteger(Number(v)))
    throw new ApiError(`${name}: expected a non-negative integer`, 400)
  return Number(v)
}

/** A present-or-absent flag parameter (`?recurse`, `?recurse=true`); `=false` counts as absent. */
export function flagParam(req: ApiRequest, name: string): boolean {
  const v = req.query.get(name)
  return v !== null && v !== 'false' && v !== '0'
}

function writeDeadline(req: ApiRequest): AbortSignal {
  return requestDeadline(req, { defaultMs: API_RAFT_TIMEOUT_MS, maxMs: 99_999, maxDigits: 5 })
}

/** `?consistent`: read through the leader (ReadIndex) first; 503 when no leader confirms it. */
export async function consistentRead(api: KvApi, req: ApiRequest): Promise<void> {
  if (!req.query.has('consistent')) return
  try {
    await api.linearizableRead({ signal: writeDeadline(req) })
  } catch (err) {
    throw unavailable(err)
  }
}

/**
 * A blocking query (`?index=N&wait=D`): resolves once `current()` (the index of the data the
 * query returns) passes `N`, or when the wait ends. Without `index` it returns at once.
 */
export async function blockOn(api: KvApi, req: ApiRequest, current: () => number): Promise<void> {
  const after = uintParam(req, 'index')
  if (after === undefined || after === 0) return
  const w = req.query.get('wait')
  let waitMs = DEFAULT_BLOCKING_WAIT_MS
  if (w !== null) {
    const ms = parseDuration(w)
    if (ms === undefined) throw new ApiError(`wait: invalid duration ${JSON.stringify(w)}`, 400)
    waitMs = Math.min(Math.ceil(ms), MAX_BLOCKING_WAIT_MS)
  }
  // Consul adds up to wait/16 of jitter so that many watchers do not return together; none here.
  const deadline = api.wallNow() + waitMs
  while (current() <= after && !req.signal.aborted) {
    const left = deadline - api.wallNow()
    if (left <= 0) return
    await api.waitForChange(api.stateIndex, left, req.signal)
  }
}

/**
 * A write through Raft, answered once this agent has applied it (read-your-writes); its result (a
 * refusal is a result, not a throw), or 503 without a leader.
 */
export async function kvWrite(
  api: KvApi,
  req: ApiRequest,
  cmd: PolicyCommand,
): Promise<{ index: number; result: PolicyResult }> {
  const token = req.auth.secret()
  let out: { index: number; result: PolicyResult }
  try {
    out = await api.write(cmd, { signal: writeDeadline(req), ...(token !== undefined ? { token } : {}) })
  } catch (err) {
    throw unavailable(err)
  }
  // Read-your-writes on this agent: a write forwarded from a follower is answered once the
  // follower has applied it too, so a default (local) read right after it sees it. (A refused
  // command changes nothing, and the state's index does not move for it.)
  if (out.result.ok) await untilApplied(api, req, out.index)
  return out
}

/** Waits until the state here has applied `index` (a follower answering with its own state). */
export async function untilApplied(api: KvApi, req: ApiRequest, index: number): Promise<void> {
  // The common case (the leader, or a follower already caught up) needs no deadline timer.
  if (api.stateIndex >= index) return
  const signal = writeDeadline(req)
  while (api.stateIndex < index) {
    if (signal.aborted) throw new ApiError('write applied on the leader, not yet here', 503)
    await api.waitForChange(api.stateIndex, 1000, signal)
  }
}

const UNAVAILABLE = new Set([NoLeaderError.code, WriteTimeoutError.code, RaftNotRunningError.code])

function unavailable(err: unknown): unknown {
  if (err instanceof ApiError) return err
  const code = errorCode(err)
  if (code !== undefined && UNAVAILABLE.has(code))
    return new ApiError((err as Error).message, 503, { cause: err })
  return err
}
