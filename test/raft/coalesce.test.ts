import { raftMessage } from './message.ts'
import { describe, expect, it } from 'vitest'
import { coalesceMessages } from '../../src/raft/coalesce.ts'
import type { Entry, Message } from '../../src/raft/types.ts'

const limits = { maxEntries: 256, maxBytes: 1 << 20 }
const ent = (index: number, term = 2): Entry =>
  ({ index, term, type: 'normal', data: new Uint8Array([index]) }) as Entry
const msg = (p: Partial<Message> & Pick<Message, 'type' | 'to'>): Message => raftMessage({ term: 2, ...p })
const app = (to: string, prev: number, ents: number[], commit: number): Message =>
  msg({ type: 'app', to, index: prev, logTerm: 2, entries: ents.map((i) => ent(i)), commit })

describe('coalesceMessages', () => {
  it('merges consecutive appends to one peer, per peer, keeping each peer’s order', () => {
    const out = coalesceMessages(
      [
        app('b', 4, [5], 4),
        app('c', 4, [5], 4),
        app('b', 5, [6], 4),
        app('c', 5, [6], 5),
        app('b', 6, [], 6),
      ],
      limits,
    )
    expect(out).toHaveLength(2)
    expect(out[0]).toMatchObject({ to: 'b', index: 4, commit: 6 })
    expect(out[0]!.entries.map((e) => e.index)).toEqual([5, 6])
    expect(out[1]).toMatchObject({ to: 'c', index: 4, commit: 5 })
    expect(out[1]!.entries.map((e) => e.index)).toEqual([5, 6])
  })

  it('does not merge appends that do not continue each other, or of another term', () => {
    const gap = coalesceMessages([app('b', 4, [5], 4), app('b', 7, [8], 4)], limits)
    expect(gap).toHaveLength(2)
    const term = coalesceMessages([app('b', 4, [5], 4), { ...app('b', 5, [6], 4), term: 3 }], limits)
    expect(term).toHaveLength(2)
    const capped = coalesceMessages([app('b', 4, [5], 4), app('b', 5, [6], 4)], { ...limits, maxEntries: 1 })
    expect(capped).toHaveLength(2)
  })

  it('keeps the highest of consecutive successful appResps, never merges a rejection', () => {
    const ok = (index: number): Message => msg({ type: 'appResp', from: 'b', to: 'a', index })
    expect(coalesceMessages([ok(5), ok(7)], limits)).toEqual([ok(7)])
    const rej = msg({ type: 'appResp', from: 'b', to: 'a', index: 6, reject: true, rejectHint: 3 })
    expect(coalesceMessages([ok(5), rej, ok(7)], limits)).toHaveLength(3)
  })

  it('leaves other messages alone', () => {
    const hb = msg({ type: 'heartbeat', to: 'b', commit: 3 })
    expect(coalesceMessages([hb, hb], limits)).toHaveLength(2)
  })
})
