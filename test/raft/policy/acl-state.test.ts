import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  ANONYMOUS_TOKEN_ID,
  GLOBAL_MANAGEMENT_POLICY_ID,
  GLOBAL_MANAGEMENT_POLICY_NAME,
} from '../../../src/acl/index.ts'
import { pack, unpack } from '../../../src/common/msgpack.ts'
import {
  ACL_STATE_MAX_BYTES,
  type AclCommandInput,
  AclErrorCodes,
  AclState,
  aclCommandSchemas,
} from '../../../src/raft/policy/acl-state.ts'

const id = (n: number): string => `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`
const T = '2026-12-04T14:00:00.000Z'

const bootstrap = (n = 100): AclCommandInput => ({
  op: 'acl.bootstrap',
  accessorId: id(n),
  secretId: id(n + 1),
  createTime: T,
})
const policy = (n: number, name: string, mode: 'create' | 'update' = 'create'): AclCommandInput => ({
  op: 'acl.policy.upsert',
  mode,
  id: id(n),
  name,
  rules: 'service_prefix "" { policy = "read" }',
})
const token = (n: number, over: Partial<Extract<AclCommandInput, { op: 'acl.token.upsert' }>> = {}) =>
  ({
    op: 'acl.token.upsert',
    mode: 'create',
    accessorId: id(n),
    secretId: id(n + 1),
    createTime: T,
    ...over,
  }) as AclCommandInput

function applied(cmds: AclCommandInput[]): AclState {
  const s = new AclState()
  cmds.forEach((c, i) => {
    const r = s.apply(c, i + 1)
    if (!r.ok) throw new Error(`setup command ${i} refused: ${r.message}`)
  })
  return s
}

describe('AclState: initial state', () => {
  it('holds the builtin global-management policy and the anonymous token, not bootstrapped', () => {
    const s = new AclState()
    expect(s.bootstrapIndex).toBe(0)
    expect(s.policy(GLOBAL_MANAGEMENT_POLICY_ID)?.name).toBe(GLOBAL_MANAGEMENT_POLICY_NAME)
    expect(s.tokenBySecret('anonymous')?.accessorId).toBe(ANONYMOUS_TOKEN_ID)
    expect(s.tokens()).toHaveLength(1)
  })
})

describe('AclState: bootstrap', () => {
  it('creates a management token once, then refuses (state unchanged)', () => {
    const s = new AclState()
    expect(s.apply(bootstrap(), 5)).toEqual({ ok: true, index: 5 })
    const t = s.tokenBySecret(id(101))!
    expect(t).toMatchObject({ accessorId: id(100), policies: [GLOBAL_MANAGEMENT_POLICY_ID], createIndex: 5 })
    expect(s.bootstrapIndex).toBe(5)
    const before = s.snapshot()
    const again = s.apply(bootstrap(200), 6)
    expect(again).toMatchObject({ ok: false, code: AclErrorCodes.bootstrapDone })
    expect(again.ok === false && again.message).toMatch(/^ACL bootstrap no longer allowed/)
    expect(s.snapshot()).toEqual(before)
  })
})

describe('AclState: size cap', () => {
  it('refuses what would grow the state past ACL_STATE_MAX_BYTES (413), allows deletes and shrinking, and keeps the count across a snapshot', () => {
    const big = (n: number, name: string): AclCommandInput => ({
      op: 'acl.policy.upsert',
      mode: 'create',
      id: id(n),
      name,
      rules: `service_prefix "" { policy = "read" }${' '.repeat(60_000)}`,
    })
    const s = new AclState()
    let at = 1
    let n = 1000
    for (;;) {
      const r = s.apply(big(n, `p${n}`), at++)
      if (!r.ok) {
        expect(r.code).toBe(AclErrorCodes.tooLarge)
        break
      }
      n++
      expect(n).toBeLessThan(1000 + ACL_STATE_MAX_BYTES / 60_000 + 2)
    }
    const before = s.snapshot()
    expect(pack(before).length).toBeLessThan(ACL_STATE_MAX_BYTES + 64 * 1024)
    // A delete frees room; the same create then fits.
    expect(s.apply({ op: 'acl.policy.delete', id: id(1000) }, at++).ok).toBe(true)
    expect(s.apply(big(n, `p${n}`), at++).ok).toBe(true)
    // A replica restored from the snapshot counts the same bytes: it refuses the next one too.
    const t = new AclState()
    t.restore(unpack(pack(s.snapshot())))
    const r = t.apply(big(n + 1, 'one-more'), at)
    expect(r.ok ? 'ok' : r.code).toBe(AclErrorCodes.tooLarge)
  })
})

describe('AclState: refusals', () => {
  const base = [bootstrap(), policy(1, 'readers'), policy(2, 'writers')]

  it.each<[string, AclCommandInput, string]>([
    [
      'a token linking an unknown policy ID',
      token(10, { policies: [{ id: id(99) }] }),
      AclErrorCodes.unknownPolicy,
    ],
    [
      'a token linking an unknown policy name',
      token(10, { policies: [{ name: 'nope' }] }),
      AclErrorCodes.unknownPolicy,
    ],
    ['a policy with a name in use', policy(3, 'readers'), AclErrorCodes.conflict],
    ['renaming a policy to a name in use', policy(2, 'readers', 'update'), AclErrorCodes.conflict],
    ['creating a policy whose ID exists', policy(1, 'other'), AclErrorCodes.conflict],
    ['updating a policy that does not exist', policy(9, 'x', 'update'), AclErrorCodes.notFound],
    ['a token whose AccessorID exists', token(100), AclErrorCodes.conflict],
    ['a token whose SecretID is in use', token(10, { secretId: id(101) }), AclErrorCodes.conflict],
    ['a token without a SecretID', token(10, { secretId: undefined }), AclErrorCodes.invalidCommand],
    ['a token with AccessorID = SecretID', token(10, { secretId: id(10) }), AclErrorCodes.invalidCommand],
    ['updating a token that does not exist', token(10, { mode: 'update' }), AclErrorCodes.notFound],
    [
      "changing a token's SecretID",
      token(100, { mode: 'update', secretId: id(7) }),
      AclErrorCodes.notPermitted,
    ],
    [
      "toggling a token's Local",
      token(100, { mode: 'update', secretId: undefined, local: true }),
      AclErrorCodes.notPermitted,
    ],
    [
      'deleting the anonymous token',
      { op: 'acl.token.delete', accessorId: ANONYMOUS_TOKEN_ID },
      AclErrorCodes.notPermitted,
    ],
    [
      'deleting a token that does not exist',
      { op: 'acl.token.delete', accessorId: id(55) },
      AclErrorCodes.notFound,
    ],
    [
      'deleting global-management',
      { op: 'acl.policy.delete', id: GLOBAL_MANAGEMENT_POLICY_ID },
      AclErrorCodes.notPermitted,
    ],
    [
      'renaming global-management',
      { op: 'acl.policy.upsert', mode: 'update', id: GLOBAL_MANAGEMENT_POLICY_ID, name: 'boss' },
      AclErrorCodes.notPermitted,
    ],
    [
      'deleting a policy that does not exist',
      { op: 'acl.policy.delete', id: id(56) },
      AclErrorCodes.notFound,
    ],
    [
      'a malformed command',
      { op: 'acl.token.delete', accessorId: 'not-a-uuid' } as AclCommandInput,
      AclErrorCodes.invalidCommand,
    ],
    [
      'a bad policy name',
      { ...policy(4, 'x'), name: 'has space' } as AclCommandInput,
      AclErrorCodes.invalidCommand,
    ],
    [
      'a bad service identity',
      token(10, { serviceIdentities: [{ serviceName: 'Web_1' }] }),
      AclErrorCodes.invalidCommand,
    ],
  ])('refuses %s, changing nothing', (_name, cmd, code) => {
    const s = applied(base)
    const before = s.snapshot()
    const r = s.apply(cmd, 50)
    expect(r).toMatchObject({ ok: false, code })
    expect(s.snapshot()).toEqual(before)
  })

  it('never throws, whatever the data', () => {
    const s = new AclState()
    for (const junk of [undefined, null, 7, 'x', [], {}, { op: 'acl.bootstrap' }, { op: 'acl.nope' }]) {
      expect(s.apply(junk, 1)).toMatchObject({ ok: false, code: AclErrorCodes.invalidCommand })
    }
    fc.assert(
      fc.property(fc.anything(), (junk) => {
        expect(s.apply(junk, 1).ok).toBe(false)
      }),
      { numRuns: 200 },
    )
  })
})

describe('AclState: tokens and policies', () => {
  it('resolves policy names to IDs at apply time, without repeats, and keeps IDs only', () => {
    const s = applied([policy(1, 'readers'), token(10, { policies: [{ name: 'readers' }, { id: id(1) }] })])
    expect(s.token(id(10))?.policies).toEqual([id(1)])
    // Renaming the policy does not break the link.
    expect(s.apply(policy(1, 'viewers', 'update'), 3).ok).toBe(true)
    expect(s.token(id(10))?.policies).toEqual([id(1)])
    expect(s.policyByName('viewers')?.id).toBe(id(1))
    expect(s.policyByName('readers')).toBeUndefined()
  })

  it('updates keep SecretID, CreateTime and CreateIndex; set ModifyIndex', () => {
    const s = applied([token(10, { description: 'a', voter: true })])
    expect(
      s.apply(token(10, { mode: 'update', secretId: undefined, description: 'b', createTime: 'later' }), 7)
        .ok,
    ).toBe(true)
    expect(s.token(id(10))).toMatchObject({
      secretId: id(11),
      description: 'b',
      createTime: T,
      createIndex: 1,
      modifyIndex: 7,
      voter: false,
    })
  })

  it('the anonymous token may be given policies', () => {
    const s = applied([policy(1, 'readers')])
    const r = s.apply(
      {
        op: 'acl.token.upsert',
        mode: 'update',
        accessorId: ANONYMOUS_TOKEN_ID,
        policies: [{ id: id(1) }],
        createTime: T,
      },
      2,
    )
    expect(r.ok).toBe(true)
    expect(s.tokenBySecret('anonymous')?.policies).toEqual([id(1)])
  })

  it('deleting a token drops its secret; deleting a policy leaves links that lead nowhere', () => {
    const s = applied([policy(1, 'readers'), token(10, { policies: [{ id: id(1) }] })])
    expect(s.apply({ op: 'acl.policy.delete', id: id(1) }, 3).ok).toBe(true)
    expect(s.policy(id(1))).toBeUndefined()
    expect(s.token(id(10))?.policies).toEqual([id(1)])
    expect(s.apply({ op: 'acl.token.delete', accessorId: id(10) }, 4).ok).toBe(true)
    expect(s.tokenBySecret(id(11))).toBeUndefined()
    expect(s.index).toBe(4)
  })

  it('queries return copies', () => {
    const s = applied([token(10)])
    s.token(id(10))!.policies.push('x')
    s.tokens()[0]!.description = 'changed'
    expect(s.token(id(10))?.policies).toEqual([])
    expect(s.token(id(10))?.description).toBe('')
  })

  it('exports one schema per op for the policy command union', () => {
    expect(aclCommandSchemas.map((c) => c.shape.op.value)).toEqual([
      'acl.bootstrap',
      'acl.token.upsert',
      'acl.token.delete',
      'acl.policy.upsert',
      'acl.policy.delete',
      'acl.node.enroll',
      'acl.node.unenroll',
      'acl.service.grant',
    ])
  })
})

// ---- determinism: the same log gives the same state and results; snapshots carry all of it ----

const commandPool: AclCommandInput[] = [
  bootstrap(100),
  bootstrap(200),
  policy(1, 'a'),
  policy(2, 'b'),
  policy(1, 'b', 'update'),
  policy(2, 'c', 'update'),
  { op: 'acl.policy.delete', id: id(1) },
  token(10, { policies: [{ name: 'a' }] }),
  token(20, { policies: [{ id: id(2) }], serviceIdentities: [{ serviceName: 'web' }] }),
  token(10, { mode: 'update', secretId: undefined, nodeIdentities: [{ nodeName: 'n1', datacenter: 'dc1' }] }),
  { op: 'acl.token.delete', accessorId: id(10) },
  { op: 'acl.token.delete', accessorId: id(100) },
]

describe('AclState: determinism and snapshots', () => {
  it('two replicas applying the same log agree on every result and state (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(commandPool.length - 1), { maxLength: 30 }), fc.nat(30), (picks, cut) => {
        const cmds = picks.map((i) => commandPool[i]!)
        const a = new AclState()
        const b = new AclState()
        const at = Math.min(cut, cmds.length)
        for (let i = 0; i < at; i++) expect(b.apply(cmds[i], i + 1)).toEqual(a.apply(cmds[i], i + 1))
        // A third replica joins from a snapshot (through msgpack, as the store packs it).
        const c = new AclState()
        c.restore(unpack(pack(b.snapshot())))
        expect(c.snapshot()).toEqual(b.snapshot())
        for (let i = at; i < cmds.length; i++) {
          const ra = a.apply(cmds[i], i + 1)
          expect(b.apply(cmds[i], i + 1)).toEqual(ra)
          expect(c.apply(cmds[i], i + 1)).toEqual(ra)
        }
        expect(b.snapshot()).toEqual(a.snapshot())
        expect(c.snapshot()).toEqual(a.snapshot())
        expect(c.tokens()).toEqual(a.tokens())
        expect(c.policies()).toEqual(a.policies())
      }),
      { numRuns: 300 },
    )
  })

  it('restores lookups by secret and name, and the bootstrap mark', () => {
    const a = applied([bootstrap(), policy(1, 'readers'), token(10)])
    const b = new AclState()
    b.restore(a.snapshot())
    expect(b.tokenBySecret(id(11))?.accessorId).toBe(id(10))
    expect(b.policyByName('readers')?.id).toBe(id(1))
    expect(b.apply(bootstrap(300), 9)).toMatchObject({ ok: false, code: AclErrorCodes.bootstrapDone })
  })

  it('a snapshot from before ACLs (no acl field) restores the initial state', () => {
    const a = applied([bootstrap()])
    a.restore(undefined)
    expect(a.snapshot()).toEqual(new AclState().snapshot())
  })

  it('refuses a malformed snapshot and keeps its state', () => {
    const a = applied([bootstrap()])
    const before = a.snapshot()
    expect(() => a.restore({ version: 2 })).toThrow(RangeError)
    expect(() => a.restore({ ...before, tokens: [{ accessorId: 1 }] })).toThrow(RangeError)
    expect(a.snapshot()).toEqual(before)
  })
})
