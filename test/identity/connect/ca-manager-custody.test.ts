import { describe, expect, it, vi } from 'vitest'
import { CaManager } from '../../../src/identity/connect/ca-manager.ts'
import type { CaRootRecord } from '../../../src/identity/connect/ca-state.ts'
import type { CaStateWriter } from '../../../src/identity/connect/components.ts'
import { KeyHolderNotEligibleError } from '../../../src/identity/connect/errors.ts'
import { KeyCustody } from '../../../src/identity/connect/key-custody.ts'
import {
  type EnrollmentView,
  enrolledVoterOrFounder,
} from '../../../src/identity/connect/key-holder-eligibility.ts'
import { signPolicyEntry } from '../../../src/raft/policy/policy-signing.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { FakeCa, FakeDirectory, FakeLeader, nodeIdentity, quietLog } from './fakes.ts'

/**
 * Issue #12: the CA root key is sealed only to voter-eligible voters. A peer that is a voter of
 * the Raft configuration (here forced into it) but neither an enrolled voter nor a founder gets no
 * sealed copy, by any path: creation, the grant loop, `grantKeyTo`, rotation.
 */

/** Enrollments the test sets directly. */
class FakeAcl implements EnrollmentView {
  readonly enrolled = new Map<string, { voter: boolean }>()
  readonly revokedIds = new Set<string>()
  enrollment = (peerId: string) => this.enrolled.get(peerId)
  revoked = (peerId: string) => this.revokedIds.has(peerId)
}

describe('enrolledVoterOrFounder (the ACLs-on key holder rule)', () => {
  const acl = new FakeAcl()
  acl.enrolled.set('voter', { voter: true })
  acl.enrolled.set('learner', { voter: false })
  acl.enrolled.set('founder-enrolled-learner', { voter: false })
  acl.revokedIds.add('founder-revoked')
  const founders = ['founder', 'founder-revoked', 'founder-enrolled-learner']
  const eligible = enrolledVoterOrFounder(acl, () => founders)
  it.each([
    ['an enrolled voter', 'voter', true],
    ['an enrolled non-voter', 'learner', false],
    ['an unenrolled founder', 'founder', true],
    ['a revoked founder', 'founder-revoked', false],
    ['a founder enrolled since as a non-voter (the enrollment decides)', 'founder-enrolled-learner', false],
    ['an unenrolled peer that did not found', 'stranger', false],
  ])('%s -> %s', (_what, id, want) => {
    expect(eligible(id)).toBe(want)
  })

  it('an agent that did not found knows no founders', () => {
    expect(enrolledVoterOrFounder(acl, () => undefined)('founder')).toBe(false)
  })
})

function setup(keyHolderEligible?: (peerId: string) => boolean) {
  const self = nodeIdentity()
  const founder = nodeIdentity()
  const forced = nodeIdentity() // in the configuration as a voter, never enrolled, not a founder
  const ca = new FakeCa()
  const leader = new FakeLeader(self.id)
  leader.voters = () => [self.id, founder.id, forced.id]
  const writes: CaRootRecord[][] = []
  // Applies `ca.setRoots` compare-and-set, as the policy store does.
  const writer: CaStateWriter = {
    setRoots: async (change) => {
      if (change.casIndex !== ca.state.modifyIndex)
        return { ok: false, code: 'PEERMESH_ERR_CAS', message: 'changed meanwhile' }
      writes.push(change.roots)
      const modifyIndex = ca.state.modifyIndex + 1
      ca.state = {
        roots: change.roots,
        active: change.roots.find((r) => r.id === change.activeRootId),
        modifyIndex,
      }
      return { ok: true }
    },
  }
  const keys = new KeyCustody({ ca, identity: () => self, signEntry: signPolicyEntry })
  const manager = new CaManager({
    ca,
    writer,
    leader,
    keys,
    directory: new FakeDirectory({}),
    issued: { issuedUnder: new Map() },
    settings: { trustDomain: () => 'test.peermesh', keyType: () => 'ed25519', leafTtlMs: () => 60_000 },
    clock: new VirtualClock(Date.now()),
    log: quietLog,
    ...(keyHolderEligible !== undefined ? { keyHolderEligible } : {}),
  })
  return { self, founder, forced, ca, leader, manager, writes }
}

/** Runs the leader's periodic check until `done` holds. */
async function checkUntil(manager: CaManager, done: () => boolean): Promise<void> {
  await vi.waitFor(
    () => {
      manager.check()
      if (!done()) throw new Error('not yet')
    },
    { timeout: 5_000, interval: 20 },
  )
}

const holders = (r: CaRootRecord | undefined) => Object.keys(r?.sealedKeys ?? {}).sort()

describe('CaManager key custody', () => {
  it('without a rule (ACLs off) the key is sealed to every voter, as before', async () => {
    const { self, founder, forced, ca, manager } = setup()
    await checkUntil(manager, () => ca.state.active !== undefined)
    expect(holders(ca.state.active)).toEqual([self.id, founder.id, forced.id].sort())
  })

  it('a voter of the configuration that is neither enrolled nor a founder gets no sealed copy, by any path', async () => {
    const acl = new FakeAcl()
    let founders: string[] = []
    const { self, founder, forced, ca, leader, manager, writes } = setup(
      enrolledVoterOrFounder(acl, () => founders),
    )
    founders = [self.id, founder.id]
    // Creation: sealed to the leader and the unenrolled founder (the CA is created before the
    // founders enroll), not to the forced voter.
    await checkUntil(manager, () => ca.state.active !== undefined)
    expect(holders(ca.state.active)).toEqual([self.id, founder.id].sort())
    // The grant loop: several checks later, still nothing for it.
    for (let i = 0; i < 5; i++) {
      manager.check()
      await new Promise((r) => setTimeout(r, 10))
    }
    expect(holders(ca.state.active)).toEqual([self.id, founder.id].sort())
    expect(manager.stats.keysWithheld).toBe(1)
    // grantKeyTo (autopilot, before a promotion): refused with its code, nothing written.
    const before = writes.length
    await expect(manager.grantKeyTo(forced.id, AbortSignal.timeout(5_000))).rejects.toMatchObject({
      code: KeyHolderNotEligibleError.code,
    })
    expect(writes.length).toBe(before)
    // Rotation: the new root too is sealed only to the eligible voters.
    await manager.rotate({ signal: AbortSignal.timeout(5_000) })
    expect(holders(ca.state.active)).toEqual([self.id, founder.id].sort())
    expect(writes.flat().every((r) => r.sealedKeys[forced.id] === undefined)).toBe(true)
    // Once enrolled as a voter it is sealed a copy of every trusted root by the grant loop.
    acl.enrolled.set(forced.id, { voter: true })
    await checkUntil(manager, () => ca.state.roots.every((r) => r.sealedKeys[forced.id] !== undefined))
    expect(ca.state.roots).toHaveLength(2)
    // A leader is always a holder, whatever the rule says of it.
    expect(leader.voters()).toContain(self.id)
  })

  it('grantKeyTo of an enrolled non-voter is refused', async () => {
    const acl = new FakeAcl()
    const learner = nodeIdentity()
    acl.enrolled.set(learner.id, { voter: false })
    const { self, ca, manager } = setup(enrolledVoterOrFounder(acl, () => undefined))
    await checkUntil(manager, () => ca.state.active !== undefined)
    expect(holders(ca.state.active)).toEqual([self.id])
    await expect(manager.grantKeyTo(learner.id, AbortSignal.timeout(5_000))).rejects.toMatchObject({
      code: KeyHolderNotEligibleError.code,
    })
  })
})
