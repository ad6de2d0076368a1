import { describe, expect, it } from 'vitest'
import {
  type CaRootRecord,
  caRootsJson,
  caStateOf,
  type IssuedLeaf,
  parseRootRecord,
  parseRootRecords,
  ROTATION_SETTLE_MS,
  recordIssued,
  rotationComplete,
} from '../../../src/identity/connect/ca-state.ts'

const root = (id: string, activatedAt = 1_000): CaRootRecord => ({
  id,
  name: `peermesh CA ${id}`,
  trustDomain: 'test.peermesh',
  keyType: 'ed25519',
  certPem: `CERT ${id}`,
  sealedKeys: {},
  serialNumber: '01',
  notBefore: 0,
  notAfter: 10_000_000,
  activatedAt,
})

describe('rotationComplete', () => {
  const active = root('new', 1_000)
  const ttl = 60_000
  const settle = 2_000
  // Leaves signed at 1_500; checked from 3_500 on, once they have had `settle` to be installed.
  it.each([
    ['no instances registered', [], [], 2_000, true],
    [
      'every instance re-issued under the new root',
      ['a/web', 'b/db'],
      [
        ['a/web', 'new'],
        ['b/db', 'new'],
      ],
      3_500,
      true,
    ],
    [
      '...but the last one only just now: its answer may not have landed yet',
      ['a/web', 'b/db'],
      [
        ['a/web', 'new'],
        ['b/db', 'new'],
      ],
      3_499,
      false,
    ],
    [
      'one instance still on the old root',
      ['a/web', 'b/db'],
      [
        ['a/web', 'new'],
        ['b/db', 'old'],
      ],
      3_500,
      false,
    ],
    ['one instance never seen by this leader', ['a/web', 'b/db'], [['a/web', 'new']], 3_500, false],
    [
      '...but a full leaf lifetime has passed since activation',
      ['a/web', 'b/db'],
      [['a/web', 'new']],
      1_000 + ttl,
      true,
    ],
  ] as const)('%s', (_what, required, issued, nowMs, want) => {
    expect(
      rotationComplete({
        active,
        required,
        issuedUnder: new Map(issued.map(([k, rootId]) => [k, { rootId, sinceMs: 1_500 }])),
        leafTtlMs: ttl,
        nowMs,
        settleMs: settle,
      }),
    ).toBe(want)
  })

  it('counts the settle time from the first leaf signed under a root, not from later renewals', () => {
    const issued = new Map<string, IssuedLeaf>()
    recordIssued(issued, 'a/web', 'old', 100)
    recordIssued(issued, 'a/web', 'new', 1_500)
    recordIssued(issued, 'a/web', 'new', 3_000)
    expect(issued.get('a/web')).toEqual({ rootId: 'new', sinceMs: 1_500 })
    const done = (nowMs: number) =>
      rotationComplete({ active, required: ['a/web'], issuedUnder: issued, leafTtlMs: ttl, nowMs })
    expect(done(1_500 + ROTATION_SETTLE_MS - 1)).toBe(false)
    expect(done(1_500 + ROTATION_SETTLE_MS)).toBe(true)
  })
})

describe('CA records from the replicated state', () => {
  it('ignores malformed records and never shows a private key in the API view', () => {
    const state = caStateOf({
      roots: parseRootRecords([root('a'), { id: 'x' }, null, 'junk']),
      activeRootId: 'a',
      modifyIndex: 7,
    })
    expect(state.roots.map((r) => r.id)).toEqual(['a'])
    expect(state.active?.id).toBe('a')
    const json = caRootsJson(state)
    expect(json).toMatchObject({ activeRootId: 'a', trustDomain: 'test.peermesh', index: 7 })
    expect(json.roots[0]).toMatchObject({ id: 'a', rootCert: 'CERT a', active: true })
    expect(JSON.stringify(json)).not.toContain('KEY a')
    expect(parseRootRecord({ ...root('b'), keyType: 'rsa' })).toBeUndefined()
  })
})
