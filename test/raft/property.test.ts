/**
 * Random-schedule safety checks (after hashicorp/raft `fuzzy/` and etcd's network tests): hundreds
 * of runs of 3- and 5-node clusters under message loss, delay/reordering, duplication, partitions
 * and crash-restarts, with proposals, with entry writes synchronous or off the event loop. The SimCluster throws as soon as a safety property breaks:
 * - Election Safety (Raft §5.2): at most one leader per term;
 * - State Machine Safety / Log Matching (§5.3, §5.4.3): the entry applied at an index is the same
 *   on every node, and each node applies indexes in order (committed prefixes never diverge);
 * and after healing, every node ends with the same applied sequence (nothing committed was lost).
 * A failure prints fast-check's seed and path; rerun with `fc.assert(..., { seed, path })` — every
 * schedule (including the cluster's own RNG seed) is derived from the generated value.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { SimCluster } from './sim-cluster.ts'

type Action =
  | { kind: 'tick'; n: number }
  | { kind: 'propose'; node: number; count: number }
  | { kind: 'partition'; mask: number }
  | { kind: 'isolate'; node: number }
  | { kind: 'heal' }
  | { kind: 'crash'; node: number }
  | { kind: 'restart'; node: number }
  | { kind: 'transfer'; node: number }

const action: fc.Arbitrary<Action> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.record({ kind: fc.constant('tick' as const), n: fc.integer({ min: 1, max: 8 }) }),
  },
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('propose' as const),
      node: fc.nat(4),
      count: fc.integer({ min: 1, max: 3 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('partition' as const), mask: fc.nat(31) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('isolate' as const), node: fc.nat(4) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('heal' as const) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('crash' as const), node: fc.nat(4) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('restart' as const), node: fc.nat(4) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('transfer' as const), node: fc.nat(4) }) },
)

const scenario = fc.record({
  size: fc.constantFrom(3, 5),
  seed: fc.integer({ min: 1, max: 2 ** 31 - 1 }),
  lossRate: fc.constantFrom(0, 0.05, 0.2),
  dupRate: fc.constantFrom(0, 0.05),
  maxDelay: fc.integer({ min: 0, max: 3 }),
  preVote: fc.boolean(),
  checkQuorum: fc.boolean(),
  snapshotEvery: fc.constantFrom(undefined, 4, 16),
  asyncWrites: fc.boolean(),
  idleHeartbeatTick: fc.constantFrom(0, 4, 25),
  actions: fc.array(action, { minLength: 40, maxLength: 200 }),
})

const stats = { runs: 0, applied: 0, terms: 0 }
type Scenario = typeof scenario extends fc.Arbitrary<infer T> ? T : never

function run(s: Scenario): void {
  const ids = ['n0', 'n1', 'n2', 'n3', 'n4'].slice(0, s.size)
  const c = new SimCluster(ids, {
    seed: s.seed,
    config: {
      preVote: s.preVote,
      checkQuorum: s.checkQuorum,
      maxEntriesPerMsg: 8,
      maxInflightMsgs: 4,
      idleHeartbeatTick: s.idleHeartbeatTick,
    },
    asyncWrites: s.asyncWrites,
    ...(s.snapshotEvery === undefined ? {} : { snapshotEvery: s.snapshotEvery, trailing: 2 }),
  })
  c.lossRate = s.lossRate
  c.dupRate = s.dupRate
  c.maxDelay = s.maxDelay
  let k = 0
  const pick = (n: number) => ids[n % ids.length]!
  for (const a of s.actions) {
    switch (a.kind) {
      case 'tick':
        c.tick(a.n)
        break
      case 'propose': {
        // To the named node if it leads (possibly a stale leader in a minority), else the newest leader.
        let n = c.node(pick(a.node))
        if (!n.up || n.raft.role !== 'leader') n = c.leader() ?? n
        if (!n.up || n.raft.role !== 'leader' || n.raft.leadTransferee !== undefined) break
        for (let i = 0; i < a.count; i++) c.propose(n.id, `p${k++}`)
        break
      }
      case 'partition': {
        const left = ids.filter((_, i) => (a.mask >> i) & 1)
        const right = ids.filter((id) => !left.includes(id))
        c.partition([left, right])
        break
      }
      case 'isolate':
        c.isolate(pick(a.node))
        break
      case 'heal':
        c.recover()
        break
      case 'crash':
        if (c.node(pick(a.node)).up) c.crash(pick(a.node))
        break
      case 'restart':
        if (!c.node(pick(a.node)).up) c.restart(pick(a.node))
        break
      case 'transfer': {
        const l = c.leader()
        if (l !== undefined && pick(a.node) !== l.id) {
          l.raft.transferLeadership(pick(a.node))
          c.process(l)
        }
        break
      }
    }
  }
  // Heal everything; the cluster must converge to one identical applied sequence.
  c.recover()
  c.lossRate = 0
  c.dupRate = 0
  for (const id of ids) if (!c.node(id).up) c.restart(id)
  // Liveness once healed: a leader emerges and a new proposal reaches every node. (A proposal can be
  // dropped if leadership changes again, e.g. a transfer still in flight: then propose anew.)
  let done = false
  for (let attempt = 0; attempt < 10 && !done; attempt++) {
    c.tickUntil(() => c.leader() !== undefined && c.leader()!.raft.leadTransferee === undefined, 1000)
    c.propose(c.leader()!.id, `final${attempt}`)
    for (let t = 0; t < 200 && !done; t++) {
      c.tick()
      done = ids.every((id) => c.data(id).at(-1) === `final${attempt}`)
    }
  }
  expect(done).toBe(true)
  c.checkAppliedPrefixes()
  stats.runs++
  stats.applied += c.node(ids[0]!).applied.length
  stats.terms += c.leader()!.raft.term
  const first = c.node(ids[0]!).applied
  for (const id of ids) expect(c.node(id).applied).toEqual(first)
}

/**
 * Found by this property (seed 216882517): n4 saved commit 7 with its term while the entries that
 * replaced its old tail (7..11 of term 4) were still being written, crashed, and on restart applied
 * the old 7@4 where everyone had applied 7@5. A commit saved beside a pending write now stops before
 * that write's first entry (node-driver.ts, and this simulator alike).
 */
const COMMIT_BEFORE_WRITE: Scenario = {
  size: 5,
  seed: 13,
  lossRate: 0,
  dupRate: 0.05,
  maxDelay: 1,
  preVote: true,
  checkQuorum: false,
  asyncWrites: true,
  actions: [
    { kind: 'tick', n: 1 },
    { kind: 'tick', n: 8 },
    { kind: 'tick', n: 1 },
    { kind: 'tick', n: 2 },
    { kind: 'crash', node: 1 },
    { kind: 'isolate', node: 2 },
    { kind: 'tick', n: 1 },
    { kind: 'tick', n: 1 },
    { kind: 'tick', n: 1 },
    { kind: 'tick', n: 1 },
    { kind: 'propose', node: 0, count: 1 },
    { kind: 'propose', node: 0, count: 1 },
    { kind: 'tick', n: 2 },
    { kind: 'propose', node: 0, count: 1 },
    { kind: 'tick', n: 4 },
    { kind: 'heal' },
    { kind: 'tick', n: 6 },
    { kind: 'tick', n: 4 },
    { kind: 'crash', node: 3 },
    { kind: 'restart', node: 0 },
    { kind: 'heal' },
    { kind: 'tick', n: 1 },
    { kind: 'tick', n: 8 },
    { kind: 'restart', node: 3 },
    { kind: 'propose', node: 0, count: 1 },
    { kind: 'propose', node: 0, count: 1 },
    { kind: 'partition', mask: 15 },
    { kind: 'tick', n: 1 },
    { kind: 'propose', node: 0, count: 1 },
    { kind: 'tick', n: 5 },
    { kind: 'propose', node: 0, count: 1 },
    { kind: 'tick', n: 7 },
    { kind: 'partition', mask: 3 },
    { kind: 'propose', node: 0, count: 1 },
    { kind: 'isolate', node: 0 },
    { kind: 'tick', n: 1 },
    { kind: 'tick', n: 1 },
    { kind: 'propose', node: 0, count: 1 },
    { kind: 'tick', n: 1 },
    { kind: 'propose', node: 0, count: 1 },
    { kind: 'restart', node: 0 },
    { kind: 'heal' },
    { kind: 'tick', n: 1 },
    { kind: 'restart', node: 0 },
    { kind: 'propose', node: 4, count: 2 },
    { kind: 'tick', n: 3 },
    { kind: 'crash', node: 4 },
    { kind: 'transfer', node: 0 },
    { kind: 'tick', n: 1 },
    { kind: 'propose', node: 0, count: 1 },
  ],
} as Scenario

describe('random schedules keep Raft safe (Raft §5.2, §5.3, §5.4)', () => {
  it('a commit index saved beside a pending write never names that write (State Machine Safety, §5.4.3)', () => {
    run({ ...COMMIT_BEFORE_WRITE, snapshotEvery: undefined, idleHeartbeatTick: 0 })
  })

  it('3- and 5-node clusters under loss, delay, duplication, partitions and crash-restart', () => {
    fc.assert(fc.property(scenario, run), { numRuns: 500 })
    // Guard against vacuous runs: the schedules must actually commit entries and change leaders.
    expect(stats.applied / stats.runs).toBeGreaterThan(5)
    expect(stats.terms / stats.runs).toBeGreaterThan(2)
  })
})
