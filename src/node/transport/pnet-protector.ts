/**
 * The libp2p private-network connection protector, wire-compatible with `@libp2p/pnet` (and
 * go-libp2p's pnet): each side sends a random 24-byte nonce, then every byte in each direction
 * is XORed with an XSalsa20 keystream keyed by the cluster PSK and the sender's nonce.
 *
 * Why our own: `@libp2p/pnet`'s WebAssembly XSalsa20 state is shared by the process and never
 * finalized, so each connection leaks a little of a capped memory (see the README). This one uses
 * `@noble/ciphers` (pure JS): a connection's cipher state is collected with the connection.
 *
 * Limit: noble exposes a 32-bit block counter, so one direction of one connection can carry
 * 2^32 × 64 bytes = 256 GiB; beyond that the connection is reset (and libp2p redials).
 */
import { xsalsa20 } from '@noble/ciphers/salsa.js'
import type { AbortOptions, ConnectionProtector, MessageStream, MultiaddrConnection } from '@libp2p/interface'
import { AbstractMultiaddrConnection, byteStream } from '@libp2p/utils'
import { pskOfClusterKey } from './gossip-udp.ts'

/** Nonce each side sends first (XSalsa20's nonce length). */
const NONCE_LENGTH = 24
/** The nonce exchange must finish within this (the same default as `@libp2p/pnet`). */
const HANDSHAKE_TIMEOUT_MS = 1_000

/** XSalsa20 as a stream: `update` XORs the next bytes of the keystream, whatever the chunking. */
export class XSalsa20Stream {
  private position = 0

  constructor(
    private readonly key: Uint8Array,
    private readonly nonce: Uint8Array,
  ) {}

  update(data: Uint8Array): Uint8Array {
    if (data.length === 0) return new Uint8Array(0)
    const offset = this.position % 64
    const counter = (this.position - offset) / 64
    this.position += data.length
    if (offset === 0) return xsalsa20(this.key, this.nonce, data, undefined, counter)
    // Mid-block: pad the front so the keystream lines up, then drop the padding.
    const buf = new Uint8Array(offset + data.length)
    buf.set(data, offset)
    return xsalsa20(this.key, this.nonce, buf, buf, counter).subarray(offset)
  }
}

class ProtectedConnection extends AbstractMultiaddrConnection {
  private readonly inbound: XSalsa20Stream
  private readonly outbound: XSalsa20Stream

  constructor(
    private readonly maConn: MessageStream,
    psk: Uint8Array,
    localNonce: Uint8Array,
    remoteNonce: Uint8Array,
    remoteAddr: MultiaddrConnection['remoteAddr'],
  ) {
    super({ log: maConn.log.newScope('pnet'), remoteAddr, direction: maConn.direction })
    this.inbound = new XSalsa20Stream(psk, remoteNonce)
    this.outbound = new XSalsa20Stream(psk, localNonce)
    maConn.addEventListener('message', (evt) => {
      const data = evt.data
      try {
        if (data instanceof Uint8Array) this.onData(this.inbound.update(data))
        else for (const buf of data) this.onData(this.inbound.update(buf))
      } catch (err) {
        this.abort(err as Error)
      }
    })
    maConn.addEventListener('drain', () => this.onMuxerDrain())
    maConn.addEventListener('close', (evt) => {
      if (evt.error != null) {
        if (evt.local) this.abort(evt.error)
        else this.onRemoteReset()
      } else {
        this.onTransportClosed()
      }
    })
  }

  async sendClose(options?: AbortOptions): Promise<void> {
    await this.maConn.close(options)
  }

  sendData(data: Parameters<AbstractMultiaddrConnection['sendData']>[0]): {
    sentBytes: number
    canSendMore: boolean
  } {
    return {
      sentBytes: data.byteLength,
      canSendMore: this.maConn.send(this.outbound.update(data.subarray())),
    }
  }

  sendReset(err: Error): void {
    this.maConn.abort(err)
  }

  sendPause(): void {
    this.maConn.pause()
  }

  sendResume(): void {
    this.maConn.resume()
  }
}

class ClusterKeyProtector implements ConnectionProtector {
  readonly [Symbol.toStringTag] = '@peermesh/pnet'
  private readonly psk: Uint8Array

  constructor(clusterKey: Uint8Array) {
    this.psk = pskOfClusterKey(clusterKey)
  }

  async protect(connection: MessageStream, options?: AbortOptions): Promise<MessageStream> {
    const signal = options?.signal ?? AbortSignal.timeout(HANDSHAKE_TIMEOUT_MS)
    const localNonce = crypto.getRandomValues(new Uint8Array(NONCE_LENGTH))
    const bytes = byteStream(connection)
    const [remote] = await Promise.all([
      bytes.read({ bytes: NONCE_LENGTH, signal }),
      bytes.write(localNonce, { signal }),
    ])
    const maConn = bytes.unwrap()
    const remoteAddr = (maConn as Partial<MultiaddrConnection>).remoteAddr
    if (remoteAddr === undefined) throw new Error('pnet: the connection has no remote address')
    return new ProtectedConnection(maConn, this.psk, localNonce, remote.subarray(), remoteAddr)
  }
}

/**
 * `connectionProtector` for `createLibp2p`, a drop-in for `preSharedKey({ psk })` from
 * `@libp2p/pnet`: the same key format (swarm.key text) and the same bytes on the wire.
 */
export function clusterKeyProtector(clusterKey: Uint8Array): () => ConnectionProtector {
  const protector = new ClusterKeyProtector(clusterKey)
  return () => protector
}
