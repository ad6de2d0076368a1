import {
  connect,
  createSecureContext,
  createServer,
  type SecureContext,
  type Server,
  type TLSSocket,
} from 'node:tls'
import type { Socket } from 'node:net'
import { createDirectCertificate, type DirectCertificate } from './direct-cert.ts'
import type { DirectEndpoint } from './direct-hello.ts'

/**
 * The TLS half of the direct Raft transport (direct-messenger.ts), in a module of its own so that
 * the build puts node:tls in a chunk loaded with the first direct connection, not at agent start.
 */

/** This agent's TLS listener and what its connections are made with. */
export interface DirectListener {
  server: Server
  cert: DirectCertificate
  /** Presents `cert` on connections from here (one context, not one parsed per connection). */
  clientContext: SecureContext
  endpoint: DirectEndpoint
}

export interface DirectListenOptions {
  /** This agent's peer id, named in its certificate. */
  self: string
  host: string
  alpn: string[]
  handshakeTimeoutMs: number
  maxConnections: number
  /** Whether a TCP connection from this address may go on to its TLS handshake. */
  admits: (remoteAddress: string | undefined) => boolean
  /** A connection whose handshake is done; nothing has been read from it. */
  onConnection: (socket: TLSSocket) => void
  /** A failed handshake (the socket is destroyed after). */
  onHandshakeError: (err: Error, socket: TLSSocket) => void
  onError: (err: Error) => void
}

/**
 * Makes this run's certificate (direct-cert.ts) and listens with mutual TLS 1.3 on a kernel-picked
 * port of `host`. Peers' certificates are requested but not verified here: the caller checks them
 * against registered fingerprints. Rejects when it cannot listen.
 */
export async function listenDirect(o: DirectListenOptions): Promise<DirectListener> {
  const cert = createDirectCertificate(o.self)
  // Our own certificate as the only CA: nobody is verified against it (fingerprints are checked
  // instead), and Node then does not build its store of public roots for these contexts.
  const credentials = { key: cert.key, cert: cert.cert, ca: [cert.cert], minVersion: 'TLSv1.3' as const }
  const server = createServer({
    ...credentials,
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: o.alpn,
    handshakeTimeout: o.handshakeTimeoutMs,
  })
  server.maxConnections = o.maxConnections
  // Before any TLS work: the handshake needs the client's first flight, which comes later.
  server.on('connection', (socket: Socket) => {
    if (!o.admits(socket.remoteAddress)) socket.destroy()
  })
  server.on('secureConnection', o.onConnection)
  server.on('tlsClientError', (err, socket) => {
    o.onHandshakeError(err, socket)
    socket.destroy()
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, o.host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  server.on('error', o.onError)
  const addr = server.address()
  if (addr === null || typeof addr === 'string') {
    server.close()
    throw new Error('the listener has no TCP address')
  }
  return {
    server,
    cert,
    clientContext: createSecureContext(credentials),
    endpoint: { port: addr.port, fingerprint: cert.fingerprint },
  }
}

/** A mutual-TLS 1.3 connection presenting this run's certificate, handshake done, within `signal`. */
export function connectDirect(
  listener: DirectListener,
  host: string,
  port: number,
  alpn: string,
  signal: AbortSignal,
): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      host,
      port,
      secureContext: listener.clientContext,
      minVersion: 'TLSv1.3',
      // Self-signed: the caller checks the fingerprint the peer announced over libp2p.
      rejectUnauthorized: false,
      ALPNProtocols: [alpn],
    })
    const fail = (err: Error): void => {
      signal.removeEventListener('abort', onAbort)
      socket.destroy()
      reject(err)
    }
    const onAbort = (): void => fail(signal.reason as Error)
    if (signal.aborted) return onAbort()
    signal.addEventListener('abort', onAbort, { once: true })
    socket.once('error', fail)
    socket.once('secureConnect', () => {
      signal.removeEventListener('abort', onAbort)
      socket.off('error', fail)
      resolve(socket)
    })
  })
}
