import { describe, expect, it } from 'vitest'
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
