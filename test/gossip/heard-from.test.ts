import { describe, expect, it } from 'vitest'
import { lanConfig } from '../../src/gossip/config.ts'
import { SimNetwork } from '../../src/gossip/sim-network.ts'
import { median, msUntilSeenDead } from './crash-detection.ts'

/**
 * `Swim.heardFrom`: evidence from another authenticated channel (the agent's Raft traffic) that a
 * member is alive replaces this node's next probe of it. Simulated as the agent's idle 3-agent
 * cluster: an idle Raft leader heartbeats both followers every 150 ms and they answer, so the
 * leader hears from each follower, and each follower from the leader, every 150 ms.
 */
const IDS = ['l', 'f1', 'f2']
const RAFT_MS = 150

function cluster(seed: number, evidence: boolean): SimNetwork {
  const sim = new SimNetwork({ seed, config: lanConfig, latencyMs: { min: 0.1, max: 0.5 } })
  sim.bootstrapConverged(IDS)
  if (evidence) {
    const heartbeat = (): void => {
      for (const f of ['f1', 'f2']) {
        if (sim.isCrashed('l') || sim.isCrashed(f)) continue
        sim.node('l').heardFrom(f, sim.now)
        sim.node(f).heardFrom('l', sim.now)
      }
      sim.schedule(sim.now + RAFT_MS, heartbeat)
    }
    sim.schedule(sim.now + RAFT_MS, heartbeat)
  }
  return sim
}

const sent = (sim: SimNetwork): number => IDS.reduce((n, id) => n + sim.node(id).stats().messagesSent, 0)

const detectionMs = (seed: number, evidence: boolean, victim: string): number =>
  msUntilSeenDead(cluster(seed, evidence), victim, IDS)

describe('Swim.heardFrom (Raft traffic as evidence of life)', () => {
  it('an idle 3-member cluster sends about a third of the datagrams, and the leader probes nobody', () => {
    const plain = cluster(1, false)
    const fed = cluster(1, true)
    for (const s of [plain, fed]) s.runFor(5_000)
    const [p0, f0] = [sent(plain), sent(fed)]
    const leaderProbes = fed.node('l').stats().probes
    for (const s of [plain, fed]) s.runFor(60_000)
    const [p, f] = [sent(plain) - p0, sent(fed) - f0]
    expect(f / p).toBeGreaterThan(0.2)
    expect(f / p).toBeLessThan(0.45)
    expect(fed.node('l').stats().probes - leaderProbes).toBe(0)
    expect(fed.node('l').stats().probesSkipped).toBeGreaterThan(300)
    // Followers still probe each other: nothing else tells them the other is alive.
    expect(fed.node('f1').stats().probes).toBeGreaterThan(100)
    for (const id of IDS) for (const other of IDS) expect(fed.node(id).member(other)?.status).toBe('alive')
  })

  it('a crashed follower or leader is still seen dead by every survivor, within a probe interval or so of the plain time', () => {
    for (const victim of ['l', 'f1']) {
      const plain: number[] = []
      const fed: number[] = []
      for (let seed = 1; seed <= 9; seed++) {
        plain.push(detectionMs(seed, false, victim))
        fed.push(detectionMs(seed, true, victim))
      }
      expect(median(fed)).toBeLessThanOrEqual(median(plain) + 2 * lanConfig.probeIntervalMs)
      expect(Math.max(...fed)).toBeLessThan(2_500)
    }
  })

  it('counts only for alive members it knows, and once: an unknown id and itself change nothing', () => {
    const sim = cluster(2, false)
    sim.runFor(2_000)
    const l = sim.node('l')
    l.heardFrom('stranger', sim.now)
    l.heardFrom('l', sim.now)
    sim.runFor(3_000)
    expect(l.stats().probesSkipped).toBe(0)
    expect(l.member('stranger')).toBeUndefined()
    // Evidence is used once: fed once, the member is skipped at most once, then probed again.
    const probes = l.stats().probes
    l.heardFrom('f1', sim.now)
    sim.runFor(3_000)
    expect(l.stats().probesSkipped).toBeLessThanOrEqual(1)
    expect(l.stats().probes - probes).toBeGreaterThan(10)
  })

  it('lostContact (the connections closed) withdraws the evidence: the member is probed at its next turn', () => {
    const sim = cluster(3, false)
    sim.runFor(2_000)
    const l = sim.node('l')
    for (const id of ['f1', 'f2']) l.heardFrom(id, sim.now)
    l.lostContact('f1')
    l.lostContact('f2')
    sim.runFor(1_000)
    expect(l.stats().probesSkipped).toBe(0)
  })
})
