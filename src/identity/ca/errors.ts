/**
 * Errors raised by the mesh certificate authority, leaf certificates and their rotation.
 *
 * One class per failure, each with a stable `name` and `code` (`PEERMESH_ERR_...`) and the
 * underlying `cause` attached when there is one. Callers and tests branch on `code`, never on
 * message text.
 */
import { PeermeshError } from '../../common/errors.ts'

/** Common base so callers can catch "any identity error" and still read a stable `code`. */
export abstract class IdentityError extends PeermeshError {}

/** A trust domain is not a lowercase DNS name (labels of a-z0-9 and '-', 1–63 chars). */
export class InvalidTrustDomainError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_INVALID_TRUST_DOMAIN'
}

/** A service name is not a single lowercase DNS label. */
export class InvalidServiceNameError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_INVALID_SERVICE_NAME'
}

/** A URI is not of the form `spiffe://<trust-domain>/svc/<service>` (or `spiffe://<trust-domain>`). */
export class InvalidSpiffeIdError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_INVALID_SPIFFE_ID'
}

/** An option given to the CA, a leaf request or the rotator is out of range; `field` names it. */
export class InvalidCaOptionError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_INVALID_CA_OPTION'

  constructor(
    readonly field: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${field}: ${message}`, options)
  }
}

/** A key (in a CSR, certificate or PEM) is not one of the supported types (ed25519, ECDSA P-256). */
export class UnsupportedKeyTypeError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_UNSUPPORTED_KEY_TYPE'
}

/** The CA certificate or key cannot be parsed, is not a CA, or the key does not match it. */
export class CaMalformedError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_CA_MALFORMED'
}

/** The signing CA is outside its validity window at the requested time. */
export class CaNotValidNowError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_CA_NOT_VALID_NOW'
}

/** A leaf was requested for a trust domain other than the signing CA's. */
export class TrustDomainMismatchError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_TRUST_DOMAIN_MISMATCH'
}

/** A certificate signing request is not a parseable PKCS#10 PEM (or is too large). */
export class CsrMalformedError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_CSR_MALFORMED'
}

/** The CSR's self-signature does not verify: the requester does not hold the private key. */
export class CsrBadSignatureError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_CSR_BAD_SIGNATURE'
}

/** The CSR does not ask for exactly the one SPIFFE id that the requester is entitled to. */
export class CsrIdentityMismatchError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_CSR_IDENTITY_MISMATCH'
}

/** Leaf signing is over its rate limit; retry after `retryAfterMs`. */
export class LeafSigningRateLimitedError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_LEAF_SIGNING_RATE_LIMITED'

  constructor(readonly retryAfterMs: number) {
    super(`leaf signing rate limit reached; retry in ${retryAfterMs} ms`)
  }
}

/** One leaf request attempt took longer than its timeout and was aborted. */
export class LeafRequestTimeoutError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_LEAF_REQUEST_TIMEOUT'
}

/** The certificate returned for a leaf request is not for our key or our SPIFFE id. */
export class LeafResponseInvalidError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_LEAF_RESPONSE_INVALID'
}

/** A TLS peer's certificate does not carry the SPIFFE id we expected of it. */
export class PeerIdentityMismatchError extends IdentityError {
  static override readonly code = 'PEERMESH_ERR_PEER_IDENTITY_MISMATCH'
}
