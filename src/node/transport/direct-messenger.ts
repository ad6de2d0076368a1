import { isIP } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { Connection, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import { type Clock, systemClock } from '../../common/clock.ts'
import { PeermeshError } from '../../common/errors.ts'
import { lazyModule } from '../../common/lazy-module.ts'
import { certificateFingerprint, claimedPeerId, sameFingerprint } from './direct-cert.ts'
import {
  DIRECT_HELLO_PROTOCOL,
  type DirectEndpoint,
  decodeHelloReply,
  decodeHelloRequest,
  encodeHelloReply,
  encodeHelloRequest,
  HELLO_REPLY_BYTES,
  HELLO_REQUEST_BYTES,
} from './direct-hello.ts'
import {
  encodeFrame,
  encodeMuxFrame,
  FrameDecoder,
  MUX_HEADER_BYTES,
  MUX_REPLY,
  MUX_REQUEST,
  parseMuxHeader,
  readFrames,
} from './frames.ts'
import type { DirectListener } from './direct-tls.ts'
import type { Host } from './host.ts'
import { MuxServer } from './mux-server.ts'
import {
  encodeMessageFrames,
  MessageStreamReader,
  PARTIAL_BUDGET_PEERS,
  PartialBudget,
  PartialBudgetExceededError,
} from './message-chunks.ts'
import { RemoteRequestError, RequestStreamClosedError, type StreamMessenger } from './stream-messenger.ts'

/** ALPN of a direct connection carrying best-effort messages (dialer to listener only). */
export const DIRECT_MESSAGE_ALPN = 'peermesh-raft/2'
/** ALPN of a direct connection carrying multiplexed requests (replies come back on it). */
export const DIRECT_REQUEST_ALPN = 'peermesh-raft-rpc/3'

type MessageHandler = (from: string, bytes: Uint8Array) => void
type RequestHandler = (from: string, bytes: Uint8Array, signal: AbortSignal) => Promise<Uint8Array>

/** A direct connection could not be set up (no hello, no endpoint, wrong certificate, ...). */
export class DirectConnectError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_DIRECT_CONNECT'
}

/** What a DirectMessenger is built with. */
export interface DirectMessengerInit {
  /**
   * The libp2p path (a started-and-stopped-here StreamMessenger): carries everything to a peer
   * while its direct path is not up, and everything it sends this way.
   */
  fallback: StreamMessenger
  host: Host
  /** This agent's peer id (named in its certificate). */
  self: string
  /**
   * IP the TLS listener binds, kernel-picked port (the host of the libp2p listen address).
   * Undefined: no direct path at all, everything goes over `fallback`.
   */
  listenHost?: string
  log: Logger
  /** Largest message (reassembled, when chunked). */
  maxMessageBytes: number
  /** As StreamMessengerInit.chunking: both ends must agree (it is part of the ALPN's protocol). */
  chunking?: { maxFrameBytes: number }
  /** As StreamMessengerInit: per peer, over all its direct message connections. */
  maxPartialBytesPerPeer?: number
  maxPartialMessagesPerPeer?: number
  /** Largest request or reply (default 8 MiB). */
  maxRequestBytes?: number
  /** Requests served at once per inbound request connection; more are refused (busy). */
  maxConcurrentRequests?: number
  /**
   * Bytes a direct connection may hold unsent (its peer reads too slowly); a message that finds
   * more is dropped (best-effort). Default: one largest message and 4 MiB.
   */
  maxBufferedBytes?: number
  /**
   * After a failed attempt, the direct path to that peer is tried again only after this, doubled
   * per consecutive failure up to `maxBackoffMs` (meanwhile libp2p carries everything). Also the
   * pause after a working connection closed.
   */
  minBackoffMs?: number
  maxBackoffMs?: number
  /** Time limit of one attempt: the libp2p hello, then the TCP connect and TLS handshake. */
  connectTimeoutMs?: number
  /** Peers whose registered certificate is kept (the oldest registration is forgotten beyond). */
  maxRegisteredPeers?: number
  /** Open inbound direct connections per peer and kind; the oldest is closed beyond. */
  maxInboundPerPeer?: number
  /** Inbound TCP connections at once, handshakes included. */
  maxInboundConnections?: number
  clock?: Clock
}

/** The TLS code, loaded with the first direct connection (a chunk of its own in the build). */
const directTls = lazyModule(() => import('./direct-tls.ts'))

interface PendingRequest {
  resolve: (reply: Uint8Array) => void
  reject: (err: Error) => void
}

/** The direct connection of one kind to one peer, and its attempts. */
interface DirectChannel {
  socket?: TLSSocket
  connecting: boolean
  failures: number
  /** No attempt before this (clock ms). */
  retryAt: number
  /** Request channels: requests in flight by id. */
  nextId: number
  pending: Map<number, PendingRequest>
}

/** The direct path's own counters. */
function newDirectStats() {
  return {
    /** Messages and requests sent over direct connections. */
    directSent: 0,
    directSentBytes: 0,
    directReceived: 0,
    directReceivedBytes: 0,
    directRequests: 0,
    directDropped: 0,
    /** Direct connections set up from here. */
    directConnects: 0,
    /** Attempts that failed (the peer then goes over libp2p for a while). */
    directConnectFailures: 0,
    /**
     * Inbound TCP connections closed before their TLS handshake: from an address no registered
     * peer's hello came from.
     */
    directRefused: 0,
    /** Inbound connections closed at once: no certificate, or not the one its peer registered. */
    directRejected: 0,
    /** TLS handshakes that failed on the listener. */
    directHandshakeFailures: 0,
    /** Hello requests refused (malformed, or no listener here). */
    helloRefused: 0,
    badFrames: 0,
    overBudget: 0,
  }
}

export type DirectStats = ReturnType<typeof newDirectStats>

const _encoder = new TextEncoder()
const decoder = new TextDecoder()

/**
 * The Raft messenger with a direct path: each agent listens on a TLS 1.3 socket of its own, and
 * Raft messages and requests between two agents go over it instead of libp2p (private-network
 * cipher, Noise and yamux, about three times the CPU per message) once it is up; until then, and
 * whenever it fails, over libp2p (`fallback`) as before, so agents without it interoperate.
 *
 * - `send()` is **best-effort**, as on libp2p: a message that cannot go is dropped, never retried.
 * - `request()` is **reliable**: one reply or an error (RemoteRequestError, RequestStreamClosedError
 *   when the connection closes first, or the signal's reason).
 *
 * Who is who, without trusting the network (docs in README, Raft section):
 * 1. A dialer opens a libp2p stream (`DIRECT_HELLO_PROTOCOL`) to the peer, authenticated by Noise
 *    inside the private network, and sends the SHA-256 fingerprint of its own certificate (a fresh
 *    self-signed Ed25519 one per start, naming its peer id, direct-cert.ts). The listener registers
 *    it as that stream's peer's, and answers with its TLS port and its certificate's fingerprint.
 * 2. The dialer connects to the IP of its libp2p connection to the peer and that port, with mutual
 *    TLS 1.3, and goes on only if the listener's certificate has the fingerprint it was told.
 * 3. The listener reads nothing from a connection until its certificate has the fingerprint the peer
 *    it names registered; then every message read there is handed up as from that peer id, exactly
 *    as libp2p hands up the peer id of a stream, so every check above (Raft membership, sender,
 *    signatures) applies as before.
 */
export class DirectMessenger {
  private readonly msgChannels = new Map<string, DirectChannel>()
  private readonly rpcChannels = new Map<string, DirectChannel>()
  /**
   * Peer id -> the fingerprint of the certificate it registered over libp2p, and the IP its hello
   * came from.
   */
  private readonly registered = new Map<string, { fingerprint: Uint8Array; ip: string }>()
  /**
   * Registrations per IP: the listener accepts TCP connections only from these, so that a host
   * without the cluster key (which cannot say hello over libp2p) costs it no TLS handshake.
   */
  private readonly helloIps = new Map<string, number>()
  /** Open inbound direct connections, per `${kind} ${peer}`, oldest first. */
  private readonly inbound = new Map<string, TLSSocket[]>()
  private readonly budget: PartialBudget
  private messageHandler: MessageHandler = () => {}
  private requestHandler?: RequestHandler
  /** The TLS listener, once opened (on the first direct connection either way). */
  private listening?: Promise<DirectListener | undefined>
  private listener?: DirectListener
  private listenFailed = false
  private stopped = false
  private readonly own = newDirectStats()

  constructor(private readonly init: DirectMessengerInit) {
    const frame = init.chunking?.maxFrameBytes ?? init.maxMessageBytes
    const perPeer = init.maxPartialBytesPerPeer ?? init.maxMessageBytes + 2 * (frame + 4)
    this.budget = new PartialBudget({
      maxBytes: perPeer,
      maxMessages: init.maxPartialMessagesPerPeer ?? 2,
      maxTotalBytes: PARTIAL_BUDGET_PEERS * perPeer,
    })
  }

  private readonly now = (): number => (this.init.clock ?? systemClock).now()

  /**
   * Counters of both paths: the libp2p path's (`sent`, `received`, `badFrames`, `overBudget`, ...
   * summed with the direct path's) and the direct path's own (`direct*`).
   */
  get stats(): StreamMessenger['stats'] & DirectStats {
    const f = this.init.fallback.stats
    const o = this.own
    return {
      ...f,
      ...o,
      sent: f.sent + o.directSent,
      sentBytes: f.sentBytes + o.directSentBytes,
      received: f.received + o.directReceived,
      receivedBytes: f.receivedBytes + o.directReceivedBytes,
      dropped: f.dropped + o.directDropped,
      badFrames: f.badFrames + o.badFrames,
      overBudget: f.overBudget + o.overBudget,
    }
  }

  /** This agent's direct endpoint (port and certificate fingerprint), once listening. */
  get directEndpoint(): DirectEndpoint | undefined {
    return this.listener?.endpoint
  }

  /** Whether messages to `peer` go over a direct connection now. */
  directTo(peer: string): boolean {
    return this.msgChannels.get(peer)?.socket !== undefined
  }

  /**
   * Sets up the direct connection to `peer` ahead of need (its messages, or its requests) unless
   * it is up, under way or backing off: so that the first messages of an election or the first
   * write forwarded to a new leader find it ready, without a handshake in their way.
   */
  prepare(peer: string, kind: 'message' | 'request' = 'message'): void {
    if (kind === 'message') this.attempt(peer, this.msgChannels, DIRECT_MESSAGE_ALPN)
    else this.attempt(peer, this.rpcChannels, DIRECT_REQUEST_ALPN)
  }

  onMessage(handler: MessageHandler): void {
    this.messageHandler = handler
    this.init.fallback.onMessage(handler)
  }

  onRequest(handler: RequestHandler): void {
    this.requestHandler = handler
    this.init.fallback.onRequest(handler)
  }

  async start(): Promise<void> {
    await this.init.fallback.start()
    if (this.init.listenHost === undefined) return
    await this.init.host.handle(
      DIRECT_HELLO_PROTOCOL,
      (stream, connection) => this.serveHello(stream, connection),
      { maxInboundStreams: 4 },
    )
  }

  /** The TLS listener, opened once (undefined when it cannot be, or after stop). */
  private listen(): Promise<DirectListener | undefined> {
    this.listening ??= this.openListener(this.init.listenHost!).then((l) => {
      if (l === undefined) this.listenFailed = true
      else this.listener = l
      return l
    })
    return this.listening
  }

  /**
   * Loads the TLS code (node:tls), makes this run's certificate and listens. Not at start: an
   * agent that exchanges no Raft messages (and runs no sidecar) never loads TLS.
   */
  private async openListener(listenHost: string): Promise<DirectListener | undefined> {
    let listener: DirectListener
    try {
      const tls = await directTls.load()
      if (this.stopped) return undefined
      listener = await tls.listenDirect({
        self: this.init.self,
        host: listenHost,
        alpn: [DIRECT_MESSAGE_ALPN, DIRECT_REQUEST_ALPN],
        handshakeTimeoutMs: this.init.connectTimeoutMs ?? 3_000,
        maxConnections: this.init.maxInboundConnections ?? 256,
        admits: (address) => this.admits(address),
        onConnection: (socket) => this.accept(socket),
        onHandshakeError: (err, socket) => {
          this.own.directHandshakeFailures++
          this.init.log.debug({ err: err.message, remote: socket.remoteAddress }, 'direct: handshake failed')
        },
        onError: (err) => this.init.log.warn({ err: err.message }, 'direct: listener error'),
      })
    } catch (err) {
      this.init.log.warn(
        { host: listenHost, err: (err as Error).message },
        'direct: cannot listen; Raft traffic stays on libp2p',
      )
      return undefined
    }
    if (this.stopped) {
      listener.server.close()
      return undefined
    }
    this.init.log.debug({ host: listenHost, port: listener.endpoint.port }, 'direct: listening')
    return listener
  }

  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    if (this.init.listenHost !== undefined) {
      await this.init.host.unhandle(DIRECT_HELLO_PROTOCOL).catch(() => {})
    }
    ;(await this.listening)?.server.close()
    const closed = new RequestStreamClosedError('stopping')
    for (const ch of [...this.msgChannels.values(), ...this.rpcChannels.values()]) {
      ch.socket?.destroy()
      this.failPending(ch, closed)
    }
    for (const sockets of this.inbound.values()) for (const s of sockets) s.destroy()
    this.msgChannels.clear()
    this.rpcChannels.clear()
    this.inbound.clear()
    await this.init.fallback.stop()
  }

  /** Best-effort send (see the class). Returns false if the message was dropped right away. */
  send(to: string, bytes: Uint8Array): boolean {
    if (this.stopped) return false
    const socket = writable(this.msgChannels.get(to)?.socket)
    if (socket === undefined) {
      this.attempt(to, this.msgChannels, DIRECT_MESSAGE_ALPN)
      return this.init.fallback.send(to, bytes)
    }
    if (
      bytes.length > this.init.maxMessageBytes ||
      socket.writableLength > (this.init.maxBufferedBytes ?? this.init.maxMessageBytes + (4 << 20))
    ) {
      this.own.directDropped++
      return false
    }
    const chunking = this.init.chunking
    if (chunking === undefined) socket.write(encodeFrame(bytes))
    else for (const frame of encodeMessageFrames(bytes, chunking.maxFrameBytes)) socket.write(frame)
    this.own.directSent++
    this.own.directSentBytes += bytes.length
    return true
  }

  /** Reliable request/response (see the class). */
  async request(to: string, bytes: Uint8Array, options: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    if (this.stopped) throw new RequestStreamClosedError('stopping')
    const ch = this.rpcChannels.get(to)
    const socket = writable(ch?.socket)
    if (ch === undefined || socket === undefined) {
      this.attempt(to, this.rpcChannels, DIRECT_REQUEST_ALPN)
      return this.init.fallback.request(to, bytes, options)
    }
    const signal = options.signal ?? AbortSignal.timeout(10_000)
    signal.throwIfAborted()
    ch.nextId = (ch.nextId + 1) >>> 0
    const id = ch.nextId
    this.own.directRequests++
    return new Promise<Uint8Array>((resolve, reject) => {
      const onAbort = (): void => {
        ch.pending.delete(id)
        reject(signal.reason)
      }
      signal.addEventListener('abort', onAbort, { once: true })
      ch.pending.set(id, {
        resolve: (reply) => {
          signal.removeEventListener('abort', onAbort)
          resolve(reply)
        },
        reject: (err) => {
          signal.removeEventListener('abort', onAbort)
          reject(err)
        },
      })
      socket.write(encodeMuxFrame(id, MUX_REQUEST, bytes))
    })
  }

  // ---- the dialer's side --------------------------------------------------------------------------

  /** Starts setting up the direct connection of this kind to `to`, unless up, under way or backing off. */
  private attempt(to: string, channels: Map<string, DirectChannel>, alpn: string): void {
    if (this.init.listenHost === undefined || this.listenFailed || this.stopped) return
    let ch = channels.get(to)
    if (ch === undefined) {
      ch = { connecting: false, failures: 0, retryAt: 0, nextId: 0, pending: new Map() }
      channels.set(to, ch)
    }
    if (ch.socket !== undefined || ch.connecting || this.now() < ch.retryAt) return
    ch.connecting = true
    const channel = ch
    this.connect(to, alpn).then(
      (socket) => {
        channel.connecting = false
        if (this.stopped || channels.get(to) !== channel) {
          socket.destroy()
          return
        }
        channel.failures = 0
        this.own.directConnects++
        this.init.log.debug({ peer: to, alpn }, 'direct: connected')
        this.useOutbound(to, channel, socket, alpn)
      },
      (err: unknown) => {
        channel.connecting = false
        channel.failures++
        this.own.directConnectFailures++
        const { minBackoffMs = 1_000, maxBackoffMs = 30_000 } = this.init
        channel.retryAt = this.now() + Math.min(maxBackoffMs, minBackoffMs * 2 ** (channel.failures - 1))
        this.init.log.debug(
          {
            peer: to,
            alpn,
            err: `${(err as Error).name}: ${(err as Error).message}`,
            failures: channel.failures,
          },
          'direct: cannot connect; libp2p carries this peer for now',
        )
      },
    )
  }

  /** The hello over libp2p, then the TLS connection it announced, checked (see the class). */
  private async connect(to: string, alpn: string): Promise<TLSSocket> {
    const listener = await this.listen()
    if (listener === undefined) throw new DirectConnectError('no direct listener here')
    const signal = AbortSignal.timeout(this.init.connectTimeoutMs ?? 3_000)
    const connection = await this.init.host.dial(peerIdFromString(to), { signal })
    const ip = remoteIp(connection.remoteAddr)
    if (ip === undefined) throw new DirectConnectError(`no IP in ${connection.remoteAddr.toString()}`)
    const stream = await connection.newStream(DIRECT_HELLO_PROTOCOL, { signal })
    let endpoint: DirectEndpoint | undefined
    try {
      stream.send(encodeFrame(encodeHelloRequest(listener.cert.fingerprint)))
      const [reply] = await readFrames(stream, HELLO_REPLY_BYTES, 1, signal)
      endpoint = reply === undefined ? undefined : decodeHelloReply(reply)
    } finally {
      await stream.close({ signal }).catch(() => stream.abort(new Error('close failed')))
    }
    if (endpoint === undefined) throw new DirectConnectError('no valid hello reply')
    const socket = await (await directTls.load()).connectDirect(listener, ip, endpoint.port, alpn, signal)
    const presented = socket.getPeerX509Certificate()
    if (
      presented === undefined ||
      !sameFingerprint(certificateFingerprint(presented.raw), endpoint.fingerprint) ||
      socket.alpnProtocol !== alpn
    ) {
      socket.destroy()
      throw new DirectConnectError(
        'the listener presented another certificate than the one its peer announced',
      )
    }
    return socket
  }

  private useOutbound(to: string, ch: DirectChannel, socket: TLSSocket, alpn: string): void {
    socket.setNoDelay(true)
    ch.socket = socket
    socket.on('error', (err) =>
      this.init.log.debug({ peer: to, err: err.message }, 'direct: connection error'),
    )
    socket.on('close', () => {
      if (ch.socket === socket) {
        ch.socket = undefined
        ch.retryAt = this.now() + (this.init.minBackoffMs ?? 1_000)
      }
      this.failPending(ch, new RequestStreamClosedError('direct connection closed before the reply'))
    })
    if (alpn === DIRECT_MESSAGE_ALPN) {
      // The listener never writes on a message connection.
      socket.on('data', () => {
        this.own.badFrames++
        socket.destroy()
      })
      return
    }
    this.onMuxFrames(socket, to, 'reply', (batch) => {
      for (const f of batch) {
        const head = parseMuxHeader(f)
        if (head === undefined || head.kind === MUX_REQUEST) {
          this.own.badFrames++
          continue
        }
        const p = ch.pending.get(head.id)
        if (p === undefined) continue // its caller gave up
        ch.pending.delete(head.id)
        const payload = f.subarray(MUX_HEADER_BYTES)
        if (head.kind === MUX_REPLY) p.resolve(payload)
        else p.reject(new RemoteRequestError(decoder.decode(payload)))
      }
    })
  }

  private failPending(ch: DirectChannel, err: Error): void {
    const pending = [...ch.pending.values()]
    ch.pending.clear()
    for (const p of pending) p.reject(err)
  }

  // ---- the listener's side ------------------------------------------------------------------------

  /** A peer's hello over libp2p: registers its certificate, answers with this endpoint. */
  private async serveHello(stream: Stream, connection: Connection): Promise<void> {
    const from = connection.remotePeer.toString()
    const signal = AbortSignal.timeout(this.init.connectTimeoutMs ?? 3_000)
    try {
      const [req] = await readFrames(stream, HELLO_REQUEST_BYTES, 1, signal)
      const fingerprint = req === undefined ? undefined : decodeHelloRequest(req)
      const endpoint = fingerprint === undefined ? undefined : (await this.listen())?.endpoint
      if (fingerprint === undefined || endpoint === undefined || this.stopped) {
        this.own.helloRefused++
        stream.abort(new DirectConnectError('bad hello'))
        return
      }
      const ip = remoteIp(connection.remoteAddr)
      if (ip === undefined) {
        this.own.helloRefused++
        stream.abort(new DirectConnectError('hello over a connection without an IP'))
        return
      }
      this.forget(from) // re-inserted last: the oldest registration goes first
      this.registered.set(from, { fingerprint, ip })
      this.helloIps.set(ip, (this.helloIps.get(ip) ?? 0) + 1)
      const max = this.init.maxRegisteredPeers ?? 1024
      for (const peer of this.registered.keys()) {
        if (this.registered.size <= max) break
        this.forget(peer)
      }
      stream.send(encodeFrame(encodeHelloReply(endpoint)))
      await stream.close({ signal })
    } catch (err) {
      this.own.helloRefused++
      this.init.log.debug({ peer: from, err: (err as Error).message }, 'direct: hello failed')
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }

  /** Drops `peer`'s registration (and its IP's share of the listener's allowed addresses). */
  private forget(peer: string): void {
    const r = this.registered.get(peer)
    if (r === undefined) return
    this.registered.delete(peer)
    const n = (this.helloIps.get(r.ip) ?? 1) - 1
    if (n <= 0) this.helloIps.delete(r.ip)
    else this.helloIps.set(r.ip, n)
  }

  /** Whether a TCP connection from `address` may start a TLS handshake (see `helloIps`). */
  private admits(address: string | undefined): boolean {
    const ip = address?.startsWith('::ffff:') ? address.slice(7) : address
    if (ip !== undefined && this.helloIps.has(ip)) return true
    this.own.directRefused++
    return false
  }

  /**
   * A TLS connection, handshake done: closed unless its certificate is the one the peer it names
   * registered (nothing is read before), else served as that peer's.
   */
  private accept(socket: TLSSocket): void {
    socket.on('error', (err) => this.init.log.debug({ err: err.message }, 'direct: inbound connection error'))
    const presented = socket.getPeerX509Certificate()
    const peer = presented === undefined ? undefined : claimedPeerId(presented)
    const registered = peer === undefined ? undefined : this.registered.get(peer)?.fingerprint
    const alpn = socket.alpnProtocol
    if (
      this.stopped ||
      presented === undefined ||
      peer === undefined ||
      registered === undefined ||
      !sameFingerprint(certificateFingerprint(presented.raw), registered) ||
      (alpn !== DIRECT_MESSAGE_ALPN && alpn !== DIRECT_REQUEST_ALPN)
    ) {
      this.own.directRejected++
      this.init.log.debug(
        { remote: socket.remoteAddress, claimed: peer },
        'direct: connection without a registered certificate; closed',
      )
      socket.destroy()
      return
    }
    socket.setNoDelay(true)
    const key = `${alpn} ${peer}`
    const open = this.inbound.get(key) ?? []
    open.push(socket)
    this.inbound.set(key, open)
    while (open.length > (this.init.maxInboundPerPeer ?? 2)) open.shift()?.destroy()
    socket.on('close', () => {
      const i = open.indexOf(socket)
      if (i >= 0) open.splice(i, 1)
      if (open.length === 0 && this.inbound.get(key) === open) this.inbound.delete(key)
    })
    if (alpn === DIRECT_MESSAGE_ALPN) this.readMessages(socket, peer)
    else this.serveRequests(socket, peer)
  }

  /** As StreamMessenger.readMessages, on a direct connection. */
  private readMessages(socket: TLSSocket, from: string): void {
    const { chunking, maxMessageBytes } = this.init
    const reader = new MessageStreamReader(from, this.budget, {
      maxMessageBytes,
      ...(chunking !== undefined ? { maxFrameBytes: chunking.maxFrameBytes } : {}),
    })
    socket.on('close', () => reader.release())
    socket.on('data', (data: Buffer) => {
      if (this.stopped) return
      let messages: Uint8Array[]
      try {
        messages = reader.push(data)
      } catch (err) {
        this.own[err instanceof PartialBudgetExceededError ? 'overBudget' : 'badFrames']++
        this.init.log.debug(
          { peer: from, err: (err as Error).message },
          'direct: bad message stream; closing',
        )
        reader.release()
        socket.destroy()
        return
      }
      for (const m of messages) {
        this.own.directReceived++
        this.own.directReceivedBytes += m.length
        try {
          this.messageHandler(from, m)
        } catch (err) {
          this.init.log.error({ err, peer: from }, 'message handler threw')
        }
      }
    })
  }

  /** As StreamMessenger.serveMultiplexed, on a direct connection. */
  private serveRequests(socket: TLSSocket, from: string): void {
    const server = new MuxServer({
      from,
      maxConcurrent: this.init.maxConcurrentRequests ?? 256,
      handler: () => this.requestHandler,
      refusing: () => this.stopped,
      write: (frame) => {
        if (!socket.destroyed && socket.writable) socket.write(frame)
      },
      onBadFrame: () => this.own.badFrames++,
      log: this.init.log,
    })
    socket.on('close', () => server.close(new Error('request connection closed')))
    this.onMuxFrames(socket, from, 'request', (frames) => server.receive(frames))
  }

  /**
   * Multiplexed frames read from a direct connection, in batches; a connection that breaks the
   * framing (oversize, malformed) is closed.
   */
  private onMuxFrames(
    socket: TLSSocket,
    peer: string,
    what: 'request' | 'reply',
    onBatch: (frames: Uint8Array[]) => void,
  ): void {
    const frames = new FrameDecoder((this.init.maxRequestBytes ?? 8 << 20) + MUX_HEADER_BYTES)
    socket.on('data', (data: Buffer) => {
      let batch: Uint8Array[]
      try {
        batch = frames.push(data)
      } catch (err) {
        this.own.badFrames++
        this.init.log.debug({ peer, err: (err as Error).message }, `direct: bad ${what} frame; closing`)
        socket.destroy()
        return
      }
      onBatch(batch)
    })
  }
}

/** `socket` if it can still be written to (its close may not have been told yet). */
function writable(socket: TLSSocket | undefined): TLSSocket | undefined {
  return socket !== undefined && !socket.destroyed && socket.writable ? socket : undefined
}

/**
 * The IP the direct listener binds: the host of the first IP listen multiaddr (`listen`, the
 * agent's libp2p listen addresses), else of the first announced one; undefined if none has one.
 */
export function directListenHost(
  listen: readonly string[] | undefined,
  announced: readonly Multiaddr[],
): string | undefined {
  for (const addr of listen ?? []) {
    try {
      const ip = remoteIp(multiaddr(addr))
      if (ip !== undefined) return ip
    } catch {}
  }
  for (const addr of announced) {
    const ip = remoteIp(addr)
    if (ip !== undefined) return ip
  }
  return undefined
}

/** The IP of a libp2p connection's remote address (`/ip4/…/tcp/…`), if it has one. */
export function remoteIp(addr: Multiaddr): string | undefined {
  for (const c of addr.getComponents()) {
    if ((c.name === 'ip4' || c.name === 'ip6') && c.value !== undefined && isIP(c.value) !== 0) return c.value
  }
  return undefined
}
