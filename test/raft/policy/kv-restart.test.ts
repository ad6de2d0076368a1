import { afterEach, describe, expect, it } from 'vitest'
import { RaftNode } from '../../../src/raft/node-driver.ts'
import {
  encodePolicyCommand,
  type PolicyCommand,
  type PolicyResult,
  PolicyStore,
} from '../../../src/raft/policy/policy-store.ts'
import { FileStorage } from '../../../src/raft/storage/file-storage.ts'
import { SeededRng } from '../../sim/rng.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'

/**
 * The KV state survives a restart from disk: through snapshots (taken every 3 entries here) and
 * the log entries after the last one. A one-voter Raft node on FileStorage and a virtual clock.
 */

const TICK = 100
const S1 = '11111111-1111-4111-8111-111111111111'
let tmp: string | undefined
afterEach(() => {
  if (tmp !== undefined) removeTempDir(tmp)
  tmp = undefined
})

function start(dir: string, clock: VirtualClock): { node: RaftNode<PolicyResult>; store: PolicyStore } {
  const store = new PolicyStore()
  const node = new RaftNode<PolicyResult>({
    id: 'a',
    storage: FileStorage.open(dir).storage,
    stateMachine: store,
    transport: { send: () => {} },
    clock,
    rng: new SeededRng(7).next,
    bootstrap: ['a'],
    tickMs: TICK,
    snapshotThreshold: 3,
    snapshotTrailing: 1,
    requestTimeoutMs: 5_000,
  })
  node.start()
  return { node, store }
}

async function run(clock: VirtualClock, ms: number): Promise<void> {
  for (let t = 0; t < ms; t += TICK) {
    clock.advance(TICK)
    await Promise.resolve()
  }
}

async function propose(
  clock: VirtualClock,
  node: RaftNode<PolicyResult>,
  cmd: PolicyCommand,
): Promise<PolicyResult> {
  let out: PolicyResult | undefined
  void node.propose(encodePolicyCommand(cmd), {}).then((r) => {
    out = r.result
  })
  for (let i = 0; i < 100 && out === undefined; i++) await run(clock, TICK)
  if (out === undefined) throw new Error('not committed')
  return out
}

describe('KV state across a restart (snapshot + log replay)', () => {
  it('keeps entries, sessions, locks and lock-delays', async () => {
    tmp = makeTempDir('kv-restart')
    const clock = new VirtualClock()
    const first = start(tmp, clock)
    await run(clock, 3_000)
    expect(first.node.isLeader()).toBe(true)
    const b64 = (s: string) => Buffer.from(s).toString('base64')
    const cmds: PolicyCommand[] = [
      {
        op: 'session.create',
        id: S1,
        name: 'x',
        node: 'n1',
        lockDelayMs: 15_000,
        behavior: 'release',
        ttlMs: 60_000,
        checks: [],
        now: 5,
      },
      { op: 'kv.set', key: 'app/a', value: b64('one'), flags: '3304740253564472344', now: 6 },
      { op: 'kv.set', key: 'lock', value: b64('held'), acquire: S1, now: 7 },
      { op: 'kv.set', key: 'tmp', value: '', now: 8 },
      { op: 'kv.delete', key: 'tmp' },
      {
        op: 'txn',
        now: 9,
        ops: [
          { verb: 'set', key: 'app/b', value: b64('two') },
          { verb: 'cas', key: 'app/a', value: b64('uno'), index: 0 },
        ],
      },
      { op: 'kv.set', key: 'app/c', value: b64('three'), now: 10 },
    ]
    for (const cmd of cmds) await propose(clock, first.node, cmd)
    const before = first.store.kv.snapshot()
    expect(before.entries.map((e) => e.key).sort()).toEqual(['app/a', 'app/c', 'lock'])
    await first.node.stop()

    const second = start(tmp, clock)
    await run(clock, 3_000)
    expect(second.node.status().firstIndex).toBeGreaterThan(1) // restored from a snapshot
    expect(second.store.kv.snapshot()).toEqual(before)
    expect(second.store.kv.get('lock')).toMatchObject({ session: S1, lockIndex: 1 })
    expect(second.store.kv.session(S1)).toMatchObject({ ttlMs: 60_000, renewedAt: 5 })
  })
})
