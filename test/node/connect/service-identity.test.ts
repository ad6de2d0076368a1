/**
 * Issue #12, "service identity is granted", at the leader's signing RPC: a node enrolled for
 * `web` asks for an `api` leaf. The leader refuses (PEERMESH_ERR_PERMISSION_DENIED), counts it,
 * signs nothing; the requester's leaf manager logs the refusal and asks again with backoff.
 */
import { describe, expect, it } from 'vitest'
import {
  AclPublishEntitlement,
  type EntitlementCache,
  MAX_ENTITLEMENT_DECISIONS,
} from '../../../src/acl/entitlement.ts'
import { pack } from '../../../src/common/msgpack.ts'
import { createLeafKeyAndCsr, createRootCa } from '../../../src/identity/index.ts'
import { rootRecordOf } from '../../../src/identity/connect/ca-state.ts'
import type { CaState } from '../../../src/identity/connect/ca-state.ts'
import { LeafManager } from '../../../src/identity/connect/leaf-manager.ts'
import { entitledDirectory } from '../../../src/node/connect/adapters.ts'
import { ConnectModule } from '../../../src/node/connect/connect-module.ts'
import { decodeSignReply } from '../../../src/node/connect/connect-rpc.ts'
import { createToken, FakeEnrollmentState } from '../../acl/enrollment-fakes.ts'
import { FakeCa, FakeDirectory } from '../../identity/connect/fakes.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { advance } from '../catalog/helpers.ts'
import { FakeCatalog, FakeRaft, testIdentity } from './connect-helpers.ts'

const ATTACKER = 'peer-attacker'

/** A leading connect module with a CA; the attacker is enrolled for `web` and lists `web` and `api`. */
async function leader() {
  const state = new FakeEnrollmentState()
  state.enroll(ATTACKER, 'evil', createToken(state, { services: ['web'] }).accessorId)
  const entitlement = new AclPublishEntitlement(state, { enabled: true, defaultPolicy: 'deny' })
  const self = testIdentity()
  const raft = new FakeRaft(self.id)
  // The leader's catalog lists `api` on the attacker (as one lagging behind the ACL state could).
  const connect = new ConnectModule(
    raft,
    { catalog: new FakeCatalog({ [ATTACKER]: ['web', 'api'] }) },
    { selfId: self.id, nodeKey: self.signingKey, trustDomain: 'test.peermesh', entitlement },
  )
  raft.store.onChange(() => connect.refreshState())
  raft.signer = connect.custody
  const now = Date.now()
  const root = await createRootCa({ trustDomain: 'test.peermesh', nowMs: now })
  await raft.write({
    op: 'ca.setRoots',
    roots: [rootRecordOf(root, now, [self.id])],
    activeRootId: root.id,
    casIndex: 0,
  })
  return { state, connect, raft, entitlement }
}

const csrFor = async (service: string) =>
  (await createLeafKeyAndCsr({ service, trustDomain: 'test.peermesh' })).csrPem

describe('leader refuses leaves for services the requester may not publish (issue #12)', () => {
  it('an `api` CSR from a node enrolled for `web`: PERMISSION_DENIED over the RPC, counted, nothing signed', async () => {
    const { connect } = await leader()
    const rpc = (
      connect as unknown as { rpc: { serveRequest(from: string, b: Uint8Array): Promise<Uint8Array> } }
    ).rpc
    const reply = decodeSignReply(
      await rpc.serveRequest(ATTACKER, pack({ service: 'api', csr: await csrFor('api') })),
    )
    expect(reply?.ok ? 'signed' : reply?.code).toBe('PEERMESH_ERR_PERMISSION_DENIED')
    const sidecar = await connect.signFor(ATTACKER, 'api-sidecar-proxy', await csrFor('api-sidecar-proxy'))
    expect(sidecar.ok ? 'signed' : sidecar.code).toBe('PEERMESH_ERR_PERMISSION_DENIED')
    expect(connect.signer.stats.leavesSigned).toBe(0)
    expect(connect.stats.signDenied).toBe(2)
    // Its own service is signed.
    expect((await connect.signFor(ATTACKER, 'web', await csrFor('web'))).ok).toBe(true)
  })

  it("peer-chosen names and fresh peer ids leave the leader's entitlement memo bounded; an entitled peer is still signed", async () => {
    const { connect, entitlement } = await leader()
    const rpc = (
      connect as unknown as { rpc: { serveRequest(from: string, b: Uint8Array): Promise<Uint8Array> } }
    ).rpc
    const memo = (entitlement as unknown as { cache: EntitlementCache }).cache
    const ask = async (from: string, service: unknown) =>
      decodeSignReply(await rpc.serveRequest(from, pack({ service, csr: 'not a csr' })))
    // A cluster-key holder with no enrollment, under a fresh peer id and a fresh name each time.
    for (let i = 0; i < 500; i++) {
      const reply = await ask(`peer-fresh-${i}`, `svc-${i}`)
      expect(reply?.ok ? 'signed' : reply?.code).toBe('PEERMESH_ERR_PERMISSION_DENIED')
    }
    expect(memo.size).toBe(0)
    // Names that are no service name (up to the request limit) are refused before the memo.
    for (let i = 0; i < 50; i++) {
      const reply = await ask(`peer-fresh-${i}`, `${i}`.padEnd(30 * 1024, 'x'))
      expect(reply?.ok ? 'signed' : reply?.code).toBe('PEERMESH_ERR_INVALID_SERVICE_NAME')
    }
    expect(memo.size).toBe(0)
    // The enrolled attacker asking fresh names (straight to the handler, past the rate limit):
    // remembered, up to the cap.
    for (let i = 0; i < MAX_ENTITLEMENT_DECISIONS + 100; i++) {
      expect(entitlement.mayPublish(ATTACKER, `svc-${i}`)).toBe(false)
      if (i % 4_096 === 0) await connect.signFor(ATTACKER, `svc-${i}`, 'not a csr')
    }
    expect(memo.size).toBeLessThanOrEqual(MAX_ENTITLEMENT_DECISIONS)
    expect(connect.signer.stats.leavesSigned).toBe(0)
    const own = decodeSignReply(
      await rpc.serveRequest(ATTACKER, pack({ service: 'web', csr: await csrFor('web') })),
    )
    expect(own?.ok).toBe(true)
    expect(connect.signer.stats.leavesSigned).toBe(1)
  })

  it('a peer with no enrollment gets nothing, even for a service it lists', async () => {
    const { connect } = await leader()
    const reply = await connect.signFor('peer-stranger', 'web', await csrFor('web'))
    expect(reply.ok ? 'signed' : reply.code).toBe('PEERMESH_ERR_PERMISSION_DENIED')
    expect(connect.signer.stats.leavesSigned).toBe(0)
  })

  it('a grant committed later is honoured; one applied only after the catch-up is seen too', async () => {
    const { state, connect, raft } = await leader()
    const token = createToken(state, { services: ['api'] }).accessorId
    // The grant is applied while the leader catches up (ReadIndex) after its first "no".
    let reads = 0
    const read = raft.linearizableRead.bind(raft)
    raft.linearizableRead = async () => {
      if (reads++ === 0) state.grant(ATTACKER, 'api', token)
      return read()
    }
    const reply = await connect.signFor(ATTACKER, 'api', await csrFor('api'))
    expect(reply.ok).toBe(true)
    expect(connect.stats.signDenied).toBe(0)
  })

  it('without an entitlement check (ACLs off) a registered service is signed as before', async () => {
    const self = testIdentity()
    const raft = new FakeRaft(self.id)
    const connect = new ConnectModule(
      raft,
      { catalog: new FakeCatalog({ [ATTACKER]: ['api'] }) },
      { selfId: self.id, nodeKey: self.signingKey, trustDomain: 'test.peermesh' },
    )
    raft.signer = connect.custody
    raft.store.onChange(() => connect.refreshState())
    const now = Date.now()
    const root = await createRootCa({ trustDomain: 'test.peermesh', nowMs: now })
    await raft.write({
      op: 'ca.setRoots',
      roots: [rootRecordOf(root, now, [self.id])],
      activeRootId: root.id,
      casIndex: 0,
    })
    expect((await connect.signFor(ATTACKER, 'api', await csrFor('api'))).ok).toBe(true)
  })

  it("the requester's leaf manager logs the refusal and asks again with backoff, without crashing", async () => {
    const { connect } = await leader()
    const clock = new VirtualClock(Date.now())
    const ca = new FakeCa()
    ca.state = { roots: [], active: { trustDomain: 'test.peermesh' }, modifyIndex: 1 } as unknown as CaState
    const warnings: { code?: unknown; retryInMs?: unknown }[] = []
    let asked = 0
    const manager = new LeafManager({
      channel: {
        sign: async (service, csr) => {
          asked++
          return connect.signFor(ATTACKER, service, csr)
        },
      },
      ca,
      directory: new FakeDirectory({ [ATTACKER]: ['api'] }),
      selfId: () => ATTACKER,
      clock,
      log: {
        debug() {},
        info() {},
        warn: (o) => warnings.push(o as { code?: unknown }),
        error() {},
      },
      retryBackoff: { initialMs: 1_000, maxMs: 8_000 },
    })
    manager.start()
    // Key generation is real crypto: let it finish between steps of the virtual clock.
    const waitFor = async (n: number) => {
      const end = Date.now() + 10_000
      while (asked < n && Date.now() < end) {
        await advance(clock, 250)
        await new Promise((r) => setTimeout(r, 2))
      }
    }
    await waitFor(4)
    manager.stop()
    expect(asked).toBeGreaterThanOrEqual(4)
    expect(warnings.every((w) => w.code === 'PEERMESH_ERR_PERMISSION_DENIED')).toBe(true)
    const delays = warnings.map((w) => w.retryInMs as number)
    expect(delays[2]!).toBeGreaterThan(delays[0]!)
    expect(manager.current('api')).toBeUndefined()
    expect(connect.signer.stats.leavesSigned).toBe(0)
  })

  it('a CA rotation waits only for instances that may have a leaf (its own refused ones included)', () => {
    const directory = entitledDirectory(new FakeDirectory({ self: ['web', 'api'], [ATTACKER]: ['api'] }), {
      mayPublish: (_peer, service) => service === 'web',
    })
    expect(directory.servicesOf('self')).toEqual(['web'])
    expect(directory.servicesOf(ATTACKER)).toEqual([])
    expect(directory.isRegisteredOn('self', 'api')).toBe(false)
    expect(directory.aliveMembers().sort()).toEqual([ATTACKER, 'self'].sort())
  })
})
