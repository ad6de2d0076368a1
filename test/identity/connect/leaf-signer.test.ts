import { beforeAll, describe, expect, it } from 'vitest'
import { createRootCa, type RootCa } from '../../../src/identity/ca/ca.ts'
import { createLeafKeyAndCsr } from '../../../src/identity/ca/leaf.ts'
import { rootRecordOf } from '../../../src/identity/connect/ca-state.ts'
import {
  CaNotReadyError,
  NotSigningLeaderError,
  ServiceNotRegisteredError,
} from '../../../src/identity/connect/errors.ts'
import { KeyCustody } from '../../../src/identity/connect/key-custody.ts'
import { LeafSigner } from '../../../src/identity/connect/leaf-signer.ts'
import { signPolicyEntry } from '../../../src/raft/policy/policy-signing.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { FakeCa, FakeDirectory, FakeLeader, nodeIdentity } from './fakes.ts'

const AGENT = 'peer-agent'
let root: RootCa
let csr: string
beforeAll(async () => {
  root = await createRootCa({ trustDomain: 'test.peermesh', nowMs: Date.now() })
  csr = (await createLeafKeyAndCsr({ service: 'web', trustDomain: 'test.peermesh' })).csrPem
})

function setup(services: Record<string, string[]>, options: { signingRatePerSecond?: number } = {}) {
  const self = nodeIdentity()
  const ca = new FakeCa()
  const record = rootRecordOf(root, 0, [self.id])
  ca.state = { roots: [record], active: record, modifyIndex: 1 }
  const leader = new FakeLeader(self.id)
  const clock = new VirtualClock(Date.now())
  const signer = new LeafSigner({
    ca,
    keys: new KeyCustody({ ca, identity: () => self, signEntry: signPolicyEntry }),
    leader,
    directory: new FakeDirectory(services),
    clock,
    leafTtlMs: () => 10 * 60_000,
    ...options,
  })
  return { signer, ca, leader, clock }
}

const code = (r: { ok: boolean; code?: string }) => (r.ok ? 'signed' : r.code)

describe('LeafSigner', () => {
  it('refuses a service that is not registered on the requesting agent', async () => {
    const { signer } = setup({ [AGENT]: ['db'], other: ['web'] })
    expect(code(await signer.signFor(AGENT, 'web', csr))).toBe(ServiceNotRegisteredError.code)
    expect(signer.stats).toEqual({ leavesSigned: 0, signRefused: 1 })
  })

  it('refuses when not leading, and when the new leader has not caught up yet', async () => {
    const { signer, leader } = setup({ [AGENT]: ['web'] })
    leader.leading = false
    expect(code(await signer.signFor(AGENT, 'web', csr))).toBe(NotSigningLeaderError.code)
    leader.leading = true
    leader.caughtUp = false
    expect(code(await signer.signFor(AGENT, 'web', csr))).toBe(CaNotReadyError.code)
    leader.caughtUp = true
    expect(code(await signer.signFor(AGENT, 'web', csr))).toBe('signed')
  })

  it('refuses without a CA, and signs and records the instance once it exists', async () => {
    const { signer, ca } = setup({ [AGENT]: ['web'] })
    const state = ca.state
    ca.state = { roots: [], active: undefined, modifyIndex: 0 }
    expect(code(await signer.signFor(AGENT, 'web', csr))).toBe(CaNotReadyError.code)
    ca.state = state
    expect(code(await signer.signFor(AGENT, 'web', csr))).toBe('signed')
    expect(signer.issuedUnder.get(`${AGENT}/web`)?.rootId).toBe(root.id)
  })

  it('rate-limits on the injected clock: a token is back after a second', async () => {
    const { signer, clock } = setup({ [AGENT]: ['web'] }, { signingRatePerSecond: 1 })
    expect(code(await signer.signFor(AGENT, 'web', csr))).toBe('signed')
    expect(code(await signer.signFor(AGENT, 'web', csr))).toBe('PEERMESH_ERR_LEAF_SIGNING_RATE_LIMITED')
    clock.advance(1_000)
    expect(code(await signer.signFor(AGENT, 'web', csr))).toBe('signed')
  })
})
