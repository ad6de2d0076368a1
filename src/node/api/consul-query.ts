/**
 * Query parameters and response headers of reads, as Consul handles them (issue #15):
 *
 * - `?index=N&wait=D` blocking queries (`wait` clamped to 10 min as Consul does; `index=0` does
 *   not block), answered with `X-Consul-Index` (never 0) and peermesh's `X-Peermesh-Index`;
 * - `?stale`, `?consistent` (not both: Consul's 400), `?cached` accepted; the answer says in
 *   `X-Consul-Effective-Consistency` what it really was;
 * - `?filter=` (filter.ts) on listing endpoints, `?tag=` (repeatable: all must match),
 *   `?node-meta=key:value` (repeatable), `?near=` accepted and ignored (answers are sorted by node
 *   name, not by round-trip time);
 * - every other parameter is ignored, as Consul ignores it. `?dc=`, `?pretty` and the leader
 *   headers are handled for every route by the server (server.ts).
 */
import { ApiError } from '../agent/errors.ts'
import { DEFAULT_BLOCKING_WAIT_MS, MAX_BLOCKING_WAIT_MS } from '../catalog/change-index.ts'
import { parseDuration } from '../catalog/duration.ts'
import { FilterSyntaxError, matches, parseFilter } from './filter.ts'
import { ApiReply, type ApiRequest } from './server.ts'

/** Header carrying the index of a blocking query's answer (`X-Consul-Index` is sent too). */
export const INDEX_HEADER = 'X-Peermesh-Index'

/** What a read was answered from: Consul's `X-Consul-Effective-Consistency` values. */
export type Consistency = 'leader' | 'consistent' | 'stale'

/** The consistency a request asked for (`?stale`, `?consistent`, or neither: the default). */
export function requestedConsistency(req: ApiRequest): 'default' | 'stale' | 'consistent' {
  const stale = req.query.has('stale')
  const consistent = req.query.has('consistent')
  if (stale && consistent)
    throw new ApiError('Cannot specify ?stale with ?consistent, conflicting semantics.', 400)
  return stale ? 'stale' : consistent ? 'consistent' : 'default'
}

/** A source of blocking reads: its current index and a wait for a change past one. */
export interface IndexedSource {
  index(): number
  wait(afterIndex: number, waitMs: number, signal: AbortSignal): Promise<unknown>
}

/**
 * `?index=` and `?wait=` as Consul reads them: a bad index is a 400 "Invalid index", a bad wait a
 * 400 "Invalid wait time", a wait above 10 min is cut to 10 min.
 */
export function blockingParams(req: ApiRequest): { after?: number; waitMs: number } {
  let waitMs = DEFAULT_BLOCKING_WAIT_MS
  const w = req.query.get('wait')
  if (w !== null && w !== '') {
    const ms = parseDuration(w)
    if (ms === undefined) throw new ApiError('Invalid wait time', 400)
    // Whole milliseconds (`wait=1.5ms`, `100ns`): timers such as AbortSignal.timeout take no fraction.
    waitMs = Math.min(Math.ceil(ms), MAX_BLOCKING_WAIT_MS)
  }
  const i = req.query.get('index')
  if (i === null || i === '') return { waitMs }
  if (!/^\d{1,15}$/.test(i)) throw new ApiError('Invalid index', 400)
  const after = Number(i)
  return after === 0 ? { waitMs } : { after, waitMs }
}

/**
 * A read: waits as `?index=&wait=` ask, then answers `answer()` with Consul's headers. The index
 * is read before the answer: a change in between makes the client ask again, never miss one.
 */
export async function indexedRead(
  req: ApiRequest,
  source: IndexedSource,
  answer: () => unknown,
  /** What the answer was read from; none for the agent's own state (Consul sends none there). */
  consistency: Consistency | undefined,
): Promise<ApiReply> {
  requestedConsistency(req)
  const { after, waitMs } = blockingParams(req)
  if (after !== undefined) await source.wait(after, waitMs, req.signal)
  const at = String(Math.max(1, source.index()))
  return new ApiReply(200, JSON.stringify(answer()), 'application/json', {
    [INDEX_HEADER]: at,
    'X-Consul-Index': at,
    ...(consistency !== undefined ? { 'X-Consul-Effective-Consistency': consistency } : {}),
  })
}

/** The parsed `?filter=`, or undefined without one; a bad expression is Consul's 400. */
export function filterOf(req: ApiRequest): ((item: unknown) => boolean) | undefined {
  const text = req.query.get('filter')
  if (text === null || text.trim() === '') return undefined
  try {
    const expr = parseFilter(text)
    return (item) => matches(expr, item)
  } catch (err) {
    if (err instanceof FilterSyntaxError)
      throw new ApiError(`Failed to create boolean expression evaluator: ${err.message}`, 400, { cause: err })
    throw err
  }
}

/** Keeps the elements of a list (or the values of a map) that pass `?filter=`. */
export function filtered<T>(req: ApiRequest, list: T[]): T[]
export function filtered<T>(req: ApiRequest, map: Record<string, T>): Record<string, T>
export function filtered<T>(req: ApiRequest, value: T[] | Record<string, T>): T[] | Record<string, T> {
  const keep = filterOf(req)
  if (keep === undefined) return value
  if (Array.isArray(value)) return value.filter(keep)
  return Object.fromEntries(Object.entries(value).filter(([, v]) => keep(v)))
}

/** `?tag=` values (repeatable; Consul keeps instances having all of them). */
export function tagsOf(req: ApiRequest): string[] {
  return req.query.getAll('tag').filter((t) => t !== '')
}

/** `?node-meta=key:value` pairs (repeatable; all must match). A pair without ":" is a 400. */
export function nodeMetaOf(req: ApiRequest): [string, string][] {
  return req.query.getAll('node-meta').map((p) => {
    const at = p.indexOf(':')
    if (at <= 0) throw new ApiError(`Invalid node-meta "${p}": expected key:value`, 400)
    return [p.slice(0, at), p.slice(at + 1)]
  })
}

/** A boolean query flag: present (empty, `true`, `1`) or absent/`false`/`0`. */
export function flagOf(req: ApiRequest, key: string): boolean {
  const v = req.query.get(key)
  return v !== null && v !== 'false' && v !== '0'
}
