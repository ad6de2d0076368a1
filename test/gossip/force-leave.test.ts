/**
 * Consul's force-leave in the gossip core (issue #15): a failed member becomes `left` on every
 * agent that holds it failed; a live member cannot be ended by it, from the API or from the network.
 */
import { keyOf, verifier } from './node-keys.ts'
import { describe, expect, it } from 'vitest'
import { encodeMessage } from '../../src/gossip/codec.ts'
import { testConfig } from '../../src/gossip/config.ts'
import { ed25519Signer } from '../../src/gossip/signing.ts'
import { SimNetwork } from '../../src/gossip/sim-network.ts'
import type { Output } from '../../src/gossip/swim.ts'

function cluster(n: number) {
  const sim = new SimNetwork({
    seed: 11,
    config: testConfig,
    crypto: (id) => ({ signer: ed25519Signer(keyOf(id).privateKey), verifier }),
  })
  const ids = Array.from({ length: n }, (_, i) => `n${i}`)
  sim.join(ids[0]!, [])
  for (const id of ids.slice(1)) sim.join(id, [ids[0]!])
  const converged = () => ids.every((o) => ids.every((t) => sim.node(o).member(t)?.status === 'alive'))
  expect(sim.runUntilCondition(converged, 20_000, 25)).toBeDefined()
  return { sim, ids }
}

/** Runs `forceLeave` on `on` about `target`; returns its result. */
function forceLeave(sim: SimNetwork, on: string, target: string, prune = false): string {
  let result = ''
  sim.act(on, (s, now): Output => {
    const r = s.forceLeave(target, now, { prune })
    result = r.result
    return r.output
  })
  return result
}

describe('force-leave (Consul): a failed member is held left everywhere it is held failed', () => {
  it('a crashed member, dead everywhere, becomes left on every survivor after one force-leave', () => {
    const { sim, ids } = cluster(6)
    sim.crash('n5')
    const survivors = ids.filter((id) => id !== 'n5')
    const deadEverywhere = () => survivors.every((o) => sim.node(o).member('n5')?.status === 'dead')
    expect(sim.runUntilCondition(deadEverywhere, 30_000, 25)).toBeDefined()
    expect(forceLeave(sim, 'n1', 'n5')).toBe('left')
    expect(sim.node('n1').member('n5')?.status).toBe('left')
    const leftEverywhere = () => survivors.every((o) => sim.node(o).member('n5')?.status === 'left')
    expect(sim.runUntilCondition(leftEverywhere, 10_000, 10)).toBeDefined()
    expect(forceLeave(sim, 'n2', 'n5')).toBe('already-left')
    // The member comes back: it refutes with a higher incarnation and is alive again everywhere.
    sim.restart('n5', { seeds: ['n0'], lastIncarnation: 5 })
    const backEverywhere = () => survivors.every((o) => sim.node(o).member('n5')?.status === 'alive')
    expect(sim.runUntilCondition(backEverywhere, 30_000, 25)).toBeDefined()
  })

  it('prune forgets it here at once', () => {
    const { sim, ids } = cluster(4)
    sim.crash('n3')
    const survivors = ids.filter((id) => id !== 'n3')
    expect(
      sim.runUntilCondition(
        () => survivors.every((o) => sim.node(o).member('n3')?.status === 'dead'),
        30_000,
        25,
      ),
    ).toBeDefined()
    expect(forceLeave(sim, 'n0', 'n3', true)).toBe('left')
    expect(sim.node('n0').member('n3')).toBeUndefined()
  })

  it('from the attacker: a live member is refused by the API and untouched by a forged network force-leave', () => {
    const { sim, ids } = cluster(5)
    expect(forceLeave(sim, 'n0', 'n4')).toBe('not-failed')
    expect(forceLeave(sim, 'n0', 'nobody')).toBe('unknown')
    // A cluster-key holder sends `fleave` about live n4, at its current incarnation, to everyone.
    const inc = sim.node('n0').member('n4')!.incarnation
    for (const to of ids) sim.inject('n1', to, encodeMessage({ t: 'fleave', id: 'n4', inc, from: 'n1' }))
    sim.runFor(2_000)
    for (const o of ids) if (o !== 'n4') expect(sim.node(o).member('n4')?.status, o).toBe('alive')
    // The same injection about a member that is dead there does apply (the control: it is delivered).
    sim.crash('n3')
    expect(
      sim.runUntilCondition(() => sim.node('n2').member('n3')?.status === 'dead', 30_000, 25),
    ).toBeDefined()
    const deadInc = sim.node('n2').member('n3')!.incarnation
    sim.inject('n1', 'n2', encodeMessage({ t: 'fleave', id: 'n3', inc: deadInc + 1, from: 'n1' }))
    sim.runFor(50)
    expect(sim.node('n2').member('n3')?.status).toBe('dead') // another incarnation: ignored
    sim.inject('n1', 'n2', encodeMessage({ t: 'fleave', id: 'n3', inc: deadInc, from: 'n1' }))
    sim.runFor(50)
    expect(sim.node('n2').member('n3')?.status).toBe('left')
  })
})
