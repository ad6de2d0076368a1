import { raftMessage } from './message.ts'
import * as path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { decodeMessage, encodeMessage } from '../../src/raft/codec.ts'
import { DEFAULT_AUTOPILOT, planAutopilot } from '../../src/node/raft/autopilot.ts'
import { FileStorage } from '../../src/raft/storage/file-storage.ts'
import { MemoryStorage } from '../../src/raft/storage/memory-storage.ts'
import { RaftNode } from '../../src/raft/node-driver.ts'
import { SNAPSHOT_RETRY } from '../../src/raft/snapshot-backoff.ts'
import type { RaftTransport } from '../../src/raft/node-options.ts'
import { encodePolicyCommand, type PolicyResult, PolicyStore } from '../../src/raft/policy/policy-store.ts'
import type { RaftStorage } from '../../src/raft/storage/storage.ts'
import { SeededRng } from '../sim/rng.ts'
import { VirtualClock } from '../sim/virtual-clock.ts'
import { makeTempDir, removeTempDir } from '../temp-dir.ts'

const TICK = 100
const ids = ['a', 'b', 'c']

/** In-memory network: queues encoded bytes; the test delivers them between clock steps. */
class MemNet {
  readonly nodes = new Map<string, RaftNode<PolicyResult>>()
  readonly down = new Set<string>()
  private queue: { from: string; to: string; bytes: Uint8Array }[] = []

  transport(from: string): RaftTransport {
    return { send: (to, m) => this.queue.push({ from, to, bytes: encodeMessage(m) }) }
  }

  deliverAll(): void {
    for (let i = 0; i < 10_000 && this.queue.length > 0; i++) {
      const { from, to, bytes } = this.queue.shift()!
      if (this.down.has(to) || this.down.has(from)) continue
      this.nodes.get(to)?.receive(bytes, from)
    }
  }
}

interface Cluster {
  clock: VirtualClock
  net: MemNet
  stores: Map<string, PolicyStore>
  storages: Map<string, RaftStorage>
  start(id: string, storage?: RaftStorage): RaftNode<PolicyResult>
  run(ms: number): Promise<void>
  leader(): RaftNode<PolicyResult>
}

function cluster(opts: { snapshotThreshold?: number; storages?: Map<string, RaftStorage> } = {}): Cluster {
  const clock = new VirtualClock()
  const net = new MemNet()
  const rng = new SeededRng(42)
  const stores = new Map<string, PolicyStore>()
  const storages = opts.storages ?? new Map<string, RaftStorage>()
  const c: Cluster = {
    clock,
    net,
    stores,
    storages,
    start(id, storage) {
      const st = storage ?? storages.get(id) ?? new MemoryStorage()
      storages.set(id, st)
      const sm = new PolicyStore()
      stores.set(id, sm)
      const node = new RaftNode<PolicyResult>({
        id,
        storage: st,
        stateMachine: sm,
        transport: net.transport(id),
        clock,
        rng: rng.next,
        bootstrap: ids,
        tickMs: TICK,
        snapshotThreshold: opts.snapshotThreshold ?? 1000,
        snapshotTrailing: 2,
        requestTimeoutMs: 5_000,
      })
      net.nodes.set(id, node)
      net.down.delete(id)
      node.start()
      return node
    },
    async run(ms) {
      for (let t = 0; t < ms; t += TICK) {
        clock.advance(TICK)
        net.deliverAll()
        await Promise.resolve()
      }
    },
    leader() {
      const l = [...net.nodes.values()].find((n) => n.isLeader() && !net.down.has(n.id))
      if (l === undefined) throw new Error('no leader')
      return l
    },
  }
  return c
}

/** Runs virtual time until the promise settles (no wall-clock waiting). */
async function settle<T>(c: Cluster, p: Promise<T>, maxMs = 10_000): Promise<T> {
  let done = false
  const guarded = p.finally(() => {
    done = true
  })
  guarded.catch(() => {})
  for (let t = 0; t < maxMs && !done; t += TICK) await c.run(TICK)
  return guarded
}

const upsert = (source: string, destination: string) =>
  encodePolicyCommand({ op: 'intention.upsert', source, destination, action: 'allow' })

let tmp: string | undefined
afterEach(() => {
  if (tmp !== undefined) removeTempDir(tmp)
  tmp = undefined
})

/**
 * Three nodes on the real event loop, every message delivered a turn later, and the appends each
 * sends recorded; `a` leads and has committed one write, and the record starts after it. The tick
 * is long so that no heartbeat carries a commit meanwhile.
 */
async function noticeCluster() {
  const nodes = new Map<string, RaftNode<PolicyResult>>()
  const sent: { from: string; to: string; empty: boolean; commit: number }[] = []
  for (const id of ids) {
    const node = new RaftNode<PolicyResult>({
      id,
      storage: new MemoryStorage(),
      stateMachine: new PolicyStore(),
      transport: {
        send: (to, m) => {
          if (m.type === 'app') sent.push({ from: id, to, empty: m.entries.length === 0, commit: m.commit })
          const bytes = encodeMessage(m)
          setImmediate(() => nodes.get(to)?.receive(bytes, id))
        },
      },
      bootstrap: ids,
      tickMs: 1_000,
      coalesceReady: true,
    })
    nodes.set(id, node)
  }
  for (const n of nodes.values()) n.start()
  const a = nodes.get('a')!
  a.campaign()
  const deadline = Date.now() + 5_000
  while (!a.isLeader() && Date.now() < deadline) await new Promise((r) => setImmediate(r))
  await a.propose(upsert('warm', 'up'))
  sent.length = 0
  return { nodes, sent, a, deadline }
}

describe('RaftNode driver', () => {
  it('elects a leader on the clock, proposes, and applies on every node', async () => {
    const c = cluster()
    for (const id of ids) c.start(id)
    const changes: (string | undefined)[] = []
    c.net.nodes.get('a')!.on('leader:change', (e) => changes.push(e.leader))
    await c.run(3_000)
    const l = c.leader()
    expect(changes.at(-1)).toBe(l.id)
    const { index, result } = await settle(c, l.propose(upsert('web', 'db')))
    expect(result).toEqual({ ok: true, index })
    await c.run(500)
    for (const id of ids) expect(c.stores.get(id)!.getIntention('web', 'db')?.modifyIndex).toBe(index)
  })

  it('rejects a proposal on a follower with NotLeaderError naming the leader', async () => {
    const c = cluster()
    for (const id of ids) c.start(id)
    await c.run(3_000)
    const l = c.leader()
    const f = [...c.net.nodes.values()].find((n) => n.id !== l.id)!
    const err = (await f.propose(upsert('x', 'y')).catch((e: unknown) => e)) as {
      code: string
      leader: string
    }
    expect(err.code).toBe('PEERMESH_ERR_NOT_LEADER')
    expect(err.leader).toBe(l.id)
  })

  it('serves a linearizable read on a follower via ReadIndex', async () => {
    const c = cluster()
    for (const id of ids) c.start(id)
    await c.run(3_000)
    const l = c.leader()
    const { index } = await settle(c, l.propose(upsert('web', 'api')))
    const f = [...c.net.nodes.values()].find((n) => n.id !== l.id)!
    const r = await settle(c, f.read())
    expect(r.index).toBeGreaterThanOrEqual(index)
    expect(f.applied()).toBeGreaterThanOrEqual(index)
    expect(c.stores.get(f.id)!.getIntention('web', 'api')).toBeDefined()
  })

  it('applies a retried request once (request id dedupe)', async () => {
    const c = cluster()
    for (const id of ids) c.start(id)
    await c.run(3_000)
    const l = c.leader()
    const requestId = { clientId: 'agent-7', seq: 1 }
    const first = await settle(c, l.propose(upsert('s', 'd'), { requestId }))
    const retry = await settle(c, l.propose(upsert('s', 'd'), { requestId }))
    expect(retry.index).toBeGreaterThan(first.index) // a second log entry...
    expect(retry.result).toEqual(first.result) // ...that returned the first result
    expect(c.stores.get(l.id)!.getIntention('s', 'd')!.modifyIndex).toBe(first.index) // and changed nothing
  })

  it('drops and counts malformed or spoofed messages', async () => {
    const c = cluster()
    for (const id of ids) c.start(id)
    const a = c.net.nodes.get('a')!
    expect(a.receive(new Uint8Array([1, 2, 3]), 'b')).toBe(false)
    const forged = encodeMessage(raftMessage({ type: 'heartbeat', from: 'c', to: 'a', term: 99 }))
    expect(a.receive(forged, 'b')).toBe(false) // claims to be c but arrived from b
    expect(a.status().malformedMessages).toBe(2)
    expect(a.status().term).toBe(1)
  })

  it('changes membership through the driver and emits conf:change', async () => {
    const c = cluster()
    for (const id of ids) c.start(id)
    await c.run(3_000)
    const l = c.leader()
    const seen: string[] = []
    l.on('conf:change', (e) => seen.push(`${e.change.type}:${e.change.node}`))
    await settle(c, l.changeMembership({ type: 'addLearner', node: 'd' }))
    expect(seen).toEqual(['addLearner:d'])
    expect(l.status().conf.learners).toEqual(['d'])
    const again = await l.changeMembership({ type: 'addLearner', node: 'd' }).catch((e: unknown) => e)
    expect((again as { code: string }).code).toBe('PEERMESH_ERR_CONF_CHANGE')
  })

  it('restarts from FileStorage after a crash, with snapshots and compaction', async () => {
    tmp = makeTempDir('driver')
    const open = (id: string) => FileStorage.open(path.join(tmp!, id)).storage
    const c = cluster({ snapshotThreshold: 5 })
    for (const id of ids) c.start(id, open(id))
    await c.run(3_000)
    let l = c.leader()
    for (let i = 0; i < 12; i++) await settle(c, l.propose(upsert(`s${i}`, 'd')))
    // crash a follower (stop = process gone; its storage directory stays)
    const victim = [...c.net.nodes.values()].find((n) => n.id !== l.id)!
    c.net.down.add(victim.id)
    await victim.stop()
    l = c.leader()
    for (let i = 12; i < 20; i++) await settle(c, l.propose(upsert(`s${i}`, 'd')))
    const restarted = c.start(victim.id, open(victim.id))
    await c.run(2_000)
    expect(restarted.applied()).toBe(c.leader().applied())
    expect(c.stores.get(victim.id)!.listIntentions().length).toBe(20)
    expect(c.leader().status().firstIndex).toBeGreaterThan(1) // the log was compacted
  })

  it('forgetLeader: survivors of a dead leader elect a new one within a tick (thesis §6.2, §9.6)', async () => {
    // The leader dies right after a heartbeat: both followers are inside their check-quorum lease
    // and would ignore a pre-vote. Told by a failure detector that the leader is gone, they forget
    // it (etcd ForgetLeader) and one campaigns: elected without waiting any election timeout.
    const c = cluster()
    for (const id of ids) c.start(id)
    await c.run(3_000)
    const old = c.leader()
    const term = old.term()
    c.net.down.add(old.id)
    const [x, y] = [...c.net.nodes.values()].filter((n) => n !== old)
    const changes: (string | undefined)[] = []
    y!.on('leader:change', (e) => changes.push(e.leader))
    x!.forgetLeader()
    y!.forgetLeader()
    expect(changes).toEqual([undefined]) // forgetting is a leader change (to none)
    x!.campaign()
    c.net.deliverAll() // pre-vote and its answers
    c.net.deliverAll() // vote and its answers
    expect(x!.isLeader()).toBe(true)
    expect(x!.term()).toBe(term + 1)
    c.net.deliverAll() // the new leader's first append
    expect(y!.leader()).toBe(x!.id)
    expect(changes.at(-1)).toBe(x!.id)
  })

  it('forgetLeader is a no-op on the leader; a follower takes its healthy leader back', async () => {
    const c = cluster()
    for (const id of ids) c.start(id)
    await c.run(3_000)
    const l = c.leader()
    l.forgetLeader()
    expect(l.isLeader()).toBe(true)
    const f = [...c.net.nodes.values()].find((n) => n !== l)!
    f.forgetLeader()
    expect(f.leader()).toBeUndefined()
    f.campaign() // the others are in lease: the pre-vote cannot win
    await c.run(TICK * 3)
    expect(f.leader()).toBe(l.id)
    expect(l.isLeader()).toBe(true)
    expect(f.term()).toBe(l.term())
  })

  it('reports which members answered the leader recently, which autopilot trusts over gossip', async () => {
    const c = cluster()
    for (const id of ids) c.start(id)
    await c.run(3_000)
    const l = c.leader()
    const [x, y] = [...c.net.nodes.values()].filter((n) => n !== l) as [
      RaftNode<PolicyResult>,
      RaftNode<PolicyResult>,
    ]
    const plan = () => {
      const st = l.status()
      // Gossip (wrongly, for y) says both have been dead for a minute.
      return planAutopilot(
        {
          self: l.id,
          conf: st.conf,
          members: [{ id: l.id, status: 'alive' }],
          progress: st.progress,
          lastIndex: st.lastIndex,
          downSince: new Map([
            [x.id, 0],
            [y.id, 0],
          ]),
          now: 60_000,
        },
        DEFAULT_AUTOPILOT,
      )
    }
    expect(l.status().progress[x.id]!.active).toBe(true)
    expect(plan()).toBeUndefined()
    c.net.down.add(x.id)
    await c.run(TICK * 10 * 2) // electionTick 10: one to two rounds without an answer
    expect(l.status().progress[x.id]!.active).toBe(false)
    expect(l.status().progress[y.id]!.active).toBe(true)
    expect(plan()).toEqual({ type: 'removeVoter', node: x.id })
  })

  it('rejects pending work with RaftStoppedError on stop', async () => {
    const c = cluster()
    for (const id of ids) c.start(id)
    await c.run(3_000)
    const l = c.leader()
    for (const n of c.net.nodes.values()) if (n !== l) c.net.down.add(n.id)
    const p = l.propose(upsert('never', 'committed'))
    await l.stop()
    expect(((await p.catch((e: unknown) => e)) as { code: string }).code).toBe('PEERMESH_ERR_RAFT_STOPPED')
  })

  it('group commit with fsync off the event loop: concurrent proposals all apply, durably, everywhere', async () => {
    // Real event loop: coalesceReady + FileStorage takes the asynchronous fsync path. The core
    // counts the leader's own copy only after its fsync (thesis §10.2.1), so every acknowledged
    // write is durable on a majority; here, on all three after they settle.
    tmp = makeTempDir('raft-async')
    const nodes = new Map<string, RaftNode<PolicyResult>>()
    const storages = new Map<string, FileStorage>()
    for (const id of ids) {
      const storage = FileStorage.open(path.join(tmp, id)).storage
      storages.set(id, storage)
      const node = new RaftNode<PolicyResult>({
        id,
        storage,
        stateMachine: new PolicyStore(),
        transport: {
          send: (to, m) => {
            const bytes = encodeMessage(m)
            setImmediate(() => nodes.get(to)?.receive(bytes, id))
          },
        },
        bootstrap: ids,
        tickMs: 10,
        coalesceReady: true,
        snapshotThreshold: 100_000,
      })
      nodes.set(id, node)
    }
    for (const n of nodes.values()) n.start()
    const a = nodes.get('a')!
    a.campaign()
    const deadline = Date.now() + 5_000
    while (!a.isLeader() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
    expect(a.isLeader()).toBe(true)
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        a.propose(upsert(`s${i}`, 'd'), { signal: AbortSignal.timeout(5_000) }),
      ),
    )
    const indexes = results.map((r) => r.index)
    expect(new Set(indexes).size).toBe(200)
    const last = Math.max(...indexes)
    while ([...nodes.values()].some((n) => n.applied() < last) && Date.now() < deadline + 5_000) {
      await new Promise((r) => setTimeout(r, 5))
    }
    for (const n of nodes.values()) await n.stop()
    for (const id of ids) {
      const st = FileStorage.open(path.join(tmp, id)).storage
      const entries = st.initialState().entries
      st.close()
      expect(entries.at(-1)!.index).toBeGreaterThanOrEqual(last)
    }
  })

  it("a leader's commit notices leave after the replies to the writes they commit (real event loop)", async () => {
    const { nodes, sent, a, deadline } = await noticeCluster()
    let sentAtReply = -1
    const { index } = await a.propose(upsert('web', 'db')).then((r) => {
      sentAtReply = sent.length
      return r
    })
    while ([...nodes.values()].some((n) => n.applied() < index) && Date.now() < deadline)
      await new Promise((r) => setImmediate(r))
    const notices = sent
      .map((m, at) => ({ ...m, at }))
      .filter((m) => m.from === 'a' && m.empty && m.commit >= index)
    expect(notices.map((m) => m.to).sort()).toEqual(['b', 'c'])
    for (const m of notices) expect(m.at).toBeGreaterThanOrEqual(sentAtReply)
    for (const n of nodes.values()) expect(n.applied()).toBe(index)
    for (const n of nodes.values()) await n.stop()
  })

  it("a busy leader's next append carries the commit: no separate notice for it (real event loop)", async () => {
    const { nodes, sent, a, deadline } = await noticeCluster()
    // A writer that sends its next write in the turn after each reply, as a busy client does.
    let first = 0
    let second = 0
    await new Promise<void>((resolve, reject) => {
      a.propose(upsert('web', 'db')).then(({ index }) => {
        first = index
        setImmediate(() =>
          a.propose(upsert('api', 'db')).then(({ index: i }) => {
            second = i
            resolve()
          }, reject),
        )
      }, reject)
    })
    while ([...nodes.values()].some((n) => n.applied() < second) && Date.now() < deadline)
      await new Promise((r) => setImmediate(r))
    const fromA = sent.filter((m) => m.from === 'a')
    // The first write's commit reached b and c on the second write's append, not on a notice.
    for (const to of ['b', 'c']) {
      const carrying = fromA.filter((m) => m.to === to && m.commit >= first && m.commit < second)
      expect(carrying.length).toBeGreaterThan(0)
      expect(carrying.every((m) => !m.empty)).toBe(true)
    }
    // The last commit, with nothing after it, still goes out as a notice.
    expect(
      fromA
        .filter((m) => m.empty && m.commit >= second)
        .map((m) => m.to)
        .sort(),
    ).toEqual(['b', 'c'])
    for (const n of nodes.values()) expect(n.applied()).toBe(second)
    for (const n of nodes.values()) await n.stop()
  })

  it('a leader starts its own fsync before it sends the appends, and counts its copy only after it (§10.2.1)', async () => {
    const events: string[] = []
    class RecordingStorage extends MemoryStorage {
      hold = false
      readonly held: (() => void)[] = []
      appendDeferred(entries: Parameters<MemoryStorage['append']>[0]): void {
        events.push(`write ${entries.at(-1)!.index}`)
        this.append(entries)
      }
      sync(): Promise<void> {
        events.push('fsync')
        return this.hold ? new Promise((resolve) => this.held.push(resolve)) : Promise.resolve()
      }
    }
    const nodes = new Map<string, RaftNode<PolicyResult>>()
    const storages = new Map<string, RecordingStorage>()
    const down = new Set<string>()
    for (const id of ids) {
      const storage = new RecordingStorage()
      storages.set(id, storage)
      const node = new RaftNode<PolicyResult>({
        id,
        storage,
        stateMachine: new PolicyStore(),
        transport: {
          send: (to, m) => {
            if (id === 'a' && m.type === 'app' && m.entries.length > 0)
              events.push(`send ${to} ${m.entries.at(-1)!.index}`)
            const bytes = encodeMessage(m)
            setImmediate(() => {
              if (!down.has(to)) nodes.get(to)?.receive(bytes, id)
            })
          },
        },
        bootstrap: ids,
        tickMs: 1_000,
        coalesceReady: true,
      })
      nodes.set(id, node)
    }
    for (const n of nodes.values()) n.start()
    const a = nodes.get('a')!
    a.campaign()
    const deadline = Date.now() + 5_000
    while (!a.isLeader() && Date.now() < deadline) await new Promise((r) => setImmediate(r))
    await a.propose(upsert('warm', 'up'))
    events.length = 0
    // b is cut off and a's disk is stuck: a's own copy must not count, so c alone is no quorum.
    down.add('b')
    storages.get('a')!.hold = true
    let done = false
    const p = a.propose(upsert('web', 'db')).then((r) => {
      done = true
      return r
    })
    while (!events.some((e) => e.startsWith('send c')) && Date.now() < deadline)
      await new Promise((r) => setImmediate(r))
    const index = Number(events.find((e) => e.startsWith('write'))!.split(' ')[1])
    expect(events.slice(0, 4)).toEqual([`write ${index}`, 'fsync', `send b ${index}`, `send c ${index}`])
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r))
    expect(done).toBe(false)
    expect(a.status().commit).toBeLessThan(index)
    for (const release of storages.get('a')!.held.splice(0)) release()
    expect((await p).index).toBe(index)
    for (const n of nodes.values()) await n.stop()
  })

  it('applies a committed entry while its own fsync is still under way, acknowledging it only after', async () => {
    // Real event loop, asynchronous fsync path. c's disk is stuck: a and b commit without it, and
    // c shows the write as soon as it learns the commit; its appResp still waits for its fsync.
    class SlowDiskStorage extends MemoryStorage {
      hold = false
      readonly held: (() => void)[] = []
      appendDeferred(entries: Parameters<MemoryStorage['append']>[0]): void {
        this.append(entries)
      }
      sync(): Promise<void> {
        return this.hold ? new Promise((resolve) => this.held.push(resolve)) : Promise.resolve()
      }
    }
    const nodes = new Map<string, RaftNode<PolicyResult>>()
    const slow = new SlowDiskStorage()
    for (const id of ids) {
      const node = new RaftNode<PolicyResult>({
        id,
        storage: id === 'c' ? slow : new MemoryStorage(),
        stateMachine: new PolicyStore(),
        transport: {
          send: (to, m) => {
            const bytes = encodeMessage(m)
            setImmediate(() => nodes.get(to)?.receive(bytes, id))
          },
        },
        bootstrap: ids,
        tickMs: 10,
        coalesceReady: true,
        followerWritesOffLoop: true,
      })
      nodes.set(id, node)
    }
    for (const n of nodes.values()) n.start()
    const a = nodes.get('a')!
    const c = nodes.get('c')!
    a.campaign()
    const until = async (what: string, ok: () => boolean): Promise<void> => {
      const deadline = Date.now() + 5_000
      while (!ok()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
        await new Promise((r) => setTimeout(r, 2))
      }
    }
    await until('a leader', () => a.isLeader())
    await a.propose(upsert('warm', 'up'))
    await until('c to catch up', () => c.applied() >= a.applied())
    slow.hold = true
    const { index } = await a.propose(upsert('web', 'db'))
    await until('c to apply it', () => c.applied() >= index)
    expect(slow.held.length).toBeGreaterThan(0) // its write of the entry is not durable yet...
    expect(a.status().progress['c']!.match).toBeLessThan(index) // ...so it has not acknowledged it
    slow.hold = false
    for (const release of slow.held.splice(0)) release()
    await until('c to acknowledge it', () => a.status().progress['c']!.match >= index)
    for (const n of nodes.values()) await n.stop()
  })

  it('autopilot re-promotes a voter that restarted slowly, was removed and came back as a learner', async () => {
    // The bench's heavy-load case: the leader is killed with an uncommitted tail, restarts after
    // the dead threshold, is removed, rejoins gossip and is added back as a learner. With fewer
    // voters than the target it must be promoted again once caught up.
    const c = cluster()
    for (const id of ids) c.start(id)
    await c.run(3_000)
    const old = c.leader()
    for (let i = 0; i < 5; i++) await settle(c, old.propose(upsert(`s${i}`, 'd')))
    c.net.down.add(old.id)
    void old.propose(upsert('uncommitted', 'tail')).catch(() => {})
    void old.propose(upsert('uncommitted2', 'tail')).catch(() => {})
    c.net.deliverAll()
    await old.stop()
    c.net.nodes.delete(old.id)
    await c.run(5_000)
    const l = c.leader()
    const down = new Map([[old.id, 0]])
    const plan = (alive: boolean) => {
      const st = l.status()
      return planAutopilot(
        {
          self: l.id,
          conf: st.conf,
          members: ids.map((id) => ({ id, status: id !== old.id || alive ? 'alive' : 'dead' })),
          progress: st.progress,
          lastIndex: st.lastIndex,
          downSince: alive ? new Map() : down,
          now: 60_000,
        },
        DEFAULT_AUTOPILOT,
      )
    }
    const step = async (alive: boolean) => {
      const change = plan(alive)
      if (change !== undefined) await settle(c, l.changeMembership(change))
      return change
    }
    expect(await step(false)).toEqual({ type: 'removeVoter', node: old.id })
    for (let i = 5; i < 10; i++) await settle(c, l.propose(upsert(`s${i}`, 'd')))
    c.start(old.id) // same storage: its old voter configuration and divergent tail
    await c.run(1_000)
    expect(await step(true)).toEqual({ type: 'addLearner', node: old.id })
    await c.run(1_000)
    expect(await step(true)).toEqual({ type: 'promoteLearner', node: old.id })
    await c.run(1_000)
    expect(l.voters().sort()).toEqual([...ids].sort())
  })
})

describe('RaftNode driver: a commit is applied when its acknowledgement arrives', () => {
  /**
   * Three nodes with coalesceReady on a virtual clock: deferred Ready processing runs only on
   * `clock.flush()`, and messages move only when the test delivers them, one by one.
   */
  function held(extra: { noticeHoldMs?: number } = {}) {
    const clock = new VirtualClock()
    const nodes = new Map<string, RaftNode<PolicyResult>>()
    const queue: { from: string; to: string; type: string; index: number; bytes: Uint8Array }[] = []
    const sealed: number[] = []
    for (const id of ids) {
      const node = new RaftNode<PolicyResult>({
        id,
        storage: new MemoryStorage(),
        stateMachine: new PolicyStore(),
        transport: {
          send: (to, m) =>
            queue.push({ from: id, to, type: m.type, index: m.index, bytes: encodeMessage(m) }),
        },
        clock,
        rng: new SeededRng(7).next,
        bootstrap: ids,
        tickMs: TICK,
        coalesceReady: true,
        ...extra,
        sealer: (batch) => {
          sealed.push(batch.length)
          return batch.map((b) => b.data)
        },
      })
      nodes.set(id, node)
    }
    const deliver = (pick: (m: (typeof queue)[number]) => boolean): number => {
      let n = 0
      for (let i = 0; i < queue.length; ) {
        const m = queue[i]!
        if (!pick(m)) {
          i++
          continue
        }
        queue.splice(i, 1)
        nodes.get(m.to)!.receive(m.bytes, m.from)
        n++
      }
      return n
    }
    return { clock, nodes, queue, sealed, deliver }
  }

  /** `held()` with a leader `a` whose first entry is settled everywhere, and an empty queue. */
  function settledLeader(extra: { noticeHoldMs?: number } = {}) {
    const h = held(extra)
    const a = h.nodes.get('a')!
    for (const n of h.nodes.values()) n.start()
    a.campaign()
    for (let i = 0; i < 20 && !a.isLeader(); i++) {
      h.clock.flush()
      h.deliver(() => true)
    }
    expect(a.isLeader()).toBe(true)
    for (let i = 0; i < 20; i++) {
      h.clock.advance(TICK)
      h.deliver(() => true)
    }
    h.queue.length = 0
    return { ...h, a }
  }

  /** Commit notices in the queue: appends from `a` without entries, by peer, with their commit. */
  const noticesIn = (queue: ReturnType<typeof held>['queue']) =>
    queue
      .filter((m) => m.from === 'a' && m.type === 'app')
      .map((m) => ({ to: m.to, msg: decodeMessage(m.bytes) }))
      .filter((x) => x.msg.ok && x.msg.message.type === 'app' && x.msg.message.entries.length === 0)
      .map((x) => ({ to: x.to, commit: x.msg.ok ? x.msg.message.commit : -1 }))

  it('with noticeHoldMs, a commit notice waits that long, then goes to every follower', async () => {
    const { clock, nodes, queue, deliver, a } = settledLeader({ noticeHoldMs: 5 })
    const { index } = await (async () => {
      const p = a.propose(upsert('web', 'db'))
      clock.flush() // a seals, writes and sends the appends
      expect(deliver((m) => m.type === 'app' && m.from === 'a')).toBe(2)
      clock.flush() // b and c write and acknowledge
      expect(deliver((m) => m.type === 'appResp')).toBe(2)
      return p
    })()
    expect(a.applied()).toBe(index)
    clock.advance(4)
    expect(noticesIn(queue)).toEqual([])
    expect(nodes.get('b')!.applied()).toBeLessThan(index)
    clock.advance(1)
    expect(noticesIn(queue).sort((x, y) => x.to.localeCompare(y.to))).toEqual([
      { to: 'b', commit: index },
      { to: 'c', commit: index },
    ])
    deliver(() => true)
    clock.flush()
    for (const n of nodes.values()) expect(n.applied()).toBe(index)
    for (const n of nodes.values()) await n.stop()
  })

  it('with noticeHoldMs, the next write within the hold carries the commit: no notice for it', async () => {
    const { clock, nodes, queue, deliver, a } = settledLeader({ noticeHoldMs: 5 })
    const write = async (source: string) => {
      const p = a.propose(upsert(source, 'db'))
      clock.flush()
      expect(deliver((m) => m.type === 'app' && m.from === 'a')).toBe(2)
      clock.flush()
      expect(deliver((m) => m.type === 'appResp')).toBe(2)
      return p
    }
    const first = await write('web')
    clock.advance(2)
    const appendsBefore = queue.length
    const p = a.propose(upsert('api', 'db'))
    clock.flush()
    const appends = queue
      .slice(appendsBefore)
      .filter((m) => m.from === 'a' && m.type === 'app')
      .map((m) => decodeMessage(m.bytes))
    // Raft §5.3: the append carries the leader's commit index, so b and c learn the first write's.
    expect(appends).toHaveLength(2)
    for (const r of appends) {
      expect(r.ok && r.message.type === 'app' && r.message.entries.length === 1).toBe(true)
      expect(r.ok && r.message.commit).toBe(first.index)
    }
    clock.advance(5)
    expect(noticesIn(queue).filter((n) => n.commit === first.index)).toEqual([])
    deliver(() => true)
    clock.flush()
    deliver(() => true)
    const second = await p
    clock.advance(5)
    deliver(() => true)
    clock.flush()
    for (const n of nodes.values()) expect(n.applied()).toBe(second.index)
    for (const n of nodes.values()) await n.stop()
  })

  it('a stopped leader sends no held notice when its hold ends', async () => {
    const { clock, nodes, queue, deliver, a } = settledLeader({ noticeHoldMs: 5 })
    const p = a.propose(upsert('web', 'db'))
    clock.flush()
    deliver((m) => m.type === 'app' && m.from === 'a')
    clock.flush()
    deliver((m) => m.type === 'appResp')
    await p
    await a.stop()
    clock.advance(10)
    expect(noticesIn(queue)).toEqual([])
    for (const n of nodes.values()) await n.stop()
  })

  it('a leader applies the entries an ack commits during that step, not a turn later; queued proposals still wait for the turn', async () => {
    const { clock, nodes, queue, sealed, deliver } = held()
    const a = nodes.get('a')!
    for (const n of nodes.values()) n.start()
    a.campaign()
    for (let i = 0; i < 20 && !a.isLeader(); i++) {
      clock.flush()
      deliver(() => true)
    }
    expect(a.isLeader()).toBe(true)
    // Settle the leader's first entry everywhere, then start from an empty queue.
    for (let i = 0; i < 20; i++) {
      clock.advance(TICK)
      deliver(() => true)
    }
    queue.length = 0
    sealed.length = 0

    let applied: number | undefined
    a.propose(upsert('web', 'db')).then((r) => {
      applied = r.index
    })
    clock.flush() // a seals, writes and sends the appends
    expect(deliver((m) => m.type === 'app' && m.from === 'a')).toBe(2)
    clock.flush() // b and c write and acknowledge
    expect(
      queue
        .filter((m) => m.type === 'appResp')
        .map((m) => m.from)
        .sort(),
    ).toEqual(['b', 'c'])
    const index = a.status().lastIndex

    // A second write arrives in the same turn as b's acknowledgement.
    a.propose(upsert('api', 'db')).catch(() => {})
    expect(deliver((m) => m.type === 'appResp' && m.from === 'b')).toBe(1)
    // Raft §5.3: a's own copy and b's make a majority. Applied at once, with no deferred turn run.
    expect(a.applied()).toBe(index)
    await Promise.resolve()
    await Promise.resolve()
    expect(applied).toBe(index)
    // The commit notices are still held for their turns, and the second write is not sealed yet:
    // it is sealed at the end of the turn, with whatever else arrives in it.
    expect(queue.filter((m) => m.from === 'a' && m.type === 'app')).toHaveLength(0)
    expect(sealed).toEqual([1])
    clock.flush()
    expect(sealed).toEqual([1, 1])
    for (const n of nodes.values()) await n.stop()
  })

  it('a follower writes and acknowledges an append at the end of the turn, not during the step', () => {
    const { clock, nodes, queue, deliver } = held()
    const a = nodes.get('a')!
    for (const n of nodes.values()) n.start()
    a.campaign()
    for (let i = 0; i < 20; i++) {
      clock.advance(TICK)
      deliver(() => true)
    }
    expect(a.isLeader()).toBe(true)
    queue.length = 0
    a.propose(upsert('web', 'db')).catch(() => {})
    clock.flush()
    const index = a.status().lastIndex
    const acks = () => queue.filter((m) => m.from === 'b' && m.type === 'appResp' && m.index >= index)
    expect(deliver((m) => m.type === 'app' && m.to === 'b')).toBe(1)
    // Appends that arrive in one turn are written (and acknowledged) with one fsync: nothing yet.
    expect(acks()).toHaveLength(0)
    clock.flush()
    expect(acks()).toHaveLength(1)
  })
})

describe('RaftNode snapshots survive failures', () => {
  /** A policy store whose first `failures` snapshots throw (a bug, or a disk error in a storage). */
  class FlakyStore extends PolicyStore {
    failures = 1
    override snapshot(): Uint8Array {
      if (this.failures > 0) {
        this.failures--
        throw new RangeError('Maximum call stack size exceeded')
      }
      return super.snapshot()
    }
  }

  it('a failing snapshot is logged once, counted, retried after a backoff, and never fatal', async () => {
    const clock = new VirtualClock()
    const storage = new MemoryStorage()
    const sm = new FlakyStore()
    sm.failures = 2
    const warned: object[] = []
    const infos: object[] = []
    const node = new RaftNode<PolicyResult>({
      id: 'a',
      storage,
      stateMachine: sm,
      transport: { send: () => {} },
      clock,
      bootstrap: ['a'],
      tickMs: TICK,
      snapshotThreshold: 5,
      snapshotTrailing: 1,
      log: { warn: (o) => warned.push(o), info: (o) => infos.push(o) },
    })
    node.start()
    node.campaign()
    expect(node.isLeader()).toBe(true)
    for (let i = 0; i < 8; i++) await node.propose(upsert(`s${i}`, 'd'))
    // The first attempt failed: nothing saved, nothing compacted, the node goes on.
    expect(node.status().snapshotFailures).toBe(1)
    expect(storage.initialState().snapshot).toBeUndefined()
    expect(warned).toHaveLength(1)
    // Within the backoff, no new attempt even as entries keep applying.
    for (let i = 8; i < 12; i++) await node.propose(upsert(`s${i}`, 'd'))
    expect(node.status().snapshotFailures).toBe(1)
    // After it, the retry fails again (still logged once), then one more backoff later succeeds.
    clock.advance(SNAPSHOT_RETRY.initialMs)
    await node.propose(upsert('x', 'd'))
    expect(node.status().snapshotFailures).toBe(2)
    expect(warned).toHaveLength(1)
    const before = node.applied()
    clock.advance(2 * SNAPSHOT_RETRY.initialMs)
    await node.propose(upsert('y', 'd')) // the next Ready takes it
    expect(storage.initialState().snapshot?.metadata.index).toBeGreaterThanOrEqual(before)
    expect(node.status().snapshotFailures).toBe(2)
    expect(infos).toHaveLength(1)
    // The saved snapshot restores the whole state, and the log was compacted behind it.
    const copy = new PolicyStore()
    copy.restore(storage.initialState().snapshot!.data)
    expect(copy.listIntentions().length).toBeGreaterThanOrEqual(13)
    expect(storage.initialState().entries[0]!.index).toBeGreaterThan(1)
    await node.stop()
  })
})
