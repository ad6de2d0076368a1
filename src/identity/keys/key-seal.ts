import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  type KeyObject,
  randomBytes,
} from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { PeermeshError } from '../../common/errors.ts'

/**
 * Sealing a secret (the mesh CA root key) to one agent, so that it can travel in the replicated
 * Raft state and still be readable only by the agents it was sealed to (the Raft voters): an
 * ECIES-style box (X25519 + HKDF-SHA256 + ChaCha20-Poly1305), like libsodium's sealed boxes.
 *
 * The recipient's X25519 key is derived from its Ed25519 node key (the key behind its peer id),
 * as libsodium's `crypto_sign_ed25519_{pk,sk}_to_curve25519` do: the private scalar is the first
 * half of SHA-512(seed) and the public key is the Montgomery form u = (1 + y) / (1 − y) of the
 * Edwards point. So anyone can seal to a peer id, and no extra key has to be distributed.
 */

const P = 2n ** 255n - 19n
const PKCS8_X25519_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex')
const SPKI_X25519_PREFIX = Buffer.from('302a300506032b656e032100', 'hex')
const INFO = Buffer.from('peermesh/sealed-key/1')
const VERSION = 1
const NONCE_BYTES = 12
const TAG_BYTES = 16
const PUB_BYTES = 32
/** version, ephemeral public key, nonce, then ciphertext and tag. */
const HEADER_BYTES = 1 + PUB_BYTES + NONCE_BYTES

export class KeySealError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_KEY_SEAL'
}

function modPow(base: bigint, exp: bigint, mod: bigint): bigint {
  let result = 1n
  let b = base % mod
  let e = exp
  while (e > 0n) {
    if (e & 1n) result = (result * b) % mod
    b = (b * b) % mod
    e >>= 1n
  }
  return result
}

function leToBigInt(bytes: Uint8Array): bigint {
  let n = 0n
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]!)
  return n
}

function bigIntToLe(n: bigint, length: number): Buffer {
  const out = Buffer.alloc(length)
  let v = n
  for (let i = 0; i < length; i++) {
    out[i] = Number(v & 0xffn)
    v >>= 8n
  }
  return out
}

/** The X25519 public key (raw 32 bytes) of a raw Ed25519 public key. */
export function x25519PublicFromEd25519(edPublic: Uint8Array): Buffer {
  if (edPublic.length !== 32) throw new KeySealError('an Ed25519 public key is 32 bytes')
  const yBytes = Buffer.from(edPublic)
  yBytes[31]! &= 0x7f
  const y = leToBigInt(yBytes)
  if (y >= P) throw new KeySealError('not an Ed25519 public key')
  const den = (1n - y + P) % P
  if (den === 0n) throw new KeySealError('Ed25519 public key has no X25519 form')
  const u = (((1n + y) % P) * modPow(den, P - 2n, P)) % P
  return bigIntToLe(u, 32)
}

/** The X25519 private key of an Ed25519 private key (a node:crypto KeyObject). */
export function x25519PrivateFromEd25519(edPrivate: KeyObject): KeyObject {
  const jwk = edPrivate.export({ format: 'jwk' })
  if (jwk.crv !== 'Ed25519' || typeof jwk.d !== 'string') throw new KeySealError('not an Ed25519 private key')
  const seed = Buffer.from(jwk.d, 'base64url')
  const scalar = createHash('sha512').update(seed).digest().subarray(0, 32)
  return createPrivateKey({ key: Buffer.concat([PKCS8_X25519_PREFIX, scalar]), format: 'der', type: 'pkcs8' })
}

const recipientCache = new Map<string, Buffer>()

/** The raw X25519 public key of the agent whose (Ed25519) peer id is `peerId`. */
export function x25519PublicOfPeerId(peerId: string): Buffer {
  const cached = recipientCache.get(peerId)
  if (cached !== undefined) return cached
  let raw: Uint8Array
  try {
    const id = peerIdFromString(peerId)
    if (id.type !== 'Ed25519') throw new Error('not Ed25519')
    raw = id.publicKey.raw
  } catch {
    throw new KeySealError(`${peerId} is not an Ed25519 peer id`)
  }
  const pub = x25519PublicFromEd25519(raw)
  if (recipientCache.size > 10_000) recipientCache.clear()
  recipientCache.set(peerId, pub)
  return pub
}

function boxKey(shared: Buffer, ephPub: Buffer, recipientPub: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', shared, Buffer.concat([ephPub, recipientPub]), INFO, 32))
}

function rawPublic(key: KeyObject): Buffer {
  return key.export({ format: 'der', type: 'spki' }).subarray(SPKI_X25519_PREFIX.length)
}

/**
 * Seals `plaintext` to the agent `peerId`; `context` (e.g. the root id) is authenticated but not
 * encrypted: a box opened under another context fails.
 */
export function sealToPeer(peerId: string, plaintext: Uint8Array, context: string): Buffer {
  const recipientPub = x25519PublicOfPeerId(peerId)
  const eph = generateKeyPairSync('x25519')
  const ephPub = rawPublic(eph.publicKey)
  const shared = diffieHellman({
    privateKey: eph.privateKey,
    publicKey: createPublicKey({
      key: Buffer.concat([SPKI_X25519_PREFIX, recipientPub]),
      format: 'der',
      type: 'spki',
    }),
  })
  const nonce = randomBytes(NONCE_BYTES)
  const header = Buffer.concat([Buffer.of(VERSION), ephPub, nonce])
  const cipher = createCipheriv('chacha20-poly1305', boxKey(shared, ephPub, recipientPub), nonce, {
    authTagLength: TAG_BYTES,
  })
  cipher.setAAD(Buffer.concat([header, Buffer.from(`${peerId}\u0000${context}`)]), {
    plaintextLength: plaintext.length,
  })
  const ct = Buffer.concat([cipher.update(plaintext), cipher.final()])
  return Buffer.concat([header, ct, cipher.getAuthTag()])
}

/**
 * Opens a box sealed to this agent (`selfId`, Ed25519 private key `edPrivate`). Throws
 * KeySealError when it was sealed to someone else, under another context, or was altered.
 */
export function openSealed(edPrivate: KeyObject, selfId: string, box: Uint8Array, context: string): Buffer {
  if (box.length < HEADER_BYTES + TAG_BYTES || box[0] !== VERSION)
    throw new KeySealError('malformed sealed box')
  const b = Buffer.from(box.buffer, box.byteOffset, box.byteLength)
  const header = b.subarray(0, HEADER_BYTES)
  const ephPub = b.subarray(1, 1 + PUB_BYTES)
  const nonce = b.subarray(1 + PUB_BYTES, HEADER_BYTES)
  const ct = b.subarray(HEADER_BYTES, b.length - TAG_BYTES)
  const tag = b.subarray(b.length - TAG_BYTES)
  const priv = x25519PrivateFromEd25519(edPrivate)
  try {
    const shared = diffieHellman({
      privateKey: priv,
      publicKey: createPublicKey({
        key: Buffer.concat([SPKI_X25519_PREFIX, ephPub]),
        format: 'der',
        type: 'spki',
      }),
    })
    const decipher = createDecipheriv(
      'chacha20-poly1305',
      boxKey(shared, Buffer.from(ephPub), rawPublic(createPublicKey(priv))),
      nonce,
      { authTagLength: TAG_BYTES },
    )
    decipher.setAAD(Buffer.concat([header, Buffer.from(`${selfId}\u0000${context}`)]), {
      plaintextLength: ct.length,
    })
    decipher.setAuthTag(tag)
    return Buffer.concat([decipher.update(ct), decipher.final()])
  } catch {
    throw new KeySealError('sealed box does not open with this key (sealed to another agent, or altered)')
  }
}
