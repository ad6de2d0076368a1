/**
 * Lazy ticks (RaftNodeOptions `lazyTicks`, on in the agent): a driver that sleeps until the next
 * tick that acts (Raft.ticksUntilDue) and counts the ticks in between before every input. On the
 * virtual clock with the agent's tick counts (RAFT_DEFAULTS), side by side with the interval
 * driver: the same elections and failover, a fraction of the wake-ups, and a node woken late reads
 * the heartbeats waiting for it before it campaigns.
 */
import { describe, expect, it } from 'vitest'
import type { Cancel, Clock } from '../../src/common/clock.ts'
import { RAFT_DEFAULTS } from '../../src/node/agent/defaults.ts'
import { encodeMessage } from '../../src/raft/codec.ts'
import { RaftNode } from '../../src/raft/node-driver.ts'
import { MemoryStorage } from '../../src/raft/storage/memory-storage.ts'
import { SeededRng } from '../sim/rng.ts'
import { VirtualClock } from '../sim/virtual-clock.ts'
import { agentRaftConfig, nullStateMachine } from './agent-ticks.ts'

const tickMs = RAFT_DEFAULTS.tickMs

/** A node's view of a clock: counts the timer callbacks that ran (its wake-ups), not the defers. */
function counting(clock: Clock): { clock: Clock; wakes: () => number } {
  let n = 0
  const wrap =
    (fn: () => void): (() => void) =>
    () => {
      n++
      fn()
    }
  return {
    clock: {
      now: () => clock.now(),
      wallNow: () => clock.wallNow(),
      setTimeout: (fn, ms): Cancel => clock.setTimeout(wrap(fn), ms),
      setInterval: (fn, ms): Cancel => clock.setInterval(wrap(fn), ms),
      defer: (fn): Cancel => clock.defer(fn),
    },
    wakes: () => n,
  }
}

/**
 * Three voters a, b, c. Node c has a clock of its own, kept in step with the others' except while
 * it is stalled (a process that is not running: SIGSTOP, a starved CPU): then its timers do not
 * fire and what is sent to it waits, and on resuming its overdue timers fire first, then what
 * arrived, then the callbacks deferred meanwhile, as in Node's event loop (timers, poll, check).
 */
function cluster(lazyTicks: boolean, seed = 7) {
  const clock = new VirtualClock()
  const cClock = new VirtualClock()
  const rng = new SeededRng(seed)
  const ids = ['a', 'b', 'c']
  const nodes = new Map<string, RaftNode<unknown>>()
  const wakes = new Map<string, () => number>()
  const leaderChanges = new Map(ids.map((id) => [id, 0]))
  const sentBy = new Map(ids.map((id) => [id, [] as string[]]))
  let hung: string | undefined
  let stalled = false
  const held: (() => void)[] = []
  for (const id of ids) {
    const own = id === 'c' ? cClock : clock
    const counted = counting(own)
    const node = new RaftNode<unknown>({
      id,
      storage: new MemoryStorage(),
      stateMachine: nullStateMachine,
      transport: {
        send: (to, m) => {
          if (id === hung) return
          sentBy.get(id)!.push(m.type)
          const bytes = encodeMessage(m)
          const deliver = () => {
            if (to !== hung) nodes.get(to)?.receive(bytes, id)
          }
          if (to === 'c' && stalled) held.push(deliver)
          else (to === 'c' ? cClock : clock).defer(deliver)
        },
      },
      clock: counted.clock,
      rng: rng.next,
      bootstrap: ids,
      tickMs,
      config: agentRaftConfig,
      lazyTicks,
    })
    node.on('leader:change', () => leaderChanges.set(id, leaderChanges.get(id)! + 1))
    nodes.set(id, node)
    wakes.set(id, counted.wakes)
  }
  for (const n of nodes.values()) n.start()
  const run = (ms: number) => {
    for (let t = 0; t < ms; t += 5) {
      clock.advance(5)
      if (!stalled) cClock.advance(clock.now() - cClock.now())
    }
  }
  return {
    node: (id: string) => nodes.get(id)!,
    wakes: (id: string) => wakes.get(id)!(),
    leaderChanges,
    sentBy,
    now: () => clock.now(),
    run,
    /** The node stops answering and sending, with its connections open (SIGSTOP). */
    hang: (id: string) => {
      hung = id
    },
    stallC: () => {
      stalled = true
    },
    resumeC: () => {
      stalled = false
      cClock.setNow(clock.now())
      // Deferred after the overdue timers (their `at` is earlier) and before what they defer.
      for (const deliver of held.splice(0)) cClock.defer(deliver)
      cClock.flush()
    },
  }
}

/** Runs until some node other than `old` leads, in 5 ms steps; the time it took. */
function untilNewLeader(c: ReturnType<typeof cluster>, old: string, limitMs: number): number {
  const start = c.now()
  while (c.now() - start < limitMs) {
    c.run(5)
    const leaders = ['a', 'b', 'c'].filter((id) => id !== old && c.node(id).isLeader())
    if (leaders.length > 0) return c.now() - start
  }
  return Number.POSITIVE_INFINITY
}

describe('Raft with lazy ticks', () => {
  it('an idle cluster keeps its leader for a simulated minute, with a fraction of the wake-ups', () => {
    const runs = [false, true].map((lazy) => {
      const c = cluster(lazy)
      c.node('a').campaign()
      c.run(2_000)
      expect(c.node('b').leader()).toBe('a')
      const before = ids3((id) => c.wakes(id))
      const changes = ids3((id) => c.leaderChanges.get(id)!)
      c.run(60_000)
      return {
        wakes: ids3((id) => c.wakes(id) - before[id]!),
        changes: ids3((id) => c.leaderChanges.get(id)! - changes[id]!),
        leader: c.node('c').leader(),
      }
    })
    const [interval, lazy] = runs as [(typeof runs)[0], (typeof runs)[0]]
    for (const r of runs) {
      expect(r.leader).toBe('a')
      expect(r.changes).toEqual({ a: 0, b: 0, c: 0 })
    }
    // The interval driver wakes every tick: 1,200 times in a minute of 50 ms ticks.
    for (const id of ['a', 'b', 'c']) expect(interval.wakes[id]).toBeGreaterThanOrEqual(1_190)
    // Lazily, an idle leader wakes for its heartbeats (every 3 ticks) and its quorum checks (every
    // 7), and a follower, whose election timeout is longer than the heartbeat interval, not at all.
    expect(lazy.wakes.a).toBeLessThan(interval.wakes.a! / 2)
    expect(lazy.wakes.b).toBeLessThan(10)
    expect(lazy.wakes.c).toBeLessThan(10)
  })

  it('a hung leader is replaced as fast as with the interval driver', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const times = [false, true].map((lazy) => {
        const c = cluster(lazy, seed)
        c.node('a').campaign()
        c.run(3_000) // idle by now: followers wait out the idle leader's longer timeout
        c.hang('a')
        return untilNewLeader(c, 'a', 5_000)
      })
      const [interval, lazy] = times as [number, number]
      expect(interval).toBeLessThan(1_000)
      // Whole ticks apart at most: the same timeouts, counted from the same heartbeat.
      expect(Math.abs(lazy - interval)).toBeLessThanOrEqual(2 * tickMs)
    }
  })

  it('a follower that has not woken still counts the time since its leader was heard', () => {
    const c = cluster(true)
    c.node('a').campaign()
    c.run(3_000)
    c.hang('a')
    c.run(4 * tickMs)
    // No timer of c's fired meanwhile (its election timeout is longer): the ticks are counted
    // when asked, as before any input.
    expect(c.node('c').ticksSinceLeaderContact()).toBeGreaterThanOrEqual(4)
  })

  // (Lazy only: the virtual clock fires an overdue interval once per missed period, where Node's
  // fires once, so the interval driver cannot be stalled faithfully here.)
  it('a follower woken late reads the heartbeats that waited for it before it would campaign', () => {
    const c = cluster(true)
    c.node('a').campaign()
    c.run(3_000)
    const term = c.node('c').term()
    const sent = c.sentBy.get('c')!.length
    c.stallC()
    c.run(1_000) // the leader heartbeats c 6 or 7 times meanwhile
    c.resumeC()
    c.run(1_000)
    expect(c.sentBy.get('c')!.slice(sent)).not.toContain('preVote')
    expect(c.node('c').term()).toBe(term)
    expect(c.node('c').leader()).toBe('a')
    expect(c.leaderChanges.get('c')).toBe(1)
  })

  it('a follower woken late with nothing waiting (its leader hung too) campaigns at once', () => {
    const c = cluster(true)
    c.node('a').campaign()
    c.run(3_000)
    c.hang('a')
    c.stallC()
    c.run(1_000)
    c.resumeC()
    expect(untilNewLeader(c, 'a', 1_000)).toBeLessThan(500)
  })
})

function ids3<T>(f: (id: string) => T): Record<string, T> {
  return { a: f('a'), b: f('b'), c: f('c') }
}
