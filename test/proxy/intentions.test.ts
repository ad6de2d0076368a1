import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  decide,
  type Intention,
  type IntentionAction,
  IntentionIndex,
  intentionPrecedence,
  validateIntention,
  validateIntentionSet,
} from '../../src/proxy/intentions.ts'

function errorOf(fn: () => unknown): { code?: string; field?: string } | undefined {
  try {
    fn()
  } catch (e) {
    return e as { code?: string; field?: string }
  }
  return undefined
}

const I = (source: string, destination: string, action: IntentionAction): Intention => ({
  source,
  destination,
  action,
})

describe('intention precedence (Consul service-intentions, no namespaces)', () => {
  // Each row: intentions, then (source, destination) -> expected action and the matching rule.
  const all = [I('web', 'db', 'allow'), I('*', 'db', 'deny'), I('web', '*', 'deny'), I('*', '*', 'allow')]
  const table: {
    name: string
    set: Intention[]
    src: string
    dst: string
    def: IntentionAction
    action: IntentionAction
    matched?: Intention
  }[] = [
    {
      name: 'exact beats everything',
      set: all,
      src: 'web',
      dst: 'db',
      def: 'deny',
      action: 'allow',
      matched: all[0],
    },
    {
      name: 'dst exact + src * beats dst * + src exact',
      set: all,
      src: 'api',
      dst: 'db',
      def: 'deny',
      action: 'deny',
      matched: all[1],
    },
    {
      name: 'dst exact + src * beats dst * + src exact (same source)',
      set: [I('web', '*', 'allow'), I('*', 'db', 'deny')],
      src: 'web',
      dst: 'db',
      def: 'allow',
      action: 'deny',
      matched: I('*', 'db', 'deny'),
    },
    {
      name: 'dst * + src exact beats * -> *',
      set: all,
      src: 'web',
      dst: 'cache',
      def: 'allow',
      action: 'deny',
      matched: all[2],
    },
    {
      name: '* -> * catches the rest',
      set: all,
      src: 'api',
      dst: 'cache',
      def: 'deny',
      action: 'allow',
      matched: all[3],
    },
    { name: 'empty set: default deny', set: [], src: 'web', dst: 'db', def: 'deny', action: 'deny' },
    { name: 'empty set: default allow', set: [], src: 'web', dst: 'db', def: 'allow', action: 'allow' },
    {
      name: 'non-matching rules fall back to the default',
      set: [I('web', 'db', 'allow'), I('*', 'cache', 'allow'), I('api', '*', 'allow')],
      src: 'web',
      dst: 'queue',
      def: 'deny',
      action: 'deny',
    },
    {
      name: 'an exact deny overrides a wildcard allow',
      set: [I('*', '*', 'allow'), I('evil', 'db', 'deny')],
      src: 'evil',
      dst: 'db',
      def: 'allow',
      action: 'deny',
      matched: I('evil', 'db', 'deny'),
    },
    {
      name: 'an exact allow opens a hole in a wildcard deny',
      set: [I('*', 'db', 'deny'), I('web', 'db', 'allow')],
      src: 'web',
      dst: 'db',
      def: 'allow',
      action: 'allow',
      matched: I('web', 'db', 'allow'),
    },
    {
      name: 'the source name must match exactly (no prefix matching)',
      set: [I('web', 'db', 'allow')],
      src: 'web2',
      dst: 'db',
      def: 'deny',
      action: 'deny',
    },
  ]

  it.each(table)('$name', ({ set, src, dst, def, action, matched }) => {
    const scan = decide(set, src, dst, def)
    const indexed = new IntentionIndex(set, def).decide(src, dst)
    expect(scan.action).toBe(action)
    expect(indexed.action).toBe(action)
    expect(scan.matched).toEqual(matched)
    expect(indexed.matched).toEqual(matched)
  })

  it('ranks the four kinds', () => {
    expect(all.map(intentionPrecedence)).toEqual([4, 3, 2, 1])
  })

  it('defaults to deny when no default is given', () => {
    expect(new IntentionIndex([]).decide('a', 'b')).toEqual({ action: 'deny' })
    expect(decide([], 'a', 'b')).toEqual({ action: 'deny' })
  })

  it('refuses a query that is not a service name', () => {
    const index = new IntentionIndex([I('*', '*', 'allow')])
    expect(errorOf(() => index.decide('*', 'db'))?.code).toBe('PEERMESH_ERR_INVALID_INTENTION_QUERY')
    expect(errorOf(() => index.decide('web', 'DB'))?.code).toBe('PEERMESH_ERR_INVALID_INTENTION_QUERY')
    expect(errorOf(() => decide([], '', 'db'))?.code).toBe('PEERMESH_ERR_INVALID_INTENTION_QUERY')
  })
})

describe('intention validation', () => {
  it('accepts names and wildcards, keeps a description, drops unknown fields', () => {
    expect(validateIntention({ source: 'web', destination: '*', action: 'allow', extra: 1 })).toEqual({
      source: 'web',
      destination: '*',
      action: 'allow',
    })
    expect(
      validateIntention({ source: '*', destination: 'db', action: 'deny', description: 'lock down' }),
    ).toEqual({
      source: '*',
      destination: 'db',
      action: 'deny',
      description: 'lock down',
    })
  })

  it.each([
    [{ source: 'Web', destination: 'db', action: 'allow' }, 'PEERMESH_ERR_INVALID_INTENTION_NAME', 'source'],
    [
      { source: 'web', destination: 'db-', action: 'allow' },
      'PEERMESH_ERR_INVALID_INTENTION_NAME',
      'destination',
    ],
    [{ source: 'we*', destination: 'db', action: 'allow' }, 'PEERMESH_ERR_INVALID_INTENTION_NAME', 'source'],
    [{ source: '**', destination: 'db', action: 'allow' }, 'PEERMESH_ERR_INVALID_INTENTION_NAME', 'source'],
    [{ destination: 'db', action: 'allow' }, 'PEERMESH_ERR_INVALID_INTENTION_NAME', 'source'],
    [
      { source: 'web', destination: 7, action: 'allow' },
      'PEERMESH_ERR_INVALID_INTENTION_NAME',
      'destination',
    ],
    [
      { source: 'web', destination: 'a'.repeat(64), action: 'allow' },
      'PEERMESH_ERR_INVALID_INTENTION_NAME',
      'destination',
    ],
    [
      { source: 'web', destination: 'db', action: 'permit' },
      'PEERMESH_ERR_INVALID_INTENTION_ACTION',
      'action',
    ],
    [
      { source: 'web', destination: 'db', action: 'ALLOW' },
      'PEERMESH_ERR_INVALID_INTENTION_ACTION',
      'action',
    ],
    [{ source: 'web', destination: 'db' }, 'PEERMESH_ERR_INVALID_INTENTION_ACTION', 'action'],
    [
      { source: 'web', destination: 'db', action: 'allow', description: 5 },
      'PEERMESH_ERR_MALFORMED_INTENTION',
      'description',
    ],
    [null, 'PEERMESH_ERR_MALFORMED_INTENTION', 'intention'],
    [[], 'PEERMESH_ERR_MALFORMED_INTENTION', 'intention'],
    ['web->db', 'PEERMESH_ERR_MALFORMED_INTENTION', 'intention'],
  ])('%j -> %s on %s', (input, code, field) => {
    expect(errorOf(() => validateIntention(input))).toMatchObject({ code, field })
  })

  it('rejects duplicate (source, destination) pairs, whatever their actions', () => {
    const err = errorOf(() =>
      validateIntentionSet([I('web', 'db', 'allow'), I('*', 'db', 'deny'), I('web', 'db', 'deny')]),
    ) as { code?: string; indexes?: number[] }
    expect(err).toMatchObject({ code: 'PEERMESH_ERR_DUPLICATE_INTENTION', indexes: [0, 2] })
    expect(errorOf(() => new IntentionIndex([I('*', '*', 'allow'), I('*', '*', 'allow')]))?.code).toBe(
      'PEERMESH_ERR_DUPLICATE_INTENTION',
    )
    expect(errorOf(() => validateIntentionSet({}))?.code).toBe('PEERMESH_ERR_MALFORMED_INTENTION')
    expect(errorOf(() => new IntentionIndex([], 'maybe' as IntentionAction))).toMatchObject({
      code: 'PEERMESH_ERR_INVALID_INTENTION_ACTION',
      field: 'defaultAction',
    })
  })
})

/** The obvious reference: find the most specific matching rule by trying each tier in order. */
function naiveDecide(set: Intention[], src: string, dst: string, def: IntentionAction): IntentionAction {
  const tiers: [string, string][] = [
    [src, dst],
    ['*', dst],
    [src, '*'],
    ['*', '*'],
  ]
  for (const [s, d] of tiers) {
    const hit = set.find((i) => i.source === s && i.destination === d)
    if (hit) return hit.action
  }
  return def
}

describe('IntentionIndex agrees with a naive reference (fast-check)', () => {
  // A small alphabet of names makes collisions, wildcards and overlaps common.
  const name = fc.constantFrom('a', 'b', 'c', 'web', 'db')
  const side = fc.oneof(name, fc.constant('*'))
  const intentionSet = fc.uniqueArray(
    fc.record({ source: side, destination: side, action: fc.constantFrom<IntentionAction>('allow', 'deny') }),
    {
      selector: (i) => `${i.source} ${i.destination}`,
      maxLength: 20,
    },
  )
  const action = fc.constantFrom<IntentionAction>('allow', 'deny')

  it('decides the same for every source and destination', () => {
    fc.assert(
      fc.property(
        intentionSet,
        action,
        fc.array(fc.tuple(name, name), { minLength: 1, maxLength: 10 }),
        (set, def, queries) => {
          const index = new IntentionIndex(set, def)
          for (const [src, dst] of queries) {
            const expected = naiveDecide(set, src, dst, def)
            const got = index.decide(src, dst)
            expect(got.action).toBe(expected)
            expect(decide(set, src, dst, def).action).toBe(expected)
            if (got.matched) {
              expect([src, '*']).toContain(got.matched.source)
              expect([dst, '*']).toContain(got.matched.destination)
            }
          }
        },
      ),
      { numRuns: 500, seed: 20_240_601 },
    )
  })
})
