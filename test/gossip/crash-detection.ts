import { expect } from 'vitest'
import type { SimNetwork } from '../../src/gossip/sim-network.ts'

/**
 * Settles `sim` for 5 s, crashes `victim`, and returns the simulated ms until every other member of
 * `ids` holds it dead (the evidence-of-life tests compare this with and without their evidence).
 */
export function msUntilSeenDead(sim: SimNetwork, victim: string, ids: readonly string[]): number {
  sim.runFor(5_000)
  const at = sim.now
  sim.crash(victim)
  const survivors = ids.filter((id) => id !== victim)
  const done = sim.runUntilCondition(
    () => survivors.every((o) => sim.node(o).member(victim)?.status === 'dead'),
    30_000,
    10,
  )
  expect(done).toBeDefined()
  return done! - at
}

export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
