/**
 * The driver sleeps until the core's next due tick (`Raft.ticksUntilDue`) instead of waking up for
 * every tick, applying the ticks elapsed meanwhile before any input. Checked on a 3-node cluster
 * with the agent's timing (25 ms ticks, elections after 6, idle heartbeats every 20) on a virtual
 * clock: an idle cluster wakes up a few times a second, and keeps the behaviour of a timer per tick.
 */
import { describe, expect, it } from 'vitest'
import type { Cancel, Clock } from '../../src/common/clock.ts'
import { encodeMessage } from '../../src/raft/codec.ts'
import { RaftNode } from '../../src/raft/node-driver.ts'
import { encodePolicyCommand, type PolicyResult, PolicyStore } from '../../src/raft/policy/policy-store.ts'
import { MemoryStorage } from '../../src/raft/storage/memory-storage.ts'
import { SeededRng } from '../sim/rng.ts'
import { VirtualClock } from '../sim/virtual-clock.ts'

const TICK = 25
const ids = ['a', 'b', 'c']
const config = { electionTick: 6, heartbeatTick: 1, learnerHeartbeatTick: 4, idleHeartbeatTick: 20 }

/** The shared virtual clock, seen by one node: counts the timer callbacks that node gets. */
function countingClock(clock: VirtualClock, fired: { n: number }): Clock {
  return {
    now: () => clock.now(),
    wallNow: () => clock.wallNow(),
    setTimeout: (fn: () => void, ms: number): Cancel =>
      clock.setTimeout(() => {
        fired.n++
        fn()
      }, ms),
    setInterval: (fn: () => void, ms: number): Cancel =>
      clock.setInterval(() => {
        fired.n++
        fn()
      }, ms),
    defer: (fn: () => void): Cancel => clock.defer(fn),
  }
}

function cluster() {
  const clock = new VirtualClock()
  const rng = new SeededRng(7)
  const nodes = new Map<string, RaftNode<PolicyResult>>()
  const fired = new Map(ids.map((id) => [id, { n: 0 }]))
  const cut = new Set<string>()
  const queue: { from: string; to: string; bytes: Uint8Array }[] = []
  for (const id of ids) {
    const node = new RaftNode<PolicyResult>({
      id,
      storage: new MemoryStorage(),
      stateMachine: new PolicyStore(),
      transport: { send: (to, m) => queue.push({ from: id, to, bytes: encodeMessage(m) }) },
      clock: countingClock(clock, fired.get(id)!),
      rng: rng.next,
      bootstrap: ids,
      tickMs: TICK,
      config,
    })
    nodes.set(id, node)
  }
  for (const n of nodes.values()) n.start()
  const deliver = (): void => {
    while (queue.length > 0) {
      const { from, to, bytes } = queue.shift()!
      if (!cut.has(from) && !cut.has(to)) nodes.get(to)!.receive(bytes, from)
    }
  }
  /** Advances virtual time 1 ms at a time, delivering messages as they are sent. */
  const run = (ms: number): void => {
    for (let t = 0; t < ms; t++) {
      clock.advance(1)
      deliver()
    }
  }
  const leader = (): RaftNode<PolicyResult> | undefined =>
    [...nodes.values()].find((n) => n.isLeader() && !cut.has(n.id))
  return { clock, nodes, fired, cut, run, deliver, leader }
}

describe('RaftNode wakes up only when a tick is due', () => {
  it('an idle 3-node cluster: a few wake-ups a second per node instead of 40, and no election', () => {
    const c = cluster()
    c.run(3_000)
    const l = c.leader()!
    const term = l.term()
    for (const f of c.fired.values()) f.n = 0
    c.run(10_000)
    // Idle heartbeats every 500 ms; followers re-arm on each. A timer per tick would be 400.
    for (const [id, f] of c.fired) expect(f.n, id).toBeLessThanOrEqual(50)
    expect(c.leader()).toBe(l)
    for (const n of c.nodes.values()) expect(n.term()).toBe(term)
  })

  it('a write to an idle leader commits at once, then heartbeats go back to every tick', async () => {
    const c = cluster()
    c.run(3_000)
    const l = c.leader()!
    const p = l.propose(
      encodePolicyCommand({ op: 'intention.upsert', source: 'web', destination: 'db', action: 'allow' }),
    )
    let done = false
    void p.then(() => {
      done = true
    })
    const t0 = c.clock.now()
    while (!done && c.clock.now() - t0 < 1_000) {
      c.run(1)
      await Promise.resolve()
    }
    expect(done).toBe(true)
    expect(c.clock.now() - t0).toBeLessThan(TICK) // no waiting for a tick: appended and acked at once
    for (const f of c.fired.values()) f.n = 0
    c.run(5 * TICK) // awake: heartbeats every tick for an election timeout before going idle again
    expect(c.fired.get(l.id)!.n).toBeGreaterThanOrEqual(4)
  })

  it('followers of a silent idle leader elect another after the stretched timeout (6 + 20 - 1 ticks), not before', () => {
    const c = cluster()
    c.run(3_000)
    const old = c.leader()!
    c.cut.add(old.id) // hung but connected: no connection closes, nothing is said
    const t0 = c.clock.now()
    while (c.leader() === undefined || c.leader() === old) {
      c.run(1)
      expect(c.clock.now() - t0).toBeLessThan(2_000)
    }
    const took = c.clock.now() - t0
    // The last idle heartbeat came at most 20 ticks before the cut; the timeout is 25-30 ticks.
    expect(took).toBeGreaterThanOrEqual((25 - 20) * TICK)
    expect(took).toBeLessThanOrEqual((30 + 2) * TICK)
  })

  it('a stall of the whole cluster longer than an election timeout changes neither leader nor term', () => {
    const c = cluster()
    c.run(3_000)
    const l = c.leader()!
    const term = l.term()
    const roles: string[] = []
    for (const n of c.nodes.values()) n.on('role:change', (e) => roles.push(`${n.id}:${e.role}`))
    // Every node's event loop stalls 1.5 s (three idle election timeouts), then runs as Node runs
    // it: the overdue timers first, then what waits in the sockets. A stall counts as one tick, so
    // a follower may at worst ask for pre-votes (thesis §9.6), which the others' leases refuse.
    c.clock.setNow(c.clock.now() + 1_500)
    c.clock.flush()
    c.deliver()
    c.run(2_000)
    expect(roles.filter((r) => !/:(preCandidate|follower)$/.test(r))).toEqual([])
    expect(c.leader()).toBe(l)
    for (const n of c.nodes.values()) expect(n.term()).toBe(term)
  })
})
