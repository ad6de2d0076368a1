import { afterAll, describe, expect, it } from 'vitest'
import { TestCluster, waitFor } from './harness.ts'
import { getKv, putKv, type RaftConfiguration, startRaftCluster, waitForLeader } from './raft-helpers.ts'

/** How long the group may take to be back at 3 voters after a kill -9: SWIM's detection
 * (~1-2 s) + the autopilot's dead threshold (2.5 s) + two membership changes. */
const HEAL_TARGET_MS = 10_000

describe('raft autopilot (end to end, 5 agent processes, 3 voters)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('adds joiners as learners, and replaces a kill -9 voter with a promoted learner', async () => {
    const agents = await startRaftCluster(cluster, 3, { extra: 2, prefix: 'ap' })
    const leader = await waitForLeader(agents.slice(0, 3))
    const conf = (a = leader) => a.api<RaftConfiguration>('/v1/operator/raft/configuration')

    // The two agents started without a bootstrap flag become learners; every agent has the state.
    const before = await waitFor('3 voters and 2 learners', async () => {
      const c = await conf()
      return c?.servers.length === 5 && c.servers.filter((s) => s.voter).length === 3 ? c : undefined
    })
    await cluster.waitForManagementToken()
    const index = await putKv(agents[4]!, 'from-learner', 'v1')
    expect(index).toBeGreaterThan(0)
    await waitFor('write applied on every agent', async () => {
      const vs = await Promise.all(agents.map((a) => getKv(a, 'from-learner')))
      return vs.every((v) => v === 'v1') ? true : undefined
    })
    expect(await getKv(agents[3]!, 'from-learner', { consistent: true })).toBe('v1')

    // kill -9 a voter that is not the leader.
    const voterIds = new Set(before.servers.filter((s) => s.voter).map((s) => s.node))
    const learnerNames = before.servers.filter((s) => !s.voter).map((s) => s.node)
    const victim = agents.find((a) => a !== leader && voterIds.has(a.name))!
    const t0 = Date.now()
    await victim.stop('SIGKILL')
    const healed = await waitFor(
      'back to 3 voters without the victim',
      async () => {
        const c = await conf()
        const voters = c?.servers.filter((s) => s.voter) ?? []
        return voters.length === 3 && !voters.some((s) => s.node === victim.name) ? c : undefined
      },
      HEAL_TARGET_MS + 5_000,
      100,
    )
    const healMs = Date.now() - t0
    console.log(`autopilot: back to 3 voters ${healMs} ms after kill -9 of ${victim.name}`)
    expect(healMs).toBeLessThan(HEAL_TARGET_MS)
    const promoted = healed.servers.filter((s) => s.voter && learnerNames.includes(s.node))
    expect(promoted).toHaveLength(1)
    expect(healed.servers.some((s) => s.node === victim.name)).toBe(false)

    // Writes work, through the promoted agent too; it was given a copy of the CA key first.
    const promotedAgent = agents.find((a) => a.name === promoted[0]!.node)!
    expect(await promotedAgent.metric('peermesh_connect_ca_key_held')).toBe(1)
    expect(await putKv(promotedAgent, 'after-heal', 'v2')).toBeGreaterThan(index)
    expect(await getKv(leader, 'after-heal', { consistent: true })).toBe('v2')

    // The victim restarts with its data: it rejoins as a learner and catches up.
    await victim.start()
    await waitFor('restarted agent back as a learner with the latest write', async () => {
      const c = await conf()
      const back = c?.servers.find((s) => s.node === victim.name)
      return back !== undefined && !back.voter && (await getKv(victim, 'after-heal')) === 'v2'
        ? true
        : undefined
    })
  })
})
