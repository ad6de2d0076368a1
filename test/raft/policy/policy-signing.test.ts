import { raftMessage } from '../message.ts'
import { beforeAll, describe, expect, it } from 'vitest'
import { createRootCa, type RootCa } from '../../../src/identity/index.ts'
import { parseRootRecords, rootRecordOf } from '../../../src/identity/connect/ca-state.ts'
import {
  openPolicyEntry,
  signPolicyEntry,
  signSnapshot,
  snapshotMessageTrusted,
  trustedRootsOf,
  verifySnapshot,
  withSnapshotSignature,
} from '../../../src/raft/policy/policy-signing.ts'
import { pack, unpack } from '../../../src/common/msgpack.ts'
import {
  encodePolicyCommand,
  type PolicyCommand,
  PolicyStore,
} from '../../../src/raft/policy/policy-store.ts'
import type { Entry, Message, RequestId } from '../../../src/raft/types.ts'

let root: RootCa
let rotated: RootCa
let foreign: RootCa
let ecdsa: RootCa

beforeAll(async () => {
  const nowMs = Date.now()
  root = await createRootCa({ trustDomain: 'test.peermesh', nowMs })
  rotated = await createRootCa({ trustDomain: 'test.peermesh', nowMs })
  foreign = await createRootCa({ trustDomain: 'test.peermesh', nowMs })
  ecdsa = await createRootCa({ trustDomain: 'test.peermesh', keyType: 'ecdsa-p256', nowMs })
})

const allow: PolicyCommand = { op: 'intention.upsert', source: 'web', destination: 'db', action: 'allow' }
const deny: PolicyCommand = { op: 'intention.upsert', source: 'web', destination: 'db', action: 'deny' }
const caRecord = (r: RootCa) => rootRecordOf(r, 0, [])
const setRoots = (...roots: RootCa[]): PolicyCommand => ({
  op: 'ca.setRoots',
  roots: roots.map(caRecord),
  activeRootId: roots.at(-1)!.id,
})

function entry(index: number, data: Uint8Array, requestId?: RequestId): Entry {
  return { term: 1, index, type: 'normal', data, ...(requestId !== undefined ? { requestId } : {}) }
}
const signed = (by: RootCa, index: number, cmd: PolicyCommand, requestId?: RequestId): Entry =>
  entry(index, signPolicyEntry(by, index, requestId, encodePolicyCommand(cmd)), requestId)

/** A store whose CA (root `root`) was created at index 1, trusted on first use. */
function storeWithCa(): PolicyStore {
  const s = new PolicyStore(undefined, { verifySignatures: true })
  expect(s.apply(entry(1, encodePolicyCommand(setRoots(root))))).toMatchObject({ ok: true })
  expect(s.requiresSignatures).toBe(true)
  return s
}

describe('signed policy entries', () => {
  it('applies an entry signed by the active root for its own index (Ed25519 and ECDSA P-256)', () => {
    const s = storeWithCa()
    expect(s.apply(signed(root, 2, allow))).toEqual({ ok: true, index: 2 })
    expect(s.getIntention('web', 'db')?.action).toBe('allow')
    expect(s.apply(signed(root, 3, setRoots(root, ecdsa)))).toMatchObject({ ok: true })
    expect(s.apply(signed(ecdsa, 4, deny))).toEqual({ ok: true, index: 4 })
    expect(s.getIntention('web', 'db')?.action).toBe('deny')
    expect(s.stats.signatureRejected).toBe(0)
  })

  it.each([
    ['unsigned, once the CA exists', () => entry(2, encodePolicyCommand(deny))],
    ['signed by a foreign CA', () => signed(foreign, 2, deny)],
    ['a genuine entry replayed at another index', () => ({ ...signed(root, 7, deny), index: 2 })],
    [
      'a genuine entry with its request id swapped',
      () => ({ ...signed(root, 2, deny, { clientId: 'a', seq: 1 }), requestId: { clientId: 'b', seq: 1 } }),
    ],
    [
      'a signature over another command',
      () => {
        // The `deny` command carried with the root's signature of `allow` at the same index.
        const good = signPolicyEntry(root, 2, undefined, encodePolicyCommand(allow))
        const env = signPolicyEntry(root, 2, undefined, encodePolicyCommand(deny))
        return entry(2, swapSig(env, good))
      },
    ],
    ['garbage bytes', () => entry(2, new Uint8Array([0xc1, 0xff, 0x00]))],
    ['an envelope with wrong field types', () => entry(2, encodePolicyCommand({ pm: 1, root: 5 } as never))],
  ])('refuses %s and leaves the state and dedupe table unchanged', (_what, make) => {
    const s = storeWithCa()
    expect(s.apply(signed(root, 2, allow, { clientId: 'b', seq: 1 }))).toMatchObject({ ok: true })
    const before = s.snapshot()
    const r = s.apply(make())
    expect(r).toMatchObject({ ok: false, code: 'PEERMESH_ERR_POLICY_SIGNATURE' })
    expect(s.getIntention('web', 'db')?.action).toBe('allow')
    expect(Buffer.from(s.snapshot()).equals(Buffer.from(before))).toBe(true)
    expect(s.stats.signatureRejected).toBe(1)
  })

  it('stops trusting a root dropped after a rotation; the new root signs from then on', () => {
    const s = storeWithCa()
    expect(s.apply(signed(root, 2, setRoots(root, rotated)))).toMatchObject({ ok: true })
    // Both trusted during the rotation.
    expect(s.apply(signed(root, 3, allow))).toMatchObject({ ok: true })
    expect(s.apply(signed(rotated, 4, deny))).toMatchObject({ ok: true })
    expect(s.apply(signed(rotated, 5, setRoots(rotated)))).toMatchObject({ ok: true })
    expect(s.apply(signed(root, 6, allow))).toMatchObject({ code: 'PEERMESH_ERR_POLICY_SIGNATURE' })
    expect(s.getIntention('web', 'db')?.action).toBe('deny')
  })

  it('accepts unsigned commands only before the first root, and never a signed one then', () => {
    const s = new PolicyStore(undefined, { verifySignatures: true })
    expect(s.apply(entry(1, encodePolicyCommand(allow)))).toMatchObject({ ok: true })
    expect(s.apply(signed(root, 2, deny))).toMatchObject({ code: 'PEERMESH_ERR_POLICY_SIGNATURE' })
    expect(s.getIntention('web', 'db')?.action).toBe('allow')
  })

  it('openPolicyEntry names why an entry is refused', () => {
    const trusted = trustedRootsOf(parseRootRecords([caRecord(root), 'junk', { id: 3 }]))
    expect(trusted.map((r) => r.id)).toEqual([root.id])
    const r = openPolicyEntry(
      trusted,
      2,
      undefined,
      signPolicyEntry(foreign, 2, undefined, encodePolicyCommand(allow)),
    )
    expect(r).toMatchObject({ ok: false, reason: expect.stringContaining('not trusted') })
  })
})

describe('signed snapshots', () => {
  it('verify for their own index, term and data under a trusted root only', () => {
    const data = new Uint8Array([1, 2, 3])
    const sig = signSnapshot(root, 10, 2, data)
    const trusted = [caRecord(root)]
    expect(verifySnapshot(trusted, 10, 2, data, sig)).toBe(true)
    expect(verifySnapshot(trusted, 11, 2, data, sig)).toBe(false)
    expect(verifySnapshot(trusted, 10, 3, data, sig)).toBe(false)
    expect(verifySnapshot(trusted, 10, 2, new Uint8Array([1, 2, 4]), sig)).toBe(false)
    expect(verifySnapshot(trusted, 10, 2, data, signSnapshot(foreign, 10, 2, data))).toBe(false)
    expect(verifySnapshot(trusted, 10, 2, data, undefined)).toBe(false)
    expect(verifySnapshot(trusted, 10, 2, data, new Uint8Array([0xc1]))).toBe(false)
  })
})

describe('snapshot messages', () => {
  const msg = (data: number[]): Message =>
    raftMessage({
      type: 'snap',
      from: 'leader',
      to: 'learner',
      term: 2,
      snapshot: {
        metadata: { index: 10, term: 2, conf: { voters: ['leader'], learners: [] } },
        data: new Uint8Array(data),
      },
    })

  it('a learner that trusts a root installs only a snapshot that root signed', () => {
    const trusted = [caRecord(root)]
    const good = withSnapshotSignature(msg([1, 2]), root)
    expect(snapshotMessageTrusted(good, trusted)).toBe(true)
    // Another state under the same signature, an unsigned one, a foreign CA's: refused.
    expect(snapshotMessageTrusted({ ...good, snapshot: msg([1, 3]).snapshot! }, trusted)).toBe(false)
    expect(snapshotMessageTrusted(msg([1, 2]), trusted)).toBe(false)
    expect(snapshotMessageTrusted(withSnapshotSignature(msg([1, 2]), foreign), trusted)).toBe(false)
    expect(snapshotMessageTrusted({ ...good, context: 'not base64 !!' }, trusted)).toBe(false)
    // No root yet (a new, empty agent): taken on first use, as the CA's creation entry is.
    expect(snapshotMessageTrusted(msg([1, 2]), [])).toBe(true)
    // Without a key the sender leaves the message as it was.
    expect(withSnapshotSignature(msg([1, 2]), undefined).context).toBe('')
  })
})

/** `env` with the signature of `other` (both envelopes from signPolicyEntry). */
function swapSig(env: Uint8Array, other: Uint8Array): Uint8Array {
  const a = unpack(env) as Record<string, unknown>
  const b = unpack(other) as Record<string, unknown>
  return pack({ ...a, sig: b['sig'] })
}
