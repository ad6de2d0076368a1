import { describe, expect, it } from 'vitest'
import { CaNotReadyError, NotSigningLeaderError } from '../../../src/identity/connect/errors.ts'
import { ConnectRpc, decodeRotateReply, decodeSignReply } from '../../../src/node/connect/connect-rpc.ts'
import { pack } from '../../../src/common/msgpack.ts'
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
