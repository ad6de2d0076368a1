/**
 * The inbound side of `peermesh-mux/1` for a `tcp` service: each stream an outbound sidecar opens
 * on its session is one connection to the local app, relayed both ways with flow control
 * (`mux-session.ts`).
 *
 * Policy, from the attacker's side: the session's source is the SPIFFE service of its verified
 * client certificate (as for a per-connection relay). Intentions are checked at every stream open
 * against the current policy: a denied stream gets RST `denied`, is counted and logged as a denied
 * connection (`inbound denied src=... dst=...`), and no connection to the app is made. A policy
 * change re-checks every session and resets the streams now denied. Streams past the session's
 * limit, or past the listener's connection cap (all sessions' streams and per-connection relays
 * together), get RST `refused` before any app connection.
 */
import net from 'node:net'
import type { Clock } from '../common/clock.ts'
import type { ListenerMetrics } from './metrics.ts'
import { MuxResetCode } from './mux-frame.ts'
import { MuxSession, type MuxStream } from './mux-session.ts'
import { canReadAccepted, readAccepted, relayOnRead } from './relay.ts'
import { type AccessLogMode, type ProxyLogger, shouldLogAccess } from './types.ts'

export interface MuxInboundInit {
  service: string
  localServiceAddress: string
  localServicePort: number
  metrics: ListenerMetrics
  logger: ProxyLogger
  clock: Clock
  accessLog: AccessLogMode
  /** Whether `source` may open a stream now (the current intentions). */
  decide(source: string): boolean
  /** Whether one more app connection fits the listener's cap (see `InboundListener`). */
  admit(): boolean
  maxStreams: number
  initialWindow: number
  drainMs: number
}

interface ServedSession {
  session: MuxSession
  source: string
  /** App connections of the session's open streams. */
  locals: Map<MuxStream, net.Socket>
  cancelDrain?: () => void
}

export class MuxInbound {
  private readonly sessions = new Set<ServedSession>()
  /** Streams relayed to the app now, over all sessions. */
  openStreams = 0
  /** Streams refused by a limit, and sessions closed for a protocol error, since start. */
  readonly refused = { streams: 0, protocolErrors: 0 }

  constructor(private readonly init: MuxInboundInit) {}

  /** Serves a session whose peer negotiated the mux ALPN and presented `source`'s certificate. */
  serve(socket: net.Socket, source: string): void {
    const init = this.init
    const served: ServedSession = { session: undefined as unknown as MuxSession, source, locals: new Map() }
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
      },
      onClose: () => {
        served.cancelDrain?.()
        this.sessions.delete(served)
      },
    })
    const receive = (chunk: Buffer): boolean => {
      served.session.receive(chunk)
      return true
    }
    if (onRead && !readAccepted(socket, receive)) socket.on('data', receive)
    this.sessions.add(served)
  }

  /** Sessions served now. */
  get sessionCount(): number {
    return this.sessions.size
  }

  private open(served: ServedSession, stream: MuxStream): void {
    const { metrics: m, logger, service } = this.init
    const source = served.source
    m.connections.inc()
    if (!this.decideSafely(source)) {
      m.denied(source)
      m.error('denied')
      logger.info(
        { src: source, dst: service, stream: stream.id },
        `inbound denied src=${source} dst=${service}`,
      )
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

  private decideSafely(source: string): boolean {
    try {
      return this.init.decide(source)
    } catch {
      return false
    }
  }

  /** Policy changed: reset the streams of every session whose source is now denied. */
  recheck(): void {
    const { metrics: m, logger, service } = this.init
    for (const served of this.sessions) {
      if (served.locals.size === 0 || this.decideSafely(served.source)) continue
      for (const [stream, local] of [...served.locals]) {
        m.denied(served.source)
        logger.info(
          { src: served.source, dst: service, open: true, stream: stream.id },
          `inbound denied src=${served.source} dst=${service}`,
        )
        stream.reset(MuxResetCode.DENIED)
        local.destroy()
      }
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
      served.session.close()
      for (const local of served.locals.values()) local.destroy()
    }
  }
}
