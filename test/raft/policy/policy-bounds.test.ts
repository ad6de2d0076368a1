import { Packr } from 'msgpackr'
import { describe, expect, it } from 'vitest'
import { pack } from '../../../src/common/msgpack.ts'
import { RAFT_DEFAULTS } from '../../../src/node/agent/defaults.ts'
import { encodeMessage } from '../../../src/raft/codec.ts'
import {
  checkPolicyCommand,
  DEFAULT_MAX_DEDUPE_CLIENTS,
  POLICY_LIMITS,
  encodePolicyCommand,
  type PolicyCommand,
  PolicyErrorCodes,
  type PolicyResult,
  PolicyStore,
  preparePolicyCommand,
} from '../../../src/raft/policy/policy-store.ts'
import { stripUndefined } from '../../../src/raft/policy/policy-commands.ts'
import type { Entry } from '../../../src/raft/types.ts'
import { raftMessage } from '../message.ts'

/** Hostile command bytes, as a malicious leader (or a forged forward) would put them in the log. */
function cyclicConfigSet(): Uint8Array {
  const cycle: unknown[] = []
  cycle.push(cycle)
  return new Packr({ structuredClone: true, useRecords: false }).pack({
    op: 'config.set',
    kind: 'service-defaults',
    name: 'web',
    value: { cycle },
  })
}

/** `{op: 'config.set', kind, name, value: {a: [[[...1343 deep...]]]}}`, built byte by byte. */
function deepConfigSet(depth: number): Uint8Array {
  const head = Buffer.concat([
    Buffer.from([0x84]),
    pack('op'),
    pack('config.set'),
    pack('kind'),
    pack('service-defaults'),
    pack('name'),
    pack('web'),
    pack('value'),
    Buffer.from([0x81]),
    pack('a'),
  ])
  return Buffer.concat([head, Buffer.alloc(depth, 0x91), Buffer.from([0xc0])])
}

const kv = (name: string, value: string): PolicyCommand => ({
  op: 'config.set',
  kind: 'kv',
  name,
  value: { value },
})

let nextIndex = 1
const entry = (data: Uint8Array): Entry => ({ term: 1, index: nextIndex++, type: 'normal', data })

const hostile: [string, () => Uint8Array][] = [
  ['a cyclic value (structured-clone extension)', cyclicConfigSet],
  ['a value 1,343 levels deep', () => deepConfigSet(1343)],
  ['a value 40 levels deep (valid msgpack, past the JSON depth)', () => deepConfigSet(40)],
  ['an unknown op', () => pack({ op: 'store.wipe' })],
  ['not msgpack', () => Buffer.from([0xc1, 0x00])],
  ['trailing bytes', () => Buffer.concat([encodePolicyCommand(kv('a', 'b')), Buffer.from([0])])],
  [
    'a non-finite number',
    () => pack({ op: 'config.set', kind: 'service-defaults', name: 'x', value: { n: Number.NaN } }),
  ],
  [
    'binary data in a config value',
    () => pack({ op: 'config.set', kind: 'service-defaults', name: 'x', value: { b: new Uint8Array(3) } }),
  ],
  ['a command that is not a map', () => pack(['config.set'])],
  ['an entry over the per-entry cap', () => encodePolicyCommand(kv('big', 'x'.repeat(65_536)))],
]

describe('PolicyStore fed invalid entries directly (a malicious leader)', () => {
  it.each(hostile)('refuses %s alike on every store, without a throw, state unchanged', (_what, bytes) => {
    const stores = [new PolicyStore(), new PolicyStore(), new PolicyStore()]
    for (const s of stores) s.apply(entry(encodePolicyCommand(kv('keep', 'me'))))
    const before = stores.map((s) => Buffer.from(s.snapshot()).toString('hex'))
    const data = bytes()
    const at = nextIndex++
    const results: PolicyResult[] = stores.map((s) => s.apply({ term: 1, index: at, type: 'normal', data }))
    expect(new Set(results.map((r) => JSON.stringify(r))).size).toBe(1)
    const r = results[0]!
    expect(r.ok).toBe(false)
    if (!r.ok) {
      expect([PolicyErrorCodes.invalidCommand, PolicyErrorCodes.tooLarge]).toContain(r.code)
      expect(r.message.length).toBeLessThanOrEqual(256)
    }
    stores.forEach((s, i) => {
      expect(Buffer.from(s.snapshot()).toString('hex')).toBe(before[i])
      expect(s.stats.invalidRejected + s.stats.tooLargeRejected).toBe(1)
      // The snapshot still works and restores.
      const copy = new PolicyStore()
      copy.restore(s.snapshot())
      expect(copy.getConfigEntry('kv', 'keep')?.value).toEqual({ value: 'me' })
    })
  })

  it('counts and refuses a too-large entry with PEERMESH_ERR_TOO_LARGE', () => {
    const s = new PolicyStore()
    const r = s.apply(entry(encodePolicyCommand(kv('big', 'x'.repeat(65_536)))))
    expect(r.ok ? undefined : r.code).toBe('PEERMESH_ERR_TOO_LARGE')
    expect(s.stats.tooLargeRejected).toBe(1)
    expect(s.listConfigEntries()).toEqual([])
  })
})

describe('total policy state cap', () => {
  const limits = { maxEntryBytes: 1_000, maxCaBytes: 10_000, maxStateBytes: 3_000 }

  it('refuses a write that grows the state past the cap; shrinking and deleting are allowed', () => {
    const s = new PolicyStore(undefined, { limits })
    const ok = (r: PolicyResult): boolean => r.ok
    expect(ok(s.apply(entry(encodePolicyCommand(kv('a', 'x'.repeat(900))))))).toBe(true)
    expect(ok(s.apply(entry(encodePolicyCommand(kv('b', 'x'.repeat(900))))))).toBe(true)
    expect(ok(s.apply(entry(encodePolicyCommand(kv('c', 'x'.repeat(900))))))).toBe(true)
    const full = s.sizeBytes
    const r = s.apply(entry(encodePolicyCommand(kv('d', 'x'.repeat(900)))))
    expect(r.ok ? undefined : r.code).toBe('PEERMESH_ERR_TOO_LARGE')
    expect(s.sizeBytes).toBe(full)
    expect(s.getConfigEntry('kv', 'd')).toBeUndefined()
    // Growing an entry in place is refused too; trimming one is not.
    expect(ok(s.apply(entry(encodePolicyCommand(kv('a', 'x'.repeat(990))))))).toBe(false)
    expect(ok(s.apply(entry(encodePolicyCommand(kv('a', 'x')))))).toBe(true)
    expect(s.sizeBytes).toBeLessThan(full)
    expect(ok(s.apply(entry(encodePolicyCommand({ op: 'config.delete', kind: 'kv', name: 'b' }))))).toBe(true)
    expect(ok(s.apply(entry(encodePolicyCommand(kv('d', 'x'.repeat(900))))))).toBe(true)
    // A store rebuilt from the snapshot measures the same, so it refuses the same next entry.
    const copy = new PolicyStore(undefined, { limits })
    copy.restore(s.snapshot())
    expect(copy.sizeBytes).toBe(s.sizeBytes)
    const next = encodePolicyCommand(kv('e', 'x'.repeat(900)))
    const at = nextIndex++
    expect(copy.apply({ term: 1, index: at, type: 'normal', data: next })).toEqual(
      s.apply({ term: 1, index: at, type: 'normal', data: next }),
    )
  })

  it('counts intentions against the cap, and not the CA (it has its own)', () => {
    const s = new PolicyStore(undefined, { limits })
    const meta = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`k${i}`, 'v'.repeat(16)]))
    const upsert = (source: string): PolicyResult =>
      s.apply(
        entry(
          encodePolicyCommand({ op: 'intention.upsert', source, destination: 'db', action: 'allow', meta }),
        ),
      )
    expect(upsert('a').ok && upsert('b').ok && upsert('c').ok).toBe(true)
    const r = upsert('d')
    expect(r.ok ? undefined : r.code).toBe('PEERMESH_ERR_TOO_LARGE')
    const ca = s.apply(
      entry(encodePolicyCommand({ op: 'ca.setRoots', roots: [{ id: 'r', certPem: 'x'.repeat(5_000) }] })),
    )
    expect(ca.ok).toBe(true)
    const big = s.apply(
      entry(encodePolicyCommand({ op: 'ca.setRoots', roots: [{ id: 'r', certPem: 'x'.repeat(20_000) }] })),
    )
    expect(big.ok ? undefined : big.code).toBe('PEERMESH_ERR_TOO_LARGE')
  })
})

describe('values are data', () => {
  it('stripUndefined is iterative: a cycle or a hostile depth is a RangeError, not a stack overflow', () => {
    const cycle: unknown[] = []
    cycle.push(cycle)
    expect(() => stripUndefined({ value: cycle })).toThrow(RangeError)
    let deep: unknown = null
    for (let i = 0; i < 100_000; i++) deep = [deep]
    expect(() => stripUndefined(deep)).toThrow(RangeError)
    expect(stripUndefined({ a: 1, b: undefined, c: [undefined, { d: undefined, e: 'x' }] })).toEqual({
      a: 1,
      c: [undefined, { e: 'x' }],
    })
  })

  it('preparePolicyCommand refuses a cyclic value and re-encodes only the schema fields', () => {
    const cycle: Record<string, unknown> = {}
    cycle['self'] = cycle
    const r = preparePolicyCommand({ op: 'config.set', kind: 'service-defaults', name: 'x', value: cycle })
    expect(r.ok ? undefined : r.code).toBe(PolicyErrorCodes.invalidCommand)
    const p = preparePolicyCommand({
      op: 'intention.delete',
      source: 'a',
      destination: 'b',
      extra: 'dropped',
    })
    expect(p.ok).toBe(true)
    if (p.ok) expect(p.data).toEqual(pack({ op: 'intention.delete', source: 'a', destination: 'b' }))
  })

  it('checks the kind schema with the command', () => {
    const r = checkPolicyCommand({ op: 'config.set', kind: 'nope', name: 'x', value: {} })
    expect(r.ok ? undefined : r.code).toBe(PolicyErrorCodes.invalidCommand)
  })

  it('a malformed snapshot throws before anything changes', () => {
    const s = new PolicyStore()
    s.apply(entry(encodePolicyCommand(kv('keep', 'me'))))
    const before = Buffer.from(s.snapshot()).toString('hex')
    const bads = [
      pack({ version: 1, index: 5, intentions: 'no', configEntries: [], ca: { modifyIndex: 0 }, dedupe: [] }),
      pack({
        version: 1,
        index: 5,
        intentions: [],
        configEntries: [{ kind: 'kv' }],
        ca: { modifyIndex: 0 },
        dedupe: [],
      }),
      cyclicConfigSet(),
    ]
    for (const b of bads) expect(() => s.restore(b)).toThrow()
    expect(Buffer.from(s.snapshot()).toString('hex')).toBe(before)
  })
})

describe('any legal state replicates', () => {
  it('a snapshot of the largest legal state fits one Raft message (RAFT_DEFAULTS.maxMessageBytes)', () => {
    // Worst case for the encoding's overhead: the smallest entries, up to the cap; the CA at its
    // cap; the dedupe table full of the longest client ids, each remembering a refusal.
    const s = new PolicyStore()
    let i = 0
    for (;;) {
      const data = encodePolicyCommand({
        op: 'intention.upsert',
        source: `s${i}`,
        destination: 'd',
        action: 'allow',
      })
      if (!s.apply({ term: 1, index: ++i, type: 'normal', data }).ok) break
    }
    expect(s.sizeBytes).toBeGreaterThan(POLICY_LIMITS.maxStateBytes - 1_000)
    const roots = [{ id: 'r', certPem: 'x'.repeat(POLICY_LIMITS.maxCaBytes - 100) }]
    expect(
      s.apply({
        term: 1,
        index: ++i,
        type: 'normal',
        data: encodePolicyCommand({ op: 'ca.setRoots', roots }),
      }).ok,
    ).toBe(true)
    const refused = pack({ op: 'x'.repeat(300) })
    for (let c = 0; c < DEFAULT_MAX_DEDUPE_CLIENTS; c++)
      s.apply({
        term: 1,
        index: ++i,
        type: 'normal',
        data: refused,
        requestId: { clientId: `${c}`.padEnd(256, 'c'), seq: 1 },
      })
    const data = s.snapshot()
    const msg = encodeMessage(
      raftMessage({
        type: 'snap',
        snapshot: { metadata: { index: i, term: 1, conf: { voters: ['a', 'b', 'c'], learners: [] } }, data },
        context: 'x'.repeat(200), // the leader's signature
      }),
    )
    expect(msg.length).toBeLessThan(RAFT_DEFAULTS.maxMessageBytes)
  })
})
