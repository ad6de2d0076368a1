import { describe, expect, it } from 'vitest'
import { LeafSigningRefusedError } from '../../../src/identity/connect/errors.ts'
import { LeafManager } from '../../../src/identity/connect/leaf-manager.ts'
import type { SignReply } from '../../../src/identity/connect/leaf-signer.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { FakeCa, FakeDirectory, quietLog } from './fakes.ts'

/** A leaf manager whose channel answers `replies` in turn (it does its own retrying). */
function setup(replies: SignReply[]) {
  const clock = new VirtualClock(0)
  const manager = new LeafManager({
    channel: { sign: async () => replies.shift()! },
    ca: new FakeCa(),
    directory: new FakeDirectory({}),
    selfId: () => 'self',
    clock,
    log: quietLog,
  })
  return { manager }
}

const refused = (code: string): SignReply => ({ ok: false, code, message: code })

describe('LeafManager.requestLeaf', () => {
  it('returns the signed leaf', async () => {
    const { manager } = setup([{ ok: true, certPem: 'CERT', intermediatesPem: ['X'] }])
    const leaf = await manager.requestLeaf('web', 'CSR', { signal: AbortSignal.timeout(5_000) })
    expect(leaf).toEqual({ certPem: 'CERT', intermediatesPem: ['X'] })
  })

  it('gives up on any other refusal, with the leader’s code', async () => {
    const { manager } = setup([refused('PEERMESH_ERR_SERVICE_NOT_REGISTERED')])
    const err = await manager
      .requestLeaf('web', 'CSR', { signal: AbortSignal.timeout(5_000) })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LeafSigningRefusedError)
    expect(err).toMatchObject({ code: 'PEERMESH_ERR_SERVICE_NOT_REGISTERED' })
  })

  it('stops asking once stopped', async () => {
    const { manager } = setup([])
    manager.stop()
    await expect(
      manager.requestLeaf('web', 'CSR', { signal: AbortSignal.timeout(5_000) }),
    ).rejects.toMatchObject({
      code: 'PEERMESH_ERR_STOPPING',
    })
  })
})
