import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { ed25519Signer, ed25519Verifier } from '../../src/gossip/signing.ts'

/**
 * Ed25519 node keys for gossip tests: one pair per member id, made on first use and kept for the
 * test file (each file loads its own copy of this module).
 */
const keys = new Map<string, { publicKey: KeyObject; privateKey: KeyObject }>()

export function keyOf(id: string): { publicKey: KeyObject; privateKey: KeyObject } {
  let k = keys.get(id)
  if (!k) {
    k = generateKeyPairSync('ed25519')
    keys.set(id, k)
  }
  return k
}

/** Signs as member `id`. */
export const signerOf = (id: string) => ed25519Signer(keyOf(id).privateKey)

/** Verifies against the keys made so far (an id without one verifies nothing). */
export const verifier = ed25519Verifier((id) => keys.get(id)?.publicKey)
