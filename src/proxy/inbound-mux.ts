/**
 * The inbound side of `peermesh-mux/1` for a `tcp` service: each stream an outbound sidecar opens
 * on its session is one connection to the local app, relayed both ways with flow control
 * (`mux-session.ts`).
 *
 * Policy, from the attacker's side: the session's source is the SPIFFE service of its verified
 * client certificate (as for a per-connection relay). The source is checked when the session is
 * accepted, as a per-connection relay's is: a denied source's session gets GOAWAY `denied` and is
 * closed at once, counted and logged as one denied connection (`inbound denied src=... dst=...`),
 * so a denied certificate cannot hold the listener's connections with idle sessions. Intentions
 * are checked again at every stream open against the current policy: a denied stream gets RST
 * `denied`, is counted (logged at most once per `DENIED_LOG_INTERVAL_MS` per session, with the
 * count since the last line), and no connection to the app is made. A policy change re-checks
 * every session: a source now denied has its streams reset and its session closed. Streams past
 * the session's limit, or past the listener's connection cap (all sessions' streams and
 * per-connection relays together), get RST `refused` before any app connection.
 *
 * A session with no open stream for `idleMs` (default `DEFAULT_MUX_SERVER_IDLE_MS`) is closed,
 * so that no peer, allowed or not, holds one of the listener's connections without using it.
 */
import net from 'node:net'
import type { Clock } from '../common/clock.ts'
import type { ListenerMetrics } from './metrics.ts'
import type { Cancel } from '../common/clock.ts'
import { goAwayFrame, MuxResetCode } from './mux-frame.ts'
import { type MuxBacklog, MuxSession, type MuxStream } from './mux-session.ts'
import { canReadAccepted, readAccepted, relayOnRead } from './relay.ts'
import { type AccessLogMode, type ProxyLogger, shouldLogAccess } from './types.ts'

/**
 * An inbound session with no open stream for this long is closed. Well above the outbound's own
 * idle close (`DEFAULT_MUX_IDLE_MS`, 15 s), so a conforming caller closes its idle session first
 * and no OPEN of it races ours; short enough that a peer holding idle sessions gives the
 * listener's connections back within minutes.
 */
export const DEFAULT_MUX_SERVER_IDLE_MS = 120_000

/**
 * Per session, at most one `inbound denied` line per stream denied at open in this time; the
 * others are counted (metrics) and the next line says how many were not logged. A peer opening
 * denied streams in a loop would otherwise log a line per 12-byte frame.
 */
export const DENIED_LOG_INTERVAL_MS = 1_000

/** How long a denied source's session may take to take its GOAWAY before it is destroyed. */
const DENIED_SESSION_LINGER_MS = 1_000

export interface MuxInboundInit {
  service: string
  localServiceAddress: string
  localServicePort: number
  metrics: ListenerMetrics
  logger: ProxyLogger
  clock: Clock
  accessLog: AccessLogMode
  /** Whether `source` may hold a session, and open a stream, now (the current intentions). */
  decide(source: string): boolean
  /** Whether one more app connection fits the listener's cap (see `InboundListener`). */
  admit(): boolean
  maxStreams: number
  initialWindow: number
  drainMs: number
  /** A session with no open stream for this long is closed (`DEFAULT_MUX_SERVER_IDLE_MS`). */
  idleMs: number
}

interface ServedSession {
  session: MuxSession
  source: string
  /** App connections of the session's open streams. */
  locals: Map<MuxStream, net.Socket>
  cancelDrain?: Cancel
  /** The idle close, armed while the session has no open stream. */
  cancelIdle?: Cancel
  /** Streams denied at open since the last `inbound denied` line, and that line's time. */
  deniedUnlogged: number
  deniedLoggedAt: number | undefined
}

export class MuxInbound {
  private readonly sessions = new Set<ServedSession>()
  /** Streams relayed to the app now, over all sessions. */
  openStreams = 0
  /**
   * Streams refused by a limit, sessions closed for a protocol error, sessions of a denied source
   * closed at accept, and sessions closed idle, since start.
   */
  readonly refused = { streams: 0, protocolErrors: 0, deniedSessions: 0, idleSessions: 0 }

  constructor(private readonly init: MuxInboundInit) {}

  /** Serves a session whose peer negotiated the mux ALPN and presented `source`'s certificate. */
  serve(socket: net.Socket, source: string): void {
    const init = this.init
    if (!this.decideSafely(source)) {
      this.refuseSession(socket, source)
      return
    }
    const served: ServedSession = {
      session: undefined as unknown as MuxSession,
      source,
      locals: new Map(),
      deniedUnlogged: 0,
      deniedLoggedAt: undefined,
    }
    // The session's bytes through onread when node allows it on an accepted socket (relay.ts).
    const onRead = canReadAccepted(socket)
    served.session = new MuxSession({
      socket,
      role: 'server',
      externalReads: onRead,
      clock: init.clock,
      maxStreams: init.maxStreams,
      initialWindow: init.initialWindow,
      onOpen: (stream) => this.open(served, stream),
      onRefused: () => {
        this.refused.streams++
        init.metrics.error('stream_limit')
      },
      onProtocolError: (reason) => {
        this.refused.protocolErrors++
        init.metrics.error('protocol')
        init.logger.info(
          { src: source, dst: init.service, reason, remote: socket.remoteAddress },
          `inbound mux protocol error src=${source} dst=${init.service} reason=${reason}`,
        )
      },
      // Idle after the peer's GOAWAY: it opens nothing more. Our own drain GOAWAY is not enough:
      // OPENs that crossed it may still come (and are served); the peer closes once it has read
      // it, or the drain time does.
      onIdle: () => {
        if (served.session.goAwayReceived) served.session.close()
        else if (served.session.goAwaySent) this.closeIfStillIdle(served)
        else this.armIdle(served)
      },
      onClose: () => {
        served.cancelDrain?.()
        served.cancelIdle?.()
        this.sessions.delete(served)
      },
    })
    const receive = (chunk: Buffer): boolean => {
      served.session.receive(chunk)
      return true
    }
    if (onRead && !readAccepted(socket, receive)) socket.on('data', receive)
    this.sessions.add(served)
    this.armIdle(served)
  }

  /**
   * A denied source's session: counted and logged as a denied connection, then GOAWAY `denied`
   * and the connection destroyed once that is written (or after a short linger). Nothing it sent
   * is read.
   */
  private refuseSession(socket: net.Socket, source: string): void {
    const { metrics: m, logger, service, clock } = this.init
    this.refused.deniedSessions++
    m.connections.inc()
    m.denied(source)
    m.error('denied')
    logger.info(
      { src: source, dst: service, mux: true, remote: socket.remoteAddress },
      `inbound denied src=${source} dst=${service}`,
    )
    socket.on('error', () => {})
    const cancel = clock.setTimeout(() => socket.destroy(), DENIED_SESSION_LINGER_MS)
    socket.once('close', cancel)
    socket.once('finish', () => socket.destroy())
    socket.end(goAwayFrame(0, MuxResetCode.DENIED))
  }

  /** Sessions served now. */
  get sessionCount(): number {
    return this.sessions.size
  }

  /** What the sessions hold unsent, summed, and how many stopped reading their peer (tests). */
  get backlog(): MuxBacklog & { pausedSessions: number } {
    const total = { queuedBytes: 0, unsentResets: 0, inputPaused: false, pausedSessions: 0 }
    for (const { session } of this.sessions) {
      const b = session.backlog
      total.queuedBytes += b.queuedBytes
      total.unsentResets += b.unsentResets
      if (b.inputPaused) total.pausedSessions++
    }
    total.inputPaused = total.pausedSessions > 0
    return total
  }

  /** (Re)starts the idle close of a session that has no open stream. */
  private armIdle(served: ServedSession): void {
    served.cancelIdle?.()
    served.cancelIdle = this.init.clock.setTimeout(() => {
      served.cancelIdle = undefined
      const session = served.session
      if (session.size > 0 || session.closed) return
      this.refused.idleSessions++
      session.close()
    }, this.init.idleMs)
  }

  private open(served: ServedSession, stream: MuxStream): void {
    const { metrics: m, logger, service } = this.init
    const source = served.source
    served.cancelIdle?.()
    served.cancelIdle = undefined
    m.connections.inc()
    if (!this.decideSafely(source)) {
      m.denied(source)
      m.error('denied')
      this.logDeniedStream(served, stream)
      stream.reset(MuxResetCode.DENIED)
      return
    }
    if (!this.init.admit()) {
      this.refused.streams++
      m.error('conn_limit')
      stream.reset(MuxResetCode.REFUSED)
      return
    }
    m.requests.inc()
    m.active.inc()
    this.openStreams++
    const startedAt = this.init.clock.now()
    let result = 'ok'
    const local: net.Socket = net.connect({
      host: this.init.localServiceAddress,
      port: this.init.localServicePort,
      allowHalfOpen: true,
      noDelay: true,
      // The app's bytes are framed onto the session (copied out of the shared read buffer).
      onread: relayOnRead((chunk) => {
        stream.write(chunk)
        return true
      }),
    })
    served.locals.set(stream, local)
    stream.attach(local, {
      onRemoteFin: () => local.end(),
      onReset: () => local.destroy(),
    })
    local.once('connect', () => m.latency.observe((this.init.clock.now() - startedAt) / 1000))
    local.on('end', () => stream.end())
    local.on('error', (error: Error & { code?: string }) => {
      if (local.connecting || local.bytesRead === 0) {
        if (result === 'ok') {
          result = 'local_connect'
          m.error('local_connect')
          logger.debug(
            { src: source, dst: service, error: error.message, code: error.code },
            'inbound local app unreachable',
          )
        }
        stream.reset(MuxResetCode.APP_CONNECT_FAILED)
      }
    })
    local.on('close', () => {
      stream.localClosed()
      served.locals.delete(stream)
      this.openStreams--
      m.active.dec()
      const rx = local.bytesWritten
      const tx = local.bytesRead
      m.addBytes(rx, tx)
      if (shouldLogAccess(this.init.accessLog, 0, result)) {
        logger.info(
          {
            direction: 'inbound',
            src: source,
            dst: service,
            remote: served.session.socket.remoteAddress,
            stream: stream.id,
            result,
            bytesIn: rx,
            bytesOut: tx,
            durationMs: Math.round((this.init.clock.now() - startedAt) * 1000) / 1000,
          },
          'access',
        )
      }
    })
  }

  /** `inbound denied` for a stream denied at open, at most once per `DENIED_LOG_INTERVAL_MS`. */
  private logDeniedStream(served: ServedSession, stream: MuxStream): void {
    const { logger, service, clock } = this.init
    const now = clock.now()
    if (served.deniedLoggedAt !== undefined && now - served.deniedLoggedAt < DENIED_LOG_INTERVAL_MS) {
      served.deniedUnlogged++
      return
    }
    const notLogged = served.deniedUnlogged
    served.deniedLoggedAt = now
    served.deniedUnlogged = 0
    logger.info(
      { src: served.source, dst: service, stream: stream.id, ...(notLogged > 0 ? { notLogged } : {}) },
      `inbound denied src=${served.source} dst=${service}`,
    )
  }

  private decideSafely(source: string): boolean {
    try {
      return this.init.decide(source)
    } catch {
      return false
    }
  }

  /**
   * Policy changed: every session whose source is now denied has its streams reset (each counted
   * and logged as a denied connection) and is closed (GOAWAY `denied`).
   */
  recheck(): void {
    const { metrics: m, logger, service } = this.init
    for (const served of [...this.sessions]) {
      if (this.decideSafely(served.source)) continue
      for (const [stream, local] of [...served.locals]) {
        m.denied(served.source)
        logger.info(
          { src: served.source, dst: service, open: true, stream: stream.id },
          `inbound denied src=${served.source} dst=${service}`,
        )
        stream.reset(MuxResetCode.DENIED)
        local.destroy()
      }
      served.session.close(MuxResetCode.DENIED)
    }
  }

  /**
   * Certificate or trust bundle rotated: every session gets GOAWAY (its peer opens new streams on
   * a new session, with the new certificate). Streams already open go on for as long as they
   * last, as a per-connection relay's TLS connection does: a rotation resets no connection. The
   * peer closes the session once its streams have ended. Not closed here when idle: an OPEN the
   * peer sent before it read the GOAWAY would find the connection ending, and cost a retry; a
   * session still idle after the drain time is closed (a peer that does not close its own).
   */
  drainAll(): void {
    for (const served of this.sessions) {
      const session = served.session
      if (session.goAwaySent) continue
      session.goAway(MuxResetCode.SHUTDOWN, false)
      if (session.size === 0) this.closeIfStillIdle(served)
    }
  }

  private closeIfStillIdle(served: ServedSession): void {
    served.cancelIdle?.()
    served.cancelIdle = undefined
    served.cancelDrain?.()
    served.cancelDrain = this.init.clock.setTimeout(() => {
      served.cancelDrain = undefined
      if (served.session.size === 0) served.session.close()
    }, this.init.drainMs)
  }

  /** Stopping: GOAWAY, streams reset, app connections closed, TLS connections ended. */
  close(): void {
    for (const served of [...this.sessions]) {
      served.cancelDrain?.()
      served.cancelIdle?.()
      served.session.close()
      for (const local of served.locals.values()) local.destroy()
    }
  }
}
