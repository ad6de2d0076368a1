import { describe, expect, it } from 'vitest'
import { LocalHealth } from '../../src/gossip/awareness.ts'
import { BroadcastQueue, retransmitLimit } from '../../src/gossip/broadcast-queue.ts'
import { compoundPartOverhead } from '../../src/gossip/codec.ts'
import {
  remainingSuspicionTime,
  Suspicion,
  suspicionMinTimeout,
  suspicionTimeouts,
} from '../../src/gossip/suspicion.ts'
import { pushPullInterval } from '../../src/gossip/swim.ts'

describe('Lifeguard §IV-B remainingSuspicionTime (memberlist suspicion_test table)', () => {
  const table: [number, number, number, number, number, number][] = [
    // confirmations, k, elapsed, min, max, expected
    [0, 3, 0, 2000, 30000, 30000],
    [1, 3, 2000, 2000, 30000, 14000],
    [2, 3, 3000, 2000, 30000, 4810],
    [3, 3, 4000, 2000, 30000, -2000],
    [4, 3, 5000, 2000, 30000, -3000],
    [5, 3, 10000, 2000, 30000, -8000],
    [0, 0, 100, 2000, 30000, 1900], // k < 1: no confirmation expected, min timeout
  ]
  it.each(table)('c=%i k=%i elapsed=%i min=%i max=%i -> %i', (c, k, elapsed, min, max, expected) => {
    expect(remainingSuspicionTime(c, k, elapsed, min, max)).toBe(expected)
  })

  it('Suspicion counts each independent accuser once, not the original one', () => {
    const s = new Suspicion({ from: 'a', startMs: 1000, incarnation: 1, k: 2, minMs: 1000, maxMs: 4000 })
    expect(s.deadlineMs()).toBe(5000)
    expect(s.confirm('a')).toBe(false)
    expect(s.confirm('b')).toBe(true)
    expect(s.confirm('b')).toBe(false)
    expect(s.deadlineMs()).toBe(1000 + Math.floor(4000 - (Math.log(2) / Math.log(3)) * 3000))
    expect(s.confirm('c')).toBe(true)
    expect(s.deadlineMs()).toBe(2000)
    expect(s.confirm('d')).toBe(false) // k reached
  })
})

describe('Lifeguard §IV-B suspicion minimum grows with log10(n)', () => {
  it.each([
    [2, 1, 200, 400],
    [2, 10, 200, 400],
    [2, 50, 200, Math.floor(2 * Math.log10(50) * 200)],
    [2, 1000, 200, 1200],
    [3, 10000, 200, 2400],
    [4, 0, 1000, 4000],
  ])('mult=%i n=%i interval=%i -> %i ms', (mult, n, interval, expected) => {
    expect(suspicionMinTimeout(mult, n, interval)).toBe(expected)
  })
})

describe('Lifeguard §IV-A/§IV-B suspicion timeouts scaled by the local health multiplier', () => {
  it.each([
    // mult, beta, n, interval, health → min, max
    [4, 4, 50, 150, 0, 1019, 4076],
    [4, 4, 200, 150, 0, 1380, 5520],
    [4, 4, 200, 150, 1, 2760, 11040],
    [4, 4, 200, 150, 7, 11040, 44160],
    [3, 4, 5, 500, 2, 4500, 18000],
  ])(
    'mult %i, beta %i, n %i, interval %i, health %i → min %i, max %i',
    (mult, beta, n, interval, h, min, max) => {
      expect(suspicionTimeouts(mult, beta, n, interval, h)).toEqual({ minMs: min, maxMs: max })
    },
  )

  it('a healthy node uses the unscaled Lifeguard timeouts', () => {
    for (const n of [1, 3, 10, 50, 1000])
      expect(suspicionTimeouts(4, 4, n, 150, 0).minMs).toBe(suspicionMinTimeout(4, n, 150))
  })
})

describe('SWIM §4.1 retransmit limit = mult · ceil(log10(n + 1))', () => {
  it.each([
    [4, 0, 0],
    [4, 1, 4],
    [4, 9, 4],
    [4, 10, 8],
    [4, 50, 8],
    [4, 99, 8],
    [4, 100, 12],
    [4, 1000, 16],
    [4, 10000, 20],
    [3, 5, 3],
  ])('mult=%i n=%i -> %i', (mult, n, expected) => {
    expect(retransmitLimit(mult, n)).toBe(expected)
  })
})

describe('push/pull interval scaling (memberlist pushPullScale)', () => {
  it.each([
    [10_000, 1, 10_000],
    [10_000, 32, 10_000],
    [10_000, 33, 20_000],
    [10_000, 64, 20_000],
    [10_000, 65, 30_000],
    [10_000, 1000, 60_000],
    [10_000, 10_000, 100_000],
  ])('interval=%i n=%i -> %i', (interval, n, expected) => {
    expect(pushPullInterval(interval, n)).toBe(expected)
  })
})

describe('Lifeguard §IV-A Local Health Multiplier', () => {
  it('saturates at [0, max-1] and scales timeouts by score+1', () => {
    const h = new LocalHealth(8)
    h.apply(-1)
    expect(h.health).toBe(0)
    expect(h.scale(200)).toBe(200)
    h.apply(3)
    expect(h.scale(200)).toBe(800)
    h.apply(100)
    expect(h.health).toBe(7)
    h.apply(-2)
    expect(h.health).toBe(5)
  })
})

describe('SWIM §4.1 piggyback queue', () => {
  const overhead = compoundPartOverhead
  it('sends least-transmitted first, newest first on ties, and drops after the limit', () => {
    const q = new BroadcastQueue(100)
    q.push('a', new Uint8Array(10).fill(1))
    q.push('b', new Uint8Array(10).fill(2))
    expect(q.take(1000, overhead, 2).map((b) => b[0])).toEqual([2, 1]) // newest first
    q.push('c', new Uint8Array(10).fill(3))
    expect(q.take(13, overhead, 2).map((b) => b[0])).toEqual([3]) // least transmitted first; room for one
    expect(q.size).toBe(3)
    q.take(1000, overhead, 2)
    expect(q.size).toBe(0) // everything reached 2 transmissions
  })

  it('a newer update about a member replaces the older one', () => {
    const q = new BroadcastQueue(100)
    q.push('a', new Uint8Array([1]))
    q.push('a', new Uint8Array([2, 2]))
    expect(q.size).toBe(1)
    expect([...q.take(1000, overhead, 5)[0]!]).toEqual([2, 2])
  })

  it('respects the byte budget and the queue bound', () => {
    const q = new BroadcastQueue(3)
    for (let i = 0; i < 10; i++) q.push(`m${i}`, new Uint8Array(100))
    expect(q.size).toBe(3)
    expect(q.take(150, overhead, 5)).toHaveLength(1)
  })
})
