import { describe, expect, it } from 'vitest'
import { decodeRotateReply, decodeSignReply } from '../../../src/node/connect/connect-rpc.ts'
import { pack } from '../../../src/raft/msgpack.ts'

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
