/**
 * Errors of the data plane. One class per failure, each with a stable `name` and `code`
 * (`PEERMESH_ERR_...`) and the cause attached when there is one. Tests branch on `code`.
 * Data-path failures are also reported to clients: the HTTP mode answers with the code in an
 * `x-peermesh-error` header.
 */

export abstract class ProxyError extends Error {
  abstract readonly code: string
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

/** A proxy option is out of range or inconsistent; `field` names it. */
export class InvalidProxyConfigError extends ProxyError {
  static readonly code = 'PEERMESH_ERR_INVALID_PROXY_CONFIG'
  override readonly name = 'InvalidProxyConfigError'
  readonly code = InvalidProxyConfigError.code
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`)
  }
}

/** A traffic split is malformed (weights, subset names). */
export class InvalidSplitConfigError extends ProxyError {
  static readonly code = 'PEERMESH_ERR_INVALID_SPLIT_CONFIG'
  override readonly name = 'InvalidSplitConfigError'
  readonly code = InvalidSplitConfigError.code
}

/** The certificate source has no certificate yet: a listener cannot start. */
export class NoCertificateError extends ProxyError {
  static readonly code = 'PEERMESH_ERR_PROXY_NO_CERTIFICATE'
  override readonly name = 'NoCertificateError'
  readonly code = NoCertificateError.code
}

/** No healthy, non-ejected endpoint for the upstream. */
export class NoHealthyEndpointError extends ProxyError {
  static readonly code = 'PEERMESH_ERR_NO_HEALTHY_ENDPOINT'
  override readonly name = 'NoHealthyEndpointError'
  readonly code = NoHealthyEndpointError.code
}

/** Connecting (TCP + mutual TLS handshake) to an endpoint failed or timed out. */
export class UpstreamConnectError extends ProxyError {
  static readonly code = 'PEERMESH_ERR_UPSTREAM_CONNECT'
  override readonly name = 'UpstreamConnectError'
  readonly code = UpstreamConnectError.code
}

/** The endpoint closed or reset the connection before sending a first response byte. */
export class UpstreamResetError extends ProxyError {
  static readonly code = 'PEERMESH_ERR_UPSTREAM_RESET'
  override readonly name = 'UpstreamResetError'
  readonly code = UpstreamResetError.code
}

/** A request took longer than the request timeout. */
export class UpstreamTimeoutError extends ProxyError {
  static readonly code = 'PEERMESH_ERR_UPSTREAM_TIMEOUT'
  override readonly name = 'UpstreamTimeoutError'
  readonly code = UpstreamTimeoutError.code
}

/** The local authorizer denies this source -> destination; the remote inbound refused us. */
export class UpstreamDeniedError extends ProxyError {
  static readonly code = 'PEERMESH_ERR_UPSTREAM_DENIED'
  override readonly name = 'UpstreamDeniedError'
  readonly code = UpstreamDeniedError.code
}

/** A listener was started twice, or used after stop. */
export class ListenerStateError extends ProxyError {
  static readonly code = 'PEERMESH_ERR_PROXY_LISTENER_STATE'
  override readonly name = 'ListenerStateError'
  readonly code = ListenerStateError.code
}
