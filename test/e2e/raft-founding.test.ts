import { afterEach, describe, expect, it } from 'vitest'
import { type AgentProcess, TestCluster, waitFor } from './harness.ts'
import type { RaftConfiguration } from './raft-helpers.ts'

/**
 * Issue #13: agents all given `--bootstrap-expect 3` found one cluster, however many start at
 * once, and one started later joins it. Repetitions: FOUNDING_E2E_REPS (default 2, ~10 s each).
 */
const REPS = Number(process.env.FOUNDING_E2E_REPS ?? 2)

/** The configuration as a comparable string: servers (id, voter), sorted; no leader flag. */
function shape(c: RaftConfiguration | undefined): string | undefined {
  if (c === undefined || c.servers.length === 0) return undefined
  return c.servers
    .map((s) => `${s.id}:${s.voter ? 'voter' : 'learner'}`)
    .sort()
    .join(',')
}

/** Waits until every agent reports the same configuration with `servers` servers; returns it. */
async function oneConfiguration(agents: AgentProcess[], servers: number): Promise<string> {
  return waitFor(
    `one raft configuration of ${servers} servers on ${agents.length} agents`,
    async () => {
      const shapes = await Promise.all(
        agents.map(async (a) => shape(await a.api<RaftConfiguration>('/v1/operator/raft/configuration'))),
      )
      const first = shapes[0]
      if (first === undefined || first.split(',').length !== servers) return undefined
      return shapes.every((s) => s === first) ? first : undefined
    },
    30_000,
    100,
  )
}

/** The founder sets this agent's log says it wrote ("bootstrapped raft cluster" lines). */
function foundings(a: AgentProcess): string[] {
  const out: string[] = []
  for (const line of a.log.split('\n')) {
    if (!line.includes('bootstrapped raft cluster')) continue
    try {
      out.push((JSON.parse(line) as { founders: string[] }).founders.join(','))
    } catch {
      out.push(line)
    }
  }
  return out
}

describe('founding with --bootstrap-expect (end to end, 4 + 1 agent processes)', () => {
  let cluster: TestCluster | undefined
  afterEach(async () => {
    await cluster?.close()
    cluster = undefined
  })

  for (let rep = 1; rep <= REPS; rep++) {
    it(`4 agents started together found one cluster; a 5th started later joins it (run ${rep}/${REPS})`, async () => {
      const t0 = Date.now()
      const mark = (what: string) => console.log(`run ${rep}: ${what} after ${Date.now() - t0} ms`)
      cluster = new TestCluster()
      const key = await cluster.writeClusterKey()
      const args = ['--bootstrap-expect', '3']
      const first = cluster.agent({ name: `f${rep}a`, clusterKeyFile: key, extraArgs: args })
      await first.start()
      const seed = (await first.self())!.addresses[0]!
      const rest = ['b', 'c', 'd'].map((n) =>
        cluster!.agent({ name: `f${rep}${n}`, clusterKeyFile: key, seeds: [seed], extraArgs: args }),
      )
      await Promise.all(rest.map((a) => a.start()))
      const four = [first, ...rest]
      mark('4 agents up')

      // One configuration everywhere: the 3 founders and the 4th added by autopilot.
      const conf4 = await oneConfiguration(four, 4)
      mark('one configuration of 4')
      expect(conf4.split(',').filter((s) => s.endsWith(':voter'))).toHaveLength(3)
      const written = four.flatMap(foundings)
      expect(new Set(written).size, written.join(' | ')).toBe(1)
      // Founders that had not written yet when the leader reached them got the entries from it.
      expect(written.length).toBeGreaterThanOrEqual(1)

      const late = cluster.agent({ name: `f${rep}e`, clusterKeyFile: key, seeds: [seed], extraArgs: args })
      await late.start()
      const conf5 = await oneConfiguration([...four, late], 5)
      mark('one configuration of 5')
      const ids = (c: string) => c.split(',').map((s) => s.split(':')[0])
      expect(ids(conf5)).toEqual(expect.arrayContaining(ids(conf4)))
      expect(foundings(late)).toEqual([])
      expect(new Set([...four, late].flatMap(foundings)).size).toBe(1)
    })
  }
})
