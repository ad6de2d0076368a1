import { describe, expect, it } from 'vitest'
import { InvalidServiceNameError } from '../../../src/identity/ca/errors.ts'
import { CaNotReadyError, NotSigningLeaderError } from '../../../src/identity/connect/errors.ts'
import {
  ConnectRpc,
  decodeRotateReply,
  decodeSignReply,
  SIGN_RATE_LIMITED_PAUSE_MS,
} from '../../../src/node/connect/connect-rpc.ts'
import {
  SignRateLimitedError,
  SignRateLimiter,
  takeToken,
} from '../../../src/node/connect/sign-rate-limit.ts'
import { pack, unpackRecord } from '../../../src/common/msgpack.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

describe('signing RPC replies (one decoder)', () => {
  it('reads a signed leaf, keeping only string intermediates', () => {
    expect(decodeSignReply(pack({ ok: true, certPem: 'C', intermediatesPem: ['A', 3] }))).toEqual({
      ok: true,
      certPem: 'C',
      intermediatesPem: ['A'],
    })
    expect(decodeSignReply(pack({ ok: true, certPem: 'C' }))).toEqual({
      ok: true,
      certPem: 'C',
      intermediatesPem: [],
    })
  })

  it('reads a coded refusal, with an empty message when there is none', () => {
    expect(decodeSignReply(pack({ ok: false, code: 'PEERMESH_ERR_X' }))).toEqual({
      ok: false,
      code: 'PEERMESH_ERR_X',
      message: '',
    })
    expect(decodeRotateReply(pack({ ok: false, code: 'PEERMESH_ERR_Y', message: 'm' }))).toEqual({
      ok: false,
      code: 'PEERMESH_ERR_Y',
      message: 'm',
    })
  })

  it('reads a started rotation', () => {
    expect(decodeRotateReply(pack({ ok: true, activeRootId: 'b', previousRootId: 'a' }))).toEqual({
      ok: true,
      activeRootId: 'b',
      previousRootId: 'a',
    })
  })

  it('rejects anything else', () => {
    for (const bytes of [
      new Uint8Array([0xc1]),
      pack(42),
      pack({ ok: true }),
      pack({ ok: false }),
      pack([1]),
    ]) {
      expect(decodeSignReply(bytes)).toBeUndefined()
      expect(decodeRotateReply(bytes)).toBeUndefined()
    }
  })
})

describe('ConnectRpc as a client (through the leader-RPC helper)', () => {
  /** A follower whose leader answers `replies` in turn; `leader` undefined: none known. */
  function client(replies: Uint8Array[], opts: { leader?: string | undefined; leading?: boolean } = {}) {
    const clock = new VirtualClock(0)
    const asked: { to: string; at: number }[] = []
    const signedHere: string[] = []
    const state = { leader: 'leader' in opts ? opts.leader : 'L' }
    const rpc = new ConnectRpc({
      leader: {
        isLeader: () => opts.leading === true,
        leaderId: () => (opts.leading === true ? 'self' : state.leader),
        selfId: () => 'self',
      },
      clock,
      channel: {
        request: async (to) => {
          asked.push({ to, at: clock.now() })
          const r = replies.shift()
          if (r === undefined) throw new Error('connection reset')
          return r
        },
      },
      handlers: {
        signFor: async (requester, service) => {
          signedHere.push(`${requester}:${String(service)}`)
          return { ok: true, certPem: 'LOCAL', intermediatesPem: [] }
        },
        rotate: async () => ({ activeRootId: 'n', previousRootId: 'o' }),
        authorizeRotate: () => undefined,
      },
    })
    return { rpc, clock, asked, signedHere, state }
  }

  async function drive<T>(clock: VirtualClock, p: Promise<T>): Promise<T> {
    let settled = false
    p.then(
      () => (settled = true),
      () => (settled = true),
    )
    for (let i = 0; i < 100 && !settled; i++) {
      await new Promise((r) => setImmediate(r))
      clock.advance(50)
    }
    return p
  }

  it('asks again after "not the leader", a lost reply and "CA not ready", then returns the leaf', async () => {
    const { rpc, clock, asked } = client([
      pack({ ok: false, code: NotSigningLeaderError.code, message: 'x' }),
      new Uint8Array([0xc1]),
      pack({ ok: false, code: CaNotReadyError.code, message: 'no CA yet' }),
      pack({ ok: true, certPem: 'CERT', intermediatesPem: ['I'] }),
    ])
    const reply = await drive(clock, rpc.sign('web', 'CSR', { signal: AbortSignal.timeout(5_000) }))
    expect(reply).toEqual({ ok: true, certPem: 'CERT', intermediatesPem: ['I'] })
    expect(asked.map((a) => a.to)).toEqual(['L', 'L', 'L', 'L'])
  })

  it('returns any other refusal at once', async () => {
    const { rpc, clock, asked } = client([
      pack({ ok: false, code: 'PEERMESH_ERR_SERVICE_NOT_REGISTERED', message: 'm' }),
    ])
    const reply = await drive(clock, rpc.sign('web', 'CSR', { signal: AbortSignal.timeout(5_000) }))
    expect(reply).toMatchObject({ ok: false, code: 'PEERMESH_ERR_SERVICE_NOT_REGISTERED' })
    expect(asked).toHaveLength(1)
  })

  it('signs here when this agent leads, without the network', async () => {
    const { rpc, clock, asked, signedHere } = client([], { leading: true })
    const reply = await drive(clock, rpc.sign('web', 'CSR', { signal: AbortSignal.timeout(5_000) }))
    expect(reply).toMatchObject({ ok: true, certPem: 'LOCAL' })
    expect(signedHere).toEqual(['self:web'])
    expect(asked).toHaveLength(0)
  })

  it('waits while no leader is known, and ends with PEERMESH_ERR_STOPPING once stopped', async () => {
    const { rpc, clock, asked } = client([], { leader: undefined })
    const p = rpc.sign('web', 'CSR', { signal: AbortSignal.timeout(5_000) })
    await drive(clock, Promise.race([p, new Promise((r) => setImmediate(r))]))
    await rpc.stop()
    await expect(drive(clock, p)).rejects.toMatchObject({ code: 'PEERMESH_ERR_STOPPING' })
    expect(asked).toHaveLength(0)
  })

  it('starts a rotation on the leader', async () => {
    const { rpc, clock } = client([pack({ ok: true, activeRootId: 'b', previousRootId: 'a' })])
    const reply = await drive(clock, rpc.rotate({ signal: AbortSignal.timeout(5_000) }))
    expect(reply).toEqual({ ok: true, activeRootId: 'b', previousRootId: 'a' })
  })
})

describe('per-requester CSR rate limit on the leader (#13)', () => {
  const s = { burst: 3, perSecond: 2 }

  it('takeToken: a full bucket gives `burst` at once, then `perSecond`; says when to retry', () => {
    let b = takeToken(undefined, 0, s)
    expect(b).toMatchObject({ ok: true, bucket: { tokens: 2, at: 0 } })
    b = takeToken(b.bucket, 0, s)
    b = takeToken(b.bucket, 0, s)
    expect(b.ok).toBe(true)
    const refused = takeToken(b.bucket, 0, s)
    expect(refused).toMatchObject({ ok: false, retryInMs: 500 })
    expect(takeToken(refused.bucket, 250, s)).toMatchObject({ ok: false, retryInMs: 250 })
    expect(takeToken(refused.bucket, 500, s).ok).toBe(true)
    // Refills to `burst`, no further.
    expect(takeToken({ tokens: 0, at: 0 }, 60_000, s).bucket.tokens).toBe(2)
    // A clock step back neither adds nor removes tokens.
    expect(takeToken({ tokens: 1.5, at: 1_000 }, 0, s)).toMatchObject({ ok: true, bucket: { tokens: 0.5 } })
  })

  it('SignRateLimiter: one bucket per requester, refusals counted, memory bounded', () => {
    const l = new SignRateLimiter({ ...s, maxRequesters: 2 })
    expect([0, 0, 0, 0].map((t) => l.take('A', t))).toEqual([undefined, undefined, undefined, 500])
    expect(l.take('B', 0)).toBeUndefined() // A's flood does not touch B
    expect(l.stats.limited).toBe(1)
    // A third requester: B's bucket is not full yet, A's neither; the oldest (A) is forgotten.
    expect(l.take('C', 0)).toBeUndefined()
    expect(l.size).toBe(2)
    expect(() => new SignRateLimiter({ burst: 0, perSecond: 1, maxRequesters: 1 })).toThrow(RangeError)
  })

  function leader(opts: { leading: boolean }) {
    const clock = new VirtualClock(0)
    const signed: string[] = []
    const rpc = new ConnectRpc({
      leader: { isLeader: () => opts.leading, leaderId: () => 'self', selfId: () => 'self' },
      clock,
      channel: { request: async () => new Uint8Array() },
      signRateLimit: { burst: 2, perSecond: 1, maxRequesters: 100 },
      handlers: {
        signFor: async (requester, service) => {
          signed.push(`${requester}:${String(service)}`)
          return { ok: true, certPem: 'C', intermediatesPem: [] }
        },
        rotate: async () => ({ activeRootId: 'n', previousRootId: 'o' }),
        authorizeRotate: () => undefined,
      },
    })
    const ask = async (from: string) =>
      decodeSignReply(await rpc.serveRequest(from, pack({ service: 'web', csr: 'CSR' })))
    return { rpc, clock, signed, ask }
  }

  it('the leader rotates the CA only for a request whose token grants operator:write (a key holder without one changes nothing)', async () => {
    const clock = new VirtualClock(0)
    const rotations: string[] = []
    const rpc = new ConnectRpc({
      leader: { isLeader: () => true, leaderId: () => 'self', selfId: () => 'self' },
      clock,
      channel: { request: async () => new Uint8Array() },
      handlers: {
        signFor: async () => ({ ok: true, certPem: 'C', intermediatesPem: [] }),
        rotate: async () => {
          rotations.push('rotated')
          return { activeRootId: 'n', previousRootId: 'o' }
        },
        authorizeRotate: (token) =>
          token === 'ops-secret'
            ? undefined
            : { code: 'PEERMESH_ERR_PERMISSION_DENIED', message: 'Permission denied: needs operator:write' },
      },
    })
    const serve = async (req: Record<string, unknown>) =>
      unpackRecord(await rpc.serveRequest('attacker', pack(req)))
    expect(await serve({ op: 'rotate' })).toMatchObject({ ok: false, code: 'PEERMESH_ERR_PERMISSION_DENIED' })
    expect(await serve({ op: 'rotate', token: 'guess' })).toMatchObject({ ok: false })
    expect(await serve({ op: 'rotate', token: 42 })).toMatchObject({ ok: false })
    expect(rotations).toEqual([]) // nothing changed
    expect(rpc.stats.rotationsDenied).toBe(2)
    expect(await serve({ op: 'rotate', token: 'ops-secret' })).toMatchObject({ ok: true, activeRootId: 'n' })
    expect(rotations).toEqual(['rotated'])
  })

  it('the leader refuses a requester past its limit with a coded refusal, counts it, and serves the others', async () => {
    const { rpc, clock, signed, ask } = leader({ leading: true })
    expect((await ask('A'))?.ok).toBe(true)
    expect((await ask('A'))?.ok).toBe(true)
    const refused = await ask('A')
    expect(refused).toMatchObject({ ok: false, code: SignRateLimitedError.code })
    expect(refused?.ok === false && refused.message).toMatch(
      /too many leaf requests from A; ask again in 1000 ms/,
    )
    expect((await ask('B'))?.ok).toBe(true)
    expect(signed).toEqual(['A:web', 'A:web', 'B:web']) // the refused one never reached the signer
    expect(rpc.stats.signRateLimited).toBe(1)
    clock.advance(1_000)
    expect((await ask('A'))?.ok).toBe(true)
  })

  it('a CSR for something that is no service name is refused before the handler and the rate limit', async () => {
    const { rpc, signed, ask } = leader({ leading: true })
    const bad: unknown[] = ['x'.repeat(30 * 1024), 'a'.repeat(64), 'Web', 'web.api', '-web', '', 42, null]
    const requests = [...bad.map((service) => ({ service, csr: 'CSR' })), { csr: 'CSR' }]
    for (const request of requests) {
      const reply = decodeSignReply(await rpc.serveRequest('A', pack(request)))
      expect(reply).toMatchObject({ ok: false, code: InvalidServiceNameError.code })
    }
    expect(signed).toEqual([]) // nothing reached the entitlement check or the signer
    expect(rpc.stats.signRateLimited).toBe(0)
    // The requester's bucket is untouched: its burst of two is still there.
    expect((await ask('A'))?.ok).toBe(true)
    expect((await ask('A'))?.ok).toBe(true)
    expect(signed).toEqual(['A:web', 'A:web'])
  })

  it('a follower does not spend tokens (its answer is "not the leader" from the handler)', async () => {
    const { rpc, ask } = leader({ leading: false })
    for (let i = 0; i < 5; i++) await ask('A')
    expect(rpc.stats.signRateLimited).toBe(0)
  })

  it('an agent refused for its rate asks again after the pause, and gets its leaf', async () => {
    const clock = new VirtualClock(0)
    const asked: number[] = []
    const replies = [
      pack({ ok: false, code: SignRateLimitedError.code, message: 'too many' }),
      pack({ ok: true, certPem: 'CERT', intermediatesPem: [] }),
    ]
    const rpc = new ConnectRpc({
      leader: { isLeader: () => false, leaderId: () => 'L', selfId: () => 'self' },
      clock,
      channel: {
        request: async () => {
          asked.push(clock.now())
          return replies.shift()!
        },
      },
      handlers: {
        signFor: async () => ({ ok: true, certPem: 'LOCAL', intermediatesPem: [] }),
        rotate: async () => ({ activeRootId: 'n', previousRootId: 'o' }),
        authorizeRotate: () => undefined,
      },
    })
    const p = rpc.sign('web', 'CSR', { signal: AbortSignal.timeout(5_000) })
    let settled = false
    void p.finally(() => (settled = true))
    for (let i = 0; i < 100 && !settled; i++) {
      await new Promise((r) => setImmediate(r))
      clock.advance(100)
    }
    expect(await p).toEqual({ ok: true, certPem: 'CERT', intermediatesPem: [] })
    expect(asked).toHaveLength(2)
    expect(asked[1]! - asked[0]!).toBeGreaterThanOrEqual(SIGN_RATE_LIMITED_PAUSE_MS)
  })
})
