import { describe, expect, it } from 'vitest'
import {
  type CaRootRecord,
  caRootsJson,
  caStateOf,
  parseRootRecord,
  rotationComplete,
} from '../../src/node/connect-ca.ts'

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
  it.each([
    ['no instances registered', [], [], 2_000, true],
    [
      'every instance re-issued under the new root',
      ['a/web', 'b/db'],
      [
        ['a/web', 'new'],
        ['b/db', 'new'],
      ],
      2_000,
      true,
    ],
    [
      'one instance still on the old root',
      ['a/web', 'b/db'],
      [
        ['a/web', 'new'],
        ['b/db', 'old'],
      ],
      2_000,
      false,
    ],
    ['one instance never seen by this leader', ['a/web', 'b/db'], [['a/web', 'new']], 2_000, false],
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
        issuedUnder: new Map(issued.map(([k, v]) => [k, v])),
        leafTtlMs: ttl,
        nowMs,
      }),
    ).toBe(want)
  })
})

describe('CA records from the replicated state', () => {
  it('ignores malformed records and never shows a private key in the API view', () => {
    const state = caStateOf({
      roots: [root('a'), { id: 'x' }, null, 'junk'],
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
