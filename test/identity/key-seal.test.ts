import { createPublicKey } from 'node:crypto'
import { afterAll, describe, expect, it } from 'vitest'
import {
  KeySealError,
  openSealed,
  sealToPeer,
  x25519PrivateFromEd25519,
  x25519PublicOfPeerId,
} from '../../src/identity/keys/key-seal.ts'
import { loadOrCreateNodeIdentity } from '../../src/identity/keys/node-key.ts'
import { TempDirs } from '../temp-dir.ts'

const tmp = new TempDirs()
afterAll(() => tmp.removeAll())
const identity = () => loadOrCreateNodeIdentity(tmp.make('seal'))

describe('sealing a secret to a peer id', () => {
  it('derives the same X25519 public key from the peer id as from the private key', async () => {
    for (let i = 0; i < 5; i++) {
      const id = await identity()
      const fromPrivate = createPublicKey(x25519PrivateFromEd25519(id.signingKey))
        .export({ format: 'der', type: 'spki' })
        .subarray(12)
      expect(x25519PublicOfPeerId(id.id).equals(fromPrivate)).toBe(true)
    }
  })

  it('opens only for the recipient, under the same context, unaltered', async () => {
    const alice = await identity()
    const bob = await identity()
    const secret = Buffer.from('-----BEGIN PRIVATE KEY----- root key')
    const box = sealToPeer(alice.id, secret, 'root-1')
    expect(openSealed(alice.signingKey, alice.id, box, 'root-1').equals(secret)).toBe(true)
    // Two seals of one secret differ (fresh ephemeral key and nonce).
    expect(sealToPeer(alice.id, secret, 'root-1').equals(box)).toBe(false)
    expect(() => openSealed(bob.signingKey, bob.id, box, 'root-1')).toThrow(KeySealError)
    expect(() => openSealed(alice.signingKey, alice.id, box, 'root-2')).toThrow(KeySealError)
    const tampered = Buffer.from(box)
    tampered[tampered.length - 20]! ^= 1
    expect(() => openSealed(alice.signingKey, alice.id, tampered, 'root-1')).toThrow(KeySealError)
    expect(() => openSealed(alice.signingKey, alice.id, box.subarray(0, 40), 'root-1')).toThrow(KeySealError)
    expect(() => sealToPeer('not-a-peer-id', secret, 'root-1')).toThrow(KeySealError)
  })
})
