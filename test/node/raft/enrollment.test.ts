import { createHash } from 'node:crypto'
import pino from 'pino'
import { describe, expect, it, vi } from 'vitest'
import { commandPermission } from '../../../src/acl/command-permission.ts'
import { FOUNDER_ACCESSOR_ID } from '../../../src/acl/constants.ts'
import { systemClock } from '../../../src/common/clock.ts'
import { pack, unpackRecord } from '../../../src/common/msgpack.ts'
import { AclResolver } from '../../../src/node/api/acl-auth.ts'
import {
  AclNotReadyError,
  AgentEnrollment,
  type EnrollmentReply,
  type EnrollmentRequest,
  ENROLLMENT_ACK_DOMAIN,
  EnrollmentServer,
  enrollmentMac,
  enrollmentProof,
  foundersToEnroll,
  LeaderFinder,
  PermissionDeniedError,
  parseEnrollmentRequest,
  tokenLookupId,
  verifyEnrollmentMac,
} from '../../../src/node/raft/enrollment.ts'
import { BadForwardRequestError } from '../../../src/node/raft/errors.ts'
import {
  ForwardedWriteServer,
  type ProposingNode,
  WriteForwarder,
} from '../../../src/node/raft/write-forwarding.ts'
import { LeaderRpc, NOT_LEADER_CODE, refusal } from '../../../src/node/transport/leader-rpc.ts'
import type { AclCommandInput } from '../../../src/raft/policy/acl-state.ts'
import { encodePolicyCommand, PolicyErrorCodes, PolicyStore } from '../../../src/raft/policy/policy-store.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

const log = pino({ level: 'silent' })
const id = (n: number): string => `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`
const T = '2026-12-04T14:00:00.000Z'
const MGMT = id(101)
const WEB1 = id(11) // node identity web-1, not a voter
const VOTER = id(21) // node identity db-1, voter
const SVC = id(31) // service identity api
/** The leader's peer id (the recipient a proof must be made for). */
const LEADER = 'LeaderPeer'

/** A leader over a real policy store: every proposal is applied at the next index. */
function cluster(opts: { bootstrapped?: boolean; replicated?: () => boolean } = {}) {
  const store = new PolicyStore()
  let index = 0
  const proposed: Uint8Array[] = []
  const state = { leading: true }
  const node: ProposingNode = {
    isLeader: () => state.leading,
    leader: () => (state.leading ? LEADER : 'L'),
    propose: async (data) => {
      proposed.push(data)
      const e = { term: 1, index: ++index, type: 'normal' as const, data }
      return { index: e.index, result: store.apply(e) }
    },
  }
  const apply = (cmd: AclCommandInput) =>
    node.propose(encodePolicyCommand(cmd as never), { signal: new AbortController().signal })
  const acl = new AclResolver(
    store.acl,
    { enabled: true, defaultPolicy: 'deny', anonymousRead: true },
    opts.replicated !== undefined ? { replicated: opts.replicated } : {},
  )
  /** An enrollment server over this state, on the agent `self`. */
  const serverOn = (self: string) =>
    new EnrollmentServer(
      { self, node: () => node, state: store.acl, acl, clock: new VirtualClock() },
      { attemptTimeoutMs: 1_000 },
    )
  const server = serverOn(LEADER)
  const setup = async () => {
    if (opts.bootstrapped === false) return
    await apply({ op: 'acl.bootstrap', accessorId: id(100), secretId: MGMT, createTime: T })
    const tok = (n: number, extra: object) =>
      apply({
        op: 'acl.token.upsert',
        mode: 'create',
        accessorId: id(n - 1),
        secretId: id(n),
        createTime: T,
        ...extra,
      })
    await tok(11, { nodeIdentities: [{ nodeName: 'web-1', datacenter: 'dc1' }] })
    await tok(21, { nodeIdentities: [{ nodeName: 'db-1', datacenter: 'dc1' }], voter: true })
    await tok(31, { serviceIdentities: [{ serviceName: 'api' }] })
    proposed.length = 0
  }
  /** Sends `req` as raw wire bytes from `from` to the leader (`on`: another server). */
  const send = async (from: string, req: unknown, on = server): Promise<EnrollmentReply> =>
    unpackRecord(
      await on.serve(from, unpackRecord(pack(req)), new AbortController().signal),
    ) as unknown as EnrollmentReply
  /**
   * `from` proves `req`'s token as an honest agent does, to the leader. Every "yes" carries the
   * leader's ack, made with the token's secret for this asker and this leader (checked here, then
   * left out of what the tests compare).
   */
  const ask = async (from: string, req: EnrollmentRequest): Promise<EnrollmentReply> => {
    const r = await send(from, enrollmentProof(req, from, LEADER))
    if (!r.ok) return r
    const { ack, ...rest } = r
    const subject = {
      t: req.t,
      name: req.t === 'enroll' ? req.node : req.service,
      requester: from,
      recipient: LEADER,
    }
    expect(ack !== undefined && verifyEnrollmentMac(req.token, subject, ack, ENROLLMENT_ACK_DOMAIN)).toBe(
      true,
    )
    return rest
  }
  return { store, node, state, proposed, server, serverOn, setup, ask, send, apply }
}

const snapshotHex = (s: PolicyStore) => Buffer.from(s.snapshot()).toString('hex')

describe('EnrollmentServer: from the attacker side (a peer with the cluster key, no token)', () => {
  const attacks: [string, EnrollmentRequest][] = [
    ['a bogus token', { t: 'enroll', node: 'evil', token: id(999) }],
    ['the anonymous token', { t: 'enroll', node: 'evil', token: 'anonymous' }],
    ["web-1's node token for another name", { t: 'enroll', node: 'db-1', token: WEB1 }],
    ['a service token (no node:write)', { t: 'enroll', node: 'api-1', token: SVC }],
  ]
  it.each(attacks)(
    'refuses an enroll with %s: nothing proposed, state unchanged, counted',
    async (_w, req) => {
      const c = cluster()
      await c.setup()
      const before = snapshotHex(c.store)
      const r = await c.ask('EvilPeer', req)
      expect(r).toMatchObject({ ok: false, code: PermissionDeniedError.code })
      expect(c.proposed).toEqual([])
      expect(snapshotHex(c.store)).toBe(before)
      expect(c.server.stats.enrollDenied).toBe(1)
      expect(c.server.lastDenied?.from).toBe('EvilPeer')
    },
  )

  it('refuses grants to a peer that is not enrolled, or with a token lacking service:write; counted', async () => {
    const c = cluster()
    await c.setup()
    const before = snapshotHex(c.store)
    expect(await c.ask('EvilPeer', { t: 'grant', service: 'api', token: MGMT })).toMatchObject({
      ok: false,
      code: PermissionDeniedError.code,
    })
    await c.ask('WebPeer', { t: 'enroll', node: 'web-1', token: WEB1 })
    const enrolled = snapshotHex(c.store)
    expect(enrolled).not.toBe(before)
    c.proposed.length = 0
    for (const token of [id(999), WEB1, 'anonymous'])
      expect(await c.ask('WebPeer', { t: 'grant', service: 'db', token })).toMatchObject({
        ok: false,
        code: PermissionDeniedError.code,
      })
    expect(c.proposed).toEqual([])
    expect(snapshotHex(c.store)).toBe(enrolled)
    expect(c.server.stats.grantDenied).toBe(4)
  })

  it('answers malformed requests with a coded refusal, never a throw', async () => {
    const c = cluster()
    await c.setup()
    const { tid, mac } = enrollmentProof({ t: 'enroll', node: 'x', token: MGMT }, 'P', LEADER)
    const bad: unknown[] = [
      { t: 'enroll', node: 'x' },
      { t: 'enroll', node: 'x', tid },
      { t: 'enroll', node: 'x', mac },
      { t: 'enroll', node: '../etc', tid, mac },
      { t: 'enroll', node: 'x', tid: 7, mac },
      { t: 'enroll', node: 'x', tid, mac: new Uint8Array(32) },
      { t: 'grant', service: '', tid, mac },
      { t: 'grant', service: 'a'.repeat(300), tid, mac },
      { t: 'enroll', node: 'x', tid: 'y'.repeat(600), mac },
      { t: 'enroll', node: 'x', tid, mac: `${mac}A` },
      { t: 'enroll', node: 'x', tid: tid.slice(1), mac },
      { t: 'enroll', node: 'x', tid: `${tid.slice(1)}=`, mac },
      { t: 'enroll', service: 'x', tid, mac },
      { t: 'enroll', node: 'x', tid, mac, extra: 1 },
      { t: 'join', node: 'x', tid, mac },
    ]
    for (const req of bad)
      expect(await c.send('P', req)).toMatchObject({ ok: false, code: BadForwardRequestError.code })
    expect(c.server.stats.malformed).toBe(bad.length)
    expect(c.server.stats.enrollDenied + c.server.stats.grantDenied).toBe(0)
    expect(c.proposed).toEqual([])
  })

  it('refuses the old shape carrying a token secret as malformed (not read, even a valid token)', async () => {
    const c = cluster()
    await c.setup()
    const proof = enrollmentProof({ t: 'enroll', node: 'web-1', token: WEB1 }, 'WebPeer', LEADER)
    for (const req of [
      { t: 'enroll', node: 'web-1', token: WEB1 },
      { t: 'enroll', node: 'anything', token: MGMT },
      { t: 'grant', service: 'api', token: SVC },
      { ...proof, token: WEB1 },
    ])
      expect(await c.send('WebPeer', req)).toMatchObject({ ok: false, code: BadForwardRequestError.code })
    expect(c.server.stats).toMatchObject({ malformed: 4, enrolled: 0, enrollDenied: 0, grantDenied: 0 })
    expect(c.proposed).toEqual([])
    expect(c.store.acl.enrollment('WebPeer')).toBeUndefined()
  })

  it('refuses an unknown tid or a mac that does not verify as permission denied: nothing proposed, counted', async () => {
    const c = cluster()
    await c.setup()
    const before = snapshotHex(c.store)
    const honest = enrollmentProof({ t: 'enroll', node: 'web-1', token: WEB1 }, 'WebPeer', LEADER)
    const mac = (secret: string, t: 'enroll' | 'grant', name: string, requester: string, recipient: string) =>
      enrollmentMac(secret, { t, name, requester, recipient }).toString('base64url')
    const forged: [string, unknown][] = [
      ['an unknown tid', { ...honest, tid: tokenLookupId(id(999)) }],
      ['a tid that is not a hash of any secret', { ...honest, tid: 'A'.repeat(43) }],
      [
        'the plain SHA-256 of the secret as tid',
        { ...honest, tid: createHash('sha256').update(WEB1).digest('base64url') },
      ],
      ['a mac of zeros', { ...honest, mac: Buffer.alloc(32).toString('base64url') }],
      [
        "another token's mac under web-1's tid",
        { ...honest, mac: mac(MGMT, 'enroll', 'web-1', 'WebPeer', LEADER) },
      ],
      ["web-1's mac under the management token's tid", { ...honest, tid: tokenLookupId(MGMT) }],
      ['a mac for another node name', { ...honest, node: 'db-1' }],
      ['a mac for another requester', { ...honest, mac: mac(WEB1, 'enroll', 'web-1', 'OtherPeer', LEADER) }],
      ['a mac for another recipient', { ...honest, mac: mac(WEB1, 'enroll', 'web-1', 'WebPeer', 'L2') }],
      ['a mac keyed by the tid', { ...honest, mac: mac(honest.tid, 'enroll', 'web-1', 'WebPeer', LEADER) }],
    ]
    for (const [what, req] of forged)
      expect(await c.send('WebPeer', req), what).toMatchObject({
        ok: false,
        code: PermissionDeniedError.code,
      })
    // A grant proof presented as an enrollment (and the other way round) does not verify either.
    const grant = enrollmentProof({ t: 'grant', service: 'web-1', token: MGMT }, 'WebPeer', LEADER)
    expect(
      await c.send('WebPeer', { t: 'enroll', node: 'web-1', tid: grant.tid, mac: grant.mac }),
    ).toMatchObject({
      ok: false,
      code: PermissionDeniedError.code,
    })
    expect(c.server.stats).toMatchObject({ enrollDenied: forged.length + 1, enrolled: 0, malformed: 0 })
    expect(c.server.lastDenied).toMatchObject({ from: 'WebPeer', what: 'enroll web-1' })
    expect(c.proposed).toEqual([])
    expect(snapshotHex(c.store)).toBe(before)
    // The honest proof still works afterwards.
    expect(await c.send('WebPeer', honest)).toMatchObject({ ok: true })
  })

  it('an unknown tid is "retry" (not counted) while the leader\'s ACL state catches up', async () => {
    let replicated = false
    const c = cluster({ replicated: () => replicated })
    await c.setup()
    const req = enrollmentProof({ t: 'enroll', node: 'evil', token: id(999) }, 'P', LEADER)
    expect(await c.send('P', req)).toMatchObject({ ok: false, code: AclNotReadyError.code })
    expect(c.server.stats.enrollDenied).toBe(0)
    replicated = true
    expect(await c.send('P', req)).toMatchObject({ ok: false, code: PermissionDeniedError.code })
    expect(c.server.stats.enrollDenied).toBe(1)
  })
})

describe('a key holder asked by a joining agent learns nothing it can use (issue #12)', () => {
  /**
   * A joining agent (no leader known) finds the leader through gossip members; the first it asks
   * is `EvilPeer`, a member with the cluster key and nothing else, which captures what it is sent
   * and answers "not the leader, ask LeaderPeer" as an honest member would. A new finder per
   * request, so that each one starts at EvilPeer.
   */
  function joining(c: ReturnType<typeof cluster>) {
    const captured: Uint8Array[] = []
    const asked: string[] = []
    const finder = () =>
      new LeaderFinder(
        {
          self: 'JoinerPeer',
          node: { isLeader: () => false, leader: () => undefined },
          members: {
            members: () => ['JoinerPeer', 'EvilPeer', LEADER].map((id) => ({ id, status: 'alive' as const })),
          },
          channel: {
            request: async (to, bytes, { signal }) => {
              asked.push(to)
              if (to === 'EvilPeer') {
                captured.push(bytes.slice())
                return pack(refusal(NOT_LEADER_CODE, 'not the leader', LEADER))
              }
              return c.server.serve('JoinerPeer', unpackRecord(bytes), signal ?? new AbortController().signal)
            },
          },
          local: async () => refusal('X', 'not here'),
          clock: systemClock,
        },
        { attemptTimeoutMs: 1_000, retryPauseMs: 1 },
      )
    const ask = (req: EnrollmentRequest) => finder().ask(req, { signal: AbortSignal.timeout(5_000) })
    return { ask, captured, asked }
  }

  it('the enrollment and grant succeed through the member; its bytes hold no secret and replay nowhere', async () => {
    const c = cluster()
    await c.setup()
    const j = joining(c)
    expect(await j.ask({ t: 'enroll', node: 'web-1', token: WEB1 })).toMatchObject({ ok: true })
    expect(await j.ask({ t: 'grant', service: 'api', token: SVC })).toMatchObject({ ok: true })
    expect(j.asked).toEqual(['EvilPeer', LEADER, 'EvilPeer', LEADER])
    expect(c.store.acl.enrollment('JoinerPeer')).toMatchObject({ node: 'web-1', voter: false })
    expect(c.store.acl.serviceGrants('JoinerPeer')).toMatchObject([{ service: 'api', accessorId: id(30) }])
    expect(j.captured).toHaveLength(2)

    // What the member saw: no secret anywhere in the bytes, no token field; only tid and mac.
    for (const bytes of j.captured) {
      for (const secret of [WEB1, SVC, MGMT, VOTER]) {
        expect(Buffer.from(bytes).includes(Buffer.from(secret, 'utf8'))).toBe(false)
        expect(Buffer.from(bytes).includes(Buffer.from(secret.replace(/-/g, ''), 'utf8'))).toBe(false)
      }
      const o = unpackRecord(bytes)!
      expect(Object.keys(o).sort()).toEqual(
        o['t'] === 'enroll' ? ['mac', 'node', 't', 'tid'] : ['mac', 'service', 't', 'tid'],
      )
      // The proof was made for the member asked, not for the leader.
      const req = parseEnrollmentRequest(o)!
      const name = req.t === 'enroll' ? req.node : req.service
      const secret = req.t === 'enroll' ? WEB1 : SVC
      expect(
        verifyEnrollmentMac(
          secret,
          { t: req.t, name, requester: 'JoinerPeer', recipient: 'EvilPeer' },
          req.mac,
        ),
      ).toBe(true)
    }

    // The attacker replays what it captured to the real leader: from its own peer id, and as if
    // from the joining agent (the recipient is still EvilPeer). Both refused, nothing proposed.
    const before = snapshotHex(c.store)
    c.proposed.length = 0
    const [enroll, grant] = j.captured.map((b) => unpackRecord(b))
    for (const from of ['EvilPeer', 'JoinerPeer']) {
      expect(await c.send(from, enroll)).toMatchObject({ ok: false, code: PermissionDeniedError.code })
      expect(await c.send(from, grant)).toMatchObject({ ok: false, code: PermissionDeniedError.code })
    }
    // Nor could it use the proof once it leads itself (requester JoinerPeer is not EvilPeer).
    const evilLeader = c.serverOn('EvilPeer')
    expect(await c.send('EvilPeer', enroll, evilLeader)).toMatchObject({
      ok: false,
      code: PermissionDeniedError.code,
    })
    expect(c.server.stats).toMatchObject({ enrolled: 1, granted: 1, enrollDenied: 2, grantDenied: 2 })
    expect(evilLeader.stats.enrollDenied).toBe(1)
    expect(c.server.lastDenied?.from).toBe('JoinerPeer')
    expect(c.proposed).toEqual([])
    expect(snapshotHex(c.store)).toBe(before)
    expect(c.store.acl.enrollment('EvilPeer')).toBeUndefined()
  })

  it('a voter token: the member cannot use the proof to enroll itself as a voter', async () => {
    const c = cluster()
    await c.setup()
    const j = joining(c)
    expect(await j.ask({ t: 'enroll', node: 'db-1', token: VOTER })).toMatchObject({ ok: true })
    expect(c.store.acl.enrollment('JoinerPeer')?.voter).toBe(true)
    const captured = unpackRecord(j.captured[0]!)
    expect(Buffer.from(j.captured[0]!).includes(Buffer.from(VOTER, 'utf8'))).toBe(false)
    c.proposed.length = 0
    expect(await c.send('EvilPeer', captured)).toMatchObject({ ok: false, code: PermissionDeniedError.code })
    expect(c.proposed).toEqual([])
    expect(c.store.acl.enrollment('EvilPeer')).toBeUndefined()
  })
})

describe('EnrollmentServer: honest requests', () => {
  it('enrolls the authenticated sender with its token: not a voter unless the token says so; idempotent', async () => {
    const c = cluster()
    await c.setup()
    const r = await c.ask('WebPeer', { t: 'enroll', node: 'web-1', token: WEB1 })
    expect(r).toMatchObject({ ok: true })
    expect(c.store.acl.enrollment('WebPeer')).toMatchObject({
      node: 'web-1',
      voter: false,
      accessorId: id(10),
    })
    expect(c.proposed).toHaveLength(1)
    // Asked again (a retry): answered from the state, nothing proposed.
    expect(await c.ask('WebPeer', { t: 'enroll', node: 'web-1', token: WEB1 })).toEqual(r)
    expect(c.proposed).toHaveLength(1)
    await c.ask('DbPeer', { t: 'enroll', node: 'db-1', token: VOTER })
    expect(c.store.acl.enrollment('DbPeer')?.voter).toBe(true)
    await c.ask('MgmtPeer', { t: 'enroll', node: 'anything', token: MGMT })
    expect(c.store.acl.enrollment('MgmtPeer')?.voter).toBe(true)
    expect(c.server.stats).toMatchObject({ enrolled: 3, enrollDenied: 0 })
  })

  it('grants a service with a token that grants service:write; not needed when the enrollment token covers it', async () => {
    const c = cluster()
    await c.setup()
    await c.ask('WebPeer', { t: 'enroll', node: 'web-1', token: WEB1 })
    await c.ask('MgmtPeer', { t: 'enroll', node: 'm', token: MGMT })
    c.proposed.length = 0
    const r = await c.ask('WebPeer', { t: 'grant', service: 'api', token: SVC })
    expect(r).toMatchObject({ ok: true })
    expect(c.store.acl.serviceGrants('WebPeer')).toMatchObject([{ service: 'api', accessorId: id(30) }])
    expect(await c.ask('WebPeer', { t: 'grant', service: 'api', token: SVC })).toEqual(r)
    expect(c.proposed).toHaveLength(1)
    expect(await c.ask('MgmtPeer', { t: 'grant', service: 'api', token: SVC })).toEqual({
      ok: true,
      index: 0,
    })
    expect(c.proposed).toHaveLength(1)
  })

  it("the leader's own request is answered in-process with the secret (no wire, no proof)", async () => {
    const c = cluster()
    await c.setup()
    const signal = new AbortController().signal
    expect(await c.server.answer(LEADER, { t: 'enroll', node: 'lead', token: MGMT }, signal)).toMatchObject({
      ok: true,
    })
    expect(c.store.acl.enrollment(LEADER)).toMatchObject({ node: 'lead', voter: true })
    expect(await c.server.answer(LEADER, { t: 'enroll', node: 'x', token: id(999) }, signal)).toMatchObject({
      ok: false,
      code: PermissionDeniedError.code,
    })
  })

  it('finds tokens created or deleted after the first request (the lookup follows ACL changes)', async () => {
    const c = cluster()
    await c.setup()
    const NEW = id(41)
    expect(await c.ask('NewPeer', { t: 'enroll', node: 'new-1', token: NEW })).toMatchObject({
      code: PermissionDeniedError.code,
    })
    await c.apply({
      op: 'acl.token.upsert',
      mode: 'create',
      accessorId: id(40),
      secretId: NEW,
      createTime: T,
      nodeIdentities: [{ nodeName: 'new-1', datacenter: 'dc1' }],
    })
    expect(await c.ask('NewPeer', { t: 'enroll', node: 'new-1', token: NEW })).toMatchObject({ ok: true })
    await c.apply({ op: 'acl.token.delete', accessorId: id(10) })
    expect(await c.ask('WebPeer', { t: 'enroll', node: 'web-1', token: WEB1 })).toMatchObject({
      code: PermissionDeniedError.code,
    })
  })

  it('a non-leader answers "not the leader" naming the leader; before bootstrap it answers "retry"', async () => {
    const c = cluster()
    await c.setup()
    c.state.leading = false
    expect(await c.ask('P', { t: 'enroll', node: 'web-1', token: WEB1 })).toMatchObject({
      ok: false,
      code: NOT_LEADER_CODE,
      leader: 'L',
    })
    expect(c.server.stats).toMatchObject({ enrollDenied: 0, malformed: 0 })
    expect(c.proposed).toEqual([])
    const fresh = cluster({ bootstrapped: false })
    expect(await fresh.ask('P', { t: 'enroll', node: 'web-1', token: WEB1 })).toMatchObject({
      ok: false,
      code: AclNotReadyError.code,
    })
    expect(fresh.server.stats.enrollDenied).toBe(0)
  })
})

describe('the enrollment commands never travel as a forwarded write', () => {
  const raw: AclCommandInput[] = [
    { op: 'acl.node.enroll', peerId: 'EvilPeer', node: 'evil', voter: true, accessorId: FOUNDER_ACCESSOR_ID },
    { op: 'acl.service.grant', peerId: 'EvilPeer', service: 'db', accessorId: id(100) },
  ]
  it.each(raw)('refuses a raw forwarded $op (not forwardable): nothing proposed, counted', async (cmd) => {
    const c = cluster()
    await c.setup()
    const before = snapshotHex(c.store)
    const server = new ForwardedWriteServer(
      { node: () => c.node, clock: new VirtualClock(), authorize: () => undefined },
      { attemptTimeoutMs: 1_000, maxCommandBytes: 1 << 20 },
    )
    const reply = unpackRecord(
      await server.serve(
        pack({ t: 'write', cmd, clientId: 'evil.1', seq: 1, token: MGMT }),
        new AbortController().signal,
      ),
    )!
    expect(reply['index']).toBe(0)
    expect(reply['result']).toMatchObject({ ok: false, code: PolicyErrorCodes.notForwardable })
    expect(server.stats.notForwardable).toBe(1)
    expect(c.proposed).toEqual([])
    expect(snapshotHex(c.store)).toBe(before)
  })

  it.each(raw)(
    'RaftModule.write refuses $op even on the leader (only the enrollment server proposes it)',
    async (cmd) => {
      const c = cluster()
      await c.setup()
      const clock = new VirtualClock()
      const rpc = new LeaderRpc(
        { leader: c.node, channel: { request: async () => new Uint8Array() }, clock },
        { attemptTimeoutMs: 1_000, retryPauseMs: 10 },
      )
      const f = new WriteForwarder(
        { rpc, node: c.node, clock, log },
        { clientPrefix: 'p.', signatureRetries: 1, retryPauseMs: 1 },
      )
      const r = await f.write(cmd as never, { signal: new AbortController().signal })
      expect(r).toMatchObject({ index: 0, result: { ok: false, code: PolicyErrorCodes.notForwardable } })
      expect(c.proposed).toEqual([])
    },
  )

  it('an unenroll is an operator write (operator:write, checked on the route and on the leader)', () => {
    expect(commandPermission({ op: 'acl.node.unenroll', node: 'web-1' })?.[1]).toEqual({
      permission: 'operator:write',
    })
  })
})

describe('foundersToEnroll', () => {
  const names: Record<string, string> = { A: 'a', B: 'b', C: 'c', D: 'd' }
  const cases: [string, string[], AclCommandInput[], string[]][] = [
    ['every voter without an enrollment, in id order', ['C', 'A'], [], ['A', 'C']],
    [
      'not one already enrolled, nor a revoked one',
      ['A', 'B', 'C'],
      [
        { op: 'acl.node.enroll', peerId: 'A', node: 'a', voter: false, accessorId: FOUNDER_ACCESSOR_ID },
        { op: 'acl.node.enroll', peerId: 'B', node: 'b', voter: true, accessorId: FOUNDER_ACCESSOR_ID },
        { op: 'acl.node.unenroll', node: 'b' },
      ],
      ['C'],
    ],
    [
      'not one whose name another peer holds, nor one gossip does not name',
      ['C', 'X'],
      [{ op: 'acl.node.enroll', peerId: 'D', node: 'c', voter: true, accessorId: FOUNDER_ACCESSOR_ID }],
      [],
    ],
  ]
  it.each(cases)('%s', (_w, voters, setup, want) => {
    const store = new PolicyStore()
    setup.forEach((cmd, i) => {
      store.apply({ term: 1, index: i + 1, type: 'normal', data: encodePolicyCommand(cmd as never) })
    })
    const got = foundersToEnroll({ voters }, store.acl, (p) => names[p])
    expect(got.map((c) => (c.op === 'acl.node.enroll' ? c.peerId : ''))).toEqual(want)
    for (const c of got) expect(c).toMatchObject({ voter: true, accessorId: FOUNDER_ACCESSOR_ID })
  })
})

describe('LeaderFinder: an agent outside Raft finds the leader through gossip members', () => {
  it('asks members in turn and follows "not the leader, ask X" to the leader', async () => {
    const asked: string[] = []
    const replies: Record<string, EnrollmentReply> = {
      a: refusal(NOT_LEADER_CODE, 'not the leader'),
      b: refusal(NOT_LEADER_CODE, 'not the leader', 'c'),
      c: {
        ok: true,
        index: 7,
        ack: enrollmentMac(
          MGMT,
          { t: 'enroll', name: 'x', requester: 'x', recipient: 'c' },
          ENROLLMENT_ACK_DOMAIN,
        ).toString('base64url'),
      },
    }
    const finder = new LeaderFinder(
      {
        self: 'x',
        node: { isLeader: () => false, leader: () => undefined },
        members: {
          members: () =>
            ['x', 'c', 'a', 'b', 'd'].map((id) => ({ id, status: id === 'd' ? 'dead' : 'alive' })),
        },
        channel: {
          request: async (to, bytes) => {
            asked.push(to)
            // Each member gets a proof made for it, never the secret.
            const req = parseEnrollmentRequest(unpackRecord(bytes))!
            expect(
              verifyEnrollmentMac(MGMT, { t: 'enroll', name: 'x', requester: 'x', recipient: to }, req.mac),
            ).toBe(true)
            expect(req.tid).toBe(tokenLookupId(MGMT))
            return pack(replies[to]!)
          },
        },
        local: async () => refusal('X', 'not here'),
        clock: systemClock,
      },
      { attemptTimeoutMs: 1_000, retryPauseMs: 1 },
    )
    const req: EnrollmentRequest = { t: 'enroll', node: 'x', token: MGMT }
    expect(await finder.ask(req, { signal: AbortSignal.timeout(5_000) })).toMatchObject({
      ok: true,
      index: 7,
    })
    expect(asked).toEqual(['a', 'b', 'c'])
  })

  it('believes a "yes" only with the leader\'s ack: a key holder\'s yes is ignored and proves nobody', async () => {
    const ack = (secret: string, recipient: string) =>
      enrollmentMac(
        secret,
        { t: 'enroll', name: 'x', requester: 'x', recipient },
        ENROLLMENT_ACK_DOMAIN,
      ).toString('base64url')
    // a: says yes with no ack; b: an ack made with a secret it guessed; c: replays the leader's
    // ack made for d; d: the leader.
    const replies: Record<string, EnrollmentReply> = {
      a: { ok: true, index: 1 },
      b: { ok: true, index: 1, ack: ack(id(999), 'b') },
      c: { ok: true, index: 1, ack: ack(MGMT, 'd') },
      d: { ok: true, index: 9, ack: ack(MGMT, 'd') },
    }
    const asked: string[] = []
    const proven: string[] = []
    const finder = new LeaderFinder(
      {
        self: 'x',
        node: { isLeader: () => false, leader: () => undefined },
        members: { members: () => ['a', 'b', 'c', 'd'].map((id) => ({ id, status: 'alive' as const })) },
        channel: {
          request: async (to) => {
            asked.push(to)
            return pack(replies[to]!)
          },
        },
        local: async () => refusal('X', 'not here'),
        proven: (peer) => proven.push(peer),
        clock: systemClock,
        log: pino({ level: 'silent' }),
      },
      { attemptTimeoutMs: 1_000, retryPauseMs: 1 },
    )
    const req: EnrollmentRequest = { t: 'enroll', node: 'x', token: MGMT }
    expect(await finder.ask(req, { signal: AbortSignal.timeout(5_000) })).toMatchObject({
      ok: true,
      index: 9,
    })
    expect(asked).toEqual(['a', 'b', 'c', 'd'])
    expect(proven).toEqual(['d'])
    expect(finder.unproven).toBe(3)
  })

  it('returns a permission refusal at once, and throws NoLeaderError when nobody answers in time', async () => {
    const finder = (reply: EnrollmentReply | undefined) =>
      new LeaderFinder(
        {
          self: 'x',
          node: { isLeader: () => false, leader: () => 'L' },
          members: { members: () => [] },
          channel: {
            request: async () => {
              if (reply === undefined) throw new Error('unreachable')
              return pack(reply)
            },
          },
          local: async () => refusal('X', 'not here'),
          clock: systemClock,
        },
        { attemptTimeoutMs: 100, retryPauseMs: 5 },
      )
    const req: EnrollmentRequest = { t: 'enroll', node: 'x', token: MGMT }
    const denied = refusal(PermissionDeniedError.code, 'no')
    expect(await finder(denied).ask(req, { signal: AbortSignal.timeout(5_000) })).toEqual(denied)
    await expect(finder(undefined).ask(req, { signal: AbortSignal.timeout(50) })).rejects.toMatchObject({
      code: 'PEERMESH_ERR_NO_LEADER',
    })
  })
})

describe('AgentEnrollment', () => {
  it('asks until the leader accepts (backing off after refusals), then stops asking', async () => {
    const answers: EnrollmentReply[] = [
      refusal(PermissionDeniedError.code, 'lacks node:write'),
      refusal(PermissionDeniedError.code, 'lacks node:write'),
      { ok: true, index: 4 },
    ]
    let calls = 0
    const e = new AgentEnrollment(
      {
        finder: {
          ask: async (req) => {
            expect(req).toEqual({ t: 'enroll', node: 'web-1', token: WEB1 })
            return answers[Math.min(calls++, answers.length - 1)]!
          },
        },
        clock: systemClock,
        log,
      },
      { node: 'web-1', token: WEB1, roundTimeoutMs: 1_000, minBackoffMs: 1, maxBackoffMs: 4 },
    )
    e.start()
    for (let i = 0; i < 200 && !e.confirmed; i++) await new Promise((r) => setTimeout(r, 5))
    expect(e.confirmed).toBe(true)
    await e.stop()
    expect(calls).toBe(3)
  })

  it('asks once more when told to reprove (a new leader must prove itself), never twice at once', async () => {
    let calls = 0
    let release: () => void = () => {}
    const e = new AgentEnrollment(
      {
        finder: {
          ask: async () => {
            calls++
            // The second ask waits until the test releases it.
            if (calls === 2) await new Promise<void>((r) => (release = r))
            return { ok: true, index: 4 }
          },
        },
        clock: systemClock,
        log,
      },
      { node: 'web-1', token: WEB1, roundTimeoutMs: 1_000, minBackoffMs: 1, maxBackoffMs: 4 },
    )
    e.start()
    await vi.waitFor(() => expect(e.confirmed).toBe(true))
    expect(calls).toBe(1)
    e.reprove()
    await vi.waitFor(() => expect(calls).toBe(2))
    e.reprove() // asking now: no second round beside it
    e.reprove()
    release()
    await e.stop()
    expect(calls).toBe(2)
    e.reprove() // stopped: nothing
    expect(calls).toBe(2)
  })
})
