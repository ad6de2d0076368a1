/** Pure quorum arithmetic (Raft §5.2, §5.3). */

/** Number of votes needed for a majority of `n` voters. `quorum(0)` is 0 by convention. */
export function quorum(n: number): number {
  if (!Number.isInteger(n) || n < 0) throw new RangeError('n must be a non-negative integer')
  return n === 0 ? 0 : Math.floor(n / 2) + 1
}

/**
 * The largest index replicated on a majority of voters, given each voter's match index (Raft §5.3):
 * sort descending and take the `quorum(n)`-th. An empty list yields 0 (nothing can commit).
 */
export function committedIndex(matchIndexes: readonly number[]): number {
  const n = matchIndexes.length
  if (n === 0) return 0
  const sorted = [...matchIndexes].sort((a, b) => b - a)
  return sorted[quorum(n) - 1]!
}

export type VoteResult = 'won' | 'lost' | 'pending'

/** Outcome of an election among `voters` given the responses so far (missing = not yet answered). */
export function voteResult(voters: readonly string[], votes: ReadonlyMap<string, boolean>): VoteResult {
  const q = quorum(voters.length)
  let granted = 0
  let rejected = 0
  for (const v of voters) {
    const r = votes.get(v)
    if (r === true) granted++
    else if (r === false) rejected++
  }
  if (granted >= q) return 'won'
  if (rejected > voters.length - q) return 'lost'
  return 'pending'
}
