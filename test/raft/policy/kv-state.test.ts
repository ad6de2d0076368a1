import { describe, expect, it } from 'vitest'
import { KV_LIMITS } from '../../../src/raft/policy/kv-commands.ts'
import { MAX_TOMBSTONES } from '../../../src/raft/policy/kv-state.ts'
import {
  encodePolicyCommand,
  type PolicyCommand,
  PolicyErrorCodes,
  type PolicyResult,
  PolicyStore,
} from '../../../src/raft/policy/policy-store.ts'
import { preparePolicyCommand } from '../../../src/raft/policy/policy-commands.ts'

/**
 * The KV state machine through the policy store, as Raft applies it: entries at increasing
 * indexes, times in the commands. Deterministic: no clock, no I/O.
 */

const S1 = '11111111-1111-4111-8111-111111111111'
const S2 = '22222222-2222-4222-8222-222222222222'
const b64 = (s: string): string => Buffer.from(s).toString('base64')

class Log {
  index = 0
  constructor(readonly store = new PolicyStore()) {}
  apply(cmd: unknown): PolicyResult {
    return this.store.apply({
      index: ++this.index,
      term: 1,
      type: 'normal',
      data: encodePolicyCommand(cmd as PolicyCommand),
    })
  }
  set(key: string, value: string, extra: Record<string, unknown> = {}, now = 0): PolicyResult {
    return this.apply({ op: 'kv.set', key, value: b64(value), now, ...extra })
  }
  session(id: string, extra: Record<string, unknown> = {}, now = 0): PolicyResult {
    return this.apply({
      op: 'session.create',
      id,
      name: '',
      node: 'n1',
      lockDelayMs: 15_000,
      behavior: 'release',
      ttlMs: 0,
      checks: ['serfHealth'],
      now,
      ...extra,
    })
  }
  destroy(id: string, now: number): PolicyResult {
    return this.apply({ op: 'session.destroy', id, node: 'n1', now })
  }
  get kv() {
    return this.store.kv
  }
}

const code = (r: PolicyResult): string | undefined => (r.ok ? undefined : r.code)

describe('KV state: set, cas, delete', () => {
  it('records Consul indexes; cas 0 creates only; cas N only at ModifyIndex N', () => {
    const l = new Log()
    expect(l.set('a', 'one').ok).toBe(true)
    expect(l.kv.get('a')).toEqual({
      key: 'a',
      value: b64('one'),
      flags: '0',
      createIndex: 1,
      modifyIndex: 1,
      lockIndex: 0,
    })
    expect(code(l.set('a', 'x', { cas: 0 }))).toBe(PolicyErrorCodes.casFailed)
    expect(code(l.set('a', 'x', { cas: 7 }))).toBe(PolicyErrorCodes.casFailed)
    expect(l.set('a', 'two', { cas: 1, flags: '9' }).ok).toBe(true)
    expect(l.kv.get('a')).toMatchObject({ value: b64('two'), flags: '9', createIndex: 1, modifyIndex: 4 })
    expect(l.set('b', 'new', { cas: 0 }).ok).toBe(true)
    expect(code(l.apply({ op: 'kv.delete', key: 'a', cas: 1 }))).toBe(PolicyErrorCodes.casFailed)
    expect(l.kv.get('a')).toBeDefined()
    expect(l.apply({ op: 'kv.delete', key: 'a', cas: 4 }).ok).toBe(true)
    expect(l.kv.get('a')).toBeUndefined()
  })

  it('recursive delete, list by prefix, and blocking indexes that see deletions', () => {
    const l = new Log()
    l.set('app/a', '1')
    l.set('app/b/c', '2')
    l.set('other', '3')
    expect(l.kv.list('app/').map((e) => e.key)).toEqual(['app/a', 'app/b/c'])
    expect(l.kv.indexOf('app/', true)).toBe(2)
    expect(l.kv.indexOf('other', false)).toBe(3)
    expect(l.apply({ op: 'kv.delete', key: 'app/', recurse: true }).ok).toBe(true)
    expect(l.kv.list('')).toHaveLength(1)
    // The prefix's index moves to the deletion (a tombstone), the other key's does not.
    expect(l.kv.indexOf('app/', true)).toBe(4)
    expect(l.kv.indexOf('app/a', false)).toBe(4)
    expect(l.kv.indexOf('other', false)).toBe(3)
    // Re-creating a key clears its tombstone.
    l.set('app/a', 'again')
    expect(l.kv.indexOf('app/a', false)).toBe(5)
  })

  it('forgets the oldest tombstones past the bound, raising the floor of every index', () => {
    const l = new Log()
    for (let i = 0; i <= MAX_TOMBSTONES; i++) l.set(`k${i}`, 'v')
    l.apply({ op: 'kv.delete', key: 'k', recurse: true })
    const deletedAt = l.index
    // One tombstone too many was forgotten: its index became the floor (a spurious wake-up at
    // worst, never a missed one).
    expect(l.kv.indexOf('untouched', false)).toBe(deletedAt)
  })
})

describe('KV state: locks and sessions', () => {
  it('acquire/release: one holder, LockIndex counts acquisitions, a plain write keeps the lock', () => {
    const l = new Log()
    l.session(S1)
    l.session(S2)
    expect(l.set('lock', 'one', { acquire: S1 }).ok).toBe(true)
    expect(l.kv.get('lock')).toMatchObject({ session: S1, lockIndex: 1 })
    expect(code(l.set('lock', 'two', { acquire: S2 }))).toBe(PolicyErrorCodes.kvLockHeld)
    // The holder acquiring again updates the value, not LockIndex.
    expect(l.set('lock', 'one-b', { acquire: S1 }).ok).toBe(true)
    expect(l.kv.get('lock')).toMatchObject({ session: S1, lockIndex: 1, value: b64('one-b') })
    expect(l.set('lock', 'plain').ok).toBe(true)
    expect(l.kv.get('lock')).toMatchObject({ session: S1, lockIndex: 1 })
    expect(code(l.set('lock', 'x', { release: S2 }))).toBe(PolicyErrorCodes.kvLockHeld)
    expect(l.set('lock', 'free', { release: S1 }).ok).toBe(true)
    expect(l.kv.get('lock')?.session).toBeUndefined()
    // A release starts no lock-delay.
    expect(l.set('lock', 'two', { acquire: S2 }).ok).toBe(true)
    expect(l.kv.get('lock')).toMatchObject({ session: S2, lockIndex: 2 })
    // An unknown session cannot lock.
    expect(code(l.set('k2', 'x', { acquire: '33333333-3333-4333-8333-333333333333' }))).toBe(
      PolicyErrorCodes.notFound,
    )
  })

  it('destroying a session releases its locks and holds them in lock-delay until it ends', () => {
    const l = new Log()
    l.session(S1, { lockDelayMs: 15_000 })
    l.session(S2)
    l.set('lock', 'one', { acquire: S1 }, 1000)
    expect(l.destroy(S1, 2000).ok).toBe(true)
    expect(l.kv.session(S1)).toBeUndefined()
    expect(l.kv.get('lock')).toMatchObject({ value: b64('one'), lockIndex: 1 })
    expect(l.kv.get('lock')?.session).toBeUndefined()
    expect(l.kv.lockDelayUntil('lock')).toBe(17_000)
    expect(code(l.set('lock', 'two', { acquire: S2 }, 16_999))).toBe(PolicyErrorCodes.kvLockHeld)
    expect(l.set('lock', 'two', { acquire: S2 }, 17_000).ok).toBe(true)
    // A session is destroyed only on its own node (what ACLs checked).
    expect(code(l.apply({ op: 'session.destroy', id: S2, node: 'n2', now: 0 }))).toBe(
      PolicyErrorCodes.notFound,
    )
  })

  it('behavior delete deletes the held keys; renew moves the TTL, not ModifyIndex', () => {
    const l = new Log()
    l.session(S1, { behavior: 'delete', ttlMs: 10_000 }, 100)
    const created = l.kv.session(S1)!
    l.set('eph', 'x', { acquire: S1 })
    l.set('kept', 'y')
    expect(l.apply({ op: 'session.renew', id: S1, node: 'n1', now: 5000 }).ok).toBe(true)
    expect(l.kv.session(S1)).toMatchObject({ renewedAt: 5000, modifyIndex: created.modifyIndex })
    l.destroy(S1, 6000)
    expect(l.kv.get('eph')).toBeUndefined()
    expect(l.kv.get('kept')).toBeDefined()
    expect(code(l.apply({ op: 'session.renew', id: S1, node: 'n1', now: 7000 }))).toBe(
      PolicyErrorCodes.notFound,
    )
  })
})

describe('KV state: TTL invalidation against a renewal committed first', () => {
  it('a TTL invalidation of a session renewed since is refused (stale); a due one applies', () => {
    // The leader decides on its applied state, then proposes; a renewal may commit in between.
    // The client renewed in time: it must keep its session and its locks.
    const l = new Log()
    l.session(S1, { ttlMs: 10_000 }, 0)
    l.set('lock', 'held', { acquire: S1 })
    expect(l.apply({ op: 'session.renew', id: S1, node: 'n1', now: 20_000 }).ok).toBe(true)
    const ttl = (now: number) => l.apply({ op: 'session.destroy', id: S1, node: 'n1', now, reason: 'ttl' })
    expect(code(ttl(20_001))).toBe(PolicyErrorCodes.staleRequest)
    expect(l.kv.session(S1)).toBeDefined()
    expect(l.kv.get('lock')?.session).toBe(S1)
    expect(ttl(40_001).ok).toBe(true)
    expect(l.kv.session(S1)).toBeUndefined()
    expect(l.kv.get('lock')?.session).toBeUndefined()
  })
})

describe('KV state: transactions', () => {
  it("applies all or nothing, and remembers each operation's result", () => {
    const l = new Log()
    l.set('a', 'one')
    l.session(S1)
    const before = l.store.snapshot()
    const failed = l.apply({
      op: 'txn',
      now: 0,
      ops: [
        { verb: 'set', key: 'b', value: b64('2') },
        { verb: 'lock', key: 'c', value: '', session: S1 },
        { verb: 'delete', key: 'a' },
        { verb: 'check-index', key: 'a', index: 99 },
      ],
    })
    expect(failed).toMatchObject({ ok: false, code: PolicyErrorCodes.txnFailed })
    expect(failed.ok ? '' : failed.message).toMatch(/^op 3: /)
    // Nothing changed, not even the index: the state encodes exactly as before.
    expect(Buffer.from(l.store.snapshot())).toEqual(Buffer.from(before))
    const ok = l.apply({
      op: 'txn',
      now: 0,
      ops: [
        { verb: 'cas', key: 'a', value: b64('uno'), index: 1 },
        { verb: 'get', key: 'a' },
        { verb: 'lock', key: 'c', value: b64('held'), session: S1 },
        { verb: 'check-session', key: 'c', session: S1 },
        { verb: 'get-tree', key: '' },
        { verb: 'delete', key: 'a' },
        { verb: 'check-not-exists', key: 'a' },
      ],
    })
    expect(ok.ok).toBe(true)
    const results = l.kv.txnResultsAt(l.index)!
    expect(results.map((r) => [r.entry.key, r.withValue])).toEqual([
      ['a', false],
      ['a', true],
      ['c', false],
      ['c', false],
      ['a', true],
      ['c', true],
    ])
    expect(results[1]!.entry.value).toBe(b64('uno'))
    expect(l.kv.get('a')).toBeUndefined()
    expect(l.kv.get('c')).toMatchObject({ session: S1, lockIndex: 1 })
  })

  it('answers read-only transactions without changing anything', () => {
    const l = new Log()
    l.set('a', 'one')
    expect(Array.isArray(l.kv.dryRunTxn([{ verb: 'get', key: 'a' }], 0))).toBe(true)
    const r = l.kv.dryRunTxn([{ verb: 'get', key: 'zzz' }], 0)
    expect(Array.isArray(r) ? undefined : r.message).toMatch(/^op 0: .*doesn't exist/)
  })
})

describe('KV state: hostile commands are refused, the same on every agent, changing nothing', () => {
  const big = 'A'.repeat(Math.ceil((KV_LIMITS.maxValueBytes + 3) / 3) * 4)
  const cases: [string, unknown][] = [
    ['empty key', { op: 'kv.set', key: '', value: '', now: 0 }],
    ['long key', { op: 'kv.set', key: 'k'.repeat(KV_LIMITS.maxKeyLength + 1), value: '', now: 0 }],
    ['value not base64', { op: 'kv.set', key: 'k', value: 'not base64!', now: 0 }],
    ['value over 512 KiB', { op: 'kv.set', key: 'k', value: big, now: 0 }],
    ['negative flags', { op: 'kv.set', key: 'k', value: '', flags: '-1', now: 0 }],
    ['flags as a number', { op: 'kv.set', key: 'k', value: '', flags: 1, now: 0 }],
    ['flags past uint64', { op: 'kv.set', key: 'k', value: '', flags: '18446744073709551616', now: 0 }],
    ['flags not canonical', { op: 'kv.set', key: 'k', value: '', flags: '007', now: 0 }],
    ['fractional cas', { op: 'kv.set', key: 'k', value: '', cas: 1.5, now: 0 }],
    ['no time', { op: 'kv.set', key: 'k', value: '' }],
    ['bad session id', { op: 'kv.set', key: 'k', value: '', acquire: '../../etc', now: 0 }],
    ['65 txn ops', { op: 'txn', now: 0, ops: Array.from({ length: 65 }, () => ({ verb: 'get', key: 'k' })) }],
    ['no txn ops', { op: 'txn', now: 0, ops: [] }],
    ['unknown verb', { op: 'txn', now: 0, ops: [{ verb: 'drop-table', key: 'k' }] }],
    ['extra op field', { op: 'txn', now: 0, ops: [{ verb: 'get', key: 'k', evil: 1 }] }],
    [
      'TTL over 86400s',
      {
        op: 'session.create',
        id: S1,
        name: '',
        node: 'n',
        lockDelayMs: 0,
        behavior: 'release',
        ttlMs: 86_400_001,
        checks: [],
        now: 0,
      },
    ],
    [
      'TTL under 10s',
      {
        op: 'session.create',
        id: S1,
        name: '',
        node: 'n',
        lockDelayMs: 0,
        behavior: 'release',
        ttlMs: 9_999,
        checks: [],
        now: 0,
      },
    ],
    [
      'lock-delay over 60s',
      {
        op: 'session.create',
        id: S1,
        name: '',
        node: 'n',
        lockDelayMs: 60_001,
        behavior: 'release',
        ttlMs: 0,
        checks: [],
        now: 0,
      },
    ],
    [
      'bad behavior',
      {
        op: 'session.create',
        id: S1,
        name: '',
        node: 'n',
        lockDelayMs: 0,
        behavior: 'explode',
        ttlMs: 0,
        checks: [],
        now: 0,
      },
    ],
  ]
  for (const [name, cmd] of cases) {
    it(name, () => {
      const l = new Log()
      l.set('k', 'v')
      const before = Buffer.from(l.store.snapshot())
      const r = l.apply(cmd)
      expect(r.ok).toBe(false)
      expect([PolicyErrorCodes.invalidCommand, PolicyErrorCodes.tooLarge]).toContain(code(r))
      // Only the dedupe-free store index stays: the state encodes as before.
      expect(Buffer.from(l.store.snapshot())).toEqual(before)
    })
  }

  it('a KV write past the policy state cap is refused (413), a shrinking one passes', () => {
    const l = new Log(
      new PolicyStore(undefined, {
        limits: { maxEntryBytes: 64 * 1024, maxCaBytes: 1 << 20, maxStateBytes: 4096 },
      }),
    )
    expect(l.set('a', 'x'.repeat(1500)).ok).toBe(true)
    expect(code(l.set('b', 'x'.repeat(3000)))).toBe(PolicyErrorCodes.tooLarge)
    expect(l.kv.get('b')).toBeUndefined()
    expect(l.set('a', 'small').ok).toBe(true)
    expect(l.store.stats.tooLargeRejected).toBe(1)
  })
})

describe('KV state: snapshots', () => {
  it('round-trips entries, sessions, locks, lock-delays and tombstones; the copy applies the same', () => {
    const l = new Log()
    l.session(S1, { ttlMs: 30_000 }, 50)
    l.session(S2)
    l.set('a', 'one', { flags: '18446744073709551615' })
    l.set('lock', 'held', { acquire: S2 })
    l.set('gone', 'x')
    l.apply({ op: 'kv.delete', key: 'gone' })
    l.destroy(S2, 1000)
    const copy = new Log(new PolicyStore())
    copy.store.restore(l.store.snapshot())
    copy.index = l.index
    expect(copy.kv.snapshot()).toEqual(l.kv.snapshot())
    expect(copy.store.sizeBytes).toBe(l.store.sizeBytes)
    expect(copy.kv.indexOf('gone', false)).toBe(l.kv.indexOf('gone', false))
    expect(copy.kv.lockDelayUntil('lock')).toBe(16_000)
    // The same next entries give the same outcomes on both.
    for (const log of [l, copy]) {
      expect(code(log.set('lock', 'mine', { acquire: S1 }, 2000))).toBe(PolicyErrorCodes.kvLockHeld)
      expect(log.set('lock', 'mine', { acquire: S1 }, 16_000).ok).toBe(true)
    }
    expect(Buffer.from(copy.store.snapshot())).toEqual(Buffer.from(l.store.snapshot()))
  })

  it('a lock-delay ending past the largest safe integer still makes a snapshot that restores', () => {
    // `now` may be any safe integer; `now + LockDelay` must stay one, or every follower refuses
    // the leader's snapshot as malformed.
    const l = new Log()
    l.session(S1, { lockDelayMs: KV_LIMITS.maxLockDelayMs })
    l.set('lock', 'held', { acquire: S1 })
    expect(l.destroy(S1, Number.MAX_SAFE_INTEGER - 1).ok).toBe(true)
    const copy = new Log(new PolicyStore())
    copy.store.restore(l.store.snapshot())
    expect(copy.kv.snapshot()).toEqual(l.kv.snapshot())
  })

  it('a snapshot with a malformed KV part throws and leaves the state as it was', () => {
    const l = new Log()
    l.set('a', 'one')
    const good = l.store.snapshot()
    const target = new Log()
    target.set('mine', 'kept')
    for (const kv of [
      {
        entries: [{ key: 1 }],
        sessions: [],
        lockDelays: [],
        tombstones: [],
        tombstoneFloor: 0,
        sessionsIndex: 0,
      },
      {
        entries: [],
        sessions: [{ id: S1 }],
        lockDelays: [],
        tombstones: [],
        tombstoneFloor: 0,
        sessionsIndex: 0,
      },
      {
        entries: [],
        sessions: [],
        lockDelays: [['k', -1]],
        tombstones: [],
        tombstoneFloor: 0,
        sessionsIndex: 0,
      },
      'not a map',
    ]) {
      const bytes = patchSnapshot(good, kv)
      expect(() => target.store.restore(bytes)).toThrow(RangeError)
      expect(target.kv.get('mine')).toBeDefined()
      expect(target.kv.get('a')).toBeUndefined()
    }
  })
})

import { pack, unpack } from '../../../src/common/msgpack.ts'

function patchSnapshot(bytes: Uint8Array, kv: unknown): Uint8Array {
  const s = unpack(bytes) as Record<string, unknown>
  return pack({ ...s, kv })
}

describe('KV commands: text that msgpack would change is refused before it is proposed', () => {
  it('a lone surrogate in a key, prefix, txn key, session name, node or check', () => {
    // msgpack writes a lone surrogate as U+FFFD: the entry would name another key than the one
    // the ACL check saw. preparePolicyCommand is what every agent runs before proposing.
    const bad: unknown[] = [
      { op: 'kv.set', key: 'a\ud800', value: '', now: 0 },
      { op: 'kv.delete', key: '\udc00', recurse: true },
      { op: 'kv.delete-tree', prefix: 'x\udbff' },
      { op: 'txn', now: 0, ops: [{ verb: 'set', key: 'k\ud800', value: '' }] },
      {
        op: 'session.create',
        id: S1,
        name: '\ud800',
        node: 'n1',
        lockDelayMs: 0,
        behavior: 'release',
        ttlMs: 0,
        checks: [],
        now: 0,
      },
      { op: 'session.renew', id: S1, node: 'n\udfff', now: 0 },
      {
        op: 'session.create',
        id: S1,
        name: '',
        node: 'n1',
        lockDelayMs: 0,
        behavior: 'release',
        ttlMs: 0,
        checks: ['c\ud800'],
        now: 0,
      },
    ]
    for (const cmd of bad) {
      const r = preparePolicyCommand(cmd)
      expect(r.ok, JSON.stringify(cmd)).toBe(false)
      if (!r.ok) expect(r.code).toBe(PolicyErrorCodes.invalidCommand)
    }
    // A surrogate pair (an emoji) is text.
    expect(preparePolicyCommand({ op: 'kv.set', key: 'a/\u{1F600}', value: '', now: 0 }).ok).toBe(true)
  })
})
