/**
 * The mesh certificate authority: a self-signed root per trust domain, cross-signing for root
 * rotation, and signing of service leaf certificates from CSRs.
 *
 * Pure library code: no clock (time is `nowMs`), no storage, no network. The root key and
 * certificate are plain strings so the Raft state machine can hold them. Randomness comes from
 * the platform CSPRNG (key generation and serial numbers must not be seeded).
 *
 * Shape follows Consul's built-in CA provider: a long-lived root whose certificate carries the
 * trust domain as a SPIFFE URI SAN, short-lived leaves with `spiffe://<td>/svc/<service>`, and on
 * rotation the new root cross-signed by the old one so that peers that only trust the old root
 * still accept leaves from the new one.
 */
import {
  CLOCK_SKEW_ALLOWANCE_MS,
  DEFAULT_ROOT_VALIDITY_DAYS,
  MAX_LEAF_TTL_MS,
  MAX_ROOT_VALIDITY_DAYS,
  MIN_LEAF_TTL_MS,
  MS_PER_DAY,
} from './constants.ts'
import {
  caConstraints,
  parseCertificatePem,
  parseCsrPem,
  subjectAltNames,
  uriSans,
  subjectKeyId,
} from './cert-info.ts'
import {
  CaMalformedError,
  CaNotValidNowError,
  CsrBadSignatureError,
  CsrIdentityMismatchError,
  CsrMalformedError,
  InvalidCaOptionError,
  TrustDomainMismatchError,
  UnsupportedKeyTypeError,
} from './errors.ts'
import {
  type CryptoKey,
  exportPrivateKeyPem,
  generateKeyPair,
  importPrivateKeyPem,
  isKeyType,
  type KeyType,
  keyTypeOfPublicKey,
  publicKeySpkiOfPrivatePem,
  randomSerialNumber,
  signingAlgorithm,
} from '../keys/keys.ts'
import {
  parseTrustDomainSpiffeId,
  serviceSpiffeId,
  trustDomainSpiffeId,
  validateServiceName,
  validateTrustDomain,
} from './spiffe.ts'
import { x509 } from './x509-setup.ts'

export type { KeyType } from '../keys/keys.ts'

/** A CA able to sign: its certificate and its PKCS#8 private key, both PEM. */
export interface SigningCa {
  certPem: string
  keyPem: string
}

/** A root CA as created by `createRootCa`; every field is plain data, safe to replicate. */
export interface RootCa extends SigningCa {
  /** Subject key identifier (lowercase hex); names this root in events, APIs and chains. */
  id: string
  trustDomain: string
  keyType: KeyType
  serialNumber: string
  /** Validity window, ms since the epoch. */
  notBefore: number
  notAfter: number
}

export interface CreateRootCaOptions {
  trustDomain: string
  /** Default 'ed25519'. */
  keyType?: KeyType
  /** Default 3650 (10 years, as Consul). */
  validityDays?: number
  /** Issue time; the root is valid from `nowMs - CLOCK_SKEW_ALLOWANCE_MS`. */
  nowMs: number
}

export async function createRootCa(options: CreateRootCaOptions): Promise<RootCa> {
  const trustDomain = validateTrustDomain(options.trustDomain)
  const keyType = options.keyType ?? 'ed25519'
  if (!isKeyType(keyType)) throw new InvalidCaOptionError('keyType', "must be 'ed25519' or 'ecdsa-p256'")
  const validityDays = options.validityDays ?? DEFAULT_ROOT_VALIDITY_DAYS
  if (!Number.isInteger(validityDays) || validityDays < 1 || validityDays > MAX_ROOT_VALIDITY_DAYS) {
    throw new InvalidCaOptionError('validityDays', `must be an integer from 1 to ${MAX_ROOT_VALIDITY_DAYS}`)
  }
  const nowMs = checkNow(options.nowMs)

  const keys = await generateKeyPair(keyType)
  const ski = await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)
  const id = ski.keyId.toLowerCase()
  const serialNumber = randomSerialNumber()
  const notBefore = nowMs - CLOCK_SKEW_ALLOWANCE_MS
  const notAfter = nowMs + validityDays * MS_PER_DAY
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber,
    // The id in the name keeps successive roots' subjects distinct, which chain building needs.
    name: [{ CN: [`peermesh CA ${id.slice(0, 16)}`] }, { O: ['peermesh'] }],
    notBefore: new Date(notBefore),
    notAfter: new Date(notAfter),
    keys,
    signingAlgorithm: signingAlgorithm(keyType),
    extensions: caExtensions(ski, undefined, trustDomain, undefined),
  })
  return {
    id,
    trustDomain,
    keyType,
    serialNumber,
    notBefore: cert.notBefore.getTime(),
    notAfter: cert.notAfter.getTime(),
    certPem: cert.toString('pem'),
    keyPem: await exportPrivateKeyPem(keys.privateKey),
  }
}

/** The new root as seen from the old one: same subject and key, issued and signed by the old root. */
export interface CrossSignedCa {
  certPem: string
  /** Id (SKI) of the root whose key and subject this certificate carries. */
  subjectId: string
  /** Id (SKI) of the root that signed it. */
  issuerId: string
  notBefore: number
  notAfter: number
}

/**
 * Cross-signs `newRoot` with `oldRoot` for rotation: a CA certificate with the new root's
 * subject, public key and SKI, issued by the old root. A peer that trusts only the old root and
 * is given this intermediate accepts leaves signed by the new root. It may sign leaves only
 * (pathLength 0) and is valid only while both roots are.
 */
export async function crossSign(
  oldRoot: SigningCa,
  newRoot: Pick<SigningCa, 'certPem'>,
): Promise<CrossSignedCa> {
  const issuer = await loadSigningCa(oldRoot)
  const subject = parseCertificatePem(newRoot.certPem)
  if (!subject || !caConstraints(subject).canSignCertificates) {
    throw new CaMalformedError('new root certificate is not a parseable CA certificate')
  }
  const subjectId = subjectKeyId(subject) ?? bufToHex(await subject.publicKey.getKeyIdentifier())
  const trustDomain = caTrustDomain(subject)
  const notBefore = Math.max(subject.notBefore.getTime(), issuer.cert.notBefore.getTime())
  const notAfter = Math.min(subject.notAfter.getTime(), issuer.cert.notAfter.getTime())
  if (notAfter <= notBefore) throw new CaMalformedError('the two roots have no validity period in common')
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerialNumber(),
    subject: subject.subjectName,
    issuer: issuer.cert.subjectName,
    notBefore: new Date(notBefore),
    notAfter: new Date(notAfter),
    publicKey: subject.publicKey,
    signingKey: issuer.key,
    signingAlgorithm: signingAlgorithm(issuer.keyType),
    extensions: caExtensions(new x509.SubjectKeyIdentifierExtension(subjectId), issuer.id, trustDomain, 0),
  })
  return {
    certPem: cert.toString('pem'),
    subjectId,
    issuerId: issuer.id,
    notBefore: cert.notBefore.getTime(),
    notAfter: cert.notAfter.getTime(),
  }
}

export interface SignLeafOptions {
  /** The service the requester is entitled to; the CSR must ask for exactly its SPIFFE id. */
  service: string
  /** Must equal the CA's trust domain. */
  trustDomain: string
  /** Lifetime from `nowMs` (clamped to the CA's own notAfter). */
  ttlMs: number
  nowMs: number
}

export interface SignedLeaf {
  certPem: string
  spiffeId: string
  service: string
  serialNumber: string
  /** Id (SKI) of the signing CA. */
  issuerId: string
  keyType: KeyType
  notBefore: number
  notAfter: number
}

/**
 * Signs a service leaf from a CSR. The CSR must be well formed, carry a supported key, verify
 * under its own key (proof of possession), and ask for exactly one name: the SPIFFE id of
 * `service` in `trustDomain`. Everything else in the CSR (subject, other extensions) is ignored;
 * the CA decides the certificate's contents.
 */
export async function signLeaf(ca: SigningCa, csrPem: string, options: SignLeafOptions): Promise<SignedLeaf> {
  const service = validateServiceName(options.service)
  const trustDomain = validateTrustDomain(options.trustDomain)
  const nowMs = checkNow(options.nowMs)
  const ttlMs = options.ttlMs
  if (!Number.isInteger(ttlMs) || ttlMs < MIN_LEAF_TTL_MS || ttlMs > MAX_LEAF_TTL_MS) {
    throw new InvalidCaOptionError(
      'ttlMs',
      `must be an integer from ${MIN_LEAF_TTL_MS} to ${MAX_LEAF_TTL_MS}`,
    )
  }
  const signer = await loadSigningCa(ca)
  if (signer.trustDomain !== trustDomain) {
    throw new TrustDomainMismatchError(
      `CA is for trust domain ${signer.trustDomain}, leaf requested for ${trustDomain}`,
    )
  }
  if (nowMs < signer.cert.notBefore.getTime() || nowMs >= signer.cert.notAfter.getTime()) {
    throw new CaNotValidNowError(`CA ${signer.id} is not valid at ${new Date(nowMs).toISOString()}`)
  }

  const spiffeId = serviceSpiffeId(trustDomain, service)
  const csr = parseCsrPem(csrPem)
  if (!csr) throw new CsrMalformedError('CSR is not a single well-formed PEM CERTIFICATE REQUEST')
  const leafKeyType = keyTypeOfPublicKey(csr.publicKey)
  let signatureOk: boolean
  try {
    signatureOk = await csr.verify()
  } catch (cause) {
    throw new CsrBadSignatureError('CSR signature could not be verified', { cause })
  }
  if (!signatureOk) throw new CsrBadSignatureError('CSR signature does not verify under its own public key')
  let names: ReturnType<typeof subjectAltNames>
  try {
    names = subjectAltNames(csr)
  } catch (cause) {
    throw new CsrMalformedError('CSR subjectAltName extension does not decode', { cause })
  }
  const only = names[0]
  if (names.length !== 1 || only?.type !== 'url' || only.value !== spiffeId) {
    throw new CsrIdentityMismatchError(
      `CSR must request exactly the SAN URI ${spiffeId}; it requests ${JSON.stringify(names.map((n) => `${n.type}:${n.value}`)).slice(0, 300)}`,
    )
  }

  const serialNumber = randomSerialNumber()
  const notBefore = Math.max(nowMs - CLOCK_SKEW_ALLOWANCE_MS, signer.cert.notBefore.getTime())
  const notAfter = Math.min(nowMs + ttlMs, signer.cert.notAfter.getTime())
  const usages =
    leafKeyType === 'ecdsa-p256'
      ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment
      : x509.KeyUsageFlags.digitalSignature
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber,
    subject: [{ CN: [service] }],
    issuer: signer.cert.subjectName,
    notBefore: new Date(notBefore),
    notAfter: new Date(notAfter),
    publicKey: csr.publicKey,
    signingKey: signer.key,
    signingAlgorithm: signingAlgorithm(signer.keyType),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(usages, true),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
      await x509.SubjectKeyIdentifierExtension.create(csr.publicKey),
      new x509.AuthorityKeyIdentifierExtension(signer.id),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeId }]),
    ],
  })
  return {
    certPem: cert.toString('pem'),
    spiffeId,
    service,
    serialNumber,
    issuerId: signer.id,
    keyType: leafKeyType,
    notBefore: cert.notBefore.getTime(),
    notAfter: cert.notAfter.getTime(),
  }
}

interface LoadedCa {
  cert: x509.X509Certificate
  key: CryptoKey
  keyType: KeyType
  id: string
  trustDomain: string
}

/** Parses and checks a signing CA: a CA certificate, a supported key, and the key matching it. */
async function loadSigningCa(ca: SigningCa): Promise<LoadedCa> {
  const cert = parseCertificatePem(ca?.certPem)
  if (!cert) throw new CaMalformedError('CA certificate is not a single well-formed PEM CERTIFICATE')
  if (!caConstraints(cert).canSignCertificates) {
    throw new CaMalformedError('CA certificate lacks basicConstraints CA:true / keyUsage keyCertSign')
  }
  let key: CryptoKey
  let keyType: KeyType
  let spki: Buffer
  try {
    ;({ key, keyType } = await importPrivateKeyPem(ca.keyPem))
    spki = publicKeySpkiOfPrivatePem(ca.keyPem)
  } catch (cause) {
    if (cause instanceof UnsupportedKeyTypeError) throw cause
    throw new CaMalformedError('CA private key is not a readable PEM private key', { cause })
  }
  if (!spki.equals(Buffer.from(cert.publicKey.rawData))) {
    throw new CaMalformedError('CA private key does not match the CA certificate')
  }
  const id = subjectKeyId(cert) ?? bufToHex(await cert.publicKey.getKeyIdentifier())
  return { cert, key, keyType, id, trustDomain: caTrustDomain(cert) }
}

/** The trust domain a CA certificate is for, from its `spiffe://<td>` URI SAN. */
function caTrustDomain(cert: x509.X509Certificate): string {
  let uris: string[]
  try {
    uris = uriSans(cert)
  } catch (cause) {
    throw new CaMalformedError('CA certificate subjectAltName does not decode', { cause })
  }
  if (uris.length !== 1) throw new CaMalformedError('CA certificate must carry exactly one spiffe:// URI SAN')
  try {
    return parseTrustDomainSpiffeId(uris[0])
  } catch (cause) {
    throw new CaMalformedError('CA certificate URI SAN is not spiffe://<trust-domain>', { cause })
  }
}

function caExtensions(
  ski: x509.SubjectKeyIdentifierExtension,
  authorityKeyId: string | undefined,
  trustDomain: string,
  pathLength: number | undefined,
): x509.Extension[] {
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(true, pathLength, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    ski,
    new x509.SubjectAlternativeNameExtension([{ type: 'url', value: trustDomainSpiffeId(trustDomain) }]),
  ]
  if (authorityKeyId) extensions.push(new x509.AuthorityKeyIdentifierExtension(authorityKeyId))
  return extensions
}

function checkNow(nowMs: number): number {
  if (!Number.isFinite(nowMs) || nowMs < 0)
    throw new InvalidCaOptionError('nowMs', 'must be a finite time in ms')
  return nowMs
}

function bufToHex(buf: ArrayBuffer): string {
  return Buffer.from(buf).toString('hex')
}
