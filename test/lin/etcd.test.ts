import { describe, expect, it } from 'vitest'
import { etcdAvailable, startEtcdCluster, TUNED_TIMING } from '../../bench/peers/etcd.ts'
import { SeededRng } from '../sim/rng.ts'
import { checkLinearizable, type KvInput, type KvOutput, kvModel, type Operation } from './checker.ts'

/**
 * The checker against a real system: etcd (Debian `etcd-server`), whose v3 puts and default
 * (linearizable) ranges must pass, including across a leader kill. Skipped without etcd.
 */
describe.skipIf(!etcdAvailable())('etcd history through a leader kill', () => {
  it('is linearizable, and a corrupted read in it is not', async () => {
    const cluster = await startEtcdCluster(TUNED_TIMING)
    try {
      const rng = new SeededRng(7)
      const history: Operation<KvInput, KvOutput>[] = []
      const keys = ['a', 'b', 'c']
      const t0 = performance.now()
      const runFor = 2500
      const client = async (clientId: number): Promise<void> => {
        for (let n = 0; performance.now() - t0 < runFor; n++) {
          const alive = cluster.members.filter((m) => !m.exited)
          const member = alive[rng.int(alive.length)]!
          const key = `lin/${keys[rng.int(keys.length)]}`
          const input: KvInput = rng.chance(0.5)
            ? { op: 'put', key, value: `c${clientId}-${n}` }
            : { op: 'get', key }
          const call = performance.now()
          try {
            let output: KvOutput = 'ok'
            if (input.op === 'put') await cluster.put(member, key, input.value, { timeoutMs: 500 })
            else output = await cluster.get(member, key, { timeoutMs: 500 })
            history.push({ clientId, input, output, call, return: performance.now() })
          } catch (err) {
            // Refused: never reached etcd. Anything else (a timeout): may or may not have taken effect.
            if ((err as { code?: string }).code === 'ECONNREFUSED') continue
            history.push({ clientId, input, call, return: Number.POSITIVE_INFINITY })
          }
        }
      }
      const killer = (async () => {
        await new Promise((resolve) => setTimeout(resolve, 800))
        ;(await cluster.leader()).kill('SIGKILL')
      })()
      await Promise.all([killer, ...Array.from({ length: 4 }, (_, c) => client(c))])

      const completed = history.filter((op) => op.return !== Number.POSITIVE_INFINITY)
      expect(completed.length).toBeGreaterThan(50)
      const pending = history.length - completed.length
      expect(pending).toBeLessThan(40)
      const r = checkLinearizable(kvModel, history, { timeoutMs: 5000 })
      expect(r.ok, r.ok === false ? r.explanation : '').toBe(true)

      const read = history.findLastIndex(
        (op) => op.input.op === 'get' && op.return !== Number.POSITIVE_INFINITY,
      )
      expect(read).toBeGreaterThanOrEqual(0)
      const corrupted = history.slice()
      corrupted[read] = { ...history[read]!, output: 'never-written' }
      expect(checkLinearizable(kvModel, corrupted, { timeoutMs: 5000 }).ok).toBe(false)
    } finally {
      await cluster.close()
    }
  })
})
