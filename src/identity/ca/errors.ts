/**
 * Errors raised by the mesh certificate authority, leaf certificates and their rotation.
 *
 * One class per failure, each with a stable `name` and `code` (`PEERMESH_ERR_...`) and the
 * underlying `cause` attached when there is one. Callers and tests branch on `code`, never on
 * message text.
 */

/** Common base so callers can catch "any identity error" and still read a stable `code`. */
export abstract class IdentityError extends Error {
  abstract readonly code: string

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

/** A trust domain is not a lowercase DNS name (labels of a-z0-9 and '-', 1–63 chars). */
export class InvalidTrustDomainError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_INVALID_TRUST_DOMAIN'
  override readonly name = 'InvalidTrustDomainError'
  readonly code = InvalidTrustDomainError.code
}

/** A service name is not a single lowercase DNS label. */
export class InvalidServiceNameError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_INVALID_SERVICE_NAME'
  override readonly name = 'InvalidServiceNameError'
  readonly code = InvalidServiceNameError.code
}

/** A URI is not of the form `spiffe://<trust-domain>/svc/<service>` (or `spiffe://<trust-domain>`). */
export class InvalidSpiffeIdError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_INVALID_SPIFFE_ID'
  override readonly name = 'InvalidSpiffeIdError'
  readonly code = InvalidSpiffeIdError.code
}

/** An option given to the CA, a leaf request or the rotator is out of range; `field` names it. */
export class InvalidCaOptionError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_INVALID_CA_OPTION'
  override readonly name = 'InvalidCaOptionError'
  readonly code = InvalidCaOptionError.code

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
  static readonly code = 'PEERMESH_ERR_UNSUPPORTED_KEY_TYPE'
  override readonly name = 'UnsupportedKeyTypeError'
  readonly code = UnsupportedKeyTypeError.code
}

/** The CA certificate or key cannot be parsed, is not a CA, or the key does not match it. */
export class CaMalformedError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_CA_MALFORMED'
  override readonly name = 'CaMalformedError'
  readonly code = CaMalformedError.code
}

/** The signing CA is outside its validity window at the requested time. */
export class CaNotValidNowError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_CA_NOT_VALID_NOW'
  override readonly name = 'CaNotValidNowError'
  readonly code = CaNotValidNowError.code
}

/** A leaf was requested for a trust domain other than the signing CA's. */
export class TrustDomainMismatchError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_TRUST_DOMAIN_MISMATCH'
  override readonly name = 'TrustDomainMismatchError'
  readonly code = TrustDomainMismatchError.code
}

/** A certificate signing request is not a parseable PKCS#10 PEM (or is too large). */
export class CsrMalformedError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_CSR_MALFORMED'
  override readonly name = 'CsrMalformedError'
  readonly code = CsrMalformedError.code
}

/** The CSR's self-signature does not verify: the requester does not hold the private key. */
export class CsrBadSignatureError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_CSR_BAD_SIGNATURE'
  override readonly name = 'CsrBadSignatureError'
  readonly code = CsrBadSignatureError.code
}

/** The CSR does not ask for exactly the one SPIFFE id that the requester is entitled to. */
export class CsrIdentityMismatchError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_CSR_IDENTITY_MISMATCH'
  override readonly name = 'CsrIdentityMismatchError'
  readonly code = CsrIdentityMismatchError.code
}

/** Leaf signing is over its rate limit; retry after `retryAfterMs`. */
export class LeafSigningRateLimitedError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_LEAF_SIGNING_RATE_LIMITED'
  override readonly name = 'LeafSigningRateLimitedError'
  readonly code = LeafSigningRateLimitedError.code

  constructor(readonly retryAfterMs: number) {
    super(`leaf signing rate limit reached; retry in ${retryAfterMs} ms`)
  }
}

/** One leaf request attempt took longer than its timeout and was aborted. */
export class LeafRequestTimeoutError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_LEAF_REQUEST_TIMEOUT'
  override readonly name = 'LeafRequestTimeoutError'
  readonly code = LeafRequestTimeoutError.code
}

/** The certificate returned for a leaf request is not for our key or our SPIFFE id. */
export class LeafResponseInvalidError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_LEAF_RESPONSE_INVALID'
  override readonly name = 'LeafResponseInvalidError'
  readonly code = LeafResponseInvalidError.code
}

/** A TLS peer's certificate does not carry the SPIFFE id we expected of it. */
export class PeerIdentityMismatchError extends IdentityError {
  static readonly code = 'PEERMESH_ERR_PEER_IDENTITY_MISMATCH'
  override readonly name = 'PeerIdentityMismatchError'
  readonly code = PeerIdentityMismatchError.code
}
