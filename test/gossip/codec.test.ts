import fc from 'fast-check'
import { pack } from 'msgpackr'
import { describe, expect, it } from 'vitest'
import {
  decodeMessage,
  decodePushPull,
  decodeRecord,
  encodeMessage,
  encodePushPull,
  encodeRecord,
  packParts,
  STATE_DIGEST_BYTES,
  stateEntryDigest,
} from '../../src/gossip/codec.ts'
import type { Message, NodeRecord } from '../../src/gossip/messages.ts'

const record: NodeRecord = {
  id: 'peer-1',
  name: 'web-1',
  addresses: ['/ip4/10.0.0.1/tcp/4001'],
  tags: { dc: 'eu1' },
  meta: { services: [{ name: 'web', port: 8080, healthy: true }], note: null },
  version: 3,
}
const rec = encodeRecord(record)

const messages: Message[] = [
  { t: 'ping', seq: 1, target: 'b' },
  { t: 'ping-req', seq: 2, target: 'c', nack: true },
  { t: 'ack', seq: 3 },
  { t: 'nack', seq: 4 },
  { t: 'alive', inc: 5, rec, sig: new Uint8Array([1, 2, 3]) },
  { t: 'suspect', id: 'x', inc: 6, from: 'y' },
  { t: 'dead', id: 'x', inc: 7, from: 'y' },
  { t: 'leave', id: 'x', inc: 8, sig: new Uint8Array(64) },
  { t: 'sync', seq: 9, digest: new Uint8Array(STATE_DIGEST_BYTES).fill(7) },
  { t: 'sync-ack', seq: 10, digest: new Uint8Array(STATE_DIGEST_BYTES).fill(8) },
]

describe('codec', () => {
  it.each(messages.map((m) => [m.t, m]))('round-trips %s', (_t, m) => {
    const r = decodeMessage(encodeMessage(m), 1400)
    expect(r.ok).toBe(true)
    if (!r.ok) return
    const plain = (o: object) =>
      Object.fromEntries(Object.entries(o).map(([k, v]) => [k, v instanceof Uint8Array ? [...v] : v]))
    expect(plain(r.msg)).toMatchObject(plain(m))
    if (r.msg.t === 'alive') expect(r.msg.record).toEqual(record)
  })

  it('refuses a digest check whose digest is not 16 bytes or whose seq is not a 32-bit number', () => {
    for (const t of ['sync', 'sync-ack']) {
      for (const bad of [
        { t, seq: 1, digest: new Uint8Array(STATE_DIGEST_BYTES - 1) },
        { t, seq: 1, digest: new Uint8Array(STATE_DIGEST_BYTES + 1) },
        { t, seq: 1, digest: 'x'.repeat(STATE_DIGEST_BYTES) },
        { t, seq: -1, digest: new Uint8Array(STATE_DIGEST_BYTES) },
        { t, seq: 2 ** 32, digest: new Uint8Array(STATE_DIGEST_BYTES) },
        { t, digest: new Uint8Array(STATE_DIGEST_BYTES) },
      ])
        expect(decodeMessage(pack(bad), 1400)).toEqual({ ok: false, reason: 'shape' })
    }
  })

  it('a state entry digest depends on every field a merge acts on', () => {
    const sig = new Uint8Array(64).fill(1)
    const base = stateEntryDigest('a', 'alive', 3, 3, sig)
    expect(base).toHaveLength(STATE_DIGEST_BYTES)
    expect(stateEntryDigest('a', 'alive', 3, 3, sig.slice())).toEqual(base)
    for (const other of [
      stateEntryDigest('b', 'alive', 3, 3, sig),
      stateEntryDigest('a', 'suspect', 3, 3, sig),
      stateEntryDigest('a', 'alive', 4, 3, sig),
      stateEntryDigest('a', 'alive', 3, 2, sig),
      stateEntryDigest('a', 'alive', 3, 3, new Uint8Array(64).fill(2)),
    ])
      expect(other).not.toEqual(base)
  })

  it('round-trips a compound of every simple type', () => {
    const r = decodeMessage(packParts(messages.map(encodeMessage)), 1400)
    expect(r.ok && r.msg.t === 'compound' && r.msg.parts.map((p) => p.t)).toEqual(messages.map((m) => m.t))
  })

  it('round-trips a push/pull state', () => {
    const members = [
      { id: 'peer-1', st: 'alive' as const, inc: 2, ri: 2, rec, sig: new Uint8Array(64) },
      {
        id: 'peer-2',
        st: 'left' as const,
        inc: 4,
        ri: 3,
        rec,
        sig: new Uint8Array(64),
        lsig: new Uint8Array(64),
      },
    ]
    const r = decodePushPull(encodePushPull({ t: 'state', join: true, members }), 1 << 20)
    expect(r.ok && r.msg.join).toBe(true)
    expect(r.ok && r.msg.members.map((m) => [m.id, m.st, m.inc, m.ri, m.lsig?.length])).toEqual([
      ['peer-1', 'alive', 2, 2, undefined],
      ['peer-2', 'left', 4, 3, 64],
    ])
  })

  it.each([
    ['not msgpack', new Uint8Array([0x82, 0xa1]), 'decode'],
    ['truncated', encodeMessage({ t: 'ping', seq: 1, target: 'b' }).subarray(0, 5), 'decode'],
    ['a number', pack(42), 'type'],
    ['an array', pack([1, 2]), 'type'],
    ['unknown type', pack({ t: 'bogus', seq: 1 }), 'type'],
    ['seq as string', pack({ t: 'ping', seq: '1', target: 'b' }), 'shape'],
    ['negative seq', pack({ t: 'ack', seq: -1 }), 'shape'],
    ['fractional incarnation', pack({ t: 'suspect', id: 'x', inc: 1.5, from: 'y' }), 'shape'],
    ['nack flag missing', pack({ t: 'ping-req', seq: 1, target: 'b' }), 'shape'],
    ['empty id', pack({ t: 'dead', id: '', inc: 1, from: 'y' }), 'shape'],
    [
      'alive with record garbage',
      pack({ t: 'alive', inc: 1, rec: new Uint8Array([0xc1]), sig: new Uint8Array() }),
      'shape',
    ],
    ['nested compound', pack({ t: 'compound', parts: [pack({ t: 'compound', parts: [] })] }), 'type'],
    ['compound with non-bytes part', pack({ t: 'compound', parts: ['x'] }), 'shape'],
    ['oversize', new Uint8Array(1401), 'oversize'],
  ])('rejects %s', (_why, bytes, reason) => {
    expect(decodeMessage(bytes, 1400)).toEqual({ ok: false, reason })
  })

  it.each([
    ['binary in meta', { ...record, meta: { x: new Uint8Array(2) } }],
    ['non-string tag', { ...record, tags: { a: 1 } }],
    ['addresses not an array', { ...record, addresses: 'x' }],
    ['missing version', { ...record, version: undefined }],
    [
      'too many tags',
      { ...record, tags: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])) },
    ],
  ])('rejects a record with %s', (_why, bad) => {
    expect(decodeRecord(pack(bad), 1024).ok).toBe(false)
  })

  it('never throws on random bytes (fast-check)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2000 }), (bytes) => {
        const r = decodeMessage(bytes, 1400)
        const s = decodePushPull(bytes, 1 << 20)
        return typeof r.ok === 'boolean' && typeof s.ok === 'boolean'
      }),
      { numRuns: 2000 },
    )
  })

  it('never throws on structurally wrong objects (fast-check)', () => {
    const type = fc.constantFrom(
      'ping',
      'ping-req',
      'ack',
      'nack',
      'alive',
      'suspect',
      'dead',
      'leave',
      'compound',
      'state',
    )
    const wrong = fc.record({
      t: type,
      seq: fc.anything(),
      target: fc.anything(),
      nack: fc.anything(),
      inc: fc.anything(),
      rec: fc.oneof(fc.anything(), fc.uint8Array()),
      sig: fc.anything(),
      id: fc.anything(),
      from: fc.anything(),
      parts: fc.oneof(fc.anything(), fc.array(fc.uint8Array())),
      members: fc.anything(),
      join: fc.anything(),
    })
    fc.assert(
      fc.property(fc.oneof(wrong, fc.anything()), (obj) => {
        let bytes: Uint8Array
        try {
          bytes = pack(obj)
        } catch {
          return true
        }
        decodeMessage(bytes, 1 << 16)
        decodePushPull(bytes, 1 << 20)
        return true
      }),
      { numRuns: 1000 },
    )
  })
})
