import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { FOUNDER_ACCESSOR_ID } from '../../../src/acl/constants.ts'
import { pack, unpack } from '../../../src/common/msgpack.ts'
import {
  ACL_STATE_MAX_BYTES,
  type AclCommandInput,
  AclErrorCodes,
  AclState,
} from '../../../src/raft/policy/acl-state.ts'
import { encodePolicyCommand, PolicyStore } from '../../../src/raft/policy/policy-store.ts'

const id = (n: number): string => `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`
const T = '2026-12-04T14:00:00.000Z'

const token = (n: number): AclCommandInput => ({
  op: 'acl.token.upsert',
  mode: 'create',
  accessorId: id(n),
  secretId: id(n + 1),
  createTime: T,
})
const enroll = (peerId: string, node: string, accessor: number | string, voter = false): AclCommandInput => ({
  op: 'acl.node.enroll',
  peerId,
  node,
  voter,
  accessorId: typeof accessor === 'number' ? id(accessor) : accessor,
})
const grant = (peerId: string, service: string, accessor: number): AclCommandInput => ({
  op: 'acl.service.grant',
  peerId,
  service,
  accessorId: id(accessor),
})
const unenroll = (node: string): AclCommandInput => ({ op: 'acl.node.unenroll', node })
const del = (n: number): AclCommandInput => ({ op: 'acl.token.delete', accessorId: id(n) })

function applied(cmds: AclCommandInput[]): AclState {
  const s = new AclState()
  cmds.forEach((c, i) => {
    const r = s.apply(c, i + 1)
    if (!r.ok) throw new Error(`setup command ${i} refused: ${r.message}`)
  })
  return s
}

/** The byte count the cap uses (private): a restored replica must count exactly the same. */
const bytesOf = (s: AclState): number => (s as unknown as { bytes: number }).bytes

describe('AclState: node enrollment (issue #12)', () => {
  it('binds a peer id to a node name with the token that enrolled it; re-applying keeps CreateIndex', () => {
    const s = applied([token(10), enroll('PeerA', 'web-1', 10, true)])
    expect(s.enrollment('PeerA')).toEqual({
      peerId: 'PeerA',
      node: 'web-1',
      voter: true,
      accessorId: id(10),
      createIndex: 2,
    })
    expect(s.enrollmentByNode('web-1')?.peerId).toBe('PeerA')
    expect(s.apply(enroll('PeerA', 'web-1', 10, true), 3)).toEqual({ ok: true, index: 3 })
    expect(s.enrollment('PeerA')?.createIndex).toBe(2)
    expect(s.revoked('PeerA')).toBe(false)
  })

  it('refuses an enrollment by a token that does not exist; accepts the founder accessor', () => {
    const s = new AclState()
    expect(s.apply(enroll('PeerA', 'a', 10), 1)).toMatchObject({ ok: false, code: AclErrorCodes.notFound })
    expect(s.enrollments()).toEqual([])
    expect(s.apply(enroll('PeerA', 'a', FOUNDER_ACCESSOR_ID, true), 2)).toEqual({ ok: true, index: 2 })
    expect(s.enrollment('PeerA')?.accessorId).toBe(FOUNDER_ACCESSOR_ID)
  })

  it('a re-keyed node replaces the old peer id, which becomes revoked with its grants', () => {
    const s = applied([
      token(10),
      enroll('Old', 'db-1', 10),
      grant('Old', 'db', 10),
      enroll('New', 'db-1', 10),
    ])
    expect(s.enrollment('Old')).toBeUndefined()
    expect(s.revoked('Old')).toBe(true)
    expect(s.serviceGrants('Old')).toEqual([])
    expect(s.enrollmentByNode('db-1')?.peerId).toBe('New')
    // The old key enrolled again (with a token for the name) takes it back: no longer revoked.
    expect(s.apply(enroll('Old', 'db-1', 10), 9).ok).toBe(true)
    expect(s.revoked('Old')).toBe(false)
    expect(s.revoked('New')).toBe(true)
  })

  it('a peer enrolled under another name frees its old name', () => {
    const s = applied([token(10), enroll('P', 'a', 10), enroll('P', 'b', 10)])
    expect(s.enrollmentByNode('a')).toBeUndefined()
    expect(s.enrollmentByNode('b')?.peerId).toBe('P')
    expect(s.enrollment('P')?.createIndex).toBe(3)
  })

  it('unenroll (an operator revoke) removes the binding and its grants and marks the peer revoked', () => {
    const s = applied([token(10), enroll('P', 'web-1', 10), grant('P', 'web', 10), unenroll('web-1')])
    expect(s.enrollment('P')).toBeUndefined()
    expect(s.revoked('P')).toBe(true)
    expect(s.allServiceGrants()).toEqual([])
    expect(s.apply(unenroll('web-1'), 9)).toMatchObject({ ok: false, code: AclErrorCodes.notFound })
  })

  it('grants only to an enrolled peer and for an existing token; a grant is an upsert per (peer, service)', () => {
    const s = applied([token(10), token(20)])
    expect(s.apply(grant('P', 'web', 10), 3)).toMatchObject({ ok: false, code: AclErrorCodes.notPermitted })
    expect(s.apply(enroll('P', 'n', 10), 4).ok).toBe(true)
    expect(s.apply(grant('P', 'web', 99), 5)).toMatchObject({ ok: false, code: AclErrorCodes.notFound })
    expect(s.apply(grant('P', 'web', 10), 6).ok).toBe(true)
    expect(s.apply(grant('P', 'web', 20), 7).ok).toBe(true)
    expect(s.apply(grant('P', 'api', 10), 8).ok).toBe(true)
    expect(s.serviceGrants('P')).toEqual([
      { peerId: 'P', service: 'api', accessorId: id(10), createIndex: 8 },
      { peerId: 'P', service: 'web', accessorId: id(20), createIndex: 7 },
    ])
  })

  it('deleting a token cascades: its enrollments become revoked and its grants go; others stay', () => {
    const s = applied([
      token(10),
      token(20),
      enroll('A', 'a', 10, true),
      enroll('B', 'b', 20),
      grant('B', 'web', 10),
      grant('B', 'api', 20),
      enroll('F', 'f', FOUNDER_ACCESSOR_ID, true),
    ])
    expect(s.apply(del(10), 8)).toEqual({ ok: true, index: 8 })
    expect(s.enrollment('A')).toBeUndefined()
    expect(s.revoked('A')).toBe(true)
    expect(s.enrollment('B')?.accessorId).toBe(id(20))
    expect(s.serviceGrants('B').map((g) => g.service)).toEqual(['api'])
    expect(s.enrollment('F')).toBeDefined()
    expect(s.apply(del(20), 9).ok).toBe(true)
    expect(s.enrollments().map((e) => e.peerId)).toEqual(['F'])
    expect(s.revokedPeerIds()).toEqual(['A', 'B'])
  })

  it('refuses bad shapes as invalid, never throws, and changes nothing', () => {
    const s = applied([token(10)])
    const before = s.snapshot()
    for (const bad of [
      { op: 'acl.node.enroll', peerId: 'P', node: 'n', accessorId: id(10) },
      { op: 'acl.node.enroll', peerId: '../x', node: 'n', voter: true, accessorId: id(10) },
      { op: 'acl.node.enroll', peerId: 'P', node: '-bad', voter: true, accessorId: id(10) },
      { op: 'acl.node.enroll', peerId: 'P', node: 'n', voter: true, accessorId: 'nope' },
      { op: 'acl.node.enroll', peerId: 'P', node: 'n', voter: true, accessorId: id(10), extra: 1 },
      { op: 'acl.service.grant', peerId: 'P', service: '', accessorId: id(10) },
      { op: 'acl.node.unenroll', node: 7 },
    ]) {
      expect(s.apply(bad, 5)).toMatchObject({ ok: false, code: AclErrorCodes.invalidCommand })
    }
    expect(s.snapshot()).toEqual(before)
  })

  it('counts enrollments, grants and revoked ids in ACL_STATE_MAX_BYTES', () => {
    const s = applied([token(10)])
    const b0 = bytesOf(s)
    s.apply(enroll('P', 'n', 10), 2)
    s.apply(grant('P', 'web', 10), 3)
    const b1 = bytesOf(s)
    expect(b1).toBeGreaterThan(b0)
    s.apply(unenroll('n'), 4)
    // The enrollment and grant are gone; the revoked id stays, counted.
    expect(bytesOf(s)).toBeGreaterThan(b0)
    expect(bytesOf(s)).toBeLessThan(b1)
    // Near the cap, an enrollment that grows the state is refused (413), a repeat is not.
    ;(s as unknown as { bytes: number }).bytes = ACL_STATE_MAX_BYTES - 10
    expect(s.apply(enroll('Q', 'q', 10), 5)).toMatchObject({ ok: false, code: AclErrorCodes.tooLarge })
    expect(s.apply(grant('P', 'web', 10), 6)).toMatchObject({ ok: false, code: AclErrorCodes.notPermitted })
  })
})

describe('AclState: enrollment snapshots (version 2; version 1 still restores)', () => {
  it('carries enrollments, grants and the revoked set, and counts the same bytes', () => {
    const a = applied([token(10), enroll('A', 'a', 10, true), grant('A', 'web', 10), enroll('B', 'b', 10)])
    a.apply(unenroll('b'), 5)
    const snap = a.snapshot()
    expect(snap.version).toBe(2)
    const b = new AclState()
    b.restore(unpack(pack(snap)))
    expect(b.snapshot()).toEqual(snap)
    expect(b.enrollment('A')?.voter).toBe(true)
    expect(b.enrollmentByNode('a')?.peerId).toBe('A')
    expect(b.serviceGrants('A')).toHaveLength(1)
    expect(b.revoked('B')).toBe(true)
    expect(bytesOf(b)).toBe(bytesOf(a))
  })

  it('restores a version 1 snapshot (before enrollment): no enrollments, nothing revoked', () => {
    const a = applied([token(10)])
    const { enrollments: _e, grants: _g, revoked: _r, ...v1 } = a.snapshot()
    const b = new AclState()
    b.restore({ ...v1, version: 1 })
    expect(b.token(id(10))).toBeDefined()
    expect(b.enrollments()).toEqual([])
    expect(bytesOf(b)).toBe(bytesOf(a))
    expect(() => b.restore({ ...v1, version: 2 })).toThrow(RangeError)
  })

  it('the policy store dispatches the enrollment commands (an unknown op stays invalid)', () => {
    const store = new PolicyStore()
    const entry = (index: number, cmd: unknown) => ({
      term: 1,
      index,
      type: 'normal' as const,
      data: encodePolicyCommand(cmd as never),
    })
    expect(store.apply(entry(1, token(10))).ok).toBe(true)
    expect(store.apply(entry(2, enroll('P', 'n', 10, true)))).toEqual({ ok: true, index: 2 })
    expect(store.apply(entry(3, grant('P', 'web', 10)))).toEqual({ ok: true, index: 3 })
    expect(store.apply(entry(4, unenroll('n')))).toEqual({ ok: true, index: 4 })
    expect(store.acl.revoked('P')).toBe(true)
    const copy = new PolicyStore()
    copy.restore(store.snapshot())
    expect(copy.acl.revoked('P')).toBe(true)
  })
})

const pool: AclCommandInput[] = [
  token(10),
  token(20),
  del(10),
  del(20),
  enroll('A', 'a', 10, true),
  enroll('B', 'a', 20),
  enroll('A', 'b', 20),
  enroll('C', 'c', FOUNDER_ACCESSOR_ID, true),
  grant('A', 'web', 10),
  grant('B', 'web', 20),
  grant('C', 'api', 20),
  unenroll('a'),
  unenroll('c'),
]

describe('AclState: enrollment determinism', () => {
  it('replicas applying the same log, one joining from a snapshot, agree on results, state and bytes (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(pool.length - 1), { maxLength: 30 }), fc.nat(30), (picks, cut) => {
        const cmds = picks.map((i) => pool[i]!)
        const a = new AclState()
        const b = new AclState()
        const at = Math.min(cut, cmds.length)
        for (let i = 0; i < at; i++) expect(b.apply(cmds[i], i + 1)).toEqual(a.apply(cmds[i], i + 1))
        const c = new AclState()
        c.restore(unpack(pack(b.snapshot())))
        for (let i = at; i < cmds.length; i++) {
          const r = a.apply(cmds[i], i + 1)
          expect(b.apply(cmds[i], i + 1)).toEqual(r)
          expect(c.apply(cmds[i], i + 1)).toEqual(r)
        }
        expect(c.snapshot()).toEqual(a.snapshot())
        expect(bytesOf(c)).toBe(bytesOf(a))
        // Invariants: one peer per node name; nothing both enrolled and revoked; grants only for
        // enrolled peers.
        const es = a.enrollments()
        expect(new Set(es.map((e) => e.node)).size).toBe(es.length)
        for (const e of es) expect(a.revoked(e.peerId)).toBe(false)
        for (const g of a.allServiceGrants()) expect(a.enrollment(g.peerId)).toBeDefined()
      }),
      { numRuns: 300 },
    )
  })
})
