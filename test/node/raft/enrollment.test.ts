import pino from 'pino'
import { describe, expect, it } from 'vitest'
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
  EnrollmentServer,
  foundersToEnroll,
  LeaderFinder,
  PermissionDeniedError,
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

/** A leader over a real policy store: every proposal is applied at the next index. */
function cluster(opts: { bootstrapped?: boolean } = {}) {
  const store = new PolicyStore()
  let index = 0
  const proposed: Uint8Array[] = []
  const state = { leading: true }
  const node: ProposingNode = {
    isLeader: () => state.leading,
    leader: () => (state.leading ? 'self' : 'L'),
    propose: async (data) => {
      proposed.push(data)
      const e = { term: 1, index: ++index, type: 'normal' as const, data }
      return { index: e.index, result: store.apply(e) }
    },
  }
  const apply = (cmd: AclCommandInput) =>
    node.propose(encodePolicyCommand(cmd as never), { signal: new AbortController().signal })
  const acl = new AclResolver(store.acl, { enabled: true, defaultPolicy: 'deny', anonymousRead: true })
  const server = new EnrollmentServer(
    { node: () => node, state: store.acl, acl, clock: new VirtualClock() },
    { attemptTimeoutMs: 1_000 },
  )
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
  const ask = async (from: string, req: unknown): Promise<EnrollmentReply> =>
    unpackRecord(
      await server.serve(from, unpackRecord(pack(req)), new AbortController().signal),
    ) as unknown as EnrollmentReply
  return { store, node, state, proposed, server, setup, ask, apply }
}

const snapshotHex = (s: PolicyStore) => Buffer.from(s.snapshot()).toString('hex')

describe('EnrollmentServer: from the attacker side (a peer with the cluster key, no token)', () => {
  const attacks: [string, unknown][] = [
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
    for (const bad of [
      { t: 'enroll', node: 'x' },
      { t: 'enroll', node: '../etc', token: MGMT },
      { t: 'enroll', node: 'x', token: 7 },
      { t: 'grant', service: '', token: MGMT },
      { t: 'grant', service: 'a'.repeat(300), token: MGMT },
      { t: 'enroll', node: 'x', token: 'y'.repeat(600) },
    ])
      expect(await c.ask('P', bad)).toMatchObject({ ok: false, code: BadForwardRequestError.code })
    expect(c.server.stats.malformed).toBe(6)
    expect(c.proposed).toEqual([])
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

  it('a non-leader answers "not the leader" naming the leader; before bootstrap it answers "retry"', async () => {
    const c = cluster()
    await c.setup()
    c.state.leading = false
    expect(await c.ask('P', { t: 'enroll', node: 'web-1', token: WEB1 })).toMatchObject({
      ok: false,
      code: NOT_LEADER_CODE,
      leader: 'L',
    })
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
      c: { ok: true, index: 7 },
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
          request: async (to) => {
            asked.push(to)
            return pack(replies[to]!)
          },
        },
        local: async () => refusal('X', 'not here'),
        clock: systemClock,
      },
      { attemptTimeoutMs: 1_000, retryPauseMs: 1 },
    )
    const req: EnrollmentRequest = { t: 'enroll', node: 'x', token: MGMT }
    expect(await finder.ask(req, { signal: AbortSignal.timeout(5_000) })).toEqual({ ok: true, index: 7 })
    expect(asked).toEqual(['a', 'b', 'c'])
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
})
