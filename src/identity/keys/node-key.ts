import { createPrivateKey, createPublicKey, type KeyObject, sign, verify } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { Ed25519PrivateKey, PeerId } from '@libp2p/interface'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { NodeKeyError } from '../errors.ts'
import { writeFileAtomicSync } from '../../common/fs-atomic.ts'

/** File name of the node key inside the data dir (libp2p protobuf encoding, mode 0600). */
export const NODE_KEY_FILE = 'node.key'

// DER prefixes that wrap a raw 32-byte Ed25519 seed / public key as PKCS#8 / SPKI (RFC 8410).
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex')

/**
 * The node's identity: an Ed25519 key pair that is also its libp2p peer id. It names the node
 * in gossip and Raft and signs what the node owns (its gossip record). Signing and verifying go
 * through node:crypto, which is several times faster than a pure-JS Ed25519.
 */
export interface NodeIdentity {
  /** The libp2p private key, for the libp2p host. */
  readonly privateKey: Ed25519PrivateKey
  readonly peerId: PeerId
  /** `peerId.toString()`, cached: it is used as a map key everywhere. */
  readonly id: string
  /** node:crypto key objects for the hot path. */
  readonly signingKey: KeyObject
  readonly publicKey: KeyObject
  sign(data: Uint8Array): Uint8Array
}

/**
 * Loads the node key from `dataDir`, or creates it on first start. The data dir is created if
 * missing. A key file that exists but cannot be read or parsed is an error, never silently
 * replaced: replacing it would give the node a new identity.
 */
export async function loadOrCreateNodeIdentity(dataDir: string): Promise<NodeIdentity> {
  try {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 })
  } catch (err) {
    throw new NodeKeyError(`cannot create data dir ${dataDir}: ${(err as Error).message}`, { cause: err })
  }
  const path = join(dataDir, NODE_KEY_FILE)
  if (existsSync(path)) {
    return identityFromPrivateKey(readNodeKey(path))
  }
  const key = await generateKeyPair('Ed25519')
  try {
    writeFileAtomicSync(path, privateKeyToProtobuf(key), 0o600)
  } catch (err) {
    throw new NodeKeyError(`cannot write node key ${path}: ${(err as Error).message}`, { cause: err })
  }
  return identityFromPrivateKey(key)
}

function readNodeKey(path: string): Ed25519PrivateKey {
  let bytes: Buffer
  try {
    bytes = readFileSync(path)
  } catch (err) {
    throw new NodeKeyError(`cannot read node key ${path}: ${(err as Error).message}`, { cause: err })
  }
  let key: ReturnType<typeof privateKeyFromProtobuf>
  try {
    key = privateKeyFromProtobuf(bytes)
  } catch (err) {
    throw new NodeKeyError(`node key ${path} is not a valid key file`, { cause: err })
  }
  if (key.type !== 'Ed25519') {
    throw new NodeKeyError(`node key ${path} is a ${key.type} key; peermesh needs Ed25519`)
  }
  // Tighten permissions left loose by hand (e.g. a copied file).
  if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600)
  return key
}

export function identityFromPrivateKey(privateKey: Ed25519PrivateKey): NodeIdentity {
  const peerId = peerIdFromPrivateKey(privateKey)
  // libp2p's raw Ed25519 private key is seed (32 bytes) || public key (32 bytes).
  const seed = privateKey.raw.subarray(0, 32)
  const signingKey = createPrivateKey({
    key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]),
    format: 'der',
    type: 'pkcs8',
  })
  const publicKey = createPublicKey(signingKey)
  return {
    privateKey,
    peerId,
    id: peerId.toString(),
    signingKey,
    publicKey,
    sign: (data) => sign(null, data, signingKey),
  }
}

/** A node:crypto public key from a raw 32-byte Ed25519 public key. */
export function ed25519PublicKeyFromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 32) throw new NodeKeyError(`Ed25519 public key must be 32 bytes, got ${raw.length}`)
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, raw]), format: 'der', type: 'spki' })
}

const publicKeyCache = new Map<string, KeyObject | null>()

/**
 * The Ed25519 public key embedded in a peer id string, or undefined when the string is not an
 * Ed25519 peer id. Cached: verifying gossip records looks this up for every record.
 */
export function publicKeyOfPeerId(id: string): KeyObject | undefined {
  const cached = publicKeyCache.get(id)
  if (cached !== undefined) return cached ?? undefined
  let key: KeyObject | null = null
  try {
    const peerId = peerIdFromString(id)
    if (peerId.type === 'Ed25519') key = ed25519PublicKeyFromRaw(peerId.publicKey.raw)
  } catch {
    key = null
  }
  if (publicKeyCache.size > 100_000) publicKeyCache.clear()
  publicKeyCache.set(id, key)
  return key ?? undefined
}

/** Verifies an Ed25519 signature made by the node whose peer id is `id`. Never throws. */
export function verifyByPeerId(id: string, data: Uint8Array, signature: Uint8Array): boolean {
  const key = publicKeyOfPeerId(id)
  if (key === undefined || signature.length !== 64) return false
  try {
    return verify(null, data, key, signature)
  } catch {
    return false
  }
}
