import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { kvEntryBytes, sessionBytes } from '../../../src/raft/policy/kv-commands.ts'
import {
  encodePolicyCommand,
  type PolicyCommand,
  PolicyStore,
} from '../../../src/raft/policy/policy-store.ts'

/**
 * Random sequences of KV, session and txn commands (a small key and session space, so they
 * collide), checking after every entry the invariants the state machine promises:
 * - a refused entry leaves the state byte-for-byte as it was (all-or-nothing, the undo journal);
 * - a lock is held only by a session that exists; a key's LockIndex never goes down while it exists;
 * - the size the cap counts equals the entries' and sessions' sizes recomputed;
 * - a store restored from a snapshot taken at any point applies the rest to the same state.
 * A failure prints fast-check's seed and path; rerun with `fc.assert(..., { seed, path })`.
 */

const KEYS = ['a', 'a/b', 'a/c', 'b']
const SESSIONS = ['11111111-1111-4111-8111-111111111111', '22222222-2222-4222-8222-222222222222']
const key = fc.constantFrom(...KEYS)
const prefix = fc.constantFrom('', 'a', 'a/', 'b')
const sid = fc.constantFrom(...SESSIONS)
const value = fc.constantFrom('', 'eA==', 'eHk=')
const index = fc.integer({ min: 0, max: 12 })
const now = fc.integer({ min: 0, max: 40_000 })

const txnOp = fc.oneof(
  fc.record({ verb: fc.constant('set'), key, value }),
  fc.record({ verb: fc.constant('cas'), key, value, index }),
  fc.record({ verb: fc.constant('lock'), key, value, session: sid }),
  fc.record({ verb: fc.constant('unlock'), key, value, session: sid }),
  fc.record({ verb: fc.constant('get'), key }),
  fc.record({ verb: fc.constant('get-tree'), key: prefix }),
  fc.record({ verb: fc.constant('check-index'), key, index }),
  fc.record({ verb: fc.constant('check-session'), key, session: sid }),
  fc.record({ verb: fc.constant('check-not-exists'), key }),
  fc.record({ verb: fc.constant('delete'), key }),
  fc.record({ verb: fc.constant('delete-tree'), key: prefix }),
  fc.record({ verb: fc.constant('delete-cas'), key, index }),
)

const command: fc.Arbitrary<PolicyCommand> = fc.oneof(
  fc.record({ op: fc.constant('kv.set' as const), key, value, now }),
  fc.record({ op: fc.constant('kv.set' as const), key, value, cas: index, now }),
  fc.record({ op: fc.constant('kv.set' as const), key, value, acquire: sid, now }),
  fc.record({ op: fc.constant('kv.set' as const), key, value, release: sid, now }),
  fc.record({ op: fc.constant('kv.delete' as const), key: prefix, recurse: fc.boolean() }),
  fc.record({ op: fc.constant('kv.delete' as const), key, cas: index }),
  fc.record({
    op: fc.constant('session.create' as const),
    id: sid,
    name: fc.constant(''),
    node: fc.constant('n1'),
    lockDelayMs: fc.constantFrom(0, 15_000),
    behavior: fc.constantFrom('release' as const, 'delete' as const),
    ttlMs: fc.constant(0),
    checks: fc.constant([]),
    now,
  }),
  fc.record({ op: fc.constant('session.destroy' as const), id: sid, node: fc.constant('n1'), now }),
  fc.record({ op: fc.constant('txn' as const), ops: fc.array(txnOp, { minLength: 1, maxLength: 6 }), now }),
) as fc.Arbitrary<PolicyCommand>

function apply(store: PolicyStore, index: number, cmd: PolicyCommand) {
  return store.apply({ index, term: 1, type: 'normal', data: encodePolicyCommand(cmd) })
}

describe('KV state machine invariants (property)', () => {
  it('holds under random command sequences', () => {
    fc.assert(
      fc.property(fc.array(command, { minLength: 1, maxLength: 40 }), fc.nat(40), (cmds, cut) => {
        const store = new PolicyStore()
        let copy: PolicyStore | undefined
        /** Per key: the LockIndex last seen, for the key as created at `createIndex`. */
        const lockIndex = new Map<string, { createIndex: number; lockIndex: number }>()
        for (const [i, cmd] of cmds.entries()) {
          if (i === cut % cmds.length) {
            copy = new PolicyStore()
            copy.restore(store.snapshot())
          }
          const before = Buffer.from(store.snapshot())
          const r = apply(store, i + 1, cmd)
          if (copy !== undefined) apply(copy, i + 1, cmd)
          if (!r.ok) {
            // The store's own index moves with no refusal either: the snapshot is unchanged.
            expect(Buffer.from(store.snapshot())).toEqual(before)
          }
          const snap = store.kv.snapshot()
          const sessions = new Set(snap.sessions.map((s) => s.id))
          // A deleted key starts again from LockIndex 0 when it is re-created: after the command,
          // or within it (a txn that deletes a tree and sets a key of it again gives the key a new
          // CreateIndex).
          for (const k of [...lockIndex.keys()])
            if (!snap.entries.some((e) => e.key === k)) lockIndex.delete(k)
          for (const e of snap.entries) {
            if (e.session !== undefined) expect(sessions.has(e.session)).toBe(true)
            const seen = lockIndex.get(e.key)
            if (seen !== undefined && seen.createIndex === e.createIndex)
              expect(e.lockIndex).toBeGreaterThanOrEqual(seen.lockIndex)
            lockIndex.set(e.key, { createIndex: e.createIndex, lockIndex: e.lockIndex })
          }
          const size =
            snap.entries.reduce((n, e) => n + kvEntryBytes(e), 0) +
            snap.sessions.reduce((n, s) => n + sessionBytes(s), 0)
          expect(store.kv.sizeBytes).toBe(size)
        }
        if (copy !== undefined) expect(copy.kv.snapshot()).toEqual(store.kv.snapshot())
      }),
      { numRuns: 300 },
    )
  })
})
