import {
  createHash,
  generateKeyPairSync,
  randomBytes,
  sign,
  timingSafeEqual,
  type X509Certificate,
} from 'node:crypto'

/**
 * The certificate of an agent's direct Raft transport (direct-messenger.ts): self-signed, over a
 * fresh Ed25519 key made at each start, with the agent's libp2p peer id as its subject's common
 * name. Nobody verifies it against a CA: a peer pins its SHA-256 fingerprint, learnt over a
 * libp2p stream (Noise-authenticated, inside the cluster's private network), so the key never
 * needs to be the agent's libp2p identity key (which then signs nothing for another protocol).
 *
 * Built by hand in DER (a few fixed fields, no extensions): the X.509 library the CA uses is
 * loaded only by agents that need it.
 */
export interface DirectCertificate {
  /** PKCS#8 PEM of the private key (what `tls` takes). */
  key: string
  /** PEM of the certificate. */
  cert: string
  /** SHA-256 of the certificate's DER. */
  fingerprint: Uint8Array
}

/** Bytes of a certificate fingerprint (SHA-256). */
export const FINGERPRINT_BYTES = 32

// OID 1.3.101.112 (Ed25519), as an AlgorithmIdentifier with no parameters (RFC 8410 §3).
const ED25519_ALGORITHM = der(0x30, Buffer.from([0x06, 0x03, 0x2b, 0x65, 0x70]))
// OID 2.5.4.3 (commonName).
const COMMON_NAME = Buffer.from([0x06, 0x03, 0x55, 0x04, 0x03])
/** The base58btc alphabet: a libp2p peer id's text form, and all a common name here may hold. */
const PEER_ID_TEXT = /^[1-9A-HJ-NP-Za-km-z]{1,128}$/

/** A fresh self-signed Ed25519 certificate naming `peerId`. */
export function createDirectCertificate(peerId: string, now: Date = new Date()): DirectCertificate {
  if (!PEER_ID_TEXT.test(peerId)) throw new TypeError(`not a peer id: ${peerId}`)
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const serial = randomBytes(16)
  serial[0] = (serial[0]! & 0x7f) | 0x01 // positive, no leading zero byte (RFC 5280 §4.1.2.2)
  const name = der(0x30, der(0x31, der(0x30, COMMON_NAME, der(0x0c, Buffer.from(peerId, 'utf8')))))
  const tbs = der(
    0x30,
    der(0xa0, der(0x02, Buffer.from([2]))), // v3
    der(0x02, serial),
    ED25519_ALGORITHM,
    name,
    // Valid from an hour ago (clock skew) to the end of UTCTime's range; nobody checks it.
    der(0x30, utcTime(new Date(now.getTime() - 3_600_000)), utcTime(new Date('2049-12-31T23:59:59Z'))),
    name,
    publicKey.export({ type: 'spki', format: 'der' }),
  )
  const signature = sign(null, tbs, privateKey)
  const cert = der(0x30, tbs, ED25519_ALGORITHM, der(0x03, Buffer.from([0]), signature))
  const lines = cert.toString('base64').match(/.{1,64}/g) ?? []
  return {
    key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    cert: `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`,
    fingerprint: certificateFingerprint(cert),
  }
}

/** SHA-256 of a certificate's DER. */
export function certificateFingerprint(der: Uint8Array): Uint8Array {
  return createHash('sha256').update(der).digest()
}

/** Whether two fingerprints are equal (both of FINGERPRINT_BYTES). */
export function sameFingerprint(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === FINGERPRINT_BYTES && b.length === FINGERPRINT_BYTES && timingSafeEqual(a, b)
}

/**
 * The peer id a certificate names (its subject is exactly one common name in peer-id text), or
 * undefined. Only a claim: the caller checks it against the fingerprint that peer registered.
 */
export function claimedPeerId(cert: X509Certificate): string | undefined {
  const m = /^CN=(.*)$/.exec(cert.subject)
  return m !== null && PEER_ID_TEXT.test(m[1]!) ? m[1] : undefined
}

/** A DER element: tag, definite length, then the parts. */
function der(tag: number, ...parts: Uint8Array[]): Buffer {
  const body = Buffer.concat(parts)
  const n = body.length
  let head: number[]
  if (n < 0x80) head = [tag, n]
  else {
    const bytes: number[] = []
    for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff)
    head = [tag, 0x80 | bytes.length, ...bytes]
  }
  return Buffer.concat([Buffer.from(head), body])
}

function utcTime(d: Date): Buffer {
  const s = d.toISOString() // YYYY-MM-DDTHH:MM:SS.sssZ
  const text = `${s.slice(2, 4)}${s.slice(5, 7)}${s.slice(8, 10)}${s.slice(11, 13)}${s.slice(14, 16)}${s.slice(17, 19)}Z`
  return der(0x17, Buffer.from(text, 'ascii'))
}
