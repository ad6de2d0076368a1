/**
 * The driver in the mode production runs (coalesceReady, a storage that fsyncs off the event loop)
 * on the virtual clock: deliveries and Ready processing are deferred callbacks, fsyncs are promises
 * the test settles. No sleeps, no real timers.
 */
import { describe, expect, it } from 'vitest'
import { encodeMessage } from '../../src/raft/codec.ts'
import { RaftStoppedError } from '../../src/raft/errors.ts'
import { RaftNode } from '../../src/raft/node-driver.ts'
import { encodePolicyCommand, type PolicyResult, PolicyStore } from '../../src/raft/policy/policy-store.ts'
import { MemoryStorage } from '../../src/raft/storage/memory-storage.ts'
import type { Entry, EntrySealer, Message } from '../../src/raft/types.ts'
import { sealPolicyBatch } from '../../src/raft/policy/policy-signing.ts'
import { createRootCa } from '../../src/identity/index.ts'
import { rootRecordOf } from '../../src/identity/connect/ca-state.ts'
import { SeededRng } from '../sim/rng.ts'
import { VirtualClock } from '../sim/virtual-clock.ts'

const ids = ['a', 'b', 'c']

/** A disk whose fsyncs complete when the test says so (at once unless `hold` is set). */
class ControlledDisk extends MemoryStorage {
  hold = false
  syncs = 0
  private readonly held: { resolve: () => void; reject: (err: Error) => void }[] = []

  appendDeferred(entries: readonly Entry[]): void {
    this.append(entries)
  }

  sync(): Promise<void> {
    this.syncs++
    if (!this.hold) return Promise.resolve()
    return new Promise((resolve, reject) => this.held.push({ resolve, reject }))
  }

  get pendingSyncs(): number {
    return this.held.length
  }

  release(): void {
    this.hold = false
    for (const h of this.held.splice(0)) h.resolve()
  }

  fail(err: Error): void {
    for (const h of this.held.splice(0)) h.reject(err)
  }
}

interface Sent {
  from: string
  to: string
  type: Message['type']
  index: number
  last: number | undefined
  commit: number
}

function cluster(
  opts: {
    followerWritesOffLoop?: boolean
    sealer?: EntrySealer
    verifySignatures?: boolean
    snapshotThreshold?: number
  } = {},
) {
  const clock = new VirtualClock()
  const rng = new SeededRng(7)
  const disks = new Map(ids.map((id) => [id, new ControlledDisk()]))
  const nodes = new Map<string, RaftNode<PolicyResult>>()
  const stores = new Map(
    ids.map((id) => [id, new PolicyStore(undefined, { verifySignatures: opts.verifySignatures ?? false })]),
  )
  const sent: Sent[] = []
  /** Links that drop everything, as "from>to". */
  const cut = new Set<string>()
  for (const id of ids) {
    const node = new RaftNode<PolicyResult>({
      id,
      storage: disks.get(id)!,
      stateMachine: stores.get(id)!,
      transport: {
        send: (to, m) => {
          sent.push({
            from: id,
            to,
            type: m.type,
            index: m.index,
            last: m.entries.at(-1)?.index,
            commit: m.commit,
          })
          const bytes = encodeMessage(m)
          // Delivered from the event loop, never within the call (see RaftTransport).
          clock.defer(() => {
            if (!cut.has(`${id}>${to}`)) nodes.get(to)?.receive(bytes, id)
          })
        },
      },
      clock,
      rng: rng.next,
      bootstrap: ids,
      tickMs: 100,
      coalesceReady: true,
      followerWritesOffLoop: opts.followerWritesOffLoop ?? false,
      ...(opts.sealer !== undefined ? { sealer: opts.sealer } : {}),
      ...(opts.snapshotThreshold !== undefined
        ? { snapshotThreshold: opts.snapshotThreshold, snapshotTrailing: 0 }
        : {}),
    })
    nodes.set(id, node)
  }
  /** Runs deferred work and settled fsyncs until nothing is left at the current time. */
  const settle = async (): Promise<void> => {
    for (let i = 0; i < 50; i++) {
      clock.flush()
      await Promise.resolve()
    }
  }
  /** Settles until `p` does (it must: nothing else moves time). */
  const until = async <T>(p: Promise<T>): Promise<T> => {
    let done = false
    const watched = p.finally(() => {
      done = true
    })
    watched.catch(() => {})
    for (let i = 0; i < 20 && !done; i++) await settle()
    if (!done) throw new Error('did not settle')
    return watched
  }
  const node = (id: string) => nodes.get(id)!
  const disk = (id: string) => disks.get(id)!
  const start = async () => {
    for (const n of nodes.values()) n.start()
    node('a').campaign()
    await settle()
    expect(node('a').isLeader()).toBe(true)
    const { index } = await until(node('a').propose(upsert('warm', 'up')))
    await settle()
    for (const n of nodes.values()) expect(n.applied()).toBe(index)
  }
  return { clock, nodes, stores, node, disk, sent, cut, settle, until, start }
}

const upsert = (source: string, destination: string) =>
  encodePolicyCommand({ op: 'intention.upsert', source, destination, action: 'allow' })

describe('RaftNode in production mode (coalescing, fsync off the event loop), on a virtual clock', () => {
  it("sends the leader's appends before its own fsync; the entry commits on the followers' copies", async () => {
    const c = cluster()
    await c.start()
    c.disk('a').hold = true
    c.sent.length = 0
    let result: { index: number } | undefined
    void c
      .node('a')
      .propose(upsert('web', 'db'))
      .then((r) => {
        result = r
      })
    await c.settle()
    expect(c.disk('a').pendingSyncs).toBe(1) // the leader's write is under way...
    const appends = c.sent.filter((m) => m.from === 'a' && m.type === 'app' && m.last !== undefined)
    expect(appends.map((m) => m.to).sort()).toEqual(['b', 'c']) // ...its appends already left
    // b and c made it durable: a quorum, so it commits and applies on the leader too, whose own
    // copy does not count until its fsync (thesis §10.2.1).
    expect(result).toBeDefined()
    const index = result!.index
    expect(c.node('a').applied()).toBe(index)
    expect(c.node('a').status().progress['a']!.match).toBeLessThan(index)
    c.disk('a').release()
    await c.settle()
    expect(c.node('a').status().progress['a']!.match).toBe(index)
  })

  it('a follower writes in line by default: no off-loop fsync, and its ack leaves once written', async () => {
    const c = cluster()
    await c.start()
    c.disk('c').hold = true // would hold an off-loop fsync; an in-line write does not use one
    const before = c.disk('c').syncs
    c.sent.length = 0
    const { index } = await c.until(c.node('a').propose(upsert('web', 'db')))
    await c.settle()
    expect(c.disk('c').syncs).toBe(before)
    expect(c.disk('c').initialState().entries.at(-1)?.index).toBe(index)
    expect(c.sent.some((m) => m.from === 'c' && m.type === 'appResp' && m.index >= index)).toBe(true)
    expect(c.node('a').status().progress['c']!.match).toBe(index)
    c.disk('c').release()
  })

  it('a follower applies a committed entry during its own fsync and acknowledges it only after', async () => {
    const c = cluster({ followerWritesOffLoop: true })
    await c.start()
    c.disk('c').hold = true
    c.sent.length = 0
    const { index } = await c.until(c.node('a').propose(upsert('web', 'db')))
    await c.settle()
    expect(c.disk('c').pendingSyncs).toBe(1)
    expect(c.node('c').applied()).toBe(index) // committed on a and b: c applies it at once...
    const acks = () => c.sent.filter((m) => m.from === 'c' && m.type === 'appResp' && m.index >= index)
    expect(acks()).toEqual([]) // ...but does not acknowledge what is not on its disk (thesis §3.8)
    expect(c.node('a').status().progress['c']!.match).toBeLessThan(index)
    c.disk('c').release()
    await c.settle()
    expect(acks().length).toBeGreaterThan(0)
    expect(c.node('a').status().progress['c']!.match).toBe(index)
  })

  it("a commit index saved with a follower's term never names entries still being written (§5.4.3)", async () => {
    const c = cluster({ followerWritesOffLoop: true })
    await c.start()
    // c misses an entry that a and b commit; then it gets the entry and the commit in one append.
    c.cut.add('a>c')
    const { index } = await c.until(c.node('a').propose(upsert('web', 'db')))
    await c.settle()
    c.disk('c').hold = true
    c.cut.delete('a>c')
    c.clock.advance(200) // a heartbeat; c answers, and a sends the entry with commit = index
    await c.settle()
    expect(c.disk('c').pendingSyncs).toBe(1)
    expect(c.node('c').applied()).toBe(index)
    // A crash now must not leave a commit on disk over an entry that is not: it stops before.
    expect(c.disk('c').initialState().hardState.commit).toBeLessThan(index)
    c.disk('c').release()
    await c.settle()
  })

  it('group commit: proposals of one event-loop turn, or made during a fsync, share one fsync', async () => {
    const c = cluster()
    await c.start()
    const a = c.node('a')
    let before = c.disk('a').syncs
    const first = await c.until(Promise.all([1, 2, 3, 4, 5].map((i) => a.propose(upsert(`s${i}`, 'd')))))
    expect(first.map((r) => r.index)).toEqual([1, 2, 3, 4, 5].map((i) => first[0]!.index + i - 1))
    expect(c.disk('a').syncs - before).toBe(1)

    before = c.disk('a').syncs
    c.disk('a').hold = true
    const p = [a.propose(upsert('t0', 'd'))]
    await c.settle()
    expect(c.disk('a').pendingSyncs).toBe(1)
    for (let i = 1; i <= 3; i++) {
      p.push(a.propose(upsert(`t${i}`, 'd')))
      await c.settle() // separate turns: each waits for the pending fsync
    }
    expect(c.disk('a').syncs - before).toBe(1)
    c.disk('a').release()
    await c.settle()
    expect((await c.until(Promise.all(p))).length).toBe(4)
    expect(c.disk('a').syncs - before).toBe(2) // t1..t3 took the second fsync together
    await c.settle()
    for (const n of c.nodes.values()) expect(n.applied()).toBe(a.applied())
  })

  it('seals the proposals of one turn as one batch; every member verifies it and reaches the same state', async () => {
    const root = await createRootCa({ trustDomain: 'test.peermesh', nowMs: Date.now() })
    let signing = false
    const batches: number[][] = []
    const c = cluster({
      verifySignatures: true,
      sealer: (batch) => {
        batches.push(batch.map((b) => b.index))
        return signing ? sealPolicyBatch(root, batch) : batch.map((b) => b.data)
      },
    })
    await c.start()
    // The CA's creation is trusted on first use; from then on entries must be sealed.
    const ca = encodePolicyCommand({
      op: 'ca.setRoots',
      roots: [rootRecordOf(root, 0, [])],
      activeRootId: root.id,
    })
    expect((await c.until(c.node('a').propose(ca))).result).toMatchObject({ ok: true })
    signing = true
    batches.length = 0
    const results = await c.until(
      Promise.all([1, 2, 3, 4, 5].map((i) => c.node('a').propose(upsert(`s${i}`, 'd')))),
    )
    expect(batches).toHaveLength(1)
    expect(batches[0]).toEqual(results.map((r) => r.index))
    for (const r of results) expect(r.result).toMatchObject({ ok: true })
    await c.settle()
    const snapshots = new Set<string>()
    for (const [id, store] of c.stores) {
      expect(c.node(id).applied()).toBe(results.at(-1)!.index)
      expect(store.stats.signatureRejected).toBe(0)
      expect(store.getIntention('s5', 'd')?.action).toBe('allow')
      snapshots.add(Buffer.from(store.snapshot()).toString('base64'))
    }
    expect(snapshots.size).toBe(1)
    // Unsealed once the CA exists (a sealer without the key): refused everywhere, the same way.
    signing = false
    const unsigned = await c.until(c.node('a').propose(upsert('evil', 'd')))
    expect(unsigned.result).toMatchObject({ ok: false, code: 'PEERMESH_ERR_POLICY_SIGNATURE' })
    await c.settle()
    for (const store of c.stores.values()) expect(store.getIntention('evil', 'd')).toBeUndefined()
  })

  it('a member that missed signed batches catches up from a snapshot, then from the log', async () => {
    const root = await createRootCa({ trustDomain: 'test.peermesh', nowMs: Date.now() })
    let signing = false
    const c = cluster({
      verifySignatures: true,
      snapshotThreshold: 7,
      sealer: (batch) => (signing ? sealPolicyBatch(root, batch) : batch.map((b) => b.data)),
    })
    await c.start()
    const ca = encodePolicyCommand({
      op: 'ca.setRoots',
      roots: [rootRecordOf(root, 0, [])],
      activeRootId: root.id,
    })
    await c.until(c.node('a').propose(ca))
    signing = true
    c.cut.add('a>c')
    let last = 0
    for (let b = 0; b < 6; b++) {
      const rs = await c.until(
        Promise.all([1, 2, 3, 4].map((i) => c.node('a').propose(upsert(`b${b}i${i}`, 'd')))),
      )
      last = rs.at(-1)!.index
    }
    await c.settle()
    expect(c.node('a').status().firstIndex).toBeGreaterThan(c.node('c').applied() + 1) // compacted past c
    c.cut.delete('a>c')
    for (let t = 0; t < 20 && c.node('c').applied() < last; t++) {
      c.clock.advance(100)
      await c.settle()
    }
    // One more batch, through the log, continuing where the snapshot left off.
    const more = await c.until(Promise.all([1, 2, 3].map((i) => c.node('a').propose(upsert(`m${i}`, 'd')))))
    await c.settle()
    for (const [id, store] of c.stores) {
      expect(c.node(id).applied()).toBe(more.at(-1)!.index)
      expect(store.stats.signatureRejected).toBe(0)
      expect(store.getIntention('b5i4', 'd')?.action).toBe('allow')
      expect(store.getIntention('m3', 'd')?.action).toBe('allow')
    }
  })

  it('a sealer that throws rejects every proposal of its batch and appends none', async () => {
    let fail = false
    const c = cluster({
      sealer: (batch) => {
        if (fail) throw new Error('no key')
        return batch.map((b) => b.data)
      },
    })
    await c.start()
    const last = c.node('a').status().lastIndex
    fail = true
    const outcomes = await c.until(
      Promise.allSettled([1, 2, 3].map((i) => c.node('a').propose(upsert(`s${i}`, 'd')))),
    )
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected', 'rejected'])
    expect(c.node('a').status().lastIndex).toBe(last)
    fail = false
    const { index } = await c.until(c.node('a').propose(upsert('ok', 'd')))
    expect(index).toBe(last + 1)
  })

  it('a failed fsync stops the node and surfaces the error', async () => {
    const c = cluster()
    await c.start()
    c.cut.add('a>b').add('a>c') // nothing commits without the leader's own write
    c.disk('a').hold = true
    const p = c.node('a').propose(upsert('web', 'db'))
    const outcome = p.catch((e: unknown) => e)
    await c.settle()
    expect(c.disk('a').pendingSyncs).toBe(1)
    c.disk('a').fail(new Error('EIO'))
    for (let i = 0; i < 10; i++) await Promise.resolve()
    expect((await outcome) as { code: string }).toMatchObject({ code: RaftStoppedError.code })
    expect(() => c.clock.flush()).toThrow('EIO') // rethrown from the event loop, as etcd panics
    await expect(c.node('a').propose(upsert('x', 'y'))).rejects.toMatchObject({ code: RaftStoppedError.code })
  })

  it('runs its ticks and timeouts on the injected clock', async () => {
    const c = cluster()
    await c.start()
    // A follower cut off from the leader campaigns on its own clock ticks (2-4 election timeouts).
    c.cut.add('a>b').add('a>c')
    const term = c.node('a').term()
    for (let t = 0; t < 40 && c.node('a').isLeader(); t++) {
      c.clock.advance(100)
      await c.settle()
    }
    expect(c.node('a').isLeader()).toBe(false)
    expect(Math.max(c.node('b').term(), c.node('c').term())).toBeGreaterThan(term)
  })

  it('writes the founding entries of a bootstrap synchronously, with their term', () => {
    // A disk that loses whatever was appended off the loop and not yet synced (a crash now).
    class CrashingDisk extends ControlledDisk {
      readonly unsynced: Entry[] = []
      override appendDeferred(entries: readonly Entry[]): void {
        this.unsynced.push(...entries)
      }
    }
    const disk = new CrashingDisk()
    disk.hold = true
    const clock = new VirtualClock()
    const node = new RaftNode<PolicyResult>({
      id: 'a',
      storage: disk,
      stateMachine: new PolicyStore(),
      transport: { send: () => {} },
      clock,
      coalesceReady: true,
      bootstrap: ['a', 'b', 'c'],
    })
    node.start()
    clock.flush()
    // Crash here: what survives must hold the configuration, not only the term.
    const st = disk.initialState()
    expect(disk.unsynced).toEqual([])
    expect(st.hardState.term).toBeGreaterThan(0)
    expect(st.entries.filter((e) => e.type === 'conf')).toHaveLength(3)
    void node.stop()
  })
})
