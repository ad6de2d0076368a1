import { describe, expect, it } from 'vitest'
import { lanConfig, swimConfig } from '../../src/gossip/config.ts'
import { probeTiming, type RttEstimate, updateRtt } from '../../src/gossip/rtt.ts'
import { SimNetwork } from '../../src/gossip/sim-network.ts'
import type { SwimStats } from '../../src/gossip/stats.ts'
import type { SwimEvent } from '../../src/gossip/swim.ts'

describe('RTT estimate (RFC 6298 §2, as SWIM probe timing)', () => {
  it.each<[string, RttEstimate | undefined, number, RttEstimate]>([
    ['first sample', undefined, 100, { srttMs: 100, rttvarMs: 50 }],
    ['steady', { srttMs: 100, rttvarMs: 0 }, 100, { srttMs: 100, rttvarMs: 0 }],
    ['a slower sample', { srttMs: 100, rttvarMs: 10 }, 180, { srttMs: 110, rttvarMs: 27.5 }],
    ['a faster sample', { srttMs: 8, rttvarMs: 4 }, 0, { srttMs: 7, rttvarMs: 5 }],
    ['negative clock step counts as 0', undefined, -3, { srttMs: 0, rttvarMs: 0 }],
  ])('%s', (_name, prev, sample, expected) => {
    expect(updateRtt(prev, sample)).toEqual(expected)
  })

  const lan = { minTimeoutMs: 75, maxTimeoutMs: 500, minIntervalMs: 150 }
  it.each<[string, RttEstimate | undefined, { timeoutMs: number; intervalMs: number }]>([
    ['no sample: the profile', undefined, { timeoutMs: 75, intervalMs: 150 }],
    [
      'loopback (0.2 ms ± 0.1): the profile',
      { srttMs: 0.2, rttvarMs: 0.1 },
      { timeoutMs: 75, intervalMs: 150 },
    ],
    [
      'LAN with jitter (5 ± 3 ms): the profile',
      { srttMs: 5, rttvarMs: 3 },
      { timeoutMs: 75, intervalMs: 150 },
    ],
    ['100 ms ± 5', { srttMs: 100, rttvarMs: 5 }, { timeoutMs: 120, intervalMs: 360 }],
    [
      '2 s path: bounded by the maximum',
      { srttMs: 2000, rttvarMs: 100 },
      { timeoutMs: 500, intervalMs: 1500 },
    ],
  ])('%s', (_name, rtt, expected) => {
    expect(probeTiming(rtt, lan)).toEqual(expected)
  })
})

describe('SWIM §3.1 probe timing follows the network', () => {
  function run(config = lanConfig, latencyMs = { min: 45, max: 55 }) {
    const events: (SwimEvent & { at: number })[] = []
    const sim = new SimNetwork({
      seed: 21,
      config,
      latencyMs,
      onEvent: (_node, e, at) => events.push({ ...e, at }),
    })
    const ids = Array.from({ length: 12 }, (_, i) => `n${i}`)
    sim.join(ids[0]!, [])
    for (const id of ids.slice(1)) sim.join(id, [ids[0]!])
    sim.runFor(30_000)
    return { sim, ids, events }
  }

  const fixedTimings = swimConfig('lan', { probeTimeoutMaxMs: lanConfig.probeTimeoutMs })
  const total = (r: ReturnType<typeof run>, pick: (s: SwimStats) => number) =>
    r.ids.reduce((sum, id) => sum + pick(r.sim.node(id).stats()), 0)
  /** Suspicions after the first seconds (the first probes go out before any round trip is measured). */
  const suspicions = (r: ReturnType<typeof run>) =>
    r.events.filter((e) => e.type === 'member:suspect' && e.at > 5_000).length

  it('on a 100 ms network (45–55 ms each way): no failure, and direct probes suffice', () => {
    const measured = run()
    expect(measured.events.filter((e) => e.type === 'member:fail')).toEqual([])
    const timeout = measured.sim.node('n3').stats().probeTimeoutMs
    expect(timeout).toBeGreaterThan(100)
    expect(timeout).toBeLessThan(200)
    const probes = total(measured, (s) => s.probes)
    expect(total(measured, (s) => s.indirectProbes)).toBeLessThan(probes * 0.05)
    // Fixed LAN timings: every probe times out and goes indirect (3 more pings each).
    const fixed = run(fixedTimings)
    expect(total(fixed, (s) => s.indirectProbes)).toBeGreaterThan(total(fixed, (s) => s.probes) * 0.9)
  })

  it('on a ~180 ms network fixed timings keep suspecting; measured ones stop once acks are measured', () => {
    const slow = { min: 85, max: 95 }
    const fixed = run(fixedTimings, slow)
    expect(suspicions(fixed)).toBeGreaterThan(100)
    const measured = run(lanConfig, slow)
    expect(measured.events.filter((e) => e.type === 'member:fail')).toEqual([])
    expect(suspicions(measured)).toBe(0)
    expect(total(measured, (s) => s.localHealth)).toBe(0)
  })
})
