import { beforeAll, describe, expect, it } from 'vitest'
import { type SwimConfig, swimProfiles } from '../../src/gossip/config.ts'
import { SimNetwork } from '../../src/gossip/sim-network.ts'
import type { SwimEvent } from '../../src/gossip/swim.ts'

/**
 * The trade each gossip profile makes (src/gossip/config.ts), measured in the simulator: datagrams
 * an idle member sends per second against the time until every survivor sees a crashed member
 * dead. An operator picks the profile with `--gossip-profile`.
 */
interface Trade {
  sentPerNodeSecond: number
  detectionsMs: number[]
  falseDeaths: number
}

function measure(config: SwimConfig, latencyMs: { min: number; max: number }, n: number): Trade {
  const detectionsMs: number[] = []
  let falseDeaths = 0
  let sentPerNodeSecond = 0
  for (let seed = 1; seed <= 5; seed++) {
    const fails: { node: string; event: SwimEvent }[] = []
    const sim = new SimNetwork({
      seed,
      config,
      latencyMs,
      onEvent: (node, event) => {
        if (event.type === 'member:fail') fails.push({ node, event })
      },
    })
    const ids = Array.from({ length: n }, (_, i) => `n${i}`)
    sim.join(ids[0]!, [])
    for (const id of ids.slice(1)) sim.join(id, [ids[0]!])
    const converged = (): boolean =>
      ids.every((o) => ids.every((t) => sim.node(o).member(t)?.status === 'alive'))
    expect(sim.runUntilCondition(converged, 120_000, 50)).toBeDefined()
    // Idle traffic: what every member sends over a steady minute (after the join's updates).
    sim.runFor(3 * config.pushPullIntervalMs)
    const sent = (): number => ids.reduce((s, id) => s + sim.node(id).stats().messagesSent, 0)
    const before = sent()
    sim.runFor(60_000)
    sentPerNodeSecond += (sent() - before) / n / 60 / 5
    const victim = ids[7]!
    const crashedAt = sim.now
    sim.crash(victim)
    const survivors = ids.filter((id) => id !== victim)
    const at = sim.runUntilCondition(
      () => survivors.every((o) => sim.node(o).member(victim)?.status === 'dead'),
      300_000,
      10,
    )
    expect(at).toBeDefined()
    detectionsMs.push(at! - crashedAt)
    falseDeaths += fails.filter((f) => f.event.type === 'member:fail' && f.event.member.id !== victim).length
  }
  detectionsMs.sort((a, b) => a - b)
  return { sentPerNodeSecond, detectionsMs, falseDeaths }
}

describe('gossip profiles: detection time against idle traffic', () => {
  let lan: Trade
  let local: Trade
  let wan: Trade
  beforeAll(() => {
    lan = measure(swimProfiles.lan, { min: 0.2, max: 2 }, 20)
    local = measure(swimProfiles.local, { min: 0.2, max: 2 }, 20)
    wan = measure(swimProfiles.wan, { min: 40, max: 150 }, 20)
  })

  // Measured: lan 13.5 datagrams a second per member, detection 0.94–1.23 s; local 4.1, 2.5–4.3 s;
  // wan 0.43, 44–50 s (20 members, 5 clusters each).
  it('lan (the default): about 13 datagrams a second per member buys detection in about a second', () => {
    expect(lan.sentPerNodeSecond).toBeLessThan(16)
    expect(lan.detectionsMs[2]!).toBeLessThanOrEqual(1_500)
    expect(lan.falseDeaths).toBe(0)
  })

  it('local: a third of the traffic, detection in about 3 s', () => {
    expect(local.sentPerNodeSecond).toBeLessThan(lan.sentPerNodeSecond / 3)
    expect(local.detectionsMs[2]!).toBeLessThanOrEqual(3_000)
    expect(local.detectionsMs[4]!).toBeLessThanOrEqual(5_000)
    expect(local.falseDeaths).toBe(0)
  })

  it('wan: a twentieth of the traffic over 40–150 ms paths, detection within a minute', () => {
    expect(wan.sentPerNodeSecond).toBeLessThan(lan.sentPerNodeSecond / 20)
    expect(wan.detectionsMs[4]!).toBeLessThanOrEqual(60_000)
    expect(wan.falseDeaths).toBe(0)
  })
})
