import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { decodeMessage, encodeMessage } from '../../src/raft/codec.ts'
import { pack } from '../../src/common/msgpack.ts'
import type { Message } from '../../src/raft/types.ts'

const base: Message = {
  type: 'app',
  from: 'a',
  to: 'b',
  term: 3,
  logTerm: 2,
  index: 10,
  commit: 9,
  entries: [
    {
      term: 3,
      index: 11,
      type: 'normal',
      data: new Uint8Array([1, 2, 3]),
      requestId: { clientId: 'c', seq: 1 },
    },
    { term: 3, index: 12, type: 'conf', data: new Uint8Array([4]) },
  ],
  reject: false,
  rejectHint: 0,
  context: '',
}

describe('raft message codec', () => {
  it('round-trips messages, snapshots included', () => {
    expect(decodeMessage(encodeMessage(base))).toEqual({ ok: true, message: base })
    const snap: Message = {
      ...base,
      type: 'snap',
      entries: [],
      snapshot: {
        metadata: { index: 5, term: 2, conf: { voters: ['a', 'b'], learners: ['c'] } },
        data: new Uint8Array([9]),
      },
    }
    expect(decodeMessage(encodeMessage(snap))).toEqual({ ok: true, message: snap })
  })

  it('returns an error (never throws) on garbage and on wrong shapes', () => {
    const bad = [
      new Uint8Array([]),
      new Uint8Array([0xc1]),
      pack('hello'),
      pack({ ...base, type: 'nuke' }),
      pack({ ...base, term: -1 }),
      pack({ ...base, term: 1.5 }),
      pack({ ...base, from: '' }),
      pack({ ...base, entries: [{ term: 1 }] }),
    ]
    for (const b of bad) expect(decodeMessage(b).ok).toBe(false)
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        const r = decodeMessage(bytes)
        expect(typeof r.ok).toBe('boolean')
      }),
      { numRuns: 2000 },
    )
  })
})
