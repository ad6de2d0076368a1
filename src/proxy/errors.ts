/**
 * Errors of the data plane. One class per failure, each with a stable `name` and static `code`
 * (`PEERMESH_ERR_...`) and the cause attached when there is one. Tests branch on `code`.
 * Data-path failures are also reported to clients: the HTTP mode answers with the code in an
 * `x-peermesh-error` header.
 */
import { PeermeshError } from '../common/errors.ts'

/** The base of the data plane's errors. */
export abstract class ProxyError extends PeermeshError {}

/** A proxy option is out of range or inconsistent; `field` names it. */
export class InvalidProxyConfigError extends ProxyError {
  static override readonly code = 'PEERMESH_ERR_INVALID_PROXY_CONFIG'
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`)
  }
}

/** A traffic split is malformed (weights, subset names). */
export class InvalidSplitConfigError extends ProxyError {
  static override readonly code = 'PEERMESH_ERR_INVALID_SPLIT_CONFIG'
}

/** The certificate source has no certificate yet: a listener cannot start. */
export class NoCertificateError extends ProxyError {
  static override readonly code = 'PEERMESH_ERR_PROXY_NO_CERTIFICATE'
}

/** No healthy, non-ejected endpoint for the upstream. */
export class NoHealthyEndpointError extends ProxyError {
  static override readonly code = 'PEERMESH_ERR_NO_HEALTHY_ENDPOINT'
}

/** Connecting (TCP + mutual TLS handshake) to an endpoint failed or timed out. */
export class UpstreamConnectError extends ProxyError {
  static override readonly code = 'PEERMESH_ERR_UPSTREAM_CONNECT'
}

/** The endpoint closed or reset the connection before sending a first response byte. */
export class UpstreamResetError extends ProxyError {
  static override readonly code = 'PEERMESH_ERR_UPSTREAM_RESET'
}

/** A request took longer than the request timeout. */
export class UpstreamTimeoutError extends ProxyError {
  static override readonly code = 'PEERMESH_ERR_UPSTREAM_TIMEOUT'
}

/** The local authorizer denies this source -> destination; the remote inbound refused us. */
export class UpstreamDeniedError extends ProxyError {
  static override readonly code = 'PEERMESH_ERR_UPSTREAM_DENIED'
}

/** A listener was started twice, or used after stop. */
export class ListenerStateError extends ProxyError {
  static override readonly code = 'PEERMESH_ERR_PROXY_LISTENER_STATE'
}
