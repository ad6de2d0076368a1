import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { z } from 'zod'
import { decodeMessage, encodeMessage } from '../../src/raft/codec.ts'
import { pack, unpack } from '../../src/common/msgpack.ts'
import { MESSAGE_TYPES, type Message } from '../../src/raft/types.ts'

/** The message shape as a schema: the reference the codec's written-out checks must agree with. */
const u = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER)
const id = z.string().min(1).max(256)
const reference = z.object({
  type: z.enum(MESSAGE_TYPES as [Message['type'], ...Message['type'][]]),
  from: id,
  to: id,
  term: u,
  logTerm: u,
  index: u,
  commit: u,
  entries: z
    .array(
      z.object({
        term: u,
        index: u,
        type: z.enum(['normal', 'conf']),
        data: z.instanceof(Uint8Array),
        requestId: z.object({ clientId: id, seq: u }).optional(),
      }),
    )
    .max(100_000),
  reject: z.boolean(),
  rejectHint: u,
  context: z.string().max(1024),
  snapshot: z
    .object({
      metadata: z.object({
        index: u,
        term: u,
        conf: z.object({ voters: z.array(id).max(1024), learners: z.array(id).max(1024) }),
      }),
      data: z.instanceof(Uint8Array),
    })
    .optional(),
  idleTicks: u.optional(),
  alive: z
    .array(z.object({ id, ageMs: u.max(60_000) }))
    .max(64)
    .optional(),
})

/** A value for a field: mostly good ones, and the kinds of bad ones a hostile peer might send. */
const any = (...good: fc.Arbitrary<unknown>[]) =>
  fc.oneof(
    { weight: 6, arbitrary: fc.oneof(...good) },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        -1,
        1.5,
        Number.NaN,
        Number.POSITIVE_INFINITY,
        2 ** 60,
        '',
        'x'.repeat(300),
        null,
        true,
        [],
        {},
        new Uint8Array([1]),
        'app',
      ),
    },
  )
const nat = fc.nat({ max: 1000 })
const name = fc.constantFrom('a', 'b', 'node-1')
const entry = fc.record(
  {
    term: any(nat),
    index: any(nat),
    type: any(fc.constantFrom('normal', 'conf')),
    data: any(fc.uint8Array({ maxLength: 8 })),
    requestId: any(fc.record({ clientId: any(name), seq: any(nat) })),
  },
  { requiredKeys: ['term', 'index', 'type', 'data'] },
)
const message = fc.record(
  {
    type: any(fc.constantFrom(...MESSAGE_TYPES)),
    from: any(name),
    to: any(name),
    term: any(nat),
    logTerm: any(nat),
    index: any(nat),
    commit: any(nat),
    entries: any(fc.array(entry, { maxLength: 3 })),
    reject: any(fc.boolean()),
    rejectHint: any(nat),
    context: any(fc.string({ maxLength: 4 })),
    snapshot: any(
      fc.record({
        metadata: any(
          fc.record({
            index: any(nat),
            term: any(nat),
            conf: any(fc.record({ voters: any(fc.array(name)), learners: any(fc.array(name)) })),
          }),
        ),
        data: any(fc.uint8Array({ maxLength: 4 })),
      }),
    ),
    idleTicks: any(nat),
    alive: any(fc.array(any(fc.record({ id: any(name), ageMs: any(nat) })), { maxLength: 3 })),
  },
  {
    requiredKeys: [
      'type',
      'from',
      'to',
      'term',
      'logTerm',
      'index',
      'commit',
      'entries',
      'reject',
      'rejectHint',
      'context',
    ],
  },
)

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
    const heartbeat: Message = {
      ...base,
      type: 'heartbeat',
      entries: [],
      alive: [
        { id: 'c', ageMs: 150 },
        { id: 'd', ageMs: 0 },
      ],
    }
    expect(decodeMessage(encodeMessage(heartbeat))).toEqual({ ok: true, message: heartbeat })
  })

  it('accepts exactly what the reference schema accepts, and decodes it to the same message', () => {
    fc.assert(
      fc.property(message, (m) => {
        const bytes = pack(m)
        const r = decodeMessage(bytes)
        const ref = reference.safeParse(unpack(bytes))
        expect(r.ok).toBe(ref.success)
        if (r.ok && ref.success) expect(encodeMessage(r.message)).toEqual(encodeMessage(ref.data as Message))
      }),
      { numRuns: 3000 },
    )
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
      pack({ ...base, alive: { id: 'c', ageMs: 1 } }),
      pack({ ...base, alive: [{ id: 'c', ageMs: 60_001 }] }),
      pack({ ...base, alive: [{ id: '', ageMs: 1 }] }),
      pack({ ...base, alive: Array.from({ length: 65 }, (_, i) => ({ id: `n${i}`, ageMs: 1 })) }),
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
