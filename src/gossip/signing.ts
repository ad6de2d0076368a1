/**
 * Record signatures. The core calls `signer` for its own alive/leave messages and `verifier` for
 * everyone else's; both are synchronous.
 */
import { type KeyObject, sign, verify } from 'node:crypto'

/** Signs `bytes` with this node's private key. */
export type Signer = (bytes: Uint8Array) => Uint8Array
/** True if `sig` is `id`'s signature over `bytes`. Must not throw. */
export type Verifier = (id: string, bytes: Uint8Array, sig: Uint8Array) => boolean

/** Ed25519 signer over a node:crypto private key (in production the libp2p peer key). */
export function ed25519Signer(privateKey: KeyObject): Signer {
  return (bytes) => new Uint8Array(sign(null, bytes, privateKey))
}

/**
 * Ed25519 verifier. `publicKeyOf(id)` maps a member id to its public key (in production the libp2p
 * peer id embeds it); an unknown id or any error counts as a failed verification.
 */
export function ed25519Verifier(publicKeyOf: (id: string) => KeyObject | undefined): Verifier {
  return (id, bytes, sig) => {
    try {
      const key = publicKeyOf(id)
      if (key === undefined) return false
      return verify(null, bytes, key, sig)
    } catch {
      return false
    }
  }
}

/** Produces empty signatures. Only for large simulations where crypto cost would dominate. */
export const nullSigner: Signer = () => new Uint8Array(0)

/** Accepts every signature. Only for large simulations, never in production. */
export const acceptAllVerifier: Verifier = () => true
