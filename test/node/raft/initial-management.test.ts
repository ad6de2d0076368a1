import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { InitialManagementApplier } from '../../../src/node/raft/initial-management.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

const log = pino({ level: 'silent' })

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve()
}

/** A leader's view as a test sets it; `outcomes` decides each write in turn. */
function setup(outcomes: ('fail' | 'refused' | 'ok')[]) {
  const clock = new VirtualClock()
  const state = { leading: true, caReady: true, bootstrapIndex: 0 }
  const listeners = new Set<() => void>()
  const writes: number[] = []
  const applier = new InitialManagementApplier(
    {
      clock,
      log,
      leading: () => state.leading,
      signingReady: () => state.caReady,
      onStateChange: (fn) => {
        listeners.add(fn)
        return () => listeners.delete(fn)
      },
      bootstrapIndex: () => state.bootstrapIndex,
      knowsSecret: () => true,
      write: async () => {
        writes.push(clock.now())
        const outcome = outcomes.shift() ?? 'ok'
        if (outcome === 'fail') throw new Error('write timed out')
        if (outcome === 'ok') state.bootstrapIndex = 7
        return { ok: outcome === 'ok' }
      },
      retryMs: 1_000,
    },
    '2b4c6e9a-0000-4000-8000-000000000001',
  )
  const changed = () => {
    for (const fn of [...listeners]) fn()
  }
  return { clock, state, writes, applier, changed, listeners }
}

describe('InitialManagementApplier (the leader applies the shared initial management token)', () => {
  it('keeps trying while it leads after failed and refused writes, one write at a time, until one commits', async () => {
    const { clock, writes, applier } = setup(['fail', 'refused', 'fail', 'ok'])
    applier.onLeadership()
    applier.onLeadership() // a second leadership event while the first write is in flight: no second write
    await settle()
    expect(writes).toEqual([0])
    for (let i = 0; i < 5; i++) {
      clock.advance(1_000)
      await settle()
    }
    expect(writes).toEqual([0, 1_000, 2_000, 3_000])
  })

  it('stops trying when it no longer leads, and tries again on its next leadership', async () => {
    const { clock, state, writes, applier } = setup(['fail', 'ok'])
    applier.onLeadership()
    await settle()
    state.leading = false
    clock.advance(5_000)
    await settle()
    expect(writes).toEqual([0])
    state.leading = true
    applier.onLeadership()
    await settle()
    expect(writes).toEqual([0, 5_000])
    expect(state.bootstrapIndex).toBe(7)
  })

  it('waits for the CA before proposing, and does nothing once the cluster is bootstrapped', async () => {
    const { clock, state, writes, applier, changed, listeners } = setup(['ok'])
    state.caReady = false
    applier.onLeadership()
    applier.onLeadership()
    await settle()
    expect(writes).toEqual([])
    expect(listeners.size).toBe(1)
    changed() // a change that is not the CA yet
    await settle()
    expect(writes).toEqual([])
    state.caReady = true
    clock.advance(300)
    changed()
    await settle()
    expect(writes).toEqual([300])
    expect(listeners.size).toBe(0)
    applier.onLeadership() // a later leadership: already bootstrapped
    await settle()
    expect(writes).toEqual([300])
  })

  it('stop cancels a pending retry', async () => {
    const { clock, writes, applier } = setup(['fail', 'ok'])
    applier.onLeadership()
    await settle()
    applier.stop()
    clock.advance(10_000)
    await settle()
    expect(writes).toEqual([0])
  })
})
