/**
 * The per-request check an inbound sidecar makes before a request reaches the local app, for
 * destinations whose protocol is http, http2 or grpc: L7 intentions (Consul's `Permissions`) and
 * local rate limits (`RateLimits`). Both the HTTP/1.1 and the HTTP/2 inbound paths call the same
 * gate with the caller's verified SPIFFE service, so one rule means the same on either protocol.
 *
 * A denied request never reaches the app: HTTP/1.1 and HTTP/2 get `status`, gRPC gets
 * `grpcStatus` in a trailers-only response (HTTP 200, `grpc-status`, `grpc-message`).
 */

/** What the gate sees of one request; header names are lower case. */
export interface GateRequest {
  /** The caller's service, from its verified client certificate. */
  source: string
  method: string
  /** The request target's path, without the query string. */
  path: string
  headers: Readonly<Record<string, string | readonly string[] | undefined>>
}

export type GateDecision =
  | { allow: true }
  | {
      allow: false
      /** `intention`: an L7 permission denied it; `rate-limit`: over the local limit. */
      reason: 'intention' | 'rate-limit'
      /** 403 for `intention`, 429 for `rate-limit`. */
      status: number
      /** PERMISSION_DENIED (7) for `intention`, RESOURCE_EXHAUSTED (8) for `rate-limit`. */
      grpcStatus: number
    }

export interface RequestGate {
  check(request: GateRequest): GateDecision
}

/** The gate of a destination with no L7 rules: every request passes. */
export const OPEN_GATE: RequestGate = { check: () => ({ allow: true }) }
