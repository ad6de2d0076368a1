import { raftMessage } from '../message.ts'
import { beforeAll, describe, expect, it } from 'vitest'
import { createRootCa, type RootCa } from '../../../src/identity/index.ts'
import { parseRootRecords, rootRecordOf } from '../../../src/identity/connect/ca-state.ts'
import {
  openPolicyEntry,
  sealPolicyBatch,
  signPolicyEntry,
  signSnapshot,
  snapshotMessageTrusted,
  trustedRootsOf,
  verifyAhead,
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

/**
 * A batch of commands sealed by `by` from index `first`, as the bytes a follower receives: copies,
 * so nothing is taken as sealed by this process.
 */
function batch(by: RootCa, first: number, cmds: PolicyCommand[], requestIds: RequestId[] = []): Entry[] {
  const sealed = sealPolicyBatch(
    by,
    cmds.map((c, i) => ({ index: first + i, requestId: requestIds[i], data: encodePolicyCommand(c) })),
  )
  return sealed.map((env, i) => entry(first + i, new Uint8Array(env), requestIds[i]))
}

const upsert = (source: string, action: 'allow' | 'deny' = 'allow'): PolicyCommand => ({
  op: 'intention.upsert',
  source,
  destination: 'db',
  action,
})

/** `env` (an envelope) with its fields changed, re-encoded. */
function reseal(env: Uint8Array, change: Record<string, unknown>): Uint8Array {
  return pack({ ...(unpack(env) as Record<string, unknown>), ...change })
}

describe('signed batches (one signature over a hash chain)', () => {
  it('signs only the head; every entry of the batch applies through the chain', () => {
    const s = storeWithCa()
    const es = batch(root, 2, [upsert('a'), upsert('b'), upsert('c'), upsert('d')])
    const fields = es.map((e) => unpack(e.data) as Record<string, unknown>)
    expect(fields.map((f) => f['sig'] !== undefined)).toEqual([true, false, false, false])
    expect(fields.map((f) => f['next'] !== undefined)).toEqual([true, true, true, false])
    for (const e of es) expect(s.apply(e)).toEqual({ ok: true, index: e.index })
    expect(s.listIntentions().map((i) => i.source)).toEqual(['a', 'b', 'c', 'd'])
    expect(s.stats.signatureRejected).toBe(0)
  })

  it('the leader applying its own envelopes reaches the same state as a follower verifying copies', () => {
    const leader = storeWithCa()
    const follower = storeWithCa()
    const cmds = [upsert('a'), upsert('b', 'deny'), upsert('c')]
    const rids = cmds.map((_, i) => ({ clientId: 'w', seq: i + 1 }))
    const own = sealPolicyBatch(
      root,
      cmds.map((c, i) => ({ index: 2 + i, requestId: rids[i], data: encodePolicyCommand(c) })),
    )
    for (const [i, env] of own.entries()) {
      expect(leader.apply(entry(2 + i, env, rids[i]))).toMatchObject({ ok: true })
      expect(follower.apply(entry(2 + i, new Uint8Array(env), rids[i]))).toMatchObject({ ok: true })
    }
    expect(Buffer.from(leader.snapshot()).equals(Buffer.from(follower.snapshot()))).toBe(true)
  })

  it.each([
    [
      'a command changed in the middle of a batch',
      (es: Entry[]) => {
        es[2] = { ...es[2]!, data: reseal(es[2]!.data, { cmd: encodePolicyCommand(upsert('c', 'deny')) }) }
      },
    ],
    [
      'an entry of the batch replaced by another genuine entry of another batch',
      (es: Entry[]) => {
        es[2] = batch(root, 2, [upsert('x'), upsert('y'), upsert('c', 'deny')])[2]!
      },
    ],
    [
      'a link changed to fit a forged successor',
      (es: Entry[]) => {
        const forged = reseal(es[2]!.data, { cmd: encodePolicyCommand(upsert('c', 'deny')) })
        es[2] = { ...es[2]!, data: forged }
        es[1] = { ...es[1]!, data: reseal(es[1]!.data, { next: new Uint8Array(32).fill(7) }) }
      },
    ],
    [
      'a chained entry moved to another index',
      (es: Entry[]) => {
        es[2] = { ...es[3]!, index: 4 }
        es.length = 3
      },
    ],
    [
      'a chained entry with its request id swapped',
      (es: Entry[]) => {
        es[2] = { ...es[2]!, requestId: { clientId: 'evil', seq: 1 } }
      },
    ],
    [
      'a head that lost its signature',
      (es: Entry[]) => {
        es[0] = { ...es[0]!, data: reseal(es[0]!.data, { sig: undefined }) }
      },
    ],
  ])('refuses %s, and everything after it in the batch', (_what, tamper) => {
    const s = storeWithCa()
    const es = batch(
      root,
      2,
      [upsert('a'), upsert('b'), upsert('c'), upsert('d')],
      [
        { clientId: 'w', seq: 1 },
        { clientId: 'w', seq: 2 },
        { clientId: 'w', seq: 3 },
        { clientId: 'w', seq: 4 },
      ],
    )
    tamper(es)
    const results = es.map((e) => s.apply(e))
    const firstBad = results.findIndex((r) => !r.ok)
    expect(firstBad).toBeGreaterThanOrEqual(0)
    for (const r of results.slice(firstBad))
      expect(r).toMatchObject({ ok: false, code: 'PEERMESH_ERR_POLICY_SIGNATURE' })
    // No forged command took effect; what came before the forgery did.
    expect(s.getIntention('c', 'db')).toBeUndefined()
    expect(s.listIntentions().every((i) => i.action === 'allow')).toBe(true)
  })

  it('a new batch after a refused entry applies again (its head is signed)', () => {
    const s = storeWithCa()
    const es = batch(root, 2, [upsert('a'), upsert('b')])
    es[1] = { ...es[1]!, data: reseal(es[1]!.data, { cmd: encodePolicyCommand(upsert('b', 'deny')) }) }
    expect(s.apply(es[0]!)).toMatchObject({ ok: true })
    expect(s.apply(es[1]!)).toMatchObject({ ok: false })
    for (const e of batch(root, 4, [upsert('e'), upsert('f')])) expect(s.apply(e)).toMatchObject({ ok: true })
  })

  it('an entry of a batch sealed by a root dropped earlier in the same batch is refused', () => {
    const s = storeWithCa()
    expect(s.apply(signed(root, 2, setRoots(root, rotated)))).toMatchObject({ ok: true })
    const es = batch(root, 3, [setRoots(rotated), upsert('a')])
    expect(s.apply(es[0]!)).toMatchObject({ ok: true })
    expect(s.apply(es[1]!)).toMatchObject({ ok: false, code: 'PEERMESH_ERR_POLICY_SIGNATURE' })
  })

  it('a snapshot taken inside a batch carries the chain: a restored store applies the rest, not a forgery', () => {
    const s = storeWithCa()
    const es = batch(root, 2, [upsert('a'), upsert('b'), upsert('c')])
    s.apply(es[0]!)
    const snap = s.snapshot()
    const restored = new PolicyStore(undefined, { verifySignatures: true })
    restored.restore(snap)
    expect(restored.apply(es[1]!)).toMatchObject({ ok: true })
    expect(restored.apply(es[2]!)).toMatchObject({ ok: true })
    const again = new PolicyStore(undefined, { verifySignatures: true })
    again.restore(snap)
    const forged = { ...es[1]!, data: reseal(es[1]!.data, { cmd: encodePolicyCommand(upsert('b', 'deny')) }) }
    expect(again.apply(forged)).toMatchObject({ ok: false, code: 'PEERMESH_ERR_POLICY_SIGNATURE' })
    // A store without the chain (a snapshot taken between batches) refuses an unsigned link.
    const between = new PolicyStore(undefined, { verifySignatures: true })
    between.restore(storeWithCa().snapshot())
    expect(between.apply({ ...es[1]!, index: 2 })).toMatchObject({ ok: false })
  })

  it('verifies heads ahead of apply, off the event loop, with the same verdicts', async () => {
    const s = storeWithCa()
    const good = batch(root, 2, [upsert('a'), upsert('b')])
    const forgedHead = batch(root, 4, [upsert('c', 'deny')])[0]!
    const other = batch(root, 4, [upsert('c')])[0]!
    // The signature of another genuine head at the same index: verifies, but not for this command.
    const bad = {
      ...forgedHead,
      data: reseal(forgedHead.data, { sig: (unpack(other.data) as { sig: Uint8Array }).sig }),
    }
    const es = [...good, bad]
    s.prepare(es)
    // Verdicts arrive from the libuv pool; applying before or after they do gives the same results.
    await new Promise((r) => setTimeout(r, 50))
    expect(es.map((e) => s.apply(e).ok)).toEqual([true, true, false])
    const eager = storeWithCa()
    eager.prepare(es)
    expect(es.map((e) => eager.apply(e).ok)).toEqual([true, true, false])
    expect(Buffer.from(eager.snapshot()).equals(Buffer.from(s.snapshot()))).toBe(true)
  })

  it('a verdict found ahead is reused only for the root and certificate it was found under', async () => {
    const s = storeWithCa()
    // Sealed with another key under the trusted root's id, and checked ahead against a list that
    // (wrongly) names that key's certificate for the id: the verdict "good" must not carry over.
    const impostor = { ...foreign, id: root.id }
    const es = batch(impostor, 2, [upsert('a', 'deny')])
    verifyAhead([{ id: root.id, certPem: foreign.certPem }], es)
    await new Promise((r) => setTimeout(r, 50))
    expect(s.apply(es[0]!)).toMatchObject({ ok: false, code: 'PEERMESH_ERR_POLICY_SIGNATURE' })
    expect(s.getIntention('a', 'db')).toBeUndefined()
  })

  it('tells change listeners once per batch of applied entries', () => {
    const s = storeWithCa()
    const seen: number[] = []
    s.onChange((i) => seen.push(i))
    const es = batch(root, 2, [upsert('a'), upsert('b'), upsert('c')])
    s.batch(() => {
      for (const e of es) s.apply(e)
    })
    expect(seen).toEqual([4])
    s.apply(batch(root, 5, [upsert('d')])[0]!)
    expect(seen).toEqual([4, 5])
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
