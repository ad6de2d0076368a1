/** Small read-only views of certificate and CSR fields, shared by the CA, leaf checks and rotation. */
import { decodeSinglePem } from './pem.ts'
import { x509 } from './x509-setup.ts'

/** Parses one PEM `CERTIFICATE` block; `undefined` if it is not exactly that or does not parse. */
export function parseCertificatePem(pem: unknown): x509.X509Certificate | undefined {
  const der = decodeSinglePem(pem, 'CERTIFICATE')
  if (!der) return undefined
  try {
    return new x509.X509Certificate(der)
  } catch {
    return undefined
  }
}

/** Parses one PEM `CERTIFICATE REQUEST` block; `undefined` if it is not exactly that or does not parse. */
export function parseCsrPem(pem: unknown): x509.Pkcs10CertificateRequest | undefined {
  const der = decodeSinglePem(pem, 'CERTIFICATE REQUEST')
  if (!der) return undefined
  try {
    return new x509.Pkcs10CertificateRequest(der)
  } catch {
    return undefined
  }
}

export interface SanEntry {
  type: string
  value: string
}

/**
 * All subject alternative names of a certificate or CSR, `[]` when there is no SAN extension.
 * Throws if the extension is present but cannot be decoded.
 */
export function subjectAltNames(item: x509.X509Certificate | x509.Pkcs10CertificateRequest): SanEntry[] {
  const ext = item.getExtension('2.5.29.17')
  if (!ext) return []
  const san =
    ext instanceof x509.SubjectAlternativeNameExtension
      ? ext
      : new x509.SubjectAlternativeNameExtension(ext.rawData)
  return san.names.items.map((n) => ({ type: n.type, value: n.value }))
}

/** The URI SANs of a certificate or CSR (SPIFFE ids live there). Throws like `subjectAltNames`. */
export function uriSans(item: x509.X509Certificate | x509.Pkcs10CertificateRequest): string[] {
  return subjectAltNames(item)
    .filter((n) => n.type === 'url')
    .map((n) => n.value)
}

/** Subject key identifier as lowercase hex, if present. */
export function subjectKeyId(cert: x509.X509Certificate): string | undefined {
  return cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId?.toLowerCase()
}

/** Authority key identifier (key id form) as lowercase hex, if present. */
export function authorityKeyId(cert: x509.X509Certificate): string | undefined {
  return cert.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId?.toLowerCase()
}

export interface CaConstraints {
  isCa: boolean
  pathLength: number | undefined
  canSignCertificates: boolean
}

/** basicConstraints and keyUsage as they matter for path validation (RFC 5280 §6.1.4 (k), (n)). */
export function caConstraints(cert: x509.X509Certificate): CaConstraints {
  const bc = cert.getExtension(x509.BasicConstraintsExtension)
  const ku = cert.getExtension(x509.KeyUsagesExtension)
  const isCa = bc?.ca === true
  return {
    isCa,
    pathLength: bc?.pathLength,
    canSignCertificates: isCa && (!ku || (ku.usages & x509.KeyUsageFlags.keyCertSign) !== 0),
  }
}

/** DER bytes of a certificate's subject / issuer name, for exact name comparison. */
export function sameName(a: x509.Name, b: x509.Name): boolean {
  return Buffer.from(a.toArrayBuffer()).equals(Buffer.from(b.toArrayBuffer()))
}

/** True when two certificates are byte-identical. */
export function sameCertificate(a: x509.X509Certificate, b: x509.X509Certificate): boolean {
  return Buffer.from(a.rawData).equals(Buffer.from(b.rawData))
}
