/**
 * TLS contexts built from a `CertificateSource`, once per certificate (never per connection), and
 * rebuilt when it rotates. Also the SPIFFE identity of a peer certificate, remembered by
 * fingerprint so that a busy listener parses each peer certificate once.
 */
import tls from 'node:tls'
import { peerServiceId } from '../identity/ca/leaf.ts'
import { serviceSpiffeId } from '../identity/ca/spiffe.ts'
import { MESH_TLS_CIPHERSUITES, PEER_ID_CACHE_SIZE } from './constants.ts'
import { PeerIdentityMismatchError } from '../identity/ca/errors.ts'
import { NoCertificateError } from './errors.ts'
import type { CertificateSource, ServiceCertificate, Unsubscribe } from './types.ts'

/** Server options for `tls.createServer` / `server.setSecureContext`: TLS 1.3 only. */
export function serverContextOptions(cert: ServiceCertificate): tls.SecureContextOptions {
  return {
    key: cert.keyPem,
    cert: certChain(cert),
    ca: [...cert.rootsPem],
    minVersion: 'TLSv1.3',
    ciphers: MESH_TLS_CIPHERSUITES,
  }
}

/** A client context presenting the leaf and trusting the roots: share it across connections. */
export function clientSecureContext(cert: ServiceCertificate): tls.SecureContext {
  return tls.createSecureContext({
    key: cert.keyPem,
    cert: certChain(cert),
    ca: [...cert.rootsPem],
    minVersion: 'TLSv1.3',
    ciphers: MESH_TLS_CIPHERSUITES,
  })
}

function certChain(cert: ServiceCertificate): string {
  const intermediates = cert.intermediatesPem ?? []
  return intermediates.length === 0 ? cert.certPem : [cert.certPem, ...intermediates].join('\n')
}

/**
 * The current client context of one service; follows rotations. `start()` throws
 * `NoCertificateError` if the source has no certificate yet.
 */
export class ClientTlsMaterial {
  private context: tls.SecureContext | undefined
  private unsubscribe: Unsubscribe | undefined

  constructor(private readonly source: CertificateSource) {}

  start(): void {
    if (this.unsubscribe) return
    const cert = this.source.current()
    if (!cert) throw new NoCertificateError('no leaf certificate for this service yet')
    this.context = clientSecureContext(cert)
    this.unsubscribe = this.source.on('cert:rotated', (next) => {
      this.context = clientSecureContext(next)
    })
  }

  stop(): void {
    this.unsubscribe?.()
    this.unsubscribe = undefined
  }

  get secureContext(): tls.SecureContext {
    if (!this.context) throw new NoCertificateError('client TLS material used before start()')
    return this.context
  }
}

type PeerId = { trustDomain: string; service: string } | null

/** Fingerprint -> SPIFFE service id of peer certificates seen recently. Bounded; cleared when full. */
const peerIdCache = new Map<string, PeerId>()

/** The SPIFFE service id of a peer certificate, or null when it has none (or several). */
export function cachedPeerId(fingerprint256: string, raw: Uint8Array): PeerId {
  const hit = peerIdCache.get(fingerprint256)
  if (hit !== undefined) return hit
  const id = peerServiceId(raw) ?? null
  if (peerIdCache.size >= PEER_ID_CACHE_SIZE) peerIdCache.clear()
  peerIdCache.set(fingerprint256, id)
  return id
}

/** The peer's service name if its certificate is a service leaf of `trustDomain`, else undefined. */
export function peerServiceOf(socket: tls.TLSSocket, trustDomain: string): string | undefined {
  const cert = socket.getPeerX509Certificate()
  if (!cert) return undefined
  const id = cachedPeerId(cert.fingerprint256, cert.raw)
  return id !== null && id.trustDomain === trustDomain ? id.service : undefined
}

/**
 * `checkServerIdentity` for outbound connections: the server must present the SPIFFE id of
 * `service` in `trustDomain` (the chain itself is checked by OpenSSL against the roots).
 */
export function serverIdentityCheck(
  trustDomain: string,
  service: string,
): (hostname: string, cert: tls.PeerCertificate) => Error | undefined {
  const expected = serviceSpiffeId(trustDomain, service)
  return (_hostname, cert) => {
    const id = cachedPeerId(cert.fingerprint256, cert.raw)
    if (id !== null && id.trustDomain === trustDomain && id.service === service) return undefined
    return new PeerIdentityMismatchError(`endpoint does not present ${expected}`)
  }
}
