/**
 * What the HTTP/2 outbound and inbound paths share: gRPC status codes, the trailers-only answer
 * the proxy gives a gRPC client, header filtering, and relaying one response (headers, body,
 * trailers) from an upstream stream to a client stream with backpressure.
 */
import http2 from 'node:http2'
import { HOP_BY_HOP_HEADERS } from './constants.ts'

/** gRPC status codes the proxy answers with (grpc/doc/statuscodes.md). */
export const GRPC_STATUS = {
  OK: 0,
  CANCELLED: 1,
  DEADLINE_EXCEEDED: 4,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  INTERNAL: 13,
  UNAVAILABLE: 14,
} as const

export const {
  NGHTTP2_NO_ERROR,
  NGHTTP2_CANCEL,
  NGHTTP2_REFUSED_STREAM,
  NGHTTP2_INTERNAL_ERROR,
  NGHTTP2_PROTOCOL_ERROR,
  NGHTTP2_FLAG_END_STREAM,
} = http2.constants

/**
 * Whether a response `:status` from the next hop can be relayed as a final response: 200-599.
 * nghttp2 accepts any three digits (600-999 included) but Node's `respond()` throws on a status
 * outside 100-599, and a 1xx is informational, never final (a 1xx that ends the stream reaches
 * the 'response' event too).
 */
export function isRelayableStatus(status: unknown): status is number {
  return typeof status === 'number' && Number.isInteger(status) && status >= 200 && status <= 599
}

/**
 * `down.respond(headers, options)` for headers that carry values from a peer: Node validates them
 * and throws (ERR_HTTP2_STATUS_INVALID, ERR_HTTP2_INVALID_HEADER_VALUE, ...), which inside an event
 * handler would be uncaught. On such an error the stream is reset (INTERNAL_ERROR) and false is
 * returned.
 */
export function tryRespond(
  down: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  options?: http2.ServerStreamResponseOptions,
): boolean {
  try {
    down.respond(headers, options)
    return true
  } catch {
    if (!down.destroyed) down.close(NGHTTP2_INTERNAL_ERROR)
    return false
  }
}

/** `down.sendTrailers(trailers)` for trailers from a peer: on an error the stream is reset. */
export function trySendTrailers(down: http2.ServerHttp2Stream, trailers: http2.OutgoingHttpHeaders): void {
  try {
    down.sendTrailers(trailers)
  } catch {
    if (!down.destroyed) down.close(NGHTTP2_INTERNAL_ERROR)
  }
}

/** Whether a request (or response) is gRPC: `content-type: application/grpc[+proto|;...]`. */
export function isGrpc(headers: http2.IncomingHttpHeaders): boolean {
  const ct = headers['content-type']
  return typeof ct === 'string' && ct.startsWith('application/grpc')
}

/**
 * The headers of a message forwarded to the next hop: connection-specific ones dropped (RFC 9113
 * §8.2.2 forbids them in HTTP/2), except `te: trailers`, which gRPC requires end to end.
 */
export function forwardedHeaders(headers: http2.IncomingHttpHeaders): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {}
  for (const name in headers) {
    if (HOP_BY_HOP_HEADERS.has(name) && !(name === 'te' && headers[name] === 'trailers')) continue
    out[name] = headers[name]
  }
  return out
}

/** `grpc-message` is percent-encoded outside printable ASCII, `%` included (gRPC over HTTP/2). */
export function encodeGrpcMessage(message: string): string {
  return message.replace(/[^\x20-\x24\x26-\x7e]/gu, (c) =>
    [...Buffer.from(c, 'utf8')].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join(''),
  )
}

/**
 * Answers a gRPC request with a trailers-only response: HTTP 200, `grpc-status`, `grpc-message`
 * and `extra` headers, in one HEADERS frame that ends the stream.
 */
export function respondGrpcStatus(
  stream: http2.ServerHttp2Stream,
  grpcStatus: number,
  message: string,
  extra: http2.OutgoingHttpHeaders = {},
): void {
  tryRespond(
    stream,
    {
      ':status': 200,
      'content-type': 'application/grpc',
      'grpc-status': String(grpcStatus),
      'grpc-message': encodeGrpcMessage(message),
      ...extra,
    },
    { endStream: true },
  )
}

/**
 * Whether the client of `request` is sent the trailers of a response with `response` headers: a
 * gRPC response, or a client that said `te: trailers`. Otherwise trailers are dropped, which
 * spares a trailing HEADERS frame that Node sends one event-loop turn later (`sendTrailers`).
 */
export function passesTrailers(
  request: http2.IncomingHttpHeaders,
  response: http2.IncomingHttpHeaders,
): boolean {
  return request.te === 'trailers' || isGrpc(response)
}

/**
 * Relays the response of `up` to `down` once its headers (`headers`, with `flags`) are in: the
 * headers as `out`, the body with backpressure, then, with `trailers`, the trailers
 * (`grpc-status`, `grpc-message`, ...) as a trailing HEADERS frame. A reset of `up` after this
 * resets `down` with the same code. Headers Node refuses to send reset `down` (INTERNAL_ERROR)
 * and cancel `up`; callers check the `:status` first (`isRelayableStatus`).
 */
export function relayResponse(
  up: http2.ClientHttp2Stream,
  down: http2.ServerHttp2Stream,
  out: http2.OutgoingHttpHeaders,
  flags: number,
  withTrailers: boolean,
): void {
  up.once('close', () => {
    if (up.rstCode !== NGHTTP2_NO_ERROR && !down.closed) down.close(up.rstCode)
  })
  if ((flags & NGHTTP2_FLAG_END_STREAM) !== 0) {
    tryRespond(down, out, { endStream: true })
  } else if (withTrailers) relayWithTrailers(up, down, out)
  else if (tryRespond(down, out)) up.pipe(down)
  else up.close(NGHTTP2_CANCEL)
}

function relayWithTrailers(
  up: http2.ClientHttp2Stream,
  down: http2.ServerHttp2Stream,
  out: http2.OutgoingHttpHeaders,
): void {
  let trailers: http2.OutgoingHttpHeaders = {}
  up.on('trailers', (t: http2.IncomingHttpHeaders) => {
    trailers = forwardedHeaders(t)
  })
  if (!tryRespond(down, out, { waitForTrailers: true })) {
    up.close(NGHTTP2_CANCEL)
    return
  }
  // Without trailers from upstream, an empty trailing HEADERS frame ends the stream.
  down.on('wantTrailers', () => trySendTrailers(down, trailers))
  up.pipe(down)
}
