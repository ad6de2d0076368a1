/**
 * L7 intentions in the policy store: Permissions go through a Raft command, are stored in their
 * canonical form and survive a snapshot; hostile ones are refused as a result, the same on every
 * agent, and change nothing.
 */
import { describe, expect, it } from 'vitest'
import { pack } from '../../../src/common/msgpack.ts'
import {
  checkPolicyCommand,
  encodePolicyCommand,
  type PolicyCommand,
  PolicyStore,
} from '../../../src/raft/policy/policy-store.ts'
import type { Entry } from '../../../src/raft/types.ts'

let nextIndex = 1
function entry(cmd: PolicyCommand | Uint8Array): Entry {
  const data = cmd instanceof Uint8Array ? cmd : encodePolicyCommand(cmd)
  return { term: 1, index: nextIndex++, type: 'normal', data }
}

const perms = [
  { Action: 'allow', HTTP: { PathExact: '/public', Methods: ['GET'] } },
  { Action: 'deny', HTTP: { PathPrefix: '/admin' } },
]

describe('PolicyStore: L7 intentions', () => {
  it('stores Permissions (canonical field names) and keeps them through a snapshot', () => {
    const s = new PolicyStore()
    const r = s.apply(
      entry({
        op: 'intention.upsert',
        source: 'web',
        destination: 'api',
        action: 'deny',
        permissions: [{ action: 'allow', http: { path_exact: '/public', methods: ['GET'] } }, perms[1]],
      }),
    )
    expect(r.ok).toBe(true)
    expect(s.getIntention('web', 'api')).toMatchObject({ action: 'deny', permissions: perms })
    const copy = new PolicyStore()
    copy.restore(s.snapshot())
    expect(copy.getIntention('web', 'api')).toEqual(s.getIntention('web', 'api'))
    expect(copy.sizeBytes).toBe(s.sizeBytes)
  })

  it.each([
    [{ action: 'allow', permissions: perms }, /action: must be deny with permissions/],
    [{ action: 'deny', permissions: [] }, /^permissions: /],
    [
      { action: 'deny', permissions: [{ Action: 'allow', HTTP: { PathRegex: '(' } }] },
      /^permissions\.0\.HTTP\.PathRegex: /,
    ],
    [
      { action: 'deny', permissions: [{ Action: 'allow', HTTP: { PathExact: '/', Nope: 1 } }] },
      /^permissions\.0\.HTTP\.Nope: unknown field/,
    ],
    [
      { action: 'deny', permissions: [{ Action: 'allow', HTTP: {} }] },
      /^permissions\.0\.HTTP: should not be empty/,
    ],
  ])('refuses %j, naming the field, and changes nothing', (fields, want) => {
    const s = new PolicyStore()
    const before = s.snapshot()
    const raw = { op: 'intention.upsert', source: 'web', destination: 'api', ...fields }
    const checked = checkPolicyCommand(raw)
    expect(checked.ok).toBe(false)
    if (!checked.ok) expect(checked.message).toMatch(want)
    const r = s.apply(entry(pack(raw)))
    expect(r.ok ? undefined : r.code).toBe('PEERMESH_ERR_INVALID_COMMAND')
    expect(s.listIntentions()).toEqual([])
    expect(s.snapshot()).toEqual(before)
  })

  it('intention.replace (a service-intentions write) replaces every intention to one destination at once', () => {
    const s = new PolicyStore()
    s.apply(entry({ op: 'intention.upsert', source: 'web', destination: 'api', action: 'allow' }))
    s.apply(entry({ op: 'intention.upsert', source: 'old', destination: 'api', action: 'allow' }))
    s.apply(entry({ op: 'intention.upsert', source: 'web', destination: 'db', action: 'allow' }))
    const webCreated = s.getIntention('web', 'api')!.createdIndex
    const r = s.apply(
      entry({
        op: 'intention.replace',
        destination: 'api',
        sources: [
          { source: 'web', action: 'deny', permissions: perms },
          { source: '*', action: 'deny' },
        ],
      }),
    )
    expect(r.ok).toBe(true)
    const api = s
      .listIntentions()
      .filter((i) => i.destination === 'api')
      .map((i) => [i.source, i.action, i.permissions !== undefined])
    expect(api.sort()).toEqual([
      ['*', 'deny', false],
      ['web', 'deny', true],
    ])
    expect(s.getIntention('web', 'api')!.createdIndex).toBe(webCreated) // the pair was kept
    expect(s.getIntention('web', 'db')).toBeDefined() // other destinations untouched
    const copy = new PolicyStore()
    copy.restore(s.snapshot())
    expect(copy.sizeBytes).toBe(s.sizeBytes)
    // Hostile: a source twice, or bad permissions: refused whole, nothing changed.
    const before = s.snapshot()
    for (const sources of [
      [
        { source: 'a', action: 'allow' },
        { source: 'a', action: 'deny' },
      ],
      [{ source: 'a', action: 'deny', permissions: [{ Action: 'allow', HTTP: { PathRegex: '(' } }] }],
    ]) {
      const bad = s.apply(entry(pack({ op: 'intention.replace', destination: 'api', sources })))
      expect(bad.ok).toBe(false)
    }
    const after = new PolicyStore()
    after.restore(before)
    expect(s.listIntentions()).toEqual(after.listIntentions())
    // An empty list removes them all (deleting the entry).
    expect(s.apply(entry({ op: 'intention.replace', destination: 'api', sources: [] })).ok).toBe(true)
    expect(s.listIntentions().map((i) => i.destination)).toEqual(['db'])
  })

  it('a snapshot holding malformed permissions is refused whole', () => {
    const bad = pack({
      version: 1,
      index: 3,
      intentions: [
        {
          source: 'web',
          destination: 'api',
          action: 'deny',
          permissions: [{ Action: 'x' }],
          createdIndex: 1,
          modifyIndex: 1,
        },
      ],
      configEntries: [],
      ca: { modifyIndex: 0 },
      dedupe: [],
    })
    const s = new PolicyStore()
    expect(() => s.restore(bad)).toThrow(/intention permissions/)
    expect(s.index).toBe(0)
  })
})
