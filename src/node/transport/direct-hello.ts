import { FINGERPRINT_BYTES } from './direct-cert.ts'

/**
 * The exchange over libp2p that sets up a direct Raft connection (direct-messenger.ts), on a
 * stream of `DIRECT_HELLO_PROTOCOL`, one frame each way:
 *   request  1 | fingerprint (32)              the dialer's certificate;
 *   reply    1 | u16 port | fingerprint (32)   the listener's endpoint and certificate.
 * The stream is Noise-authenticated, so the listener binds the dialer's fingerprint to the peer id
 * of the stream, and the dialer pins the listener's. Anything else is refused (undefined).
 */
export const DIRECT_HELLO_PROTOCOL = '/peermesh/raft/direct-hello/1'
const VERSION = 1
export const HELLO_REQUEST_BYTES = 1 + FINGERPRINT_BYTES
export const HELLO_REPLY_BYTES = 3 + FINGERPRINT_BYTES

export interface DirectEndpoint {
  port: number
  fingerprint: Uint8Array
}

export function encodeHelloRequest(fingerprint: Uint8Array): Uint8Array {
  if (fingerprint.length !== FINGERPRINT_BYTES) throw new RangeError('bad fingerprint length')
  const out = new Uint8Array(HELLO_REQUEST_BYTES)
  out[0] = VERSION
  out.set(fingerprint, 1)
  return out
}

export function decodeHelloRequest(bytes: Uint8Array): Uint8Array | undefined {
  if (bytes.length !== HELLO_REQUEST_BYTES || bytes[0] !== VERSION) return undefined
  return bytes.slice(1)
}

export function encodeHelloReply(endpoint: DirectEndpoint): Uint8Array {
  const { port, fingerprint } = endpoint
  if (!Number.isInteger(port) || port < 1 || port > 0xffff) throw new RangeError(`bad port ${port}`)
  if (fingerprint.length !== FINGERPRINT_BYTES) throw new RangeError('bad fingerprint length')
  const out = new Uint8Array(HELLO_REPLY_BYTES)
  out[0] = VERSION
  out[1] = port >>> 8
  out[2] = port & 0xff
  out.set(fingerprint, 3)
  return out
}

export function decodeHelloReply(bytes: Uint8Array): DirectEndpoint | undefined {
  if (bytes.length !== HELLO_REPLY_BYTES || bytes[0] !== VERSION) return undefined
  const port = (bytes[1]! << 8) | bytes[2]!
  if (port === 0) return undefined
  return { port, fingerprint: bytes.slice(3) }
}
