/**
 * Key handling shared by the CA, leaves and rotation: the two supported key types, generation,
 * PKCS#8 PEM export/import and the matching signature algorithm.
 *
 * Ed25519 is the default (small, fast, deterministic signatures, supported by TLS 1.3 in Node 20);
 * ECDSA P-256 with SHA-256 is there for peers and tools that do not speak Ed25519.
 */
import { createPrivateKey, createPublicKey, randomBytes, type webcrypto } from 'node:crypto'
import { UnsupportedKeyTypeError } from '../ca/errors.ts'
import { subtle, x509 } from '../ca/x509-setup.ts'

export type KeyType = 'ed25519' | 'ecdsa-p256'
export const KEY_TYPES: readonly KeyType[] = ['ed25519', 'ecdsa-p256']

export type CryptoKeyPair = webcrypto.CryptoKeyPair
export type CryptoKey = webcrypto.CryptoKey

export function isKeyType(value: unknown): value is KeyType {
  return value === 'ed25519' || value === 'ecdsa-p256'
}

/** WebCrypto algorithm used to generate/import a key of this type. */
export function keyAlgorithm(keyType: KeyType): webcrypto.EcKeyImportParams | webcrypto.Algorithm {
  return keyType === 'ed25519' ? { name: 'Ed25519' } : { name: 'ECDSA', namedCurve: 'P-256' }
}

/** Signature algorithm used when a key of this type signs a certificate or CSR. */
export function signingAlgorithm(keyType: KeyType): webcrypto.Algorithm | webcrypto.EcdsaParams {
  return keyType === 'ed25519' ? { name: 'Ed25519' } : { name: 'ECDSA', hash: 'SHA-256' }
}

/** A fresh extractable key pair (extractable so the private key can be stored as PKCS#8 PEM). */
export async function generateKeyPair(keyType: KeyType): Promise<CryptoKeyPair> {
  return (await subtle.generateKey(keyAlgorithm(keyType), true, ['sign', 'verify'])) as CryptoKeyPair
}

/** PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the form node:tls and openssl read directly. */
export async function exportPrivateKeyPem(key: CryptoKey): Promise<string> {
  const der = await subtle.exportKey('pkcs8', key)
  return x509.PemConverter.encode(der, 'PRIVATE KEY')
}

/** Imports a PKCS#8 (or SEC1/traditional) private key PEM for signing; tells which type it is. */
export async function importPrivateKeyPem(pem: string): Promise<{ key: CryptoKey; keyType: KeyType }> {
  const keyObject = createPrivateKey(pem)
  const keyType = keyTypeOfKeyObject(keyObject.asymmetricKeyType, keyObject.asymmetricKeyDetails?.namedCurve)
  const der = keyObject.export({ type: 'pkcs8', format: 'der' })
  const key = await subtle.importKey('pkcs8', der, keyAlgorithm(keyType), false, ['sign'])
  return { key, keyType }
}

/** DER SubjectPublicKeyInfo of the public half of a private key PEM. */
export function publicKeySpkiOfPrivatePem(pem: string): Buffer {
  return createPublicKey(createPrivateKey(pem)).export({ type: 'spki', format: 'der' })
}

/** The key type of a certificate's or CSR's public key; throws for anything unsupported. */
export function keyTypeOfPublicKey(publicKey: x509.PublicKey): KeyType {
  const alg = publicKey.algorithm as { name?: string; namedCurve?: string }
  if (alg.name === 'Ed25519') return 'ed25519'
  if (alg.name === 'ECDSA' && alg.namedCurve === 'P-256') return 'ecdsa-p256'
  throw new UnsupportedKeyTypeError(
    `unsupported public key ${alg.name ?? 'unknown'}${alg.namedCurve ? ` ${alg.namedCurve}` : ''}; use ed25519 or ecdsa-p256`,
  )
}

function keyTypeOfKeyObject(type: string | undefined, curve: string | undefined): KeyType {
  if (type === 'ed25519') return 'ed25519'
  if (type === 'ec' && (curve === 'prime256v1' || curve === 'P-256')) return 'ecdsa-p256'
  throw new UnsupportedKeyTypeError(
    `unsupported private key ${type ?? 'unknown'}${curve ? ` ${curve}` : ''}; use ed25519 or ecdsa-p256`,
  )
}

/**
 * A random positive certificate serial number as hex: 16 random bytes (128 bits, above the CA/B
 * Forum's 64-bit minimum) with the top bit cleared so the DER INTEGER stays positive and 16 bytes.
 */
export function randomSerialNumber(): string {
  const bytes = randomBytes(16)
  bytes[0] = (bytes[0]! & 0x7f) | 0x01
  return bytes.toString('hex')
}
