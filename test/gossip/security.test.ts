import { keyOf, verifier } from './node-keys.ts'
import fc from 'fast-check'
import { pack } from 'msgpackr'
import { describe, expect, it } from 'vitest'
import { aliveSigningBytes, encodeMessage, encodeRecord, leaveSigningBytes } from '../../src/gossip/codec.ts'
import { lanConfig } from '../../src/gossip/config.ts'
import type { NodeRecord } from '../../src/gossip/messages.ts'
import { seededRng } from '../../src/common/rng.ts'
import { ed25519Signer } from '../../src/gossip/signing.ts'
import { Swim } from '../../src/gossip/swim.ts'

function makeNode(id: string): Swim {
  return new Swim({
    self: { id, name: id, addresses: [`/dns/${id}`] },
    config: lanConfig,
    rng: seededRng(7),
    signer: ed25519Signer(keyOf(id).privateKey),
    verifier,
  })
}

function signedAlive(signerId: string, rec: NodeRecord, inc: number, tamper?: (b: Uint8Array) => Uint8Array) {
  const bytes = encodeRecord(rec)
  const sig = ed25519Signer(keyOf(signerId).privateKey)(aliveSigningBytes(inc, bytes))
  return encodeMessage({ t: 'alive', inc, rec: tamper ? tamper(bytes) : bytes, sig })
}

const aliceRecord: NodeRecord = { id: 'alice', name: 'alice', addresses: [], tags: {}, meta: {}, version: 1 }

describe('hostile input is dropped and counted, never crashes', () => {
  it('accepts an alive signed by its owner', () => {
    const bob = makeNode('bob')
    const out = bob.handleMessage('alice', signedAlive('alice', aliceRecord, 1), 0)
    expect(out.events.map((e) => e.type)).toEqual(['member:join'])
    expect(bob.member('alice')?.status).toBe('alive')
  })

  it('drops an alive for another id signed by the sender (forged) and a tampered record', () => {
    const bob = makeNode('bob')
    keyOf('alice')
    expect(bob.handleMessage('mallory', signedAlive('mallory', aliceRecord, 1), 0).events).toEqual([])
    const tampered = signedAlive('alice', aliceRecord, 1, () =>
      encodeRecord({ ...aliceRecord, name: 'evil' }),
    )
    expect(bob.handleMessage('mallory', tampered, 0).events).toEqual([])
    expect(bob.member('alice')).toBeUndefined()
    expect(bob.stats().dropped.forged).toBe(2)
  })

  it('drops an alive for an unknown key, a forged leave and a forged alive about ourselves', () => {
    const bob = makeNode('bob')
    bob.handleMessage('alice', signedAlive('alice', aliceRecord, 1), 0)
    const ghost = { ...aliceRecord, id: 'ghost-without-key', name: 'ghost' }
    const bytes = encodeRecord(ghost)
    bob.handleMessage('x', encodeMessage({ t: 'alive', inc: 1, rec: bytes, sig: new Uint8Array(64) }), 0)
    const leaveSig = ed25519Signer(keyOf('mallory').privateKey)(leaveSigningBytes('alice', 1))
    bob.handleMessage('mallory', encodeMessage({ t: 'leave', id: 'alice', inc: 1, sig: leaveSig }), 0)
    const inc = bob.localIncarnation
    const selfRec: NodeRecord = { id: 'bob', name: 'bob', addresses: [], tags: {}, meta: {}, version: 9 }
    bob.handleMessage('mallory', signedAlive('mallory', selfRec, inc + 10), 0)
    expect(bob.member('alice')?.status).toBe('alive')
    expect(bob.member('ghost-without-key')).toBeUndefined()
    expect(bob.localIncarnation).toBe(inc) // no refutation triggered by a forgery
    expect(bob.stats().dropped.forged).toBe(3)
  })

  it('a genuine leave signed by the owner is accepted', () => {
    const bob = makeNode('bob')
    bob.handleMessage('alice', signedAlive('alice', aliceRecord, 1), 0)
    const sig = ed25519Signer(keyOf('alice').privateKey)(leaveSigningBytes('alice', 1))
    const out = bob.handleMessage('alice', encodeMessage({ t: 'leave', id: 'alice', inc: 1, sig }), 0)
    expect(out.events.map((e) => e.type)).toEqual(['member:leave'])
    expect(bob.member('alice')?.status).toBe('left')
  })

  it('counts garbage, wrong types, wrong shapes and oversize messages by reason', () => {
    const bob = makeNode('bob')
    bob.handleMessage('m', new Uint8Array([0xc1, 0xff]), 0)
    bob.handleMessage('m', pack({ t: 'exploit' }), 0)
    bob.handleMessage('m', pack({ t: 'ping', seq: 'x', target: 'bob' }), 0)
    bob.handleMessage('m', new Uint8Array(5000), 0)
    const r = bob.handlePushPull('m', new Uint8Array([1, 2, 3]), 0)
    expect(r.reply).toBeUndefined()
    const d = bob.stats().dropped
    expect(d).toEqual({
      oversize: 1,
      decode: 2, // one is the push/pull
      type: 1,
      shape: 1,
      forged: 0,
      incarnation: 0,
      sender: 0,
      members: 0,
      newMembers: 0,
      verifyBudget: 0,
      tableFull: 0,
    })
    expect(bob.stats().messagesReceived).toBe(4)
  })

  it('random bytes and random objects never throw from handleMessage / handlePushPull (fast-check)', () => {
    const bob = makeNode('bob')
    const input = fc.oneof(
      fc.uint8Array({ maxLength: 1600 }),
      fc.anything().map((v) => {
        try {
          return pack(v) as Uint8Array
        } catch {
          return new Uint8Array()
        }
      }),
      fc
        .record({
          t: fc.constantFrom('alive', 'suspect', 'dead', 'leave', 'ping', 'ping-req', 'ack', 'state'),
          inc: fc.anything(),
          id: fc.string(),
          members: fc.anything(),
          rec: fc.uint8Array(),
          sig: fc.uint8Array(),
        })
        .map((o) => pack(o) as Uint8Array),
    )
    let now = 0
    fc.assert(
      fc.property(input, (bytes) => {
        now += 10
        bob.handleMessage('fuzzer', bytes, now)
        bob.handlePushPull('fuzzer', bytes, now)
        bob.handlePushPullReply('fuzzer', bytes, now)
        bob.tick(now)
        return true
      }),
      { numRuns: 1500 },
    )
    expect(bob.members()[0]?.status).toBe('alive')
  })

  it('rejects an invalid or oversized local record with a coded error and changes nothing', () => {
    const bob = makeNode('bob')
    const codeOf = (f: () => unknown) => {
      try {
        f()
      } catch (e) {
        return (e as { code?: string }).code
      }
    }
    expect(codeOf(() => bob.updateLocalRecord({ meta: { blob: 'x'.repeat(2000) } }))).toBe(
      'PEERMESH_ERR_RECORD_TOO_LARGE',
    )
    expect(codeOf(() => bob.updateLocalRecord({ meta: { bad: new Uint8Array(1) } }))).toBe(
      'PEERMESH_ERR_INVALID_RECORD',
    )
    expect(bob.localRecord.version).toBe(1)
  })
})
