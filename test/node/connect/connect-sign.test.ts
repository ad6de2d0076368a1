import { describe, expect, it } from 'vitest'
import { createLeafKeyAndCsr, createRootCa, verifyLeaf } from '../../../src/identity/index.ts'
import { openRootKey, rootRecordOf } from '../../../src/identity/connect/ca-state.ts'
import { connectWithFakes, testIdentity } from './connect-helpers.ts'

const AGENT = 'peer-agent'

async function withCa(services: Record<string, string[]>, options: { signingRatePerSecond?: number } = {}) {
  const { connect, raft, self } = connectWithFakes(services, { leafTtlMs: 10 * 60_000, ...options })
  const now = Date.now()
  const root = await createRootCa({ trustDomain: 'test.peermesh', nowMs: now })
  await raft.write({
    op: 'ca.setRoots',
    roots: [rootRecordOf(root, now, [self.id])],
    activeRootId: root.id,
    casIndex: 0,
  })
  return { connect, raft, root, self }
}

describe('ConnectModule leaf signing (leader side)', () => {
  it('signs a CSR for a service registered on the requesting agent; the leaf verifies under the root', async () => {
    const { connect, root } = await withCa({ [AGENT]: ['web'] })
    const csr = await createLeafKeyAndCsr({ service: 'web', trustDomain: 'test.peermesh' })
    const reply = await connect.signFor(AGENT, 'web', csr.csrPem)
    expect(reply.ok).toBe(true)
    if (!reply.ok) return
    const v = await verifyLeaf(reply.certPem, {
      roots: [root.certPem],
      trustDomain: 'test.peermesh',
      expectedService: 'web',
      nowMs: Date.now(),
    })
    expect(v.ok && v.spiffeId).toBe('spiffe://test.peermesh/svc/web')
  })

  it('refuses a CSR for a service the requesting agent does not register (even if another agent does)', async () => {
    const { connect } = await withCa({ [AGENT]: ['web'], 'peer-other': ['db'] })
    const csr = await createLeafKeyAndCsr({ service: 'db', trustDomain: 'test.peermesh' })
    const reply = await connect.signFor(AGENT, 'db', csr.csrPem)
    expect(reply.ok ? 'signed' : reply.code).toBe('PEERMESH_ERR_SERVICE_NOT_REGISTERED')
    expect(connect.signer.stats.leavesSigned).toBe(0)
  })

  it('refuses a CSR that asks for another identity than the service it names', async () => {
    const { connect } = await withCa({ [AGENT]: ['web', 'db'] })
    const csr = await createLeafKeyAndCsr({ service: 'db', trustDomain: 'test.peermesh' })
    const reply = await connect.signFor(AGENT, 'web', csr.csrPem)
    expect(reply.ok ? 'signed' : reply.code).toBe('PEERMESH_ERR_CSR_IDENTITY_MISMATCH')
  })

  it('refuses when not the leader, and before the CA exists', async () => {
    const { connect, raft } = connectWithFakes({ [AGENT]: ['web'] })
    const csr = await createLeafKeyAndCsr({ service: 'web', trustDomain: 'test.peermesh' })
    const noCa = await connect.signFor(AGENT, 'web', csr.csrPem)
    expect(noCa.ok ? 'signed' : noCa.code).toBe('PEERMESH_ERR_CA_NOT_READY')
    raft.leader = 'someone-else'
    const follower = await connect.signFor(AGENT, 'web', csr.csrPem)
    expect(follower.ok ? 'signed' : follower.code).toBe('PEERMESH_ERR_NOT_LEADER')
  })

  it('a new leader signs only once it has caught up with the committed state (ReadIndex)', async () => {
    const { connect, raft } = await withCa({ [AGENT]: ['web'] })
    const csr = await createLeafKeyAndCsr({ service: 'web', trustDomain: 'test.peermesh' })
    let reads = 0
    raft.linearizableRead = async () => {
      reads++
      throw new Error('no quorum yet')
    }
    const early = await connect.signFor(AGENT, 'web', csr.csrPem)
    expect(early.ok ? 'signed' : early.code).toBe('PEERMESH_ERR_CA_NOT_READY')
    raft.linearizableRead = async () => {
      reads++
      return { index: raft.store.index }
    }
    expect((await connect.signFor(AGENT, 'web', csr.csrPem)).ok).toBe(true)
    // Once per term: the next signing does not wait for another ReadIndex.
    expect((await connect.signFor(AGENT, 'web', csr.csrPem)).ok).toBe(true)
    expect(reads).toBe(2)
  })

  it('rejects malformed input without throwing', async () => {
    const { connect } = await withCa({ [AGENT]: ['web'] })
    const bad = await connect.signFor(AGENT, 'Web!', 'x')
    expect(bad.ok ? 'signed' : bad.code).toBe('PEERMESH_ERR_INVALID_SERVICE_NAME')
    const garbage = await connect.signFor(AGENT, 'web', '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n')
    expect(garbage.ok ? 'signed' : garbage.code).toBe('PEERMESH_ERR_CSR_MALFORMED')
  })

  it('rate-limits signing', async () => {
    const { connect } = await withCa({ [AGENT]: ['web'] }, { signingRatePerSecond: 1 })
    const csr = await createLeafKeyAndCsr({ service: 'web', trustDomain: 'test.peermesh' })
    expect((await connect.signFor(AGENT, 'web', csr.csrPem)).ok).toBe(true)
    const second = await connect.signFor(AGENT, 'web', csr.csrPem)
    expect(second.ok ? 'signed' : second.code).toBe('PEERMESH_ERR_LEAF_SIGNING_RATE_LIMITED')
  })
})

describe('ConnectModule CA', () => {
  it('a rotation makes a cross-signed new root active, keeps the old trusted, and refuses a second one meanwhile', async () => {
    const { connect, root } = await withCa({ [AGENT]: ['web'] })
    const r = await connect.rotate({ signal: AbortSignal.timeout(5_000) })
    expect(r.previousRootId).toBe(root.id)
    const state = connect.caState()
    expect(state.roots.map((x) => x.id)).toEqual([root.id, r.activeRootId])
    expect(state.active?.crossSignedPem).toBeDefined()
    // A leaf from the new root verifies for a peer that trusts only the old root, via the cross-signed cert.
    const csr = await createLeafKeyAndCsr({ service: 'web', trustDomain: 'test.peermesh' })
    const reply = await connect.signFor(AGENT, 'web', csr.csrPem)
    expect(reply.ok).toBe(true)
    if (!reply.ok) return
    const v = await verifyLeaf(reply.certPem, {
      roots: [root.certPem],
      intermediates: reply.intermediatesPem,
      trustDomain: 'test.peermesh',
      nowMs: Date.now(),
    })
    expect(v.ok).toBe(true)
    await expect(connect.rotate({ signal: AbortSignal.timeout(5_000) })).rejects.toMatchObject({
      code: 'PEERMESH_ERR_CA_ROTATION_CONFLICT',
    })
  })

  it('rebuilds the intention index on each applied change (exact > wildcard > default)', async () => {
    const { connect, raft } = await withCa({})
    expect(connect.intentionIndex().decide('web', 'db').action).toBe('deny')
    await raft.write({ op: 'intention.upsert', source: '*', destination: 'db', action: 'allow' })
    expect(connect.intentionIndex().decide('web', 'db').action).toBe('allow')
    await raft.write({ op: 'intention.upsert', source: 'web', destination: 'db', action: 'deny' })
    expect(connect.intentionIndex().decide('web', 'db').action).toBe('deny')
    expect(connect.intentionIndex().decide('api', 'db').action).toBe('allow')
    await raft.write({
      op: 'config.set',
      kind: 'kv',
      name: 'connect.default-intention-action',
      value: { value: 'allow' },
    })
    expect(connect.intentionIndex().decide('api', 'cache').action).toBe('allow')
  })
})

describe('custody of the root key', () => {
  it('seals the key to voters only; autopilot seals it to a learner before promoting it', async () => {
    const { connect, raft, self, root } = await withCa({ [AGENT]: ['web'] })
    const learner = testIdentity()
    const record = () => connect.caState().active!
    expect(openRootKey(record(), self.id, self.signingKey)).toBe(root.keyPem)
    expect(openRootKey(record(), learner.id, learner.signingKey)).toBeUndefined()
    // The key is in no replicated record in clear.
    expect(JSON.stringify(raft.store.snapshot())).not.toContain('PRIVATE KEY')
    expect(Buffer.from(raft.store.snapshot()).toString('latin1')).not.toContain('PRIVATE KEY')

    await raft.keyGrant!.grantKeyTo(learner.id, AbortSignal.timeout(5_000))
    expect(openRootKey(record(), learner.id, learner.signingKey)).toBe(root.keyPem)
    expect(connect.caManager.stats.keysGranted).toBe(1)
    // Already granted: nothing written.
    const writes = raft.writes.length
    await raft.keyGrant!.grantKeyTo(learner.id, AbortSignal.timeout(5_000))
    expect(raft.writes.length).toBe(writes)
  })

  it('signs every policy entry as leader; entries a keyless leader appends are refused everywhere', async () => {
    const { connect, raft } = await withCa({})
    await raft.write({ op: 'intention.upsert', source: 'web', destination: 'db', action: 'allow' })
    expect(connect.intentionIndex().decide('web', 'db').action).toBe('allow')
    expect(raft.store.stats.signatureRejected).toBe(0)
    // Without the sealer (as on an agent holding no copy of the key), the write is refused.
    raft.signer = undefined
    const { result } = await raft.write({
      op: 'intention.upsert',
      source: 'web',
      destination: 'db',
      action: 'deny',
    })
    expect(result).toMatchObject({ ok: false, code: 'PEERMESH_ERR_POLICY_SIGNATURE' })
    expect(connect.intentionIndex().decide('web', 'db').action).toBe('allow')
  })
})
