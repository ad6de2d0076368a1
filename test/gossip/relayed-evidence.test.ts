import { describe, expect, it } from 'vitest'
import { decodeMessage, encodeMessage } from '../../src/gossip/codec.ts'
import { lanConfig } from '../../src/gossip/config.ts'
import { SimNetwork } from '../../src/gossip/sim-network.ts'
import { median, msUntilSeenDead } from './crash-detection.ts'

/**
 * `Swim.setRelayed`: evidence of life passed on by a trusted relay (the agent's Raft leader, on its
 * heartbeats; src/node/raft/evidence-relay.ts). Simulated as the agent's idle 3-agent cluster: the
 * leader heartbeats both followers every 150 ms, they answer 1 ms later, and with `relay` each
 * heartbeat tells a follower when the leader last heard the other one (if within 1.5 heartbeat
 * intervals, as EvidenceRelay's window).
 */
const IDS = ['l', 'f1', 'f2']
const FOLLOWERS = ['f1', 'f2']
const RAFT_MS = 150
const WINDOW_MS = 1.5 * RAFT_MS

function cluster(seed: number, relay: boolean, ids: readonly string[] = IDS): SimNetwork {
  const followers = ids.filter((id) => id !== 'l')
  const sim = new SimNetwork({ seed, config: lanConfig, latencyMs: { min: 0.1, max: 0.5 } })
  sim.bootstrapConverged([...ids])
  const lastHeard = new Map<string, number>()
  const heartbeat = (): void => {
    if (!sim.isCrashed('l')) {
      for (const f of followers) {
        if (sim.isCrashed(f)) continue
        sim.node(f).heardFrom('l', sim.now)
        if (relay) {
          const entries = followers
            .filter((o) => o !== f && lastHeard.has(o) && sim.now - lastHeard.get(o)! <= WINDOW_MS)
            .map((o) => ({ id: o, heardAtMs: lastHeard.get(o)! }))
          sim.node(f).setRelayed(entries, sim.now)
        }
        sim.schedule(sim.now + 1, () => {
          if (sim.isCrashed('l')) return
          sim.node('l').heardFrom(f, sim.now)
          lastHeard.set(f, sim.now)
        })
      }
    }
    sim.schedule(sim.now + RAFT_MS, heartbeat)
  }
  sim.schedule(sim.now + RAFT_MS, heartbeat)
  return sim
}

const sent = (sim: SimNetwork, ids: string[]): number =>
  ids.reduce((n, id) => n + sim.node(id).stats().messagesSent, 0)

const detectionMs = (seed: number, relay: boolean, victim: string, ids: readonly string[] = IDS): number =>
  msUntilSeenDead(cluster(seed, relay, ids), victim, ids)

describe('Swim.setRelayed (the Raft leader passes on whom it heard from)', () => {
  it('idle followers stop probing each other: their datagrams fall to a tenth, and everyone stays alive', () => {
    const direct = cluster(1, false)
    const relayed = cluster(1, true)
    for (const s of [direct, relayed]) s.runFor(5_000)
    const [d0, r0] = [sent(direct, FOLLOWERS), sent(relayed, FOLLOWERS)]
    for (const s of [direct, relayed]) s.runFor(60_000)
    const [d, r] = [sent(direct, FOLLOWERS) - d0, sent(relayed, FOLLOWERS) - r0]
    // Direct evidence only: the followers still probe each other (each sends about 7 datagrams a
    // second: its pings and its acks of the other's).
    expect(d).toBeGreaterThan(600)
    expect(r / d).toBeLessThan(0.1)
    for (const f of FOLLOWERS) expect(relayed.node(f).stats().probesSkippedRelayed).toBeGreaterThan(150)
    for (const id of IDS)
      for (const other of IDS) expect(relayed.node(id).member(other)?.status).toBe('alive')
  })

  it('a crashed follower or leader is still seen dead by every survivor, within a probe interval or so of the time without the relay', () => {
    for (const victim of ['f1', 'l']) {
      const direct: number[] = []
      const relayed: number[] = []
      for (let seed = 1; seed <= 9; seed++) {
        direct.push(detectionMs(seed, false, victim))
        relayed.push(detectionMs(seed, true, victim))
      }
      expect(median(relayed)).toBeLessThanOrEqual(median(direct) + 2 * lanConfig.probeIntervalMs)
      expect(Math.max(...relayed)).toBeLessThan(2_500)
    }
  })

  it('with five voters (a round of four turns), a crashed follower is seen dead as soon as without the relay', () => {
    const five = ['l', 'f1', 'f2', 'f3', 'f4']
    const direct: number[] = []
    const relayed: number[] = []
    for (let seed = 1; seed <= 9; seed++) {
      direct.push(detectionMs(seed, false, 'f2', five))
      relayed.push(detectionMs(seed, true, 'f2', five))
    }
    expect(median(relayed)).toBeLessThanOrEqual(median(direct) + lanConfig.probeIntervalMs)
    expect(Math.max(...relayed)).toBeLessThan(2_500)
  })

  it('each relay replaces the last: a member left out, or whose connections closed, is probed at its next turn', () => {
    for (const withdraw of ['omitted', 'lostContact'] as const) {
      const sim = new SimNetwork({ seed: 3, config: lanConfig, latencyMs: { min: 0.1, max: 0.5 } })
      sim.bootstrapConverged(IDS)
      sim.runFor(2_000)
      const f1 = sim.node('f1')
      // Relayed once, fresh: f1 probes neither l nor f2 meanwhile.
      f1.setRelayed(
        [
          { id: 'l', heardAtMs: sim.now },
          { id: 'f2', heardAtMs: sim.now },
        ],
        sim.now,
      )
      const probes = f1.stats().probes
      sim.runFor(RAFT_MS)
      expect(f1.stats().probes).toBe(probes)
      if (withdraw === 'omitted') f1.setRelayed([{ id: 'l', heardAtMs: sim.now }], sim.now)
      else f1.lostContact('f2')
      // f2's next turn comes within two probe intervals (two members in the order).
      sim.runFor(2 * lanConfig.probeIntervalMs + 1)
      expect(f1.stats().probes).toBeGreaterThan(probes)
    }
  })

  it('a member whose turn was skipped on relayed evidence, then withdrawn, is probed at the next turn, not a round later', () => {
    const ids = ['l', 'f1', 'f2', 'f3', 'f4']
    const sim = new SimNetwork({ seed: 8, config: lanConfig, latencyMs: { min: 0.1, max: 0.5 } })
    sim.bootstrapConverged(ids)
    sim.runFor(2_000)
    const f1 = sim.node('f1')
    const others = ids.filter((id) => id !== 'f1')
    const relayAll = (except?: string): void =>
      f1.setRelayed(
        others.filter((id) => id !== except).map((id) => ({ id, heardAtMs: sim.now })),
        sim.now,
      )
    // Everyone vouched for, for a whole round: every turn skipped, f3's among them.
    relayAll()
    const probes = f1.stats().probes
    for (let t = 0; t < 8; t++) {
      sim.runFor(lanConfig.probeIntervalMs)
      relayAll()
    }
    expect(f1.stats().probes).toBe(probes)
    // f3 left off: f1's next turn probes it (the others still vouched for), within one interval.
    relayAll('f3')
    sim.runFor(lanConfig.probeIntervalMs + 1)
    expect(f1.stats().probes).toBe(probes + 1)
  })

  it("an idle follower's turns that would only skip on the relay are taken ahead: its timer wakes it over a third less often", () => {
    const direct = cluster(4, false)
    const relayed = cluster(4, true)
    for (const s of [direct, relayed]) s.runFor(5_000)
    const wakeups = (sim: SimNetwork, id: string): number => sim.wakeups(id)
    const before = FOLLOWERS.map((f) => [wakeups(direct, f), wakeups(relayed, f)])
    for (const s of [direct, relayed]) s.runFor(60_000)
    const turns = 60_000 / lanConfig.probeIntervalMs
    FOLLOWERS.forEach((f, i) => {
      const d = wakeups(direct, f) - before[i]![0]!
      const r = wakeups(relayed, f) - before[i]![1]!
      // Without the relay a follower wakes for every turn and for its probes' timeouts.
      expect(d).toBeGreaterThanOrEqual(turns)
      // With it: the leader's turns (skipped on its heartbeats), and of the other follower's only
      // those that come right after one taken ahead (a round of two ending with it and the next
      // starting with it: a quarter of the rounds), about 0.62 of the turns.
      expect(r).toBeLessThan(0.7 * turns)
      expect(relayed.node(f).stats().probes).toBeLessThan(10)
    })
    for (const id of IDS)
      for (const other of IDS) expect(relayed.node(id).member(other)?.status).toBe('alive')
  })

  it("a turn taken ahead is given back its time: whatever ends the relay's word on a member is followed by its probe as soon as without the lookahead, at any moment", () => {
    const I = lanConfig.probeIntervalMs
    // f1 hears its leader every 150 ms and is told of f2 with each heartbeat, until `stop` ends
    // that word; f1's pings of f2 are watched on the wire.
    const run = (how: 'lostContact' | 'omitted' | 'emptied' | 'suspected', offsetMs: number): number => {
      let sim!: SimNetwork
      let firstPing = Number.POSITIVE_INFINITY
      let stopped = false
      const tap = (from: string, to: string, bytes: Uint8Array, now: number): void => {
        if (!stopped || from !== 'f1' || to !== 'f2') return
        const r = decodeMessage(bytes, lanConfig.maxMessageBytes)
        if (!r.ok) return
        const parts = r.msg.t === 'compound' ? r.msg.parts : [r.msg]
        if (parts.some((p) => p.t === 'ping')) firstPing = Math.min(firstPing, now)
      }
      sim = new SimNetwork({ seed: 21, config: lanConfig, latencyMs: { min: 0.1, max: 0.5 }, tap })
      sim.bootstrapConverged(IDS)
      const beat = (): void => {
        sim.node('f1').heardFrom('l', sim.now)
        if (!stopped) sim.node('f1').setRelayed([{ id: 'f2', heardAtMs: sim.now }], sim.now)
        sim.schedule(sim.now + RAFT_MS, beat)
      }
      sim.schedule(sim.now + RAFT_MS, beat)
      sim.runFor(3_000 + offsetMs)
      const at = sim.now
      stopped = true
      if (how === 'lostContact') sim.node('f1').lostContact('f2')
      else if (how === 'omitted') sim.node('f1').setRelayed([{ id: 'l', heardAtMs: sim.now }], sim.now)
      else if (how === 'emptied') sim.node('f1').setRelayed([], sim.now)
      else {
        // The leader's gossip says f2 is suspected (the relay's word on f2 is still fresh); f2 is
        // stalled, so it does not refute at once.
        sim.pause('f2', 2_000)
        const inc = sim.node('f1').member('f2')!.incarnation
        sim.inject('l', 'f1', encodeMessage({ t: 'suspect', id: 'f2', inc, from: 'l' }), sim.now)
      }
      sim.runFor(4 * I)
      return firstPing - at
    }
    for (const how of ['lostContact', 'omitted', 'emptied', 'suspected'] as const) {
      const waits: number[] = []
      for (let offset = 0; offset < 2 * I; offset += 7) waits.push(run(how, offset))
      // Withdrawn (its connections closed, or left off a list that still vouches for others): f2
      // is owed a probe at the next turn. A relay gone silent owes none: f2 is probed at its turn in
      // the order, within a round of two turns; so is a suspect (the delivery takes up to 0.5 ms).
      const bound = how === 'emptied' ? 2 * I : how === 'suspected' ? 2 * I + 0.5 : I
      expect(Math.max(...waits), how).toBeLessThanOrEqual(bound + 1)
    }
  })

  it('with relayedEvidenceIntervals 0 (gossipLan relayedEvidence false), relays are ignored', () => {
    const sim = new SimNetwork({
      seed: 6,
      config: { ...lanConfig, relayedEvidenceIntervals: 0 },
      latencyMs: { min: 0.1, max: 0.5 },
    })
    sim.bootstrapConverged(IDS)
    sim.runFor(2_000)
    const f1 = sim.node('f1')
    const probes = f1.stats().probes
    for (let t = 0; t < 10; t++) {
      f1.setRelayed(
        [
          { id: 'l', heardAtMs: sim.now },
          { id: 'f2', heardAtMs: sim.now },
        ],
        sim.now,
      )
      sim.runFor(RAFT_MS)
    }
    expect(f1.stats().probesSkippedRelayed).toBe(0)
    expect(f1.stats().probes - probes).toBeGreaterThanOrEqual(9)
  })

  it('believes only what it can: unknown ids, itself, times ahead of now and stale contacts change nothing', () => {
    const sim = new SimNetwork({ seed: 5, config: lanConfig, latencyMs: { min: 0.1, max: 0.5 } })
    sim.bootstrapConverged(IDS)
    sim.runFor(2_000)
    const f1 = sim.node('f1')
    const skipped = f1.stats().probesSkippedRelayed
    const stale = sim.now - lanConfig.relayedEvidenceIntervals * lanConfig.probeIntervalMs
    // Renewed at every heartbeat, as a relay would, but with nothing f1 may believe.
    for (let t = 0; t < 20; t++) {
      f1.setRelayed(
        [
          { id: 'stranger', heardAtMs: sim.now },
          { id: 'f1', heardAtMs: sim.now },
          { id: 'l', heardAtMs: sim.now + 10_000 },
          { id: 'f2', heardAtMs: stale - t * RAFT_MS },
        ],
        sim.now,
      )
      sim.runFor(RAFT_MS)
    }
    expect(f1.stats().probesSkippedRelayed).toBe(skipped)
    expect(f1.member('stranger')).toBeUndefined()
  })
})
