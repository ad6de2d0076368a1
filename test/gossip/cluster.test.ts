import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { lanConfig, testConfig } from '../../src/gossip/config.ts'
import { ed25519Signer, ed25519Verifier } from '../../src/gossip/signing.ts'
import { SimNetwork, type SimNetworkOptions } from '../../src/gossip/sim-network.ts'
import type { SwimEvent } from '../../src/gossip/swim.ts'

interface Logged {
  node: string
  event: SwimEvent
  at: number
}

function cluster(n: number, opts: Partial<SimNetworkOptions> = {}) {
  const log: Logged[] = []
  const sim = new SimNetwork({
    seed: 1,
    config: lanConfig,
    latencyMs: { min: 0.2, max: 2 },
    ...opts,
    onEvent: (node, event, at) => log.push({ node, event, at }),
  })
  const ids = Array.from({ length: n }, (_, i) => `n${i}`)
  sim.join(ids[0]!, [])
  for (const id of ids.slice(1)) sim.join(id, [ids[0]!])
  return { sim, ids, log }
}

function converged(sim: SimNetwork, ids: string[], status = 'alive'): boolean {
  return ids.every((o) => ids.every((t) => sim.node(o).member(t)?.status === status))
}

function allSee(sim: SimNetwork, observers: string[], target: string, status: string): boolean {
  return observers.every((o) => sim.node(o).member(target)?.status === status)
}

describe('SWIM membership in a simulated cluster', () => {
  it('SWIM §4.4: 50 nodes joining through one seed converge (ed25519-signed records)', () => {
    const keys = new Map<string, { publicKey: KeyObject; privateKey: KeyObject }>()
    const keyOf = (id: string) => {
      let k = keys.get(id)
      if (!k) {
        k = generateKeyPairSync('ed25519')
        keys.set(id, k)
      }
      return k
    }
    const verifier = ed25519Verifier((id) => keys.get(id)?.publicKey)
    const { sim, ids } = cluster(50, {
      crypto: (id) => ({ signer: ed25519Signer(keyOf(id).privateKey), verifier }),
      loss: 0.01,
    })
    const at = sim.runUntilCondition(() => converged(sim, ids), 10_000, 25)
    expect(at).toBeDefined()
    expect(at!).toBeLessThan(2_000)
    expect(ids.reduce((s, id) => s + sim.node(id).stats().dropped.forged, 0)).toBe(0)
  })

  // Detection includes the wait until some member probes the crashed one, which is random (each
  // member probes one other per period, in its own shuffled order): checked over six clusters.
  it('SWIM §3.1 + Lifeguard §IV-B: a crashed node is marked dead by every survivor in 1.5 s (median of 6), 2 s at most', () => {
    const detections: number[] = []
    for (let seed = 1; seed <= 6; seed++) {
      const { sim, ids, log } = cluster(50, { seed })
      expect(sim.runUntilCondition(() => converged(sim, ids), 10_000, 25)).toBeDefined()
      sim.runFor(3_000)
      const crashedAt = sim.now
      sim.crash('n17')
      const survivors = ids.filter((id) => id !== 'n17')
      const at = sim.runUntilCondition(() => allSee(sim, survivors, 'n17', 'dead'), 10_000, 5)
      expect(at).toBeDefined()
      detections.push(at! - crashedAt)
      const wrongly = log.filter((l) => l.event.type === 'member:fail' && l.event.member.id !== 'n17')
      expect(wrongly).toEqual([])
    }
    detections.sort((a, b) => a - b)
    expect(detections[3]!).toBeLessThanOrEqual(1_500)
    expect(detections[5]!).toBeLessThanOrEqual(2_000)
  })

  it('Lifeguard §IV: a node whose event loop stalls 300 ms every second is never declared dead (120 s)', () => {
    const { sim, ids, log } = cluster(50, { seed: 3, loss: 0.005 })
    expect(sim.runUntilCondition(() => converged(sim, ids), 10_000, 25)).toBeDefined()
    const start = sim.now
    for (let t = 0; t < 120_000; t += 1_000) sim.schedule(start + t + 137, () => sim.pause('n5', 300))
    sim.runFor(120_000)
    expect(log.filter((l) => l.event.type === 'member:fail')).toEqual([])
    expect(converged(sim, ids)).toBe(true)
    // The stalls were noticed (suspected, refuted), just never fatal.
    expect(sim.node('n5').stats().refutations).toBeGreaterThan(0)
  })

  it('SWIM §4.2: after a partition heals, both sides converge back to one alive cluster', () => {
    const { sim, ids } = cluster(20, { seed: 4 })
    expect(sim.runUntilCondition(() => converged(sim, ids), 10_000, 25)).toBeDefined()
    const a = ids.slice(0, 10)
    const b = ids.slice(10)
    sim.partition(a, b)
    expect(sim.runUntilCondition(() => a.every((x) => allSee(sim, b, x, 'dead')), 20_000, 50)).toBeDefined()
    sim.runFor(15_000) // longer than gossipToTheDeadMs: only reconnect push/pull can heal
    sim.heal()
    const at = sim.runUntilCondition(() => converged(sim, ids), 120_000, 100)
    expect(at).toBeDefined()
  })

  it('SWIM §4.2: a node declared dead that restarts rejoins everywhere with a higher incarnation', () => {
    const { sim, ids, log } = cluster(20, { seed: 5 })
    expect(sim.runUntilCondition(() => converged(sim, ids), 10_000, 25)).toBeDefined()
    sim.crash('n3')
    const others = ids.filter((id) => id !== 'n3')
    expect(sim.runUntilCondition(() => allSee(sim, others, 'n3', 'dead'), 10_000, 10)).toBeDefined()
    const deadInc = sim.node('n0').member('n3')!.incarnation
    sim.restart('n3', { seeds: ['n9'] }) // fresh state: incarnation restarts at 1
    const at = sim.runUntilCondition(() => converged(sim, ids), 10_000, 10)
    expect(at).toBeDefined()
    for (const o of others) expect(sim.node(o).member('n3')!.incarnation).toBeGreaterThan(deadInc)
    expect(log.some((l) => l.event.type === 'member:join' && l.event.member.id === 'n3' && l.at > 0)).toBe(
      true,
    )
  })

  it('SWIM §4.2: a restart with the persisted incarnation starts above it', () => {
    const { sim, ids } = cluster(5, { seed: 6 })
    expect(sim.runUntilCondition(() => converged(sim, ids), 10_000, 25)).toBeDefined()
    const inc = sim.node('n2').localIncarnation
    sim.crash('n2')
    const swim = sim.restart('n2', { seeds: ['n0'], lastIncarnation: inc })
    expect(swim.localIncarnation).toBe(inc + 1)
    expect(sim.runUntilCondition(() => converged(sim, ids), 5_000, 10)).toBeDefined()
  })

  it('graceful leave ends as left everywhere, never dead; reaped after reapTimeout', () => {
    const { sim, ids, log } = cluster(20, { seed: 7, config: testConfig })
    expect(sim.runUntilCondition(() => converged(sim, ids), 10_000, 25)).toBeDefined()
    sim.act('n4', (s, now) => s.leave(now))
    sim.runFor(500)
    sim.crash('n4') // the agent shuts down after its leave went out
    const others = ids.filter((id) => id !== 'n4')
    expect(sim.runUntilCondition(() => allSee(sim, others, 'n4', 'left'), 5_000, 10)).toBeDefined()
    sim.runFor(3_000)
    expect(log.filter((l) => l.event.type === 'member:fail')).toEqual([])
    expect(allSee(sim, others, 'n4', 'left')).toBe(true)
    const reaped = sim.runUntilCondition(
      () => others.every((o) => sim.node(o).member('n4') === undefined),
      10_000,
      50,
    )
    expect(reaped).toBeDefined()
    expect(log.filter((l) => l.event.type === 'member:reap' && l.event.member.id === 'n4')).toHaveLength(
      others.length,
    )
  })

  it('dead members are reaped after reapTimeout', () => {
    const { sim, ids } = cluster(10, { seed: 8, config: testConfig })
    expect(sim.runUntilCondition(() => converged(sim, ids), 10_000, 25)).toBeDefined()
    sim.crash('n6')
    const others = ids.filter((id) => id !== 'n6')
    const deadAt = sim.runUntilCondition(() => allSee(sim, others, 'n6', 'dead'), 10_000, 10)
    expect(deadAt).toBeDefined()
    sim.runFor(testConfig.reapTimeoutMs - 1_000)
    expect(allSee(sim, others, 'n6', 'dead')).toBe(true)
    sim.runFor(2_000)
    expect(others.every((o) => sim.node(o).member('n6') === undefined)).toBe(true)
  })

  it('record updates (meta) reach every member (SWIM §4.1 piggyback dissemination)', () => {
    const { sim, ids, log } = cluster(30, { seed: 9, loss: 0.01 })
    expect(sim.runUntilCondition(() => converged(sim, ids), 10_000, 25)).toBeDefined()
    sim.act('n8', (s) => s.updateLocalRecord({ meta: { services: ['web'] }, tags: { zone: 'b' } }))
    const at = sim.runUntilCondition(
      () => ids.every((o) => sim.node(o).member('n8')?.tags['zone'] === 'b'),
      5_000,
      5,
    )
    expect(at).toBeDefined()
    expect(sim.node('n0').member('n8')!.meta).toEqual({ services: ['web'] })
    expect(log.filter((l) => l.event.type === 'member:update' && l.event.member.id === 'n8')).toHaveLength(29)
  })

  it('name conflict: the live claimant with the lowest id owns the name everywhere', () => {
    const { sim, ids, log } = cluster(10, { seed: 10 })
    sim.join('zz-web', ['n0'], { name: 'web' })
    sim.join('aa-web', ['n3'], { name: 'web' })
    const all = [...ids, 'zz-web', 'aa-web']
    expect(sim.runUntilCondition(() => converged(sim, all), 10_000, 25)).toBeDefined()
    for (const o of all) expect(sim.node(o).nameOwner('web')).toBe('aa-web')
    const conflicts = log.filter((l) => l.event.type === 'member:conflict')
    expect(conflicts.length).toBeGreaterThan(0)
    expect(conflicts.every((c) => c.event.member.id === 'zz-web' && c.event.winner?.id === 'aa-web')).toBe(
      true,
    )
    expect(
      sim
        .node('n1')
        .members()
        .find((m) => m.id === 'zz-web')?.nameConflict,
    ).toBe(true)
  })

  it('the simulation is deterministic for a seed (duplicates, reordering and loss included)', () => {
    const run = () => {
      const { sim, ids } = cluster(15, { seed: 11, loss: 0.05, duplicate: 0.05, reorder: 0.1 })
      sim.runFor(5_000)
      sim.crash('n2')
      sim.runFor(5_000)
      return ids.map((id) => JSON.stringify(sim.node(id).stats())).join('|')
    }
    expect(run()).toBe(run())
  })

  it('SWIM §3.1 under 5% loss, duplicates and reordering: converges and detects a crash', () => {
    const { sim, ids, log } = cluster(30, { seed: 12, loss: 0.05, duplicate: 0.05, reorder: 0.1 })
    expect(sim.runUntilCondition(() => converged(sim, ids), 20_000, 25)).toBeDefined()
    sim.runFor(10_000)
    sim.crash('n20')
    const survivors = ids.filter((id) => id !== 'n20')
    expect(sim.runUntilCondition(() => allSee(sim, survivors, 'n20', 'dead'), 10_000, 10)).toBeDefined()
    expect(log.filter((l) => l.event.type === 'member:fail' && l.event.member.id !== 'n20')).toEqual([])
  })
})
