/**
 * Idle heartbeats (RaftConfig.idleHeartbeatTick): a leader with nothing to replicate heartbeats
 * less often, and every timeout that waits on its heartbeats (followers' election timeouts and
 * check-quorum lease, the leader's check-quorum round) stretches by the same amount.
 */
import { describe, expect, it } from 'vitest'
import { decodeMessage, encodeMessage } from '../../src/raft/codec.ts'
import { electionTimeoutTicks, validateRaftConfig } from '../../src/raft/config.ts'
import type { Message } from '../../src/raft/types.ts'
import { SimCluster } from './sim-cluster.ts'

// The agent's ratio (RAFT_DEFAULTS): idle heartbeats much further apart than an election timeout.
const IDLE = 10
const ELECTION = 6
const config = { electionTick: ELECTION, heartbeatTick: 1, idleHeartbeatTick: IDLE }
/** A follower's shortest election timeout while its leader is idle: 6 + 2 × (10 - 1). */
const IDLE_TIMEOUT = ELECTION + 2 * (IDLE - 1)
/** Ticks with nothing to replicate before the leader goes idle: max(6, 4 × 10). */
const QUIET = 4 * IDLE

function countHeartbeats(c: SimCluster): { beats: Map<string, number>; idle: Map<string, number> } {
  const beats = new Map<string, number>()
  const idle = new Map<string, number>()
  c.filter = (m) => {
    if (m.type === 'heartbeat') {
      beats.set(m.to, (beats.get(m.to) ?? 0) + 1)
      if (m.idleTicks !== undefined) idle.set(m.to, (idle.get(m.to) ?? 0) + 1)
    }
    return true
  }
  return { beats, idle }
}

/** A 3-node cluster with `a` leading, everything replicated and committed, idle by now. */
function idleCluster(seed = 1, extra: Record<string, unknown> = {}): SimCluster {
  const c = new SimCluster(['a', 'b', 'c'], { seed, config: { ...config, ...extra } })
  c.campaign('a')
  c.stabilize()
  c.tick(QUIET + 1)
  return c
}

describe('electionTimeoutTicks', () => {
  it.each([
    // [electionTick, heartbeatTick, leader's idle interval, shortest timeout]
    [6, 1, 0, 6], // no idle leader: electionTick, as always
    [6, 1, 1, 6], // an "idle" interval no longer than the normal one changes nothing
    [6, 1, 10, 24], // the agent's defaults: 6 + 2 × (10 - 1) ticks (600 ms at 25 ms a tick)
    [10, 2, 8, 22],
    [6, 1, 1e9, 6 + 2 * (1000 - 1)], // a peer's absurd interval is clamped (MAX_IDLE_HEARTBEAT_TICK)
    [6, 1, -5, 6],
  ])('electionTick %i, heartbeatTick %i, idle %i → %i', (e, h, idle, want) => {
    expect(electionTimeoutTicks({ electionTick: e, heartbeatTick: h }, idle)).toBe(want)
  })

  it('config validation refuses an idle interval not above heartbeatTick, or past the cap', () => {
    const base = {
      id: 'a',
      rng: Math.random,
      electionTick: 6,
      heartbeatTick: 2,
      learnerHeartbeatTick: 2,
      preVote: true,
      checkQuorum: true,
      maxEntriesPerMsg: 1,
      maxBytesPerMsg: 1,
      maxInflightMsgs: 1,
    }
    expect(() => validateRaftConfig({ ...base, idleHeartbeatTick: 0 })).not.toThrow()
    expect(() => validateRaftConfig({ ...base, idleHeartbeatTick: 3 })).not.toThrow()
    for (const bad of [2, 1, -1, 1.5, 1001]) {
      expect(() => validateRaftConfig({ ...base, idleHeartbeatTick: bad })).toThrow(/idleHeartbeatTick/)
    }
  })
})

describe('idle heartbeats', () => {
  it('an idle leader heartbeats every idleHeartbeatTick, announcing it; followers never campaign', () => {
    const c = idleCluster()
    const a = c.node('a')
    const term = a.raft.term
    const { beats, idle } = countHeartbeats(c)
    c.tick(IDLE * 10)
    for (const id of ['b', 'c']) {
      expect(beats.get(id)).toBe(10)
      expect(idle.get(id)).toBe(10) // every one of them says so
    }
    // A long idle stretch: no election, no step-down (check-quorum rounds stretched too).
    c.tick(2000)
    expect(a.raft.role).toBe('leader')
    expect(a.raft.term).toBe(term)
    for (const id of ['b', 'c']) expect(c.node(id).raft.term).toBe(term)
  })

  it('a write wakes the leader: appended at once, then heartbeats every tick until idle again', () => {
    const c = idleCluster()
    const { beats, idle } = countHeartbeats(c)
    c.propose('a', 'x')
    c.stabilize() // no tick: the append and its commit notice go out at once
    expect(c.data('b')).toEqual(c.data('a'))
    expect(c.data('c')).toEqual(c.data('a'))
    expect(c.data('a').at(-1)).toBe('x')
    beats.clear()
    idle.clear()
    c.tick(QUIET - 1) // not yet idle: settled for less than quietTicks
    expect(beats.get('b')).toBe(QUIET - 1)
    expect(idle.get('b')).toBeUndefined()
    c.tick(1) // idle now: the first idle heartbeat goes out at once
    expect(idle.get('b')).toBe(1)
    c.tick(IDLE - 1)
    expect(beats.get('b')).toBe(QUIET)
  })

  it('a ReadIndex read confirms leadership with a round of normal heartbeats', () => {
    const c = idleCluster()
    const { beats, idle } = countHeartbeats(c)
    c.node('b').raft.readIndex('r1')
    c.process(c.node('b'))
    c.stabilize()
    expect(c.node('b').readStates.map((r) => r.context)).toEqual(['r1'])
    expect(beats.get('c')).toBe(1)
    expect(idle.get('c')).toBeUndefined()
  })

  it('a follower of an idle leader waits out the stretched timeout, then replaces a silent leader (Raft §5.2)', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const c = idleCluster(seed)
      c.tick(IDLE) // b and c have heard an idle heartbeat
      const a = c.node('a')
      const term = a.raft.term
      c.isolate('a') // a hung leader: connected, silent
      let ticks = 0
      while (c.leader() === a || c.leader() === undefined) {
        c.tick()
        ticks++
        expect(ticks).toBeLessThan(IDLE_TIMEOUT + ELECTION + 2 * ELECTION)
      }
      // Not before the stretched timeout since the last heartbeat (at most IDLE ticks before the cut).
      expect(ticks).toBeGreaterThanOrEqual(IDLE_TIMEOUT - IDLE)
      expect(c.leader()!.raft.term).toBeGreaterThan(term)
    }
  })

  it('an idle leader cut off from the quorum steps down (check-quorum, thesis §6.2)', () => {
    const c = idleCluster(3, { checkQuorum: true, preVote: true })
    const a = c.node('a')
    c.tick(IDLE)
    c.isolate('a')
    let ticks = 0
    while (a.raft.role === 'leader') {
      c.tick()
      ticks++
      expect(ticks).toBeLessThanOrEqual(2 * IDLE_TIMEOUT)
    }
  })

  it.each([
    ['the other follower', 'b'],
    ['the leader', 'a'],
  ])(
    '%s keeps its check-quorum lease while idle: a node that timed out cannot depose the leader (thesis §9.6)',
    (_, reachable) => {
      const c = idleCluster(7, { checkQuorum: true, preVote: true })
      const a = c.node('a')
      const term = a.raft.term
      // c restarts knowing nothing of the idle interval and hears only `reachable` for a while: it
      // times out and asks for pre-votes, which must be refused, however long since the last heartbeat.
      c.crash('c')
      c.tick(IDLE)
      c.restart('c')
      if (reachable === 'a') {
        c.cut('c', 'b')
        c.drop('a', 'c', 1) // c does not hear the leader's heartbeats, but reaches it
      } else c.cut('c', 'a')
      c.tick(IDLE * 8)
      // c did campaign, and `reachable` refused it for its lease.
      expect(c.node(reachable).raft.refusedMessages()['vote_in_lease']?.from).toBe('c')
      expect(a.raft.role).toBe('leader')
      expect(a.raft.term).toBe(term)
      c.recover()
      c.tick(IDLE * 2)
      expect(a.raft.role).toBe('leader')
      expect(a.raft.term).toBe(term)
      expect(c.node('c').raft.softState().leader).toBe('a')
    },
  )

  it('a follower that forgets its leader goes back to the short timeout', () => {
    const c = idleCluster(11)
    c.tick(IDLE)
    const b = c.node('b')
    c.isolate('a')
    b.raft.forgetLeader()
    let ticks = 0
    while (b.raft.role === 'follower') {
      c.tick()
      ticks++
    }
    expect(ticks).toBeLessThan(2 * ELECTION)
  })
})

describe('idleTicks on the wire', () => {
  const hb: Message = {
    type: 'heartbeat',
    from: 'a',
    to: 'b',
    term: 2,
    logTerm: 0,
    index: 0,
    commit: 7,
    entries: [],
    reject: false,
    rejectHint: 0,
    context: '',
  }

  it('round-trips, and is absent unless set', () => {
    expect(decodeMessage(encodeMessage({ ...hb, idleTicks: 20 }))).toEqual({
      ok: true,
      message: { ...hb, idleTicks: 20 },
    })
    const plain = decodeMessage(encodeMessage(hb))
    expect(plain.ok && 'idleTicks' in plain.message).toBe(false)
  })

  it('refuses a negative, fractional or non-numeric idleTicks', () => {
    for (const bad of [-1, 1.5, '20', Number.MAX_VALUE]) {
      const r = decodeMessage(encodeMessage({ ...hb, idleTicks: bad as number }))
      expect(r.ok).toBe(false)
    }
  })
})
