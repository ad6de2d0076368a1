import { describe, expect, it } from 'vitest'
import {
  type AutopilotInput,
  DEFAULT_AUTOPILOT,
  defaultEligibility,
  type GossipStatus,
  largestOdd,
  planAutopilot,
  trackDown,
} from '../../../src/node/raft/autopilot.ts'

const S = { ...DEFAULT_AUTOPILOT, targetVoters: 3, deadThresholdMs: 2_500, maxLagEntries: 10 }

function input(
  voters: string[],
  learners: string[],
  status: Record<string, GossipStatus>,
  opts: { down?: Record<string, number>; now?: number; lag?: Record<string, number> } = {},
): AutopilotInput {
  const progress: Record<string, { match: number; state: string }> = {}
  for (const id of [...voters, ...learners]) {
    progress[id] = { match: 100 - (opts.lag?.[id] ?? 0), state: 'replicate' }
  }
  return {
    self: 'a',
    conf: { voters, learners },
    members: Object.entries(status).map(([id, s]) => ({ id, status: s })),
    progress,
    lastIndex: 100,
    downSince: new Map(Object.entries(opts.down ?? {})),
    now: opts.now ?? 10_000,
  }
}

describe('autopilot plan (one change at a time, thesis §4.1)', () => {
  it('adds alive gossip members that are outside the configuration as learners, lowest id first', () => {
    const p = planAutopilot(
      input(['a', 'b', 'c'], [], { a: 'alive', b: 'alive', c: 'alive', e: 'alive', d: 'alive' }),
      S,
    )
    expect(p).toEqual({ type: 'addLearner', node: 'd' })
  })

  it('promotes a caught-up learner while below the target, but not a lagging or unhealthy one', () => {
    const st = { a: 'alive', b: 'alive', c: 'alive' } as const
    expect(planAutopilot(input(['a'], ['b', 'c'], st), S)).toEqual({ type: 'promoteLearner', node: 'b' })
    expect(planAutopilot(input(['a'], ['b', 'c'], st, { lag: { b: 50 } }), S)).toEqual({
      type: 'promoteLearner',
      node: 'c',
    })
    const withD = { ...st, b: 'suspect', d: 'alive' } as const
    expect(planAutopilot(input(['a'], ['b', 'c', 'd'], withD), S)).toEqual({
      type: 'promoteLearner',
      node: 'c',
    })
  })

  it('keeps an odd number of voters: 2 healthy members give 1 voter, 4 give 3', () => {
    expect(planAutopilot(input(['a'], ['b'], { a: 'alive', b: 'alive' }), S)).toBeUndefined()
    const four = { a: 'alive', b: 'alive', c: 'alive', d: 'alive' } as const
    expect(planAutopilot(input(['a', 'b', 'c'], ['d'], four), { ...S, targetVoters: 5 })).toBeUndefined()
    expect(largestOdd(0)).toBe(0)
    expect(largestOdd(4)).toBe(3)
    expect(largestOdd(5)).toBe(5)
  })

  it('replaces a voter dead past the threshold: learner promoted first, then the dead voter removed', () => {
    const st = { a: 'alive', b: 'alive', c: 'dead', d: 'alive' } as const
    // Dead for less than the threshold: nothing yet.
    expect(planAutopilot(input(['a', 'b', 'c'], ['d'], st, { down: { c: 9_000 } }), S)).toBeUndefined()
    // Past it: promote d first (voters stay <= target + 1), then remove c.
    expect(planAutopilot(input(['a', 'b', 'c'], ['d'], st, { down: { c: 7_000 } }), S)).toEqual({
      type: 'promoteLearner',
      node: 'd',
    })
    expect(planAutopilot(input(['a', 'b', 'c', 'd'], [], st, { down: { c: 7_000 } }), S)).toEqual({
      type: 'removeVoter',
      node: 'c',
    })
  })

  it('removes a dead voter without a spare, and dead learners', () => {
    const st = { a: 'alive', b: 'alive', c: 'left', d: 'dead' } as const
    expect(planAutopilot(input(['a', 'b', 'c'], [], st, { down: { c: 0 } }), S)).toEqual({
      type: 'removeVoter',
      node: 'c',
    })
    expect(planAutopilot(input(['a', 'b'], ['d'], st, { down: { d: 0 } }), S)).toEqual({
      type: 'removeVoter',
      node: 'd',
    })
  })

  it('never removes itself, and trims surplus healthy voters above the target', () => {
    const st = { a: 'alive', b: 'alive', c: 'alive', d: 'alive', e: 'alive' } as const
    expect(planAutopilot(input(['a', 'b', 'c', 'd', 'e'], [], st), S)).toEqual({
      type: 'removeVoter',
      node: 'e',
    })
    expect(planAutopilot(input(['a'], [], { a: 'dead' }, { down: { a: 0 } }), S)).toBeUndefined()
  })

  it('trackDown records members seen dead, left or missing, and clears them when alive or suspect', () => {
    const down = new Map<string, number>([['gone', 1]])
    const conf = { voters: ['a', 'b', 'c'], learners: ['d'] }
    trackDown(
      down,
      conf,
      [
        { id: 'a', status: 'alive' },
        { id: 'b', status: 'dead' },
        { id: 'd', status: 'suspect' },
      ],
      5,
    )
    expect([...down.entries()].sort()).toEqual([
      ['b', 5],
      ['c', 5],
    ])
    trackDown(down, conf, [{ id: 'b', status: 'alive' }], 9)
    expect(down.get('b')).toBeUndefined()
    expect(down.get('c')).toBe(5)
  })

  it('re-promotes a slowly restarted voter that came back as a learner (heavy-load case)', () => {
    // 3 agents, target 3: c was removed after a slow restart and re-added as a learner.
    const base = input(['a', 'b'], ['c'], { a: 'alive', b: 'alive', c: 'alive' })
    // Its progress went back to probe after a stale rejection, match current, no write since:
    // caught up all the same (it used to need `replicate`, so it stayed a learner indefinitely).
    const probe = { ...base, progress: { ...base.progress, c: { match: 100, state: 'probe', active: true } } }
    expect(planAutopilot(probe, S)).toEqual({ type: 'promoteLearner', node: 'c' })
    // Gossip flaps it to suspect under load, but the leader hears from it: still promoted.
    const suspect = {
      ...probe,
      members: [...probe.members.filter((m) => m.id !== 'c'), { id: 'c', status: 'suspect' as const }],
    }
    expect(planAutopilot(suspect, S)).toEqual({ type: 'promoteLearner', node: 'c' })
    // Without Raft evidence, a suspect learner is not promoted (the odd-size cap: 2 healthy -> 1).
    const quiet = { ...suspect, progress: { ...suspect.progress, c: { match: 100, state: 'probe' } } }
    expect(planAutopilot(quiet, S)).toBeUndefined()
    // Never a learner still receiving a snapshot, nor one that never acknowledged anything.
    const snap = { ...base, progress: { ...base.progress, c: { match: 100, state: 'snapshot' } } }
    expect(planAutopilot(snap, S)).toBeUndefined()
    const fresh = { ...base, progress: { ...base.progress, c: { match: 0, state: 'probe' } } }
    expect(planAutopilot({ ...fresh, lastIndex: 10 }, S)).toBeUndefined()
  })

  it('never adds a peer because it sent Raft messages: only alive gossip members join', () => {
    // A peer holding the cluster key but unknown to gossip (or reported dead) stays out, however
    // much Raft traffic it sends; the heard-based path is gone.
    const st = { a: 'alive', b: 'alive', c: 'dead' } as const
    expect(planAutopilot(input(['a', 'b'], [], st), S)).toBeUndefined()
    expect(
      planAutopilot(
        { ...input(['a', 'b'], [], st), progress: { x: { match: 9, state: 'replicate', active: true } } },
        S,
      ),
    ).toBeUndefined()
  })

  it('asks eligibleLearner before adding and eligibleVoter before promoting (the enrollment hook)', () => {
    const st = { a: 'alive', b: 'alive', c: 'alive' } as const
    const onlyB = (id: string) => id === 'b'
    expect(planAutopilot({ ...input(['a'], [], st), eligibleLearner: onlyB }, S)).toEqual({
      type: 'addLearner',
      node: 'b',
    })
    expect(planAutopilot({ ...input(['a', 'b'], [], st), eligibleLearner: onlyB }, S)).toBeUndefined()
    const learners = input(['a'], ['b', 'c'], st)
    const caught = {
      ...learners,
      progress: {
        ...learners.progress,
        b: { match: 100, state: 'replicate' },
        c: { match: 100, state: 'replicate' },
      },
    }
    expect(planAutopilot(caught, S)).toEqual({ type: 'promoteLearner', node: 'b' })
    expect(planAutopilot({ ...caught, eligibleVoter: (id) => id === 'c' }, S)).toEqual({
      type: 'promoteLearner',
      node: 'c',
    })
    expect(planAutopilot({ ...caught, eligibleVoter: () => false }, S)).toBeUndefined()
    // The default: gossip members alive or suspect; dead, left or unknown ones are not eligible.
    const elig = defaultEligibility([
      { id: 'a', status: 'alive' },
      { id: 'b', status: 'suspect' },
      { id: 'c', status: 'dead' },
      { id: 'd', status: 'left' },
    ])
    expect(['a', 'b', 'c', 'd', 'x'].map(elig)).toEqual([true, true, false, false, false])
  })
})
