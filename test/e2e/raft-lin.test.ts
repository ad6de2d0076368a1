import { afterAll, describe, expect, it } from 'vitest'
import { checkLinearizable, type KvInput, type KvOutput, kvModel, type Operation } from '../lin/checker.ts'
import type { AgentProcess } from './harness.ts'
import { TestCluster, waitFor } from './harness.ts'
import {
  describeAgents,
  getKv,
  putKv,
  type RaftConfiguration,
  startRaftCluster,
  waitForLeader,
} from './raft-helpers.ts'

const CLIENTS = 4
const KEYS = ['x', 'y']
const OP_TIMEOUT_MS = 2_000

describe('raft linearizability (end to end, 3 agents, leader killed twice)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('puts and ?consistent gets against different agents form a linearizable history', async () => {
    const agents = await startRaftCluster(cluster, 3, { prefix: 'lin' })
    await waitForLeader(agents)
    const history: Operation<KvInput, KvOutput>[] = []
    const down = new Set<AgentProcess>()
    const t = (): number => performance.now()
    let running = true
    let seq = 0
    const lastError: string[] = []

    const client = async (c: number): Promise<void> => {
      let rr = c
      while (running) {
        const live = agents.filter((a) => !down.has(a))
        const a = live[rr++ % live.length]!
        const key = KEYS[(rr * 7 + c) % KEYS.length]!
        if ((rr + c) % 2 === 0) {
          const value = `c${c}-${++seq}`
          const call = t()
          try {
            await putKv(a, key, value, { timeoutMs: OP_TIMEOUT_MS })
            history.push({ clientId: c, input: { op: 'put', key, value }, output: 'ok', call, return: t() })
          } catch (err) {
            lastError[c] = `put on ${a.name}: ${String(err)}`
            // Unknown outcome: it may take effect at any point after the call, or never.
            history.push({
              clientId: c,
              input: { op: 'put', key, value },
              call,
              return: Number.POSITIVE_INFINITY,
            })
          }
        } else {
          const call = t()
          try {
            const v = await getKv(a, key, { consistent: true, timeoutMs: OP_TIMEOUT_MS })
            history.push({ clientId: c, input: { op: 'get', key }, output: v, call, return: t() })
          } catch (err) {
            lastError[c] = `get on ${a.name}: ${String(err)}`
            // A failed read has no effect: leave it out of the history.
          }
        }
      }
    }

    const loops = Array.from({ length: CLIENTS }, (_, c) => client(c))
    const okCount = (): number => history.filter((o) => o.return !== Number.POSITIVE_INFINITY).length
    for (let round = 0; round < 2; round++) {
      const before = okCount()
      await waitFor('operations before the kill', async () => (okCount() > before + 40 ? true : undefined))
      const leader = await waitForLeader(agents.filter((a) => !down.has(a)))
      down.add(leader)
      await leader.stop('SIGKILL')
      const after = okCount()
      await waitFor('operations after the kill', async () =>
        okCount() > after + 40 ? true : undefined,
      ).catch(async (err: unknown) => {
        // Whether the survivors have a leader, and what the clients' calls failed with.
        await describeAgents(agents.filter((a) => !down.has(a)))
        for (const [c, e] of lastError.entries()) console.log(`client ${c}: last error ${e}`)
        throw err
      })
      await leader.start()
      down.delete(leader)
      // Autopilot removed the dead voter; the next kill waits until the restarted agent is a
      // voter again, as an operator would: with 2 voters, losing one more is losing the quorum.
      await waitFor(
        '3 voters again',
        async () => {
          const c = await agents[0]!.api<RaftConfiguration>('/v1/operator/raft/configuration')
          return c?.servers.filter((s) => s.voter).length === 3 ? true : undefined
        },
        30_000,
      )
    }
    await waitFor('operations with everyone back', async () =>
      okCount() > history.length / 2 + 40 ? true : undefined,
    )
    running = false
    await Promise.all(loops)

    const puts = history.filter((o) => o.input.op === 'put' && o.return !== Number.POSITIVE_INFINITY).length
    const gets = history.filter((o) => o.input.op === 'get').length
    console.log(`linearizability: ${history.length} operations (${puts} acknowledged puts, ${gets} gets)`)
    expect(puts).toBeGreaterThan(20)
    expect(gets).toBeGreaterThan(20)
    const res = checkLinearizable(kvModel, history, { timeoutMs: 20_000 })
    expect(res.ok).toBe(true)
  })
})
