/**
 * The inbound listener: TLS 1.3 with the instance's leaf, a client certificate required and
 * verified against the trusted roots by OpenSSL, then the caller's SPIFFE service checked against
 * the local authorizer (intentions held in memory, no network). Allowed connections are piped to
 * the local app on 127.0.0.1; denied ones are destroyed, counted and logged on one line.
 *
 * Certificate rotation swaps the server's secure context for new handshakes; open connections
 * keep theirs. A policy change re-checks every open connection and closes the ones now denied.
 *
 * Protocol `tcp`: the stream is piped (L4); an L7 intention (with Permissions) cannot be enforced
 * on bytes, so it refuses the connection. Protocol `http`: HTTP/1.1 is terminated per request
 * (`inbound-http.ts`) and every request goes through the request gate (L7 intentions, rate
 * limits); a connection is admitted when its source has an L4 allow or an L7 intention.
 *
 * Protocol `http2`/`grpc`: a connection that negotiates ALPN `h2` is served per stream
 * (`inbound-h2.ts`). One that does not is relayed as bytes only when the inbound has no request
 * gate; with a gate (L7 intentions, rate limits) it is refused and counted as denied, since no
 * request on it could be checked. (Protocol `http` never relays bytes: every connection is parsed.)
 *
 * Protocol `tcp` also serves `peermesh-mux/1` (`inbound-mux.ts`): a caller that offers that ALPN
 * gets one session whose streams are each relayed to the app like a connection. Its source is
 * checked at accept (a denied source's session is closed at once) and again at every stream
 * open; a session without streams is closed after `muxIdleMs`. A caller that does not offer it is
 * relayed per connection.
 *
 * Resource caps (#13): at most `maxConnections` connections at once (handshaking or relaying); a
 * connection past it is closed as soon as it is accepted, before any TLS work, and counted in
 * `peermesh_proxy_errors_total{reason="conn_limit"}`. At most `maxPendingHandshakes` of them are
 * still handshaking: a connection past that cap is accepted and the oldest pending handshake is
 * closed instead (one that has sent no byte for `SILENT_HANDSHAKE_MS` first), counted as
 * `reason="handshake_limit"`. So connections that stall their handshake cannot lock callers out;
 * the price is that a flood of `maxPendingHandshakes` connections opened within one caller's
 * handshake (milliseconds on a LAN) cuts that caller, who retries.
 */
import { type Clock, systemClock } from '../common/clock.ts'
import net from 'node:net'
import tls from 'node:tls'
import { Registry as PromRegistry } from 'prom-client'
import { validateServiceName, validateTrustDomain } from '../identity/ca/spiffe.ts'
import { InvalidProxyConfigError, ListenerStateError, NoCertificateError } from './errors.ts'
import { type ListenerMetrics, ProxyMetrics } from './metrics.ts'
import { InboundHttp } from './inbound-http.ts'
import { H2InboundHandler } from './inbound-h2.ts'
import { OPEN_GATE, type RequestGate } from './request-gate.ts'
import { checkPort, closeServer, listen } from './outbound-common.ts'
import { forward, readAccepted, relayOnRead } from './relay.ts'
import { DEFAULT_MUX_DRAIN_MS, DEFAULT_MUX_INITIAL_WINDOW, DEFAULT_MUX_MAX_STREAMS } from './constants.ts'
import { DEFAULT_MUX_SERVER_IDLE_MS, MuxInbound } from './inbound-mux.ts'
import type { MuxBacklog } from './mux-session.ts'
import { MUX_ALPN } from './mux-frame.ts'
import { peerServiceOf, serverContextOptions } from './tls-material.ts'
import {
  accessLogMode,
  type Authorizer,
  shouldLogAccess,
  type CertificateSource,
  type ProxyLogger,
  silentLogger,
  type ListenerEnvironment,
  type Unsubscribe,
} from './types.ts'

export interface InboundListenerInit extends ListenerEnvironment {
  /** This instance's service: the SPIFFE id presented, and the destination of every decision. */
  service: string
  trustDomain: string
  /** The sidecar's public (mTLS) port; 0 picks a free port (tests). */
  port: number
  /** Default 0.0.0.0: other nodes dial it. */
  bindAddress?: string
  /** The local app: 127.0.0.1:`localServicePort`. */
  localServicePort: number
  /** Default 127.0.0.1. */
  localServiceAddress?: string
  certificates: CertificateSource
  authorizer: Authorizer
  /** A TLS handshake must finish within this time. Default 10 s. */
  handshakeTimeoutMs?: number
  /** Connections open at once, handshaking or relaying; more are closed at once. Default below. */
  maxConnections?: number
  /**
   * Connections still in their TLS handshake at once; past it the oldest pending handshake is
   * closed to admit the new one. Default below.
   */
  maxPendingHandshakes?: number
  /**
   * The local service's protocol. `http`: requests are terminated and gated one by one
   * (`inbound-http.ts`), and responses counted by status code. Default `tcp`.
   */
  protocol?: 'tcp' | 'http' | 'http2' | 'grpc'
  /**
   * The per-request check (L7 intentions, rate limits), read on every request: of an `http`
   * service's requests, and of the streams of `http2`/`grpc` connections that negotiate ALPN `h2`
   * (served per stream, `inbound-h2.ts`). Without it, sources whose intention has L7 permissions
   * are refused (fail closed).
   */
  gate?: RequestGate
  /**
   * Protocol `tcp`: accept `peermesh-mux/1` sessions from outbound sidecars that offer it
   * (`inbound-mux.ts`). Default true; false serves every caller per connection, as before.
   */
  mux?: boolean
  /** Streams open at once on one mux session; more are refused. Default 1024 (constants.ts). */
  muxMaxStreams?: number
  /** Per-stream credit each way, bytes. Default 64 KiB (constants.ts); the peer must use the same. */
  muxInitialWindow?: number
  /** A mux session with no open stream for this long is closed. Default 2 min (`inbound-mux.ts`). */
  muxIdleMs?: number
}

export const INBOUND_LIMIT_DEFAULTS = {
  /**
   * A sidecar fronts one service instance; each relayed connection holds two sockets and their
   * buffers. 1024 is far above what one instance serves from a pooled mesh, and keeps a flood of
   * connections from exhausting the node's file descriptors (ulimit -n is often 1024 to 65536).
   */
  maxConnections: 1024,
  /**
   * A handshake costs a key exchange and a certificate chain verification; one that never finishes
   * holds a socket for up to the handshake timeout. 128 at once is more than a healthy caller pool
   * opens in a burst, and bounds what an attacker opening half-done handshakes can hold. Past it the
   * oldest pending handshake is evicted, not the new connection refused: stalled handshakes cannot
   * lock callers out, and a caller is cut only if 128 connections arrive during its own handshake.
   */
  maxPendingHandshakes: 128,
} as const

/**
 * A pending handshake that has sent no byte for this long is evicted before older ones that have
 * (ClientHello read, mid-handshake). A caller sends its ClientHello with its first ACK, so one
 * silent this long is not handshaking; a fresh connection, silent only until its first read, is
 * not preferred (a flood of connections that each send a byte would otherwise evict it first).
 */
export const SILENT_HANDSHAKE_MS = 1_000

interface InboundConnection {
  socket: tls.TLSSocket
  source: string
  /** The relay's connection to the app (L4); HTTP mode uses a pool instead. */
  local?: net.Socket
}

export class InboundListener {
  readonly service: string
  readonly trustDomain: string
  private readonly init: InboundListenerInit
  private readonly metrics: ListenerMetrics
  private readonly logger: ProxyLogger
  private readonly clock: Clock
  private server: tls.Server | undefined
  private readonly open = new Set<InboundConnection>()
  /** Every accepted TCP connection, handshaking or relaying: stop() destroys them all. */
  private readonly sockets = new Set<net.Socket>()
  /**
   * Accepted TCP connections whose TLS handshake has not finished, in accept order (oldest first),
   * with their accept time (`clock.now()`).
   */
  private readonly handshaking = new Map<net.Socket, number>()
  /** Pending handshakes evicted by the pending-handshake cap: their TLS error is not an error. */
  private readonly evicted = new WeakSet<net.Socket>()
  private readonly maxConnections: number
  private readonly maxPendingHandshakes: number
  /**
   * Since start: connections refused by the connection cap, and pending handshakes evicted by the
   * pending-handshake cap (`handshake_limit`).
   */
  readonly refused = { connections: 0, handshakes: 0 }
  private readonly unsubscribes: Unsubscribe[] = []
  private state: 'new' | 'running' | 'stopped' = 'new'
  private boundPort = 0
  /** HTTP mode's request handler (protocol `http`). */
  private readonly http: InboundHttp | undefined
  private h2: H2InboundHandler | undefined
  /** Mux sessions (protocol `tcp` with `mux` on). */
  private readonly mux: MuxInbound | undefined

  constructor(init: InboundListenerInit) {
    this.service = validateServiceName(init.service)
    this.trustDomain = validateTrustDomain(init.trustDomain)
    checkPort('port', init.port, true)
    checkPort('localServicePort', init.localServicePort, false)
    this.maxConnections = checkCap(
      'maxConnections',
      init.maxConnections ?? INBOUND_LIMIT_DEFAULTS.maxConnections,
    )
    this.maxPendingHandshakes = checkCap(
      'maxPendingHandshakes',
      init.maxPendingHandshakes ?? INBOUND_LIMIT_DEFAULTS.maxPendingHandshakes,
    )
    this.init = init
    this.metrics = ProxyMetrics.for(init.registry ?? new PromRegistry()).listener(
      this.service,
      'inbound',
      this.service,
    )
    this.logger = init.logger ?? silentLogger
    this.clock = init.clock ?? systemClock
    this.http =
      init.protocol === 'http'
        ? new InboundHttp({
            service: this.service,
            localServiceAddress: init.localServiceAddress ?? '127.0.0.1',
            localServicePort: init.localServicePort,
            gate: init.gate ?? OPEN_GATE,
            metrics: this.metrics,
            logger: this.logger,
            clock: this.clock,
            accessLog: accessLogMode(init.accessLog),
            ...(init.tracer !== undefined ? { tracer: init.tracer } : {}),
          })
        : undefined
    const tcp = init.protocol === undefined || init.protocol === 'tcp'
    this.mux =
      tcp && init.mux !== false
        ? new MuxInbound({
            service: this.service,
            localServiceAddress: init.localServiceAddress ?? '127.0.0.1',
            localServicePort: init.localServicePort,
            metrics: this.metrics,
            logger: this.logger,
            clock: this.clock,
            accessLog: accessLogMode(init.accessLog),
            decide: (source) => this.decide(source, false),
            admit: () => this.openConnections < this.maxConnections,
            maxStreams: checkCap('muxMaxStreams', init.muxMaxStreams ?? DEFAULT_MUX_MAX_STREAMS),
            initialWindow: checkCap('muxInitialWindow', init.muxInitialWindow ?? DEFAULT_MUX_INITIAL_WINDOW),
            drainMs: DEFAULT_MUX_DRAIN_MS,
            idleMs: checkCap('muxIdleMs', init.muxIdleMs ?? DEFAULT_MUX_SERVER_IDLE_MS),
          })
        : undefined
  }

  get port(): number {
    return this.boundPort
  }

  /** Connections relayed to the local app now (mux streams included). */
  get openConnections(): number {
    return this.open.size + (this.mux?.openStreams ?? 0)
  }

  /** Mux sessions open now. */
  get muxSessions(): number {
    return this.mux?.sessionCount ?? 0
  }

  /**
   * Since start: mux streams refused by a limit, mux sessions closed for a protocol error, of a
   * denied source at accept, and idle.
   */
  get muxRefused(): {
    streams: number
    protocolErrors: number
    deniedSessions: number
    idleSessions: number
  } {
    return this.mux?.refused ?? { streams: 0, protocolErrors: 0, deniedSessions: 0, idleSessions: 0 }
  }

  /** What the mux sessions hold unsent now, summed, and how many stopped reading their peer. */
  get muxBacklog(): MuxBacklog & { pausedSessions: number } {
    return this.mux?.backlog ?? { queuedBytes: 0, unsentResets: 0, inputPaused: false, pausedSessions: 0 }
  }

  /** Connections accepted whose TLS handshake has not finished. */
  get pendingHandshakes(): number {
    return this.handshaking.size
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.state !== 'new') throw new ListenerStateError(`inbound listener is ${this.state}`)
    const cert = this.init.certificates.current()
    if (!cert) throw new NoCertificateError(`no leaf certificate for ${this.service} yet`)
    const h2 = this.init.protocol === 'http2' || this.init.protocol === 'grpc'
    if (h2) {
      this.h2 = new H2InboundHandler({
        service: this.service,
        localServiceAddress: this.init.localServiceAddress ?? '127.0.0.1',
        localServicePort: this.init.localServicePort,
        gate: this.init.gate ?? OPEN_GATE,
        metrics: this.metrics,
        logger: this.logger,
        clock: this.clock,
        ...(this.init.tracer !== undefined ? { tracer: this.init.tracer } : {}),
      })
    }
    const server = tls.createServer({
      ...serverContextOptions(cert),
      requestCert: true,
      rejectUnauthorized: true,
      // Not during the handshake: a caller's FIN there ends the connection at once (a handshake
      // cannot finish without the caller's Finished), instead of holding a pending-handshake slot
      // until the timeout. Each connection allows it once secure (`secureConnection` below), so
      // that a half-close is relayed.
      allowHalfOpen: false,
      noDelay: true,
      handshakeTimeout: this.init.handshakeTimeoutMs ?? 10_000,
      // Callers without ALPN (L4 sidecars) are relayed as before.
      ...(h2 ? { ALPNProtocols: ['h2', 'http/1.1'] } : {}),
      // The mux protocol when offered; any other list gets its own first choice back, so that a
      // caller offering some other ALPN is relayed per connection as it was before (node would
      // otherwise end the handshake with no_application_protocol).
      ...(this.mux !== undefined ? { ALPNCallback: selectMuxAlpn } : {}),
    })
    // The connection cap is node's own: past it the socket is closed before 'connection', and
    // 'drop' tells.
    server.maxConnections = this.maxConnections
    server.on('drop', (d?: { remoteAddress?: string }) => {
      this.refused.connections++
      this.metrics.error('conn_limit')
      this.logger.debug(
        { remote: d?.remoteAddress, max: this.maxConnections },
        'inbound connection cap reached',
      )
    })
    // Before node:tls wraps the socket: it is pending from accept.
    server.prependListener('connection', (socket: net.Socket) => {
      if (this.handshaking.size >= this.maxPendingHandshakes) this.evictPendingHandshake()
      this.sockets.add(socket)
      this.handshaking.set(socket, this.clock.now())
      socket.once('close', () => {
        this.sockets.delete(socket)
        this.handshaking.delete(socket)
      })
    })
    server.on('secureConnection', (socket) => {
      socket.allowHalfOpen = true
      const raw = rawSocketOf(socket)
      if (raw !== undefined) this.handshaking.delete(raw)
      this.accept(socket)
    })
    server.on('tlsClientError', (error, socket) => {
      const raw = rawSocketOf(socket)
      if (raw !== undefined) {
        this.handshaking.delete(raw)
        if (this.evicted.has(raw)) return
      }
      this.metrics.error('tls')
      this.logger.debug(
        { error: error.message, code: (error as { code?: string }).code, remote: socket.remoteAddress },
        'inbound handshake failed',
      )
    })
    this.server = server
    this.unsubscribes.push(
      this.init.certificates.on('cert:rotated', (next) => {
        server.setSecureContext(serverContextOptions(next))
        // Sessions keep the certificate they were opened with: they take no new streams.
        this.mux?.drainAll()
      }),
      this.init.authorizer.on('authz:change', () => this.recheck()),
    )
    try {
      this.boundPort = await listen(server, this.init.port, this.init.bindAddress ?? '0.0.0.0', options)
    } catch (error) {
      for (const u of this.unsubscribes.splice(0)) u()
      throw error
    }
    this.state = 'running'
  }

  async stop(): Promise<void> {
    const wasRunning = this.state === 'running'
    this.state = 'stopped'
    for (const u of this.unsubscribes.splice(0)) u()
    if (!wasRunning || !this.server) return
    const closed = closeServer(this.server)
    this.mux?.close()
    for (const c of this.open) c.socket.destroy()
    for (const s of this.sockets) s.destroy()
    this.http?.close()
    this.h2?.close()
    await closed
  }

  /**
   * The pending-handshake cap is reached: closes one pending handshake to make room for a new
   * connection. The oldest that has sent no byte for `SILENT_HANDSHAKE_MS`, else the oldest.
   *
   * "Sent no byte" is the TCP socket's `bytesRead`: node:tls reads the socket's handle itself once
   * it wraps it, and the handle counts what it reads (the ClientHello included). Should a node
   * version stop counting there, every connection looks silent and this is plain oldest-first.
   */
  private evictPendingHandshake(): void {
    const silentSince = this.clock.now() - SILENT_HANDSHAKE_MS
    let victim: net.Socket | undefined
    // Accept order is time order: the scan stops at the first connection inside the grace.
    for (const [socket, acceptedAt] of this.handshaking) {
      if (acceptedAt > silentSince) break
      if (socket.bytesRead === 0) {
        victim = socket
        break
      }
    }
    victim ??= this.handshaking.keys().next().value
    if (victim === undefined) return
    const acceptedAt = this.handshaking.get(victim)!
    // Out of the set now, not at 'close' (a tick later): a burst of accepts evicts one each.
    this.handshaking.delete(victim)
    this.evicted.add(victim)
    this.refused.handshakes++
    this.metrics.error('handshake_limit')
    this.logger.debug(
      {
        remote: victim.remoteAddress,
        max: this.maxPendingHandshakes,
        bytesRead: victim.bytesRead,
        ageMs: Math.round(this.clock.now() - acceptedAt),
      },
      'inbound pending handshake cap reached: a pending handshake evicted',
    )
    victim.destroy()
  }

  /**
   * Whether `source` may hold a connection: an L4 allow, or an L7 intention where each request is
   * gated (`gated`: HTTP mode, or an HTTP/2 connection of an http2/grpc service, with a gate).
   * An L7 source's connection that would be relayed as bytes is refused (fail closed).
   */
  private decide(source: string, gated: boolean): boolean {
    try {
      const d = this.init.authorizer.decide(source, this.service)
      return d === 'allow' || (d === 'l7' && gated && this.init.gate !== undefined)
    } catch {
      return false // an authorizer that cannot answer denies
    }
  }

  private accept(socket: tls.TLSSocket): void {
    const m = this.metrics
    const source = peerServiceOf(socket, this.trustDomain)
    if (source !== undefined && this.mux !== undefined && socket.alpnProtocol === MUX_ALPN) {
      // The source is checked here and at every stream open; connections are counted per stream
      // (inbound-mux.ts).
      this.mux.serve(socket, source)
      return
    }
    m.connections.inc()
    const h2 = this.h2 !== undefined && socket.alpnProtocol === 'h2'
    // An http2/grpc service whose requests are gated: a connection without h2 would be relayed as
    // bytes past the gate (h2c with prior knowledge, say), so it is refused whatever its source.
    const ungatable = this.h2 !== undefined && !h2 && this.init.gate !== undefined
    if (source === undefined || ungatable || !this.decide(source, h2 || this.http !== undefined)) {
      const src = source ?? 'unknown'
      m.denied(src)
      m.error('denied')
      this.logger.info(
        {
          src,
          dst: this.service,
          ...(ungatable ? { reason: 'gated_needs_h2', alpn: socket.alpnProtocol } : {}),
        },
        `inbound denied src=${src} dst=${this.service}`,
      )
      socket.destroy()
      return
    }
    if (h2) {
      this.h2!.serve(socket, source)
      return
    }
    if (this.http !== undefined) {
      this.acceptHttp(socket, source, this.http)
      return
    }
    m.requests.inc()
    m.active.inc()
    const startedAt = this.clock.now()
    const local: net.Socket = net.connect({
      host: this.init.localServiceAddress ?? '127.0.0.1',
      port: this.init.localServicePort,
      allowHalfOpen: true,
      noDelay: true,
      // The app's bytes go to the caller without the Readable machinery (relay.ts).
      onread: relayOnRead((chunk) => forward(local, socket, chunk)),
    })
    const conn: InboundConnection = { socket, source, local }
    this.open.add(conn)
    let socketEnded = false
    let localEnded = false
    let result = 'ok'
    local.once('connect', () => m.latency.observe((this.clock.now() - startedAt) / 1000))
    socket.on('end', () => {
      socketEnded = true
    })
    local.on('end', () => {
      localEnded = true
    })
    socket.on('error', () => {})
    local.on('error', (error: Error & { code?: string }) => {
      if (local.connecting || local.bytesRead === 0) {
        result = 'local_connect'
        m.error('local_connect')
        this.logger.debug(
          { src: source, dst: this.service, error: error.message, code: error.code },
          'inbound local app unreachable',
        )
      }
    })
    // The caller's bytes through onread where node allows it on an accepted socket (relay.ts);
    // its end is then ours to relay, as pipe() does.
    if (readAccepted(socket, (chunk) => forward(socket, local, chunk))) socket.on('end', () => local.end())
    else socket.pipe(local)
    local.on('end', () => socket.end())
    socket.on('close', () => {
      if (!socketEnded || !localEnded) local.destroy()
      this.open.delete(conn)
      m.active.dec()
      const rx = socket.bytesRead
      const tx = socket.bytesWritten
      m.addBytes(rx, tx)
      if (shouldLogAccess(accessLogMode(this.init.accessLog), 0, result)) {
        this.logger.info(
          {
            direction: 'inbound',
            src: source,
            dst: this.service,
            remote: socket.remoteAddress,
            result,
            bytesIn: rx,
            bytesOut: tx,
            durationMs: Math.round((this.clock.now() - startedAt) * 1000) / 1000,
          },
          'access',
        )
      }
    })
    local.on('close', () => {
      if (!localEnded || !socketEnded) socket.destroy()
    })
  }

  /** HTTP mode: the connection is served request by request; policy changes apply per request. */
  private acceptHttp(socket: tls.TLSSocket, source: string, http: InboundHttp): void {
    const m = this.metrics
    m.active.inc()
    const startedAt = this.clock.now()
    const conn: InboundConnection = { socket, source }
    this.open.add(conn)
    socket.on('close', () => {
      this.open.delete(conn)
      m.active.dec()
      const rx = socket.bytesRead
      const tx = socket.bytesWritten
      m.addBytes(rx, tx)
      this.logger.debug(
        {
          direction: 'inbound',
          src: source,
          dst: this.service,
          bytesIn: rx,
          bytesOut: tx,
          durationMs: Math.round((this.clock.now() - startedAt) * 1000) / 1000,
        },
        'inbound connection closed',
      )
    })
    http.serve(socket, source)
  }

  /** Policy changed: close the open connections it now denies. */
  private recheck(): void {
    this.h2?.recheck((source) => this.decide(source, true))
    this.mux?.recheck()
    for (const c of this.open) {
      // Relayed connections (`local` set) are never gated; HTTP mode's are.
      if (this.decide(c.source, c.local === undefined)) continue
      this.metrics.denied(c.source)
      this.logger.info(
        { src: c.source, dst: this.service, open: true },
        `inbound denied src=${c.source} dst=${this.service}`,
      )
      c.socket.destroy()
      c.local?.destroy()
    }
  }
}

function selectMuxAlpn({ protocols }: { protocols: string[] }): string | undefined {
  return protocols.includes(MUX_ALPN) ? MUX_ALPN : protocols[0]
}

function checkCap(field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1)
    throw new InvalidProxyConfigError(field, 'must be a positive integer')
  return value
}

/**
 * The TCP socket under a server-side TLS socket (node:tls keeps it as `_parent`), to match a
 * finished or failed handshake with the accepted connection; undefined if node stops keeping it
 * (then the entry leaves the pending set when its socket closes).
 */
function rawSocketOf(socket: tls.TLSSocket): net.Socket | undefined {
  const parent = (socket as tls.TLSSocket & { _parent?: unknown })._parent
  return parent instanceof net.Socket ? parent : undefined
}
