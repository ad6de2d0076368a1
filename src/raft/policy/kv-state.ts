import { KV_LIMITS, kvEntryBytes, kvFlags, sessionBytes, type TxnOp } from './kv-commands.ts'
import {
  type PolicyCommand,
  type PolicyErrorCode,
  PolicyErrorCodes,
  type PolicyRefusal,
  policyRefusal,
} from './policy-commands.ts'

/**
 * The replicated KV store and its sessions (Consul's `kvs` and `sessions` tables), applied inside
 * the policy store. Pure: no clock, no I/O; times come in the commands (`now`, the proposer's
 * wall clock), so every agent applies an entry to the same outcome.
 *
 * Semantics follow Consul's state store:
 * - a write records `ModifyIndex` (and `CreateIndex` on creation) as the Raft index;
 * - `acquire` takes a key's lock for a session (bumping `LockIndex`) unless another session holds
 *   it or the key is in its lock-delay; acquiring again with the holder only updates the value;
 *   `release` gives it up (no lock-delay); a plain write keeps the lock;
 * - destroying or invalidating a session releases (or, with behavior `delete`, deletes) every key
 *   it holds and puts each in lock-delay for the session's `LockDelay`;
 * - a deleted key leaves a tombstone (its deletion index) so that a blocking query on it or its
 *   prefix sees the change; the oldest tombstones are forgotten past a bound, raising a floor
 *   every query's index stays above (a spurious wake-up, never a missed one);
 * - a transaction applies all its operations or none.
 */

export interface KvEntry {
  key: string
  /** The value, base64 (as Consul shows it). */
  value: string
  /** A uint64, as its decimal digits (see `kvFlags`). */
  flags: string
  /** The session holding the key's lock. */
  session?: string
  createIndex: number
  modifyIndex: number
  lockIndex: number
}

export interface StoredSession {
  id: string
  name: string
  node: string
  lockDelayMs: number
  behavior: 'release' | 'delete'
  /** 0: no TTL. */
  ttlMs: number
  checks: string[]
  createIndex: number
  modifyIndex: number
  /** Proposer's wall clock when created or last renewed (TTL runs from here). */
  renewedAt: number
}

type Cmd<Op extends string> = Extract<PolicyCommand, { op: Op }>
export type KvCommand = Cmd<
  'kv.set' | 'kv.delete' | 'kv.delete-tree' | 'session.create' | 'session.destroy' | 'session.renew' | 'txn'
>

export const KV_OPS: ReadonlySet<string> = new Set([
  'kv.set',
  'kv.delete',
  'kv.delete-tree',
  'session.create',
  'session.destroy',
  'session.renew',
  'txn',
])

export type KvApplyResult = { ok: true; changed: boolean } | PolicyRefusal

/** One entry of a transaction's results: the entry as the operation left it, with its value or not. */
export interface TxnResultEntry {
  entry: KvEntry
  withValue: boolean
}

/** Results of the most recent transactions kept (by Raft index) for the API to answer with. */
export const MAX_TXN_RESULTS = 256

/** Most tombstones kept; older ones raise `tombstoneFloor`. */
export const MAX_TOMBSTONES = 10_000

export interface KvSnapshot {
  entries: KvEntry[]
  sessions: StoredSession[]
  lockDelays: [string, number][]
  tombstones: [string, number][]
  tombstoneFloor: number
  sessionsIndex: number
}

export class KvState {
  private entries = new Map<string, KvEntry>()
  private sessions = new Map<string, StoredSession>()
  /** Key → wall-clock ms until which it cannot be acquired. */
  private lockDelays = new Map<string, number>()
  private tombstones = new Map<string, number>()
  private tombstoneFloor = 0
  /** Raft index of the last session change. */
  private sessionsIndex = 0
  /** Bytes of entries and sessions (counted in the policy state's cap). */
  private bytes = 0
  /**
   * Results of recent transactions by Raft index (Consul answers a txn with each operation's
   * entry as of that operation). Not replicated state: not in snapshots, never read by `apply`.
   */
  private readonly txnResults = new Map<number, TxnResultEntry[]>()

  get sizeBytes(): number {
    return this.bytes
  }

  /**
   * Applies a KV or session command at Raft index `at`; `room` is how many bytes the state may
   * still grow by (the policy state's cap). Refusals change nothing.
   */
  apply(cmd: KvCommand, at: number, room: number): KvApplyResult {
    switch (cmd.op) {
      case 'kv.set':
        return this.commitStaged(at, room, (s) => s.set(cmd, cmd.now))
      case 'kv.delete':
        return this.commitStaged(at, room, (s) => {
          if (cmd.recurse === true) return s.deleteTree(cmd.key)
          if (cmd.cas !== undefined) {
            const cur = s.get(cmd.key)
            if ((cur?.modifyIndex ?? 0) !== cmd.cas)
              return refuse(
                PolicyErrorCodes.casFailed,
                `modify index is ${cur?.modifyIndex ?? 0}, not ${cmd.cas}`,
              )
          }
          return s.delete(cmd.key)
        })
      case 'kv.delete-tree':
        return this.commitStaged(at, room, (s) => s.deleteTree(cmd.prefix))
      case 'txn': {
        let results: TxnResultEntry[] = []
        const r = this.commitStaged(at, room, (s) => {
          for (const [i, op] of cmd.ops.entries()) {
            const r = s.txnOp(op, cmd.now)
            if (r !== undefined) return refuse(PolicyErrorCodes.txnFailed, `op ${i}: ${r.message}`)
          }
          results = s.results
          return undefined
        })
        if (r.ok) {
          this.txnResults.set(at, results)
          while (this.txnResults.size > MAX_TXN_RESULTS)
            this.txnResults.delete(this.txnResults.keys().next().value!)
        }
        return r
      }
      case 'session.create': {
        if (this.sessions.has(cmd.id))
          return refuse(PolicyErrorCodes.invalidCommand, `session ${cmd.id} exists`)
        if (this.sessions.size >= KV_LIMITS.maxSessions)
          return refuse(PolicyErrorCodes.tooLarge, `more than ${KV_LIMITS.maxSessions} sessions`)
        const s: StoredSession = {
          id: cmd.id,
          name: cmd.name,
          node: cmd.node,
          lockDelayMs: cmd.lockDelayMs,
          behavior: cmd.behavior,
          ttlMs: cmd.ttlMs,
          checks: [...cmd.checks],
          createIndex: at,
          modifyIndex: at,
          renewedAt: cmd.now,
        }
        const size = sessionBytes(s)
        if (size > room)
          return refuse(PolicyErrorCodes.tooLarge, `policy state full (session of ${size} bytes)`)
        this.sessions.set(s.id, s)
        this.bytes += size
        this.sessionsIndex = at
        return { ok: true, changed: true }
      }
      case 'session.renew': {
        const s = this.sessions.get(cmd.id)
        if (s === undefined || s.node !== cmd.node)
          return refuse(PolicyErrorCodes.notFound, `session ${cmd.id} not found`)
        // Renewal moves the TTL, not ModifyIndex (Consul keeps renewals out of the index too).
        this.sessions.set(s.id, { ...s, renewedAt: Math.max(s.renewedAt, cmd.now) })
        return { ok: true, changed: true }
      }
      case 'session.destroy': {
        const s = this.sessions.get(cmd.id)
        if (s?.node !== cmd.node) return refuse(PolicyErrorCodes.notFound, `session ${cmd.id} not found`)
        // The leader proposes a TTL invalidation from its applied state; a renewal committed in
        // between wins (the client renewed in time).
        if (cmd.reason === 'ttl' && (s.ttlMs === 0 || cmd.now <= s.renewedAt + 2 * s.ttlMs))
          return refuse(PolicyErrorCodes.staleRequest, `session ${cmd.id} renewed since: not expired`)
        return this.commitStaged(at, room, (st) => st.destroySession(cmd.id, cmd.now))
      }
    }
  }

  /**
   * What `txn` would answer here now, changing nothing: a read-only transaction is answered from
   * the local state without Raft (as Consul does).
   */
  dryRunTxn(ops: readonly TxnOp[], now: number): PolicyRefusal | TxnResultEntry[] {
    const staged = new Staged(this, this.sessionsIndex)
    try {
      for (const [i, op] of ops.entries()) {
        const r = staged.txnOp(op, now)
        if (r !== undefined) return refuse(PolicyErrorCodes.txnFailed, `op ${i}: ${r.message}`)
      }
      return staged.results
    } finally {
      staged.rollback()
    }
  }

  /** The results of the transaction committed at Raft index `at`, if still remembered here. */
  txnResultsAt(at: number): TxnResultEntry[] | undefined {
    return this.txnResults.get(at)
  }

  /** Runs `fn` on a staged copy; commits it when `fn` returns no refusal and it fits in `room`. */
  private commitStaged(
    at: number,
    room: number,
    fn: (s: Staged) => PolicyRefusal | undefined,
  ): KvApplyResult {
    const staged = new Staged(this, at)
    const r = fn(staged)
    if (r !== undefined) {
      staged.rollback()
      return r
    }
    const grow = staged.bytes - this.bytes
    if (grow > 0 && grow > room) {
      staged.rollback()
      return refuse(
        PolicyErrorCodes.tooLarge,
        `policy state full: the write adds ${grow} bytes, ${room} left`,
      )
    }
    if (!staged.changed) return { ok: true, changed: false }
    this.bytes = staged.bytes
    if (staged.sessionsChanged) this.sessionsIndex = at
    // Sorted: the maps' order depends on history (a store restored from a snapshot has another),
    // and the tombstones' order decides which are forgotten first, so it must not.
    for (const k of [...staged.deleted].sort()) {
      // Moved to the end: the oldest deletions are forgotten first.
      this.tombstones.delete(k)
      this.tombstones.set(k, at)
    }
    for (const k of staged.written) this.tombstones.delete(k)
    while (this.tombstones.size > MAX_TOMBSTONES) {
      const [k, i] = this.tombstones.entries().next().value!
      this.tombstones.delete(k)
      this.tombstoneFloor = Math.max(this.tombstoneFloor, i)
    }
    return { ok: true, changed: true }
  }

  // ---- queries ----------------------------------------------------------------------------------

  get(key: string): KvEntry | undefined {
    return this.entries.get(key)
  }

  /** Entries whose key starts with `prefix`, sorted by key. */
  list(prefix: string): KvEntry[] {
    const out: KvEntry[] = []
    for (const e of this.entries.values()) if (e.key.startsWith(prefix)) out.push(e)
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
  }

  /**
   * The index a blocking query on `key` (or every key under it, `prefix`) returns and waits on:
   * the highest ModifyIndex or deletion among them, at least the tombstone floor, at least 1.
   */
  indexOf(key: string, prefix: boolean): number {
    let max = this.tombstoneFloor
    if (prefix) {
      for (const e of this.entries.values()) if (e.key.startsWith(key)) max = Math.max(max, e.modifyIndex)
      for (const [k, i] of this.tombstones) if (k.startsWith(key)) max = Math.max(max, i)
    } else {
      max = Math.max(max, this.entries.get(key)?.modifyIndex ?? 0, this.tombstones.get(key) ?? 0)
    }
    return Math.max(max, 1)
  }

  session(id: string): StoredSession | undefined {
    return this.sessions.get(id)
  }

  listSessions(): StoredSession[] {
    return [...this.sessions.values()].sort((a, b) => a.createIndex - b.createIndex)
  }

  /** Raft index of the last change to the sessions (at least 1). */
  get sessionIndex(): number {
    return Math.max(this.sessionsIndex, 1)
  }

  /** Until when (wall-clock ms) `key` cannot be acquired; 0: no lock-delay. */
  lockDelayUntil(key: string): number {
    return this.lockDelays.get(key) ?? 0
  }

  // ---- snapshots --------------------------------------------------------------------------------

  /**
   * The state as data. Entries, sessions and lock-delays are sorted (their maps' order depends on
   * the history, e.g. a rolled-back delete re-inserts at the end); tombstones keep their order,
   * which is the order they are forgotten in.
   */
  snapshot(): KvSnapshot {
    const byFirst = <T>(a: [string, T], b: [string, T]): number => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)
    return {
      entries: [...this.entries.values()]
        .map(stripped)
        .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)),
      sessions: [...this.sessions.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)),
      lockDelays: [...this.lockDelays.entries()].sort(byFirst),
      tombstones: [...this.tombstones.entries()],
      tombstoneFloor: this.tombstoneFloor,
      sessionsIndex: this.sessionsIndex,
    }
  }

  /** Checks a snapshot's KV part whole, then replaces the state; throws a RangeError if malformed. */
  restore(data: unknown): void {
    const s = parseKvSnapshot(data)
    this.entries = new Map(s.entries.map((e) => [e.key, e]))
    this.sessions = new Map(s.sessions.map((x) => [x.id, x]))
    this.lockDelays = new Map(s.lockDelays)
    this.tombstones = new Map(s.tombstones)
    this.tombstoneFloor = s.tombstoneFloor
    this.sessionsIndex = s.sessionsIndex
    this.txnResults.clear()
    this.bytes = 0
    for (const e of s.entries) this.bytes += kvEntryBytes(e)
    for (const x of s.sessions) this.bytes += sessionBytes(x)
  }

  /** @internal the maps a `Staged` copies. */
  internals(): {
    entries: Map<string, KvEntry>
    sessions: Map<string, StoredSession>
    lockDelays: Map<string, number>
    bytes: number
  } {
    return { entries: this.entries, sessions: this.sessions, lockDelays: this.lockDelays, bytes: this.bytes }
  }
}

function refuse(code: PolicyErrorCode, message: string): PolicyRefusal {
  return policyRefusal(code, message)
}

/** An entry without undefined fields (msgpack would keep them as an extension type). */
function stripped(e: KvEntry): KvEntry {
  if (e.session !== undefined) return e
  const { session: _, ...rest } = e
  return rest
}

/**
 * The changes of one command, made in place with an undo journal: `rollback` restores every map
 * entry it touched (records are never changed in place, they are replaced), so a refused command
 * leaves the state as it was, at the cost of what it touched, not of the state's size.
 */
class Staged {
  entries: Map<string, KvEntry>
  sessions: Map<string, StoredSession>
  lockDelays: Map<string, number>
  bytes: number
  changed = false
  sessionsChanged = false
  readonly deleted = new Set<string>()
  readonly written = new Set<string>()
  /** What each transaction operation returns, in order. */
  readonly results: TxnResultEntry[] = []
  /** How to undo each change, in order (`rollback` runs them backwards). */
  private readonly undo: (() => void)[] = []

  constructor(
    base: KvState,
    private readonly at: number,
  ) {
    const i = base.internals()
    this.entries = i.entries
    this.sessions = i.sessions
    this.lockDelays = i.lockDelays
    this.bytes = i.bytes
  }

  /** Records how to restore `map[key]` before it changes. */
  private journal<K, V>(map: Map<K, V>, key: K): void {
    this.changed = true
    const had = map.has(key)
    const old = map.get(key)
    this.undo.push(() => (had ? map.set(key, old as V) : map.delete(key)))
  }

  /** Undoes every change (the maps are the state's own: a refused command must leave no trace). */
  rollback(): void {
    for (let i = this.undo.length - 1; i >= 0; i--) this.undo[i]!()
    this.undo.length = 0
  }

  get(key: string): KvEntry | undefined {
    return this.entries.get(key)
  }

  private put(e: KvEntry): void {
    this.journal(this.entries, e.key)
    const cur = this.entries.get(e.key)
    if (cur !== undefined) this.bytes -= kvEntryBytes(cur)
    this.bytes += kvEntryBytes(e)
    this.entries.set(e.key, stripped(e))
    this.written.add(e.key)
    this.deleted.delete(e.key)
  }

  delete(key: string): undefined {
    const cur = this.entries.get(key)
    if (cur === undefined) return undefined
    this.journal(this.entries, key)
    this.bytes -= kvEntryBytes(cur)
    this.entries.delete(key)
    this.deleted.add(key)
    this.written.delete(key)
    return undefined
  }

  deleteTree(prefix: string): undefined {
    for (const k of [...this.entries.keys()]) if (k.startsWith(prefix)) this.delete(k)
    return undefined
  }

  /** `kv.set`, with its cas / acquire / release. */
  set(
    cmd: {
      key: string
      value: string
      flags?: string | undefined
      cas?: number | undefined
      acquire?: string | undefined
      release?: string | undefined
    },
    now: number,
  ): PolicyRefusal | undefined {
    const cur = this.entries.get(cmd.key)
    if (cmd.cas !== undefined && (cur?.modifyIndex ?? 0) !== cmd.cas)
      return refuse(PolicyErrorCodes.casFailed, `modify index is ${cur?.modifyIndex ?? 0}, not ${cmd.cas}`)
    const flags = cmd.flags ?? '0'
    if (cmd.acquire !== undefined) return this.lock(cmd.key, cmd.value, flags, cmd.acquire, now)
    if (cmd.release !== undefined) return this.unlock(cmd.key, cmd.value, flags, cmd.release)
    this.put({
      key: cmd.key,
      value: cmd.value,
      flags,
      ...(cur?.session !== undefined ? { session: cur.session } : {}),
      createIndex: cur?.createIndex ?? this.at,
      modifyIndex: this.at,
      lockIndex: cur?.lockIndex ?? 0,
    })
    return undefined
  }

  lock(key: string, value: string, flags: string, session: string, now: number): PolicyRefusal | undefined {
    if (!this.sessions.has(session))
      return refuse(PolicyErrorCodes.notFound, `invalid session ${JSON.stringify(session)}`)
    const cur = this.entries.get(key)
    if (cur?.session !== undefined && cur.session !== session)
      return refuse(PolicyErrorCodes.kvLockHeld, `key ${JSON.stringify(key)} is locked by another session`)
    if (cur?.session !== session) {
      const until = this.lockDelays.get(key) ?? 0
      if (now < until)
        return refuse(
          PolicyErrorCodes.kvLockHeld,
          `key ${JSON.stringify(key)} is in lock-delay for ${until - now} ms`,
        )
    }
    this.put({
      key,
      value,
      flags,
      session,
      createIndex: cur?.createIndex ?? this.at,
      modifyIndex: this.at,
      // Taking the lock counts; updating the value as its holder does not.
      lockIndex: (cur?.lockIndex ?? 0) + (cur?.session === session ? 0 : 1),
    })
    return undefined
  }

  unlock(key: string, value: string, flags: string, session: string): PolicyRefusal | undefined {
    const cur = this.entries.get(key)
    if (cur === undefined || cur.session !== session)
      return refuse(
        PolicyErrorCodes.kvLockHeld,
        `key ${JSON.stringify(key)} is not locked by session ${session}`,
      )
    this.put({
      key,
      value,
      flags,
      createIndex: cur.createIndex,
      modifyIndex: this.at,
      lockIndex: cur.lockIndex,
    })
    return undefined
  }

  destroySession(id: string, now: number): undefined {
    const s = this.sessions.get(id)
    if (s === undefined) return undefined
    this.journal(this.sessions, id)
    this.sessions.delete(id)
    this.bytes -= sessionBytes(s)
    this.sessionsChanged = true
    for (const e of [...this.entries.values()]) {
      if (e.session !== id) continue
      if (s.lockDelayMs > 0) {
        this.journal(this.lockDelays, e.key)
        // A safe integer still (a snapshot holds only those), whatever the command's `now`.
        this.lockDelays.set(e.key, Math.min(now + s.lockDelayMs, Number.MAX_SAFE_INTEGER))
      }
      if (s.behavior === 'delete') this.delete(e.key)
      else {
        const { session: _, ...rest } = e
        this.put({ ...rest, modifyIndex: this.at })
      }
    }
    for (const [k, until] of [...this.lockDelays]) {
      if (until > now) continue
      this.journal(this.lockDelays, k)
      this.lockDelays.delete(k)
    }
    return undefined
  }

  /** One transaction operation and its results; a refusal fails the whole transaction. */
  txnOp(op: TxnOp, now: number): PolicyRefusal | undefined {
    const r = this.txnOpOnly(op, now)
    if (r !== undefined) return r
    // Consul: a get keeps the value, every other operation's entry is shown without it.
    const withValue = op.verb === 'get' || op.verb === 'get-tree'
    if (op.verb === 'get-tree') {
      const tree = [...this.entries.values()].filter((e) => e.key.startsWith(op.key))
      tree.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
      for (const entry of tree) this.results.push({ entry, withValue })
    } else if (
      op.verb !== 'delete' &&
      op.verb !== 'delete-tree' &&
      op.verb !== 'delete-cas' &&
      op.verb !== 'check-not-exists'
    ) {
      const entry = this.entries.get(op.key)
      if (entry !== undefined) this.results.push({ entry, withValue })
    }
    return undefined
  }

  private txnOpOnly(op: TxnOp, now: number): PolicyRefusal | undefined {
    const key = op.key
    const needKey = (): PolicyRefusal | undefined =>
      key.length === 0 ? refuse(PolicyErrorCodes.invalidCommand, 'missing key') : undefined
    const cur = this.entries.get(key)
    const missing = (): PolicyRefusal =>
      refuse(PolicyErrorCodes.notFound, `key ${JSON.stringify(key)} doesn't exist`)
    switch (op.verb) {
      case 'set':
      case 'cas':
      case 'lock':
      case 'unlock': {
        const bad = needKey()
        if (bad !== undefined) return bad
        if (op.value === undefined) return refuse(PolicyErrorCodes.invalidCommand, 'missing value')
        if (op.verb === 'cas' && op.index === undefined)
          return refuse(PolicyErrorCodes.invalidCommand, 'cas needs an index')
        if ((op.verb === 'lock' || op.verb === 'unlock') && op.session === undefined)
          return refuse(PolicyErrorCodes.invalidCommand, `${op.verb} needs a session`)
        return this.set(
          {
            key,
            value: op.value,
            flags: op.flags,
            cas: op.verb === 'cas' ? op.index : undefined,
            acquire: op.verb === 'lock' ? op.session : undefined,
            release: op.verb === 'unlock' ? op.session : undefined,
          },
          now,
        )
      }
      case 'get':
        return cur === undefined ? missing() : undefined
      case 'get-tree':
        return undefined
      case 'check-index':
        if (cur === undefined) return missing()
        return cur.modifyIndex === op.index
          ? undefined
          : refuse(PolicyErrorCodes.casFailed, `current modify index ${cur.modifyIndex} != ${op.index ?? 0}`)
      case 'check-session':
        if (cur === undefined) return missing()
        return cur.session === op.session
          ? undefined
          : refuse(
              PolicyErrorCodes.kvLockHeld,
              `key ${JSON.stringify(key)} is not locked by session ${op.session ?? ''}`,
            )
      case 'check-not-exists':
        return cur === undefined
          ? undefined
          : refuse(PolicyErrorCodes.casFailed, `key ${JSON.stringify(key)} exists`)
      case 'delete':
        return needKey() ?? this.delete(key)
      case 'delete-tree':
        return this.deleteTree(key)
      case 'delete-cas': {
        const bad = needKey()
        if (bad !== undefined) return bad
        if (op.index === undefined)
          return refuse(PolicyErrorCodes.invalidCommand, 'delete-cas needs an index')
        if ((cur?.modifyIndex ?? 0) !== op.index)
          return refuse(
            PolicyErrorCodes.casFailed,
            `current modify index ${cur?.modifyIndex ?? 0} != ${op.index}`,
          )
        return this.delete(key)
      }
    }
  }
}

// ---- snapshot parsing -------------------------------------------------------------------------------

const isRecord = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array)
const isIndex = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
const isString = (v: unknown): v is string => typeof v === 'string'

function bad(what: string): never {
  throw new RangeError(`malformed policy store snapshot: kv ${what}`)
}

function pairs(v: unknown, what: string): [string, number][] {
  if (!Array.isArray(v)) bad(what)
  return v.map((p) => {
    if (!Array.isArray(p) || p.length !== 2 || !isString(p[0]) || !isIndex(p[1])) bad(what)
    return [p[0], p[1]]
  })
}

/** A snapshot's KV part (absent in one from before the KV store: empty). */
export function parseKvSnapshot(data: unknown): KvSnapshot {
  if (data === undefined || data === null)
    return { entries: [], sessions: [], lockDelays: [], tombstones: [], tombstoneFloor: 0, sessionsIndex: 0 }
  if (!isRecord(data)) bad('state')
  if (!Array.isArray(data['entries']) || !Array.isArray(data['sessions'])) bad('state')
  const entries = data['entries'].map((e) => {
    if (!isRecord(e) || !isString(e['key']) || !isString(e['value'])) bad('entry')
    if (!kvFlags.safeParse(e['flags']).success) bad('entry flags')
    if (!isIndex(e['createIndex']) || !isIndex(e['modifyIndex']) || !isIndex(e['lockIndex'])) bad('entry')
    if (e['session'] !== undefined && !isString(e['session'])) bad('entry session')
    return e as unknown as KvEntry
  })
  const sessions = data['sessions'].map((s) => {
    if (!isRecord(s) || !isString(s['id']) || !isString(s['name']) || !isString(s['node'])) bad('session')
    if (s['behavior'] !== 'release' && s['behavior'] !== 'delete') bad('session behavior')
    if (!isIndex(s['lockDelayMs']) || !isIndex(s['ttlMs']) || !isIndex(s['renewedAt'])) bad('session')
    if (!isIndex(s['createIndex']) || !isIndex(s['modifyIndex'])) bad('session')
    if (!Array.isArray(s['checks']) || !s['checks'].every(isString)) bad('session checks')
    return s as unknown as StoredSession
  })
  if (!isIndex(data['tombstoneFloor']) || !isIndex(data['sessionsIndex'])) bad('indexes')
  return {
    entries,
    sessions,
    lockDelays: pairs(data['lockDelays'], 'lockDelays'),
    tombstones: pairs(data['tombstones'], 'tombstones'),
    tombstoneFloor: data['tombstoneFloor'],
    sessionsIndex: data['sessionsIndex'],
  }
}
