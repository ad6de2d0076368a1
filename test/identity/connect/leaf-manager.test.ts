import { describe, expect, it } from 'vitest'
import {
  CaNotReadyError,
  LeafSigningRefusedError,
  NotSigningLeaderError,
} from '../../../src/identity/connect/errors.ts'
import { LeafManager } from '../../../src/identity/connect/leaf-manager.ts'
import type { SignReply } from '../../../src/identity/connect/leaf-signer.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { FakeCa, FakeDirectory, quietLog } from './fakes.ts'

/** A leaf manager whose channel answers `replies` in turn (undefined: no leader, no answer). */
function setup(replies: (SignReply | undefined)[]) {
  const clock = new VirtualClock(0)
  const asked: number[] = []
  const manager = new LeafManager({
    channel: {
      sign: async () => {
        asked.push(clock.now())
        return replies.shift()
      },
    },
    ca: new FakeCa(),
    directory: new FakeDirectory({}),
    selfId: () => 'self',
    clock,
    log: quietLog,
    retryPauseMs: 50,
  })
  return { manager, clock, asked }
}

/** Settles `p` while moving the virtual clock, one pause at a time. */
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

const refused = (code: string): SignReply => ({ ok: false, code, message: code })

describe('LeafManager.requestLeaf', () => {
  it('asks again, after a pause, while there is no leader, a follower answered or the CA is not ready', async () => {
    const { manager, clock, asked } = setup([
      undefined,
      refused(NotSigningLeaderError.code),
      refused(CaNotReadyError.code),
      { ok: true, certPem: 'CERT', intermediatesPem: ['X'] },
    ])
    const leaf = await drive(clock, manager.requestLeaf('web', 'CSR', { signal: AbortSignal.timeout(5_000) }))
    expect(leaf).toEqual({ certPem: 'CERT', intermediatesPem: ['X'] })
    expect(asked).toEqual([0, 50, 100, 150])
  })

  it('gives up on any other refusal, with the leader’s code', async () => {
    const { manager, clock } = setup([refused('PEERMESH_ERR_SERVICE_NOT_REGISTERED')])
    const err = await drive(
      clock,
      manager.requestLeaf('web', 'CSR', { signal: AbortSignal.timeout(5_000) }),
    ).catch((e: unknown) => e)
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
