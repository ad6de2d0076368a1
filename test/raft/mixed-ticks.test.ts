/**
 * Agents with different tick lengths (`performance.raftMultiplier`) in one cluster, on the virtual
 * clock with the agent's tick counts (RAFT_DEFAULTS): heartbeats say how long the leader's ticks
 * are, and a follower with shorter ticks counts the leader's interval in its own, so it neither
 * forgets a healthy leader between two heartbeats nor waits longer than needed for a dead one.
 */
import { describe, expect, it } from 'vitest'
import { decodeMessage, encodeMessage, MAX_TICK_MS } from '../../src/raft/codec.ts'
import { RaftNode } from '../../src/raft/node-driver.ts'
import { MemoryStorage } from '../../src/raft/storage/memory-storage.ts'
import type { Message } from '../../src/raft/types.ts'
import { SeededRng } from '../sim/rng.ts'
import { raftMessage } from './message.ts'
import { VirtualClock } from '../sim/virtual-clock.ts'
import { agentRaftConfig, nullStateMachine } from './agent-ticks.ts'

const enc = new TextEncoder()

/** Three drivers; `ticks` gives each one's tick length in ms. Messages cross in a deferred call. */
function cluster(ticks: Record<string, number>, opts: { stripTickMs?: boolean } = {}) {
  const clock = new VirtualClock()
  const rng = new SeededRng(3)
  const ids = Object.keys(ticks)
  const nodes = new Map<string, RaftNode<unknown>>()
  const leaderChanges = new Map(ids.map((id) => [id, 0]))
  const heartbeats: Message[] = []
  let down: string | undefined
  for (const id of ids) {
    const node = new RaftNode<unknown>({
      id,
      storage: new MemoryStorage(),
      stateMachine: nullStateMachine,
      transport: {
        send: (to, m) => {
          if (m.type === 'heartbeat') heartbeats.push(m)
          const bytes = encodeMessage(opts.stripTickMs ? { ...m, tickMs: undefined } : m)
          clock.defer(() => {
            if (id !== down && to !== down) nodes.get(to)?.receive(bytes, id)
          })
        },
      },
      clock,
      rng: rng.next,
      bootstrap: ids,
      tickMs: ticks[id]!,
      config: agentRaftConfig,
    })
    node.on('leader:change', () => leaderChanges.set(id, leaderChanges.get(id)! + 1))
    nodes.set(id, node)
  }
  for (const n of nodes.values()) n.start()
  return {
    clock,
    node: (id: string) => nodes.get(id)!,
    leaderChanges,
    heartbeats,
    /** The node stops answering and sending, as a process stopped with SIGSTOP. */
    hang: (id: string) => {
      down = id
    },
    /** Runs the clock forward in steps of 10 ms, delivering what was sent. */
    run: (ms: number) => {
      for (let t = 0; t < ms; t += 10) clock.advance(10)
    },
  }
}

describe('Raft with different tick lengths (performance.raftMultiplier)', () => {
  it('a follower with 50 ms ticks keeps a leader with 150 ms ticks, busy or idle, for a simulated minute', () => {
    const c = cluster({ a: 150, b: 150, c: 50 })
    c.node('a').campaign()
    c.run(1_000)
    expect(c.node('c').leader()).toBe('a')
    const before = c.leaderChanges.get('c')!
    void c.node('a').propose(enc.encode('x')) // a write: the leader is busy, then goes idle
    c.run(60_000)
    expect(c.node('a').isLeader()).toBe(true)
    expect(c.node('c').leader()).toBe('a')
    expect(c.leaderChanges.get('c')! - before).toBe(0)
    expect(c.node('c').term()).toBe(c.node('a').term())
    // The leader's heartbeats say how long its ticks are.
    expect(c.heartbeats.filter((m) => m.from === 'a').every((m) => m.tickMs === 150)).toBe(true)
  })

  it('without the tick length in heartbeats (an older leader), that follower keeps losing its leader', () => {
    // The control: the same cluster, heartbeats stripped of tickMs on the wire.
    const c = cluster({ a: 150, b: 150, c: 50 }, { stripTickMs: true })
    c.node('a').campaign()
    c.run(60_000)
    expect(c.leaderChanges.get('c')!).toBeGreaterThan(10)
  })

  it('a hung leader with 150 ms ticks is still replaced, within its own ticks’ election timeout', () => {
    const c = cluster({ a: 150, b: 150, c: 50 })
    c.node('a').campaign()
    c.run(10_000) // idle by now
    const term = c.node('a').term()
    c.hang('a')
    const start = c.clock.now()
    let replacedAt: number | undefined
    for (let t = 0; t < 10_000 && replacedAt === undefined; t += 10) {
      c.clock.advance(10)
      const b = c.node('b')
      const f = c.node('c')
      if ((b.isLeader() || f.isLeader()) && Math.max(b.term(), f.term()) > term) replacedAt = c.clock.now()
    }
    expect(replacedAt).toBeDefined()
    // The 150 ms follower's idle wait is (3 + 2 × (3 - 1)) × 150 ms = 1,050 ms at most plus a
    // randomized election timeout; the 50 ms follower waits (3 + 2 × (9 - 1)) × 50 = 950 ms.
    expect(replacedAt! - start).toBeLessThan(2_500)
  })

  it('a follower with longer ticks than its leader needs nothing: it is only more patient', () => {
    const c = cluster({ a: 50, b: 150, c: 150 })
    c.node('a').campaign()
    c.run(1_000)
    const before = c.leaderChanges.get('b')! + c.leaderChanges.get('c')!
    c.run(30_000)
    expect(c.node('a').isLeader()).toBe(true)
    expect(c.leaderChanges.get('b')! + c.leaderChanges.get('c')! - before).toBe(0)
  })
})

describe('tickMs on the wire (hostile peers)', () => {
  const heartbeat = raftMessage({ type: 'heartbeat' })

  it('round-trips, and is refused when not a whole number of ms from 1 to a minute', () => {
    const ok = decodeMessage(encodeMessage({ ...heartbeat, tickMs: 150 }))
    expect(ok.ok && ok.message.tickMs).toBe(150)
    for (const bad of [0, -1, 1.5, MAX_TICK_MS + 1, Number.NaN, 1e300]) {
      const r = decodeMessage(encodeMessage({ ...heartbeat, tickMs: bad }))
      expect(r).toEqual({ ok: false, reason: expect.stringContaining('tickMs') })
    }
  })

  it('a heartbeat claiming minute-long ticks stretches the wait only until the leader’s next heartbeat', () => {
    const c = cluster({ a: 50, b: 50, c: 50 })
    c.node('a').campaign()
    c.run(1_000)
    // b receives a (valid, current-term) heartbeat claiming minute-long ticks and an idle interval.
    const term = c.node('a').term()
    c.node('b').receive(
      encodeMessage({ ...heartbeat, to: 'b', term, idleTicks: 1_000, tickMs: MAX_TICK_MS }),
      'a',
    )
    // The core clamps it to MAX_IDLE_HEARTBEAT_TICK (1,000 ticks: 50 s at 50 ms), as any leader's
    // idleTicks; the real leader's next heartbeat (no such claim) brings the usual timeout back.
    c.run(1_000)
    c.hang('a')
    const start = c.clock.now()
    while (!c.node('b').isLeader() && !c.node('c').isLeader() && c.clock.now() - start < 10_000)
      c.clock.advance(10)
    expect(c.clock.now() - start).toBeLessThan(2_000)
  })
})
