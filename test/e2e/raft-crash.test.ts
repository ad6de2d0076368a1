import { afterAll, describe, expect, it } from 'vitest'
import type { AgentProcess } from './harness.ts'
import { TestCluster, waitFor } from './harness.ts'
import { putKv, startRaftCluster, status, waitForLeader } from './raft-helpers.ts'

/** Writes distinct keys through `via()` until stopped; returns the keys whose write was acknowledged. */
function writer(via: () => AgentProcess, prefix: string): { stop: () => Promise<string[]> } {
  const acked: string[] = []
  let running = true
  const loop = (async () => {
    for (let i = 0; running; i++) {
      const key = `${prefix}-${i}`
      try {
        await putKv(via(), key, String(i), { timeoutMs: 2_000 })
        acked.push(key)
      } catch {
        // not acknowledged: it may or may not be there, and the check below ignores it
      }
    }
  })()
  return {
    stop: async () => {
      running = false
      await loop
      return acked
    },
  }
}

async function keysOn(a: AgentProcess): Promise<Set<string>> {
  const entries = await a.api<{ name: string }[]>('/v1/config/kv')
  return new Set((entries ?? []).map((e) => e.name))
}

/** Waits until `a` has applied everything the leader has committed. */
async function caughtUp(a: AgentProcess, all: AgentProcess[]): Promise<void> {
  const leader = await waitForLeader(all)
  const target = (await status(leader))!.commitIndex
  await waitFor(`${a.name} caught up to ${target}`, async () =>
    ((await status(a))?.appliedIndex ?? 0) >= target ? true : undefined,
  )
}

describe('raft crash safety (end to end, kill -9 during writes)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('keeps every acknowledged write across a kill -9 of a voter, and of the whole cluster', async () => {
    const agents = await startRaftCluster(cluster, 3, { prefix: 'cs' })
    const leader = await waitForLeader(agents)
    const victim = agents.find((a) => a !== leader)!
    const others = agents.filter((a) => a !== victim)

    // 1. kill -9 a voter while writes are in flight (through the two others), restart it.
    let turn = 0
    const w1 = writer(() => others[turn++ % 2]!, 'one')
    await waitFor(
      'some acknowledged writes',
      async () => ((await status(leader))?.commitIndex ?? 0) > 40 || undefined,
    )
    await victim.stop('SIGKILL')
    await waitFor('writes continuing without the victim', async () =>
      ((await status(leader))?.commitIndex ?? 0) > 80 ? true : undefined,
    )
    await victim.start()
    const acked1 = await w1.stop()
    expect(acked1.length).toBeGreaterThan(20)
    await caughtUp(victim, agents)
    const on1 = await keysOn(victim)
    expect(acked1.filter((k) => !on1.has(k))).toEqual([])

    // 2. kill -9 every agent at once while writes are in flight; restart all from their data dirs.
    const w2 = writer(() => agents[turn++ % 3]!, 'all')
    const base = (await status(leader))!.commitIndex
    await waitFor(
      'writes in flight',
      async () => ((await status(leader))?.commitIndex ?? 0) > base + 30 || undefined,
    )
    await Promise.all(agents.map((a) => a.stop('SIGKILL')))
    const acked2 = await w2.stop()
    expect(acked2.length).toBeGreaterThan(10)
    await Promise.all(agents.map((a) => a.start()))
    await waitForLeader(agents)
    for (const a of agents) {
      await caughtUp(a, agents)
      const on = await keysOn(a)
      expect(acked1.filter((k) => !on.has(k))).toEqual([])
      expect(acked2.filter((k) => !on.has(k))).toEqual([])
    }
  })
})
