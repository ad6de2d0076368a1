import { describe, expect, it, vi } from 'vitest'
import { CaManager } from '../../../src/identity/connect/ca-manager.ts'
import type { CaStateWriter } from '../../../src/identity/connect/components.ts'
import { KeyCustody } from '../../../src/identity/connect/key-custody.ts'
import { signPolicyEntry } from '../../../src/raft/policy/policy-signing.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { FakeCa, FakeDirectory, FakeLeader, nodeIdentity, quietLog } from './fakes.ts'

/**
 * The leader's CA check runs on a timer only while this agent leads, when the manager is told of
 * leader changes: an idle follower has no timer of its own to wake it.
 */
function setup() {
  const self = nodeIdentity()
  const ca = new FakeCa()
  const leader = new FakeLeader(self.id)
  const writer: CaStateWriter = {
    setRoots: async (change) => {
      ca.state = {
        roots: change.roots,
        active: change.roots.find((r) => r.id === change.activeRootId),
        modifyIndex: ca.state.modifyIndex + 1,
      }
      return { ok: true }
    },
  }
  const clock = new VirtualClock(Date.now())
  const manager = new CaManager({
    ca,
    writer,
    leader,
    keys: new KeyCustody({ ca, identity: () => self, signEntry: signPolicyEntry }),
    directory: new FakeDirectory({}),
    issued: { issuedUnder: new Map() },
    settings: { trustDomain: () => 'test.peermesh', keyType: () => 'ed25519', leafTtlMs: () => 60_000 },
    clock,
    log: quietLog,
    checkEveryMs: 500,
  })
  const listeners = new Set<() => void>()
  const leaderChanges = (l: () => void) => {
    listeners.add(l)
    return () => listeners.delete(l)
  }
  const changeLeader = (leading: boolean): void => {
    leader.leading = leading
    for (const l of listeners) l()
  }
  return { ca, clock, manager, leaderChanges, changeLeader, listeners }
}

describe('CaManager check timer', () => {
  it('a follower keeps no timer; becoming leader starts the checks, losing leadership stops them', async () => {
    const { ca, clock, manager, leaderChanges, changeLeader, listeners } = setup()
    changeLeader(false)
    manager.start(leaderChanges)
    expect(clock.pending).toBe(0)
    clock.advance(5_000)
    expect(ca.state.active).toBeUndefined()

    changeLeader(true)
    expect(clock.pending).toBe(1)
    // The check creates the CA (key generation is asynchronous: advance until it is written).
    await vi.waitFor(
      () => {
        clock.advance(500)
        if (ca.state.active === undefined) throw new Error('no CA yet')
      },
      { timeout: 5_000, interval: 10 },
    )

    changeLeader(false)
    expect(clock.pending).toBe(0)
    changeLeader(true)
    changeLeader(true) // a second change while leading (a new term) keeps one timer
    expect(clock.pending).toBe(1)
    manager.stop()
    expect(clock.pending).toBe(0)
    expect(listeners.size).toBe(0)
  })

  it('without leader changes the timer always runs, as before', () => {
    const { clock, manager } = setup()
    manager.start()
    expect(clock.pending).toBe(1)
    manager.stop()
    expect(clock.pending).toBe(0)
  })
})
