import { describe, expect, it } from 'vitest'
import {
  type AutopilotInput,
  DEFAULT_AUTOPILOT,
  enrollmentEligibility,
  type GossipStatus,
  planAutopilot,
} from '../../../src/node/raft/autopilot.ts'

const S = { ...DEFAULT_AUTOPILOT, targetVoters: 3, deadThresholdMs: 2_500, maxLagEntries: 10 }

/** Autopilot on leader `m` with ACLs on: eligibility from `enrolled` (id -> voter), `revoked` ids. */
function input(
  voters: string[],
  learners: string[],
  status: Record<string, GossipStatus>,
  enrolled: Record<string, boolean>,
  revoked: string[] = [],
): AutopilotInput {
  const progress: Record<string, { match: number; state: string }> = {}
  for (const id of [...voters, ...learners]) progress[id] = { match: 100, state: 'replicate' }
  const state = {
    enrollment: (id: string) => (id in enrolled ? { voter: enrolled[id]! } : undefined),
  }
  return {
    self: 'm',
    conf: { voters, learners },
    members: Object.entries(status).map(([id, s]) => ({ id, status: s })),
    progress,
    lastIndex: 100,
    downSince: new Map(),
    now: 10_000,
    ...enrollmentEligibility('m', state),
    revoked: (id) => revoked.includes(id),
  }
}

const alive = (...ids: string[]): Record<string, GossipStatus> =>
  Object.fromEntries(ids.map((id) => [id, 'alive' as const]))

describe('autopilot with enrollment (issue #12)', () => {
  const cases: [string, AutopilotInput, ReturnType<typeof planAutopilot>][] = [
    [
      'never adds an unenrolled key holder, even one whose peer id sorts first',
      input(['m', 'n', 'o'], [], alive('a', 'm', 'n', 'o'), { m: true, n: true, o: true }),
      undefined,
    ],
    [
      'adds an enrolled member (a non-voter too) as a learner, skipping the unenrolled one that sorts first',
      input(['m', 'n', 'o'], [], alive('a', 'm', 'n', 'o', 'w'), { m: true, n: true, o: true, w: false }),
      { type: 'addLearner', node: 'w' },
    ],
    [
      'never promotes a learner enrolled without voter',
      input(['m'], ['w'], alive('m', 'w'), { m: true, w: false }),
      undefined,
    ],
    [
      'promotes a learner enrolled as voter',
      input(['m'], ['v', 'w'], alive('m', 'v', 'w'), { m: true, v: true, w: false }),
      { type: 'promoteLearner', node: 'v' },
    ],
    [
      'the leader itself is always eligible, enrolled or not',
      input(['m', 'n', 'o'], [], alive('m', 'n', 'o'), { n: true, o: true }),
      undefined,
    ],
    [
      'replaces a dead voter only with a voter-enrolled learner',
      {
        ...input(
          ['m', 'n', 'o'],
          ['w', 'v'],
          { ...alive('m', 'n', 'w', 'v'), o: 'dead' },
          { v: true, w: false },
        ),
        downSince: new Map([['o', 0]]),
      },
      { type: 'promoteLearner', node: 'v' },
    ],
    [
      'removes a revoked learner',
      input(['m', 'n', 'o'], ['r'], alive('m', 'n', 'o', 'r'), { n: true, o: true }, ['r']),
      { type: 'removeVoter', node: 'r' },
    ],
    [
      'removes a revoked voter while the rest keep a healthy majority',
      input(['m', 'n', 'r'], [], alive('m', 'n', 'r'), { n: true }, ['r']),
      { type: 'removeVoter', node: 'r' },
    ],
    [
      'keeps a revoked voter while removing it would leave a configuration that needs a down voter',
      input(['m', 'd', 'r'], [], { ...alive('m', 'r'), d: 'suspect' }, { d: true }, ['r']),
      undefined,
    ],
    [
      'never removes itself, revoked or not',
      input(['m', 'n', 'o'], [], alive('m', 'n', 'o'), { n: true, o: true }, ['m']),
      undefined,
    ],
    [
      'a revoked member is not added back as a learner',
      input(['m', 'n', 'o'], [], alive('m', 'n', 'o', 'r'), { n: true, o: true }, ['r']),
      undefined,
    ],
  ]
  it.each(cases)('%s', (_what, given, want) => {
    expect(planAutopilot(given, S)).toEqual(want)
  })

  it('a revoked voter gone from the configuration is then replaced by an eligible learner', () => {
    const after = input(['m', 'n'], ['v'], alive('m', 'n', 'v'), { n: true, v: true }, ['r'])
    expect(planAutopilot(after, S)).toEqual({ type: 'promoteLearner', node: 'v' })
  })
})
