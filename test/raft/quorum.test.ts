import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { committedIndex, quorum, voteResult } from '../../src/raft/quorum.ts'

describe('quorum (Raft §5.2)', () => {
  it.each([
    [0, 0],
    [1, 1],
    [2, 2],
    [3, 2],
    [4, 3],
    [5, 3],
    [6, 4],
    [7, 4],
  ])('quorum(%i) = %i', (n, q) => {
    expect(quorum(n)).toBe(q)
  })

  it('rejects nonsense', () => {
    expect(() => quorum(-1)).toThrow(RangeError)
    expect(() => quorum(1.5)).toThrow(RangeError)
  })
})

describe('committedIndex (Raft §5.3)', () => {
  it.each([
    [[], 0],
    [[5], 5],
    [[5, 3], 3],
    [[1, 2, 3], 2],
    [[3, 3, 1], 3],
    [[10, 1, 1, 10], 1],
    [[10, 9, 1, 10], 9],
    [[7, 7, 7, 1, 1], 7],
    [[5, 4, 3, 2, 1], 3],
  ])('committedIndex(%j) = %i', (m, want) => {
    expect(committedIndex(m)).toBe(want)
  })

  /** Naive reference (etcd quorum/quick_test.go): the largest index that a majority has reached. */
  function naive(m: number[]): number {
    let best = 0
    for (const candidate of m) {
      const reached = m.filter((x) => x >= candidate).length
      if (reached >= quorum(m.length) && candidate > best) best = candidate
    }
    return best
  }

  it('matches the naive reference on random inputs', () => {
    fc.assert(
      fc.property(fc.array(fc.nat({ max: 50 }), { maxLength: 9 }), (m) => {
        expect(committedIndex(m)).toBe(naive(m))
      }),
      { numRuns: 2000 },
    )
  })
})

describe('voteResult', () => {
  it('wins with a majority, loses when a majority is impossible', () => {
    const voters = ['a', 'b', 'c']
    expect(voteResult(voters, new Map([['a', true]]))).toBe('pending')
    expect(
      voteResult(
        voters,
        new Map([
          ['a', true],
          ['b', true],
        ]),
      ),
    ).toBe('won')
    expect(
      voteResult(
        voters,
        new Map([
          ['a', true],
          ['b', false],
          ['c', false],
        ]),
      ),
    ).toBe('lost')
    // votes from non-voters do not count
    expect(
      voteResult(
        voters,
        new Map([
          ['a', true],
          ['x', true],
        ]),
      ),
    ).toBe('pending')
  })
})
