/**
 * Service leaf certificates on the requesting side: make a key and CSR locally (the private key
 * never leaves this process), and verify a presented leaf against the trusted roots.
 *
 * `verifyLeaf` is what an inbound proxy runs on a peer's certificate after (or instead of)
 * OpenSSL's own check: path to a trusted root, possibly through the cross-signed intermediate of a
 * root rotation; validity window; exactly one SPIFFE URI SAN in the expected trust domain, for the
 * expected service. It returns a result rather than throwing: a bad leaf is an expected input.
 */
import { MAX_CHAIN_DEPTH, MAX_PEM_LENGTH } from './constants.ts'
import {
  authorityKeyId,
  caConstraints,
  parseCertificatePem,
  sameCertificate,
  sameName,
  uriSans,
  subjectKeyId,
} from './cert-info.ts'
import { CaMalformedError, InvalidCaOptionError, PeerIdentityMismatchError } from './errors.ts'
import {
  exportPrivateKeyPem,
  generateKeyPair,
  isKeyType,
  type KeyType,
  signingAlgorithm,
} from '../keys/keys.ts'
import { splitPemBundle } from './pem.ts'
import {
  parseServiceSpiffeId,
  type ServiceSpiffeId,
  serviceSpiffeId,
  validateServiceName,
  validateTrustDomain,
} from './spiffe.ts'
import { x509 } from './x509-setup.ts'

/** Most intermediates considered per verification (a rotation needs one; a hostile peer may send many). */
const MAX_INTERMEDIATES = 8

export interface CreateLeafKeyAndCsrOptions {
  service: string
  trustDomain: string
  /** Default 'ed25519'. */
  keyType?: KeyType
}

export interface LeafKeyAndCsr {
  /** PKCS#8 PEM private key. Keep it in this process; send only the CSR. */
  keyPem: string
  csrPem: string
  spiffeId: string
  /** DER SubjectPublicKeyInfo (base64) of the key, to recognise the certificate issued for it. */
  publicKeySpki: string
}

/** Generates a fresh key pair and a CSR asking for exactly `spiffe://<td>/svc/<service>`. */
export async function createLeafKeyAndCsr(options: CreateLeafKeyAndCsrOptions): Promise<LeafKeyAndCsr> {
  const service = validateServiceName(options.service)
  const spiffeId = serviceSpiffeId(options.trustDomain, service)
  const keyType = options.keyType ?? 'ed25519'
  if (!isKeyType(keyType)) throw new InvalidCaOptionError('keyType', "must be 'ed25519' or 'ecdsa-p256'")
  const keys = await generateKeyPair(keyType)
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [service] }],
    keys,
    signingAlgorithm: signingAlgorithm(keyType),
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeId }])],
  })
  return {
    keyPem: await exportPrivateKeyPem(keys.privateKey),
    csrPem: csr.toString('pem'),
    spiffeId,
    publicKeySpki: Buffer.from(csr.publicKey.rawData).toString('base64'),
  }
}

/** Stable codes for why a leaf was refused. */
export const LeafVerificationCode = {
  /** Not a single well-formed PEM certificate. */
  MALFORMED: 'PEERMESH_ERR_LEAF_MALFORMED',
  /** The certificate is a CA (basicConstraints CA:true), not a leaf. */
  IS_CA: 'PEERMESH_ERR_LEAF_IS_CA',
  /** keyUsage lacks digitalSignature, or extKeyUsage allows neither serverAuth nor clientAuth. */
  BAD_KEY_USAGE: 'PEERMESH_ERR_LEAF_BAD_KEY_USAGE',
  /** No URI SAN, several, or one that is not `spiffe://<td>/svc/<service>`. */
  NO_SPIFFE_ID: 'PEERMESH_ERR_LEAF_NO_SPIFFE_ID',
  WRONG_TRUST_DOMAIN: 'PEERMESH_ERR_LEAF_WRONG_TRUST_DOMAIN',
  WRONG_SERVICE: 'PEERMESH_ERR_LEAF_WRONG_SERVICE',
  NOT_YET_VALID: 'PEERMESH_ERR_LEAF_NOT_YET_VALID',
  EXPIRED: 'PEERMESH_ERR_LEAF_EXPIRED',
  /** No path of valid signatures from the leaf to a trusted root. */
  UNTRUSTED: 'PEERMESH_ERR_LEAF_UNTRUSTED',
  /** A path exists, but an intermediate or root on it is outside its validity window. */
  CHAIN_NOT_VALID_NOW: 'PEERMESH_ERR_LEAF_CHAIN_NOT_VALID_NOW',
} as const
export type LeafVerificationCode = (typeof LeafVerificationCode)[keyof typeof LeafVerificationCode]

export interface VerifyLeafOptions {
  /** Trusted root certificates (PEM). Malformed roots are a configuration error and throw. */
  roots: readonly string[]
  /** Untrusted intermediates offered with the leaf, e.g. a cross-signed root. PEM, or PEM bundles. */
  intermediates?: readonly string[]
  /** If given, the leaf must be for this service. */
  expectedService?: string
  trustDomain: string
  nowMs: number
}

export type VerifyLeafResult =
  | {
      ok: true
      spiffeId: string
      service: string
      trustDomain: string
      notAfter: number
      /** Subject key ids from the leaf's issuer up to the trusted root. */
      chainIds: string[]
    }
  | { ok: false; code: LeafVerificationCode; reason: string }

/**
 * Verifies a leaf certificate. Cheap checks (form, usage, SPIFFE id, validity) come first so a
 * hostile peer cannot make us do signature work for a certificate that fails anyway.
 * For many verifications against the same roots, build one `LeafVerifier` instead.
 */
export async function verifyLeaf(leafPem: string, options: VerifyLeafOptions): Promise<VerifyLeafResult> {
  return new LeafVerifier(options).verify(leafPem, options)
}

export interface LeafVerifierOptions {
  /** Trusted root certificates (PEM). Malformed roots are a configuration error and throw. */
  roots: readonly string[]
  trustDomain: string
}

export interface LeafVerifyCallOptions {
  intermediates?: readonly string[]
  expectedService?: string
  nowMs: number
}

/**
 * `verifyLeaf` with the roots parsed once: build one per trust bundle (it changes only on root
 * rotation) and call `verify` per connection.
 */
export class LeafVerifier {
  readonly trustDomain: string
  private readonly roots: x509.X509Certificate[]

  constructor(options: LeafVerifierOptions) {
    this.trustDomain = validateTrustDomain(options.trustDomain)
    this.roots = options.roots.map((pem, i) => {
      const cert = parseCertificatePem(pem)
      if (!cert || !caConstraints(cert).canSignCertificates) {
        throw new CaMalformedError(`trusted root #${i} is not a well-formed CA certificate`)
      }
      return cert
    })
  }

  async verify(leafPem: string, options: LeafVerifyCallOptions): Promise<VerifyLeafResult> {
    const trustDomain = this.trustDomain
    const expectedService =
      options.expectedService === undefined ? undefined : validateServiceName(options.expectedService)
    if (!Number.isFinite(options.nowMs))
      throw new InvalidCaOptionError('nowMs', 'must be a finite time in ms')

    const leaf = parseCertificatePem(leafPem)
    if (!leaf) return fail('MALFORMED', 'not a single well-formed PEM certificate')
    if (caConstraints(leaf).isCa) return fail('IS_CA', 'certificate is a CA, not a leaf')
    const usageProblem = leafUsageProblem(leaf)
    if (usageProblem) return fail('BAD_KEY_USAGE', usageProblem)

    let uris: string[]
    try {
      uris = uriSans(leaf)
    } catch {
      return fail('MALFORMED', 'subjectAltName does not decode')
    }
    // The X.509-SVID spec: exactly one URI SAN, and it is the SPIFFE id.
    if (uris.length !== 1) return fail('NO_SPIFFE_ID', `expected exactly one URI SAN, found ${uris.length}`)
    const spiffeId = uris[0]!
    let id: { trustDomain: string; service: string }
    try {
      id = parseServiceSpiffeId(spiffeId)
    } catch {
      return fail('NO_SPIFFE_ID', 'URI SAN is not spiffe://<trust-domain>/svc/<service>')
    }
    if (id.trustDomain !== trustDomain) {
      return fail('WRONG_TRUST_DOMAIN', `leaf is for trust domain ${id.trustDomain}, expected ${trustDomain}`)
    }
    if (expectedService !== undefined && id.service !== expectedService) {
      return fail('WRONG_SERVICE', `leaf is for service ${id.service}, expected ${expectedService}`)
    }
    if (options.nowMs < leaf.notBefore.getTime()) return fail('NOT_YET_VALID', 'leaf is not valid yet')
    if (options.nowMs >= leaf.notAfter.getTime()) return fail('EXPIRED', 'leaf has expired')

    const path = await buildPath(leaf, this.roots, parseIntermediates(options.intermediates), options.nowMs)
    if (!path.ok) {
      return path.timeProblem ? fail('CHAIN_NOT_VALID_NOW', path.reason) : fail('UNTRUSTED', path.reason)
    }
    return {
      ok: true,
      spiffeId,
      service: id.service,
      trustDomain: id.trustDomain,
      notAfter: leaf.notAfter.getTime(),
      chainIds: path.chainIds,
    }
  }
}

/** Intermediates come from the peer: skip what does not parse, and bound how many we consider. */
function parseIntermediates(pems: readonly string[] | undefined): x509.X509Certificate[] {
  const intermediates: x509.X509Certificate[] = []
  for (const pem of pems ?? []) {
    if (typeof pem !== 'string' || pem.length > MAX_PEM_LENGTH * MAX_CHAIN_DEPTH) continue
    let blocks: string[]
    try {
      blocks = splitPemBundle(pem, 'CERTIFICATE')
    } catch {
      continue
    }
    for (const one of blocks) {
      const cert = parseCertificatePem(one)
      if (cert && intermediates.length < MAX_INTERMEDIATES) intermediates.push(cert)
    }
  }
  return intermediates
}

type PathResult = { ok: true; chainIds: string[] } | { ok: false; timeProblem: boolean; reason: string }

/**
 * Depth-first search for a path leaf -> (intermediates) -> trusted root (RFC 5280 §6.1, reduced
 * to what the mesh uses): each issuer's subject equals the child's issuer name, its key id matches
 * the child's authority key id when both are present, it is a CA allowed to sign certificates,
 * its pathLength allows the intermediates below it, it is valid at `nowMs`, and the child's
 * signature verifies under its key. The trust anchor is a root given in `roots` (byte-equal).
 */
async function buildPath(
  leaf: x509.X509Certificate,
  roots: x509.X509Certificate[],
  intermediates: x509.X509Certificate[],
  nowMs: number,
): Promise<PathResult> {
  let sawTimeProblem = false
  const candidates = [
    ...roots.map((cert) => ({ cert, root: true })),
    ...intermediates.map((cert) => ({ cert, root: false })),
  ]

  const search = async (
    child: x509.X509Certificate,
    intermediatesBelow: number,
    visited: Set<x509.X509Certificate>,
  ): Promise<string[] | undefined> => {
    const aki = authorityKeyId(child)
    for (const { cert, root } of candidates) {
      if (visited.has(cert) || !sameName(cert.subjectName, child.issuerName)) continue
      const ski = subjectKeyId(cert)
      if (aki && ski && aki !== ski) continue
      const constraints = caConstraints(cert)
      if (!constraints.canSignCertificates) continue
      if (constraints.pathLength !== undefined && intermediatesBelow > constraints.pathLength) continue
      if (!(await signedBy(child, cert))) continue
      if (nowMs < cert.notBefore.getTime() || nowMs >= cert.notAfter.getTime()) {
        sawTimeProblem = true
        continue
      }
      const id = ski ?? '?'
      const isAnchor = root || roots.some((r) => sameCertificate(r, cert))
      if (isAnchor) return [id]
      if (visited.size >= MAX_CHAIN_DEPTH) continue
      const above = await search(cert, intermediatesBelow + 1, new Set([...visited, cert]))
      if (above) return [id, ...above]
    }
    return undefined
  }

  const chainIds = await search(leaf, 0, new Set())
  if (chainIds) return { ok: true, chainIds }
  return sawTimeProblem
    ? {
        ok: false,
        timeProblem: true,
        reason: 'the only paths to a trusted root pass a CA outside its validity',
      }
    : { ok: false, timeProblem: false, reason: 'no chain of valid signatures to a trusted root' }
}

async function signedBy(child: x509.X509Certificate, issuer: x509.X509Certificate): Promise<boolean> {
  try {
    return await child.verify({ publicKey: issuer.publicKey, signatureOnly: true })
  } catch {
    return false
  }
}

function leafUsageProblem(leaf: x509.X509Certificate): string | undefined {
  const ku = leaf.getExtension(x509.KeyUsagesExtension)
  if (ku && (ku.usages & x509.KeyUsageFlags.digitalSignature) === 0) return 'keyUsage lacks digitalSignature'
  const eku = leaf.getExtension(x509.ExtendedKeyUsageExtension)
  if (
    eku &&
    !eku.usages.some((u) => u === x509.ExtendedKeyUsage.serverAuth || u === x509.ExtendedKeyUsage.clientAuth)
  ) {
    return 'extKeyUsage allows neither serverAuth nor clientAuth'
  }
  return undefined
}

function fail(key: keyof typeof LeafVerificationCode, reason: string): VerifyLeafResult {
  return { ok: false, code: LeafVerificationCode[key], reason }
}

/**
 * The service SPIFFE id in a DER certificate (e.g. `tlsSocket.getPeerCertificate().raw`), if it
 * carries exactly one URI SAN and that is a valid service SPIFFE id. Parsing only: the chain is
 * checked by the TLS stack (`ca` + `rejectUnauthorized`) or by `verifyLeaf`.
 */
export function peerServiceId(der: Uint8Array): ServiceSpiffeId | undefined {
  let uris: string[]
  try {
    uris = uriSans(new x509.X509Certificate(der))
    return uris.length === 1 ? parseServiceSpiffeId(uris[0]) : undefined
  } catch {
    return undefined
  }
}

/**
 * A `checkServerIdentity` for `tls.connect` in the mesh: instead of a hostname, the server must
 * present the SPIFFE id of `expectedService` in `trustDomain`. Returns a coded error otherwise.
 */
export function spiffeServerIdentityCheck(
  trustDomain: string,
  expectedService: string,
): (hostname: string, cert: { raw: Uint8Array }) => Error | undefined {
  const expected = serviceSpiffeId(trustDomain, expectedService)
  return (_hostname, cert) => {
    const id = peerServiceId(cert.raw)
    if (id && id.trustDomain === trustDomain && id.service === expectedService) return undefined
    return new PeerIdentityMismatchError(`server does not present ${expected}`)
  }
}
