/**
 * The outbound side of `peermesh-mux/1`: per endpoint instance, one session (a mutual-TLS
 * connection offering ALPN `peermesh-mux/1`), opened when the first client connection is routed
 * there and shared by every later one (`outbound-tcp.ts` opens one stream per client connection).
 *
 * - An inbound that does not select the ALPN (an older sidecar, another TLS server) answered the
 *   handshake of a plain connection: the first client connection waiting for the session takes
 *   that TLS connection over as its own per-connection relay, the others dial per connection, and
 *   the endpoint is dialled per connection (without asking again) for `fallbackMs`.
 * - A session with no stream for `idleMs` is closed (GOAWAY, then the TLS connection ends).
 * - A session opened with an older certificate or trust bundle, or whose inbound sent GOAWAY,
 *   takes no new stream: a new one is opened beside it, and it closes when its last stream ends
 *   (however long that takes: a rotation resets no client connection, as with per-connection
 *   relays, whose TLS connections outlive a rotation too).
 * - A session full (`maxStreams`) is left to its streams and a new one takes the next.
 */
import tls from 'node:tls'
import type { Cancel } from '../common/clock.ts'
import type { EndpointRecord } from './endpoint-pool.ts'
import { UpstreamConnectError } from './errors.ts'
import { MUX_ALPN } from './mux-frame.ts'
import { MuxSession, type MuxStream } from './mux-session.ts'
import type { UpstreamCore } from './outbound-common.ts'
import { relayOnRead } from './relay.ts'

export interface MuxClientConfig {
  maxStreams: number
  initialWindow: number
  idleMs: number
  fallbackMs: number
}

/** A session's TLS connection taken over by one client connection. */
export interface AdoptedSocket {
  socket: tls.TLSSocket
  /**
   * From now on the socket's bytes go to `deliver` (false: full, reading stops until
   * `socket.resume()`); bytes that came before are delivered at once.
   */
  take(deliver: (chunk: Buffer) => boolean): void
}

/** How a wait for a session ended. */
export type SessionOutcome =
  | { kind: 'mux'; session: MuxSession }
  /**
   * The inbound does not speak mux. `adopted` (for one waiter): the connected TLS socket, taken
   * over as a per-connection relay.
   */
  | { kind: 'fallback'; adopted: AdoptedSocket | undefined }
  /** TCP connect, TLS handshake or identity check failed, or timed out. */
  | { kind: 'failed' }

class ClientSession {
  readonly socket: tls.TLSSocket
  readonly context: tls.SecureContext
  session: MuxSession | undefined
  private waiters: ((outcome: SessionOutcome) => void)[] = []
  /** Where the socket's bytes go: held until the ALPN decides, then the session or the adopter. */
  private deliver: (chunk: Buffer) => boolean = (chunk) => {
    this.early.push(chunk)
    return true
  }
  /** Bytes that came before the decision (a per-connection inbound's app may speak first). */
  private early: Buffer[] = []
  /** Takes no new streams (rotated, GOAWAY received, full, or the pool is closing). */
  retired = false
  private cancelIdle: Cancel | undefined

  constructor(
    private readonly pool: MuxClientPool,
    readonly record: EndpointRecord,
  ) {
    const core = pool.core
    const e = record.endpoint
    this.context = core.tls.secureContext
    const socket: tls.TLSSocket = tls.connect({
      host: e.address,
      port: e.port,
      secureContext: this.context,
      checkServerIdentity: core.identityCheckFor(e.service),
      // `http/1.1` second: an inbound with an ALPN list of its own that lacks ours (an http2/grpc
      // service's, which lists h2 and http/1.1) selects it and relays the connection as bytes, as it
      // does for a caller without ALPN, instead of failing the handshake.
      ALPNProtocols: [MUX_ALPN, 'http/1.1'],
      // For the per-connection fallback, which adopts this socket: half-close is relayed.
      allowHalfOpen: true,
      // Bytes without the Readable machinery (relay.ts): to the session, or to the adopter.
      onread: relayOnRead((chunk) => this.deliver(chunk)),
    } as tls.ConnectionOptions)
    socket.setNoDelay(true)
    this.socket = socket
    const cancelTimer = core.clock.setTimeout(
      () => socket.destroy(new UpstreamConnectError('connect timeout')),
      core.connectTimeoutFor(e.service),
    )
    socket.once('secureConnect', () => {
      cancelTimer()
      if (socket.alpnProtocol === MUX_ALPN) this.opened()
      else this.fallback()
    })
    socket.on('error', () => {}) // handled on 'close'
    socket.once('close', () => {
      cancelTimer()
      this.cancelIdle?.()
      this.pool.forget(this)
      this.settle({ kind: 'failed' })
    })
  }

  /** Calls `done` once the session is usable (or not); returns a cancel for a caller that left. */
  whenReady(done: (outcome: SessionOutcome) => void): Cancel {
    if (this.session !== undefined) {
      done({ kind: 'mux', session: this.session })
      return () => {}
    }
    this.waiters.push(done)
    return () => {
      this.waiters = this.waiters.filter((w) => w !== done)
    }
  }

  /** Whether a new stream may go here. */
  get usable(): boolean {
    if (this.retired || this.socket.destroyed) return false
    if (this.context !== this.pool.core.tls.secureContext) {
      this.retire()
      return false
    }
    if (this.session !== undefined && !this.session.acceptsStreams) {
      this.retire()
      return false
    }
    return true
  }

  /** Opens a stream on the session (after `whenReady` gave `mux`). */
  openStream(session: MuxSession): MuxStream {
    this.cancelIdle?.()
    this.cancelIdle = undefined
    return session.open()
  }

  private opened(): void {
    const config = this.pool.config
    const core = this.pool.core
    const session = new MuxSession({
      socket: this.socket,
      role: 'client',
      externalReads: true,
      clock: core.clock,
      maxStreams: config.maxStreams,
      initialWindow: config.initialWindow,
      onGoAway: () => this.retire(),
      onIdle: () => this.idle(),
      onProtocolError: (reason) => {
        core.metrics.error('protocol')
        core.logger.warn(
          { upstream: core.destination, endpoint: this.record.endpoint.id, reason },
          `outbound mux protocol error upstream=${core.destination} reason=${reason}`,
        )
      },
    })
    this.session = session
    this.deliver = (chunk) => {
      session.receive(chunk)
      return true
    }
    const early = this.early
    this.early = []
    for (const chunk of early) session.receive(chunk)
    this.settle({ kind: 'mux', session })
    if (session.size === 0) this.idle()
  }

  private fallback(): void {
    this.pool.markLegacy(this.record)
    this.pool.forget(this)
    const [first, ...rest] = this.waiters
    this.waiters = []
    if (first === undefined) {
      this.socket.destroy()
      return
    }
    const adopted: AdoptedSocket = {
      socket: this.socket,
      take: (deliver) => {
        this.deliver = deliver
        const early = this.early
        this.early = []
        for (const chunk of early) if (!deliver(chunk)) this.socket.pause()
      },
    }
    first({ kind: 'fallback', adopted })
    for (const w of rest) w({ kind: 'fallback', adopted: undefined })
  }

  private settle(outcome: SessionOutcome): void {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w(outcome)
  }

  private idle(): void {
    const session = this.session
    if (session === undefined) return
    if (this.retired) {
      session.close()
      return
    }
    this.cancelIdle?.()
    this.cancelIdle = this.pool.core.clock.setTimeout(() => {
      if (session.size === 0) {
        this.retire()
        session.close()
      }
    }, this.pool.config.idleMs)
  }

  /** No new streams; closes when the last stream ends (see `idle`). */
  retire(): void {
    if (this.retired) return
    this.retired = true
    this.pool.forget(this)
    if (this.session?.size === 0) this.session.close()
  }

  close(): void {
    this.retired = true
    if (this.session !== undefined) this.session.close()
    else this.socket.destroy()
  }
}

/** The sessions of one outbound listener, one current per endpoint. */
export class MuxClientPool {
  private readonly current = new Map<EndpointRecord, ClientSession>()
  private readonly all = new Set<ClientSession>()
  /** Endpoints dialled per connection until the time given (their inbound does not speak mux). */
  private readonly legacyUntil = new WeakMap<EndpointRecord, number>()
  private closed = false

  constructor(
    readonly core: UpstreamCore,
    readonly config: MuxClientConfig,
  ) {}

  /**
   * The session a new stream to `record` goes on (open or still connecting), or undefined when
   * the endpoint is dialled per connection.
   */
  sessionFor(record: EndpointRecord): ClientSession | undefined {
    if (this.closed) return undefined
    const until = this.legacyUntil.get(record)
    if (until !== undefined) {
      if (this.core.clock.now() < until) return undefined
      this.legacyUntil.delete(record)
    }
    const existing = this.current.get(record)
    if (existing?.usable) return existing
    const created = new ClientSession(this, record)
    this.current.set(record, created)
    this.all.add(created)
    return created
  }

  /** Sessions open or connecting now (current and draining). */
  get size(): number {
    return this.all.size
  }

  markLegacy(record: EndpointRecord): void {
    this.legacyUntil.set(record, this.core.clock.now() + this.config.fallbackMs)
  }

  forget(session: ClientSession): void {
    if (this.current.get(session.record) === session) this.current.delete(session.record)
    if (session.socket.destroyed) this.all.delete(session)
  }

  /** Stopping: every session gets GOAWAY and closes. */
  close(): void {
    this.closed = true
    for (const s of [...this.all]) s.close()
    this.current.clear()
  }
}

export type { ClientSession }
