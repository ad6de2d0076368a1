import { afterAll, describe, expect, it } from 'vitest'
import { runCli, TestCluster, waitFor } from './harness.ts'

interface Member {
  name: string
  peerId: string
  address: string
  status: 'alive' | 'suspect' | 'dead' | 'left'
  incarnation: number
  tags: Record<string, string>
}

async function members(http: string): Promise<Member[]> {
  // Anonymous: with ACLs on (the default) anyone may list members, as gossip tells them anyway.
  // These agents run no Raft group, so no token exists.
  const res = await runCli(['members', '--http', http, '--json'], { token: false })
  if (res.code !== 0) throw new Error(res.stderr)
  return JSON.parse(res.stdout) as Member[]
}

describe('gossip membership (end to end, 5 agent processes)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('joins through seeds, marks a kill -9 member dead everywhere, takes it back after restart, and a seedless agent rejoins from remembered peers', async () => {
    const key = await cluster.writeClusterKey()
    const first = cluster.agent({ name: 'g1', clusterKeyFile: key })
    await first.start()
    const self = await first.self()
    const seed = self!.addresses[0]!
    const rest = [2, 3, 4, 5].map((i) => cluster.agent({ name: `g${i}`, clusterKeyFile: key, seeds: [seed] }))
    await Promise.all(rest.map((a) => a.start()))
    const all = [first, ...rest]

    const aliveEverywhere = (names: string[]) => async () => {
      const views = await Promise.all(all.filter((a) => names.includes(a.name)).map((a) => members(a.http)))
      return views.every((v) => names.every((n) => v.find((m) => m.name === n)?.status === 'alive'))
        ? views
        : undefined
    }
    const views = await waitFor(
      '5 agents to list 5 alive',
      aliveEverywhere(all.map((a) => a.name)),
      30_000,
      200,
    )
    for (const v of views) {
      expect(v).toHaveLength(5)
      for (const m of v) {
        expect(m.peerId).toMatch(/^12D3KooW/)
        expect(typeof m.address).toBe('string')
        expect(m.incarnation).toBeGreaterThanOrEqual(0)
      }
    }

    const victim = rest[1]!
    const before = (await members(first.http)).find((m) => m.name === victim.name)!
    await victim.stop('SIGKILL')
    const survivors = all.filter((a) => a !== victim)
    await waitFor(
      `${victim.name} to be dead on every survivor`,
      async () => {
        const vs = await Promise.all(survivors.map((a) => members(a.http)))
        return vs.every((v) => v.find((m) => m.name === victim.name)?.status === 'dead') ? true : undefined
      },
      30_000,
      200,
    )

    await victim.start()
    const again = await waitFor(
      'restarted member alive everywhere',
      aliveEverywhere(all.map((a) => a.name)),
      30_000,
      200,
    )
    const seen = again[0]!.find((m) => m.name === victim.name)!
    expect(seen.peerId).toBe(before.peerId)
    expect(seen.incarnation).toBeGreaterThan(before.incarnation)

    // The first agent was started without seeds: after a kill -9 it rejoins through the members
    // it remembered in its data dir (peers.json), like Serf's snapshot.
    await first.stop('SIGKILL')
    expect(first.log).not.toMatch(/joined through seed/)
    await first.start()
    await waitFor('restarted first agent to dial a remembered peer', async () =>
      /joined through seed/.test(first.log) ? true : undefined,
    )
    await waitFor(
      'seedless first agent alive everywhere again',
      aliveEverywhere(all.map((a) => a.name)),
      30_000,
      200,
    )
  })
})
