import { describe, expect, it } from 'vitest'
import { encodePushPull, pushPullMemberCount } from '../../src/gossip/codec.ts'
import {
  accusationWithinSigned,
  MAX_INCARNATION,
  MAX_PLAUSIBLE_INCARNATION,
  refutationIncarnation,
  repairedIncarnation,
} from '../../src/gossip/incarnation.ts'
import { Suspicion } from '../../src/gossip/suspicion.ts'

describe('SWIM §4.2 incarnation rules an accuser cannot weaponize', () => {
  it.each<[number, number, boolean]>([
    // accused, signed by the accused, believed
    [0, 0, true],
    [5, 5, true],
    [6, 5, true], // a suspicion may carry the owner's next incarnation
    [7, 5, false],
    [MAX_INCARNATION, 5, false], // the 2^53−1 attack
    [MAX_INCARNATION, MAX_INCARNATION, true],
  ])('accusation at %i against a record signed at %i: %s', (accused, signed, ok) => {
    expect(accusationWithinSigned(accused, signed)).toBe(ok)
  })

  it.each<[number, number, number]>([
    // own, accused, refutation
    [5, 5, 6],
    [5, 6, 7],
    [5, 3, 6],
    [MAX_INCARNATION - 1, MAX_INCARNATION - 1, MAX_INCARNATION],
    [MAX_INCARNATION, MAX_INCARNATION, MAX_INCARNATION], // clamped: never 2^53
  ])('own %i accused at %i refutes with %i', (own, accused, expected) => {
    const r = refutationIncarnation(own, accused)
    expect(r).toBe(expected)
    expect(Number.isSafeInteger(r)).toBe(true)
  })

  it.each<[unknown, number, boolean]>([
    [0, 0, false],
    [41, 41, false],
    [MAX_PLAUSIBLE_INCARNATION, MAX_PLAUSIBLE_INCARNATION, false],
    [MAX_PLAUSIBLE_INCARNATION + 1, 0, true],
    [2 ** 53, 0, true],
    [-1, 0, true],
    [1.5, 0, true],
    [Number.NaN, 0, true],
    ['7', 0, true],
  ])('persisted %s -> %i (repaired: %s)', (persisted, incarnation, repaired) => {
    expect(repairedIncarnation(persisted)).toEqual({ incarnation, repaired })
  })
})

describe('push/pull member count read from the header', () => {
  const entry = {
    id: 'x',
    st: 'alive' as const,
    inc: 1,
    ri: 1,
    rec: new Uint8Array(3),
    sig: new Uint8Array(2),
  }
  it.each([0, 1, 15, 16, 300, 70_000])('%i members', (n) => {
    const bytes = encodePushPull({ t: 'state', join: n % 2 === 0, members: Array(n).fill(entry) })
    expect(pushPullMemberCount(bytes)).toBe(n)
  })
  it('undefined for bytes that do not start like our state', () => {
    expect(pushPullMemberCount(new Uint8Array([1, 2, 3]))).toBeUndefined()
    expect(pushPullMemberCount(new Uint8Array(0))).toBeUndefined()
  })
})

describe('Lifeguard §IV-B confirmations: a new accuser from a new authenticated sender', () => {
  const s = () =>
    new Suspicion({ from: 'a', via: 'b', startMs: 0, incarnation: 1, k: 3, minMs: 100, maxMs: 400 })
  it.each<[string, [string, string][], number]>([
    ['the accuser itself again', [['a', 'a']], 0],
    ['the first relay again, for someone else', [['c', 'b']], 0],
    [
      'one sender forging three accusers',
      [
        ['c', 'm'],
        ['d', 'm'],
        ['e', 'm'],
      ],
      1,
    ],
    [
      'three accusers speaking for themselves',
      [
        ['c', 'c'],
        ['d', 'd'],
        ['e', 'e'],
      ],
      3,
    ],
    [
      'capped at k',
      [
        ['c', 'c'],
        ['d', 'd'],
        ['e', 'e'],
        ['f', 'f'],
      ],
      3,
    ],
  ])('%s', (_name, confirmations, expected) => {
    const sus = s()
    for (const [from, via] of confirmations) sus.confirm(from, via)
    expect(sus.confirmations).toBe(expected)
  })
})
