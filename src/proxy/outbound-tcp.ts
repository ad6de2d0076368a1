/**
 * The outbound listener in L4 mode: a plain TCP listener on 127.0.0.1 for one upstream. Each
 * client connection goes to one endpoint over mutual TLS, chosen per connection (split, then P2C).
 *
 * Until the endpoint's first response byte the proxy holds the client's bytes (up to
 * `replayBufferBytes`), so that a connect error, a failed handshake, or a close/reset by the
 * endpoint can be retried on another endpoint with the same bytes — a dead instance costs
 * latency, not a failed connection. After the first response byte the client's bytes are
 * `pipe`d to the endpoint and the endpoint's come through `relay.ts` (node's `onread`, no
 * Readable machinery): no JavaScript of ours runs per chunk beyond a copy and a write.
 *
 * Multiplexed mode (default): the connection is a stream of the endpoint's `peermesh-mux/1`
 * session (`outbound-mux.ts`), with the same choice, retries, metrics and logs per stream; an
 * endpoint whose inbound does not speak mux is dialled per connection as above.
 */
import net from 'node:net'
import tls from 'node:tls'
import type { Cancel } from '../common/clock.ts'
import {
  DEFAULT_MUX_FALLBACK_MS,
  DEFAULT_MUX_IDLE_MS,
  DEFAULT_MUX_INITIAL_WINDOW,
  DEFAULT_MUX_MAX_STREAMS,
  DEFAULT_REPLAY_BUFFER_BYTES,
} from './constants.ts'
import type { EndpointRecord } from './endpoint-pool.ts'
import { InvalidProxyConfigError, UpstreamConnectError } from './errors.ts'
import { OutboundListenerBase, UpstreamCore, type UpstreamListenerInit } from './outbound-common.ts'
import { forward, readAccepted, relayOnRead } from './relay.ts'
import { MuxResetCode } from './mux-frame.ts'
import type { MuxSession, MuxStream } from './mux-session.ts'
import { type AdoptedSocket, type ClientSession, MuxClientPool } from './outbound-mux.ts'
import { ALL_ROUTE, type Plan } from './traffic.ts'
import { shouldLogAccess } from './types.ts'

export interface OutboundListenerInit extends UpstreamListenerInit {
  /** Client bytes held for replay before the first response byte. Default 64 KiB. */
  replayBufferBytes?: number
  /**
   * Offer `peermesh-mux/1` to endpoints and multiplex client connections over one session per
   * endpoint (`outbound-mux.ts`). Default true; false dials one TLS connection per client connection.
   */
  mux?: boolean
  /** Mux: a session with no stream for this long is closed. Default 15 s (constants.ts). */
  muxIdleMs?: number
  /** Mux: per-stream credit each way, bytes (both ends must agree). Default 64 KiB. */
  muxInitialWindow?: number
}

type FailureReason = 'connect' | 'reset' | 'no_endpoint' | 'denied'

export class OutboundListener extends OutboundListenerBase {
  readonly core: UpstreamCore
  private readonly replayBufferBytes: number
  protected readonly server: net.Server
  protected readonly clientSockets = new Set<net.Socket>()
  /** Mux sessions per endpoint; undefined with `mux: false`. */
  readonly mux: MuxClientPool | undefined

  constructor(init: OutboundListenerInit) {
    super()
    this.core = new UpstreamCore(init)
    this.replayBufferBytes = init.replayBufferBytes ?? DEFAULT_REPLAY_BUFFER_BYTES
    if (!Number.isInteger(this.replayBufferBytes) || this.replayBufferBytes < 0) {
      throw new InvalidProxyConfigError('replayBufferBytes', 'must be an integer ≥ 0')
    }
    this.server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => this.accept(client))
    const idleMs = init.muxIdleMs ?? DEFAULT_MUX_IDLE_MS
    if (!(idleMs > 0)) throw new InvalidProxyConfigError('muxIdleMs', 'must be > 0')
    const initialWindow = init.muxInitialWindow ?? DEFAULT_MUX_INITIAL_WINDOW
    if (!Number.isInteger(initialWindow) || initialWindow < 1 || initialWindow > 0x7fff_ffff) {
      throw new InvalidProxyConfigError('muxInitialWindow', 'must be an integer from 1 to 2^31-1')
    }
    this.mux =
      init.mux === false
        ? undefined
        : new MuxClientPool(this.core, {
            maxStreams: DEFAULT_MUX_MAX_STREAMS,
            initialWindow,
            idleMs,
            fallbackMs: DEFAULT_MUX_FALLBACK_MS,
          })
  }

  /** Stops listening; mux sessions get GOAWAY and close, then every client connection closes. */
  override async stop(): Promise<void> {
    this.mux?.close()
    await super.stop()
  }

  private accept(client: net.Socket): void {
    const m = this.core.metrics
    m.connections.inc()
    m.active.inc()
    m.requests.inc()
    this.core.budget.recordRequest(this.core.clock.now())
    this.clientSockets.add(client)
    // MaxConnections: connections beyond the limit are refused (closed) at once; L4 has no queue.
    const ticket = this.core.admit(() => {})
    if (ticket === false) {
      client.on('error', () => {})
      client.once('close', () => {
        this.clientSockets.delete(client)
        m.active.dec()
      })
      client.destroy()
      return
    }
    new L4Connection(this.core, client, this.replayBufferBytes, this.mux, () => {
      ticket?.release()
      this.clientSockets.delete(client)
      m.active.dec()
    })
  }
}

/** One client connection: attempts until the first response byte, then a plain pipe. */
class L4Connection {
  private readonly startedAt: number
  /** Client bytes not yet answered, for replay on another endpoint. */
  private chunks: Buffer[] = []
  private bufferedBytes = 0
  /** False once bytes were dropped from `chunks`: no more retries. */
  private replayable = true
  private clientEnded = false
  private clientClosed = false
  /** The current upstream completed its handshake (bytes written to it go straight through). */
  private secure = false
  /** The first response byte arrived: both directions are piped. */
  private established = false
  private upstream: tls.TLSSocket | undefined
  /** Mux: the stream of the current attempt, once opened. */
  private stream: MuxStream | undefined
  /** Mux: stops waiting for a session that is still connecting. */
  private cancelWait: Cancel | undefined
  /** Mux: gives back the endpoint's outstanding count taken by the current attempt (once). */
  private releaseAttempt: (() => void) | undefined
  private record: EndpointRecord | undefined
  private readonly tried: EndpointRecord[] = []
  /** Splitter, resolver and failover targets for this connection (no routes in L4). */
  private readonly plan: Plan
  private finished = false
  private result = 'ok'
  /** The client's bytes come through `onread` (relay.ts `readAccepted`), not `'data'` events. */
  private readonly clientOnRead: boolean
  /** Where the client's bytes go with `onread`: to `onClientData`, then straight on once streaming. */
  private deliverClient = (chunk: Buffer): boolean => {
    this.onClientData(chunk)
    return true // onClientData pauses the client itself when it must
  }

  constructor(
    private readonly core: UpstreamCore,
    private readonly client: net.Socket,
    private readonly replayLimit: number,
    private readonly mux: MuxClientPool | undefined,
    private readonly onDone: () => void,
  ) {
    this.startedAt = core.clock.now()
    this.plan = core.plan(ALL_ROUTE)
    this.clientOnRead = readAccepted(client, (chunk) => this.deliverClient(chunk))
    if (!this.clientOnRead) client.on('data', this.onClientData)
    client.on('end', this.onClientEnd)
    client.on('error', () => {}) // 'close' follows and tears the upstream down
    client.on('close', this.onClientClose)
    this.attempt()
  }

  private readonly onClientData = (chunk: Buffer): void => {
    if (this.stream !== undefined) this.stream.write(chunk)
    else if (this.secure) this.upstream!.write(chunk)
    if (!this.replayable) return // a mux stream past its replay buffer
    this.chunks.push(chunk)
    this.bufferedBytes += chunk.length
    if (this.bufferedBytes > this.replayLimit) {
      if (this.secure) this.commitToStreaming()
      else this.client.pause() // back-pressure until an endpoint takes the bytes
    }
  }

  private readonly onClientEnd = (): void => {
    this.clientEnded = true
    if (this.stream !== undefined) this.stream.end()
    // Once streaming, the pipe relays the end (with onread, we do).
    else if (this.secure && (this.replayable || this.clientOnRead)) this.upstream!.end()
  }

  private readonly onClientClose = (): void => {
    this.clientClosed = true
    this.cancelWait?.()
    this.cancelWait = undefined
    if (this.stream !== undefined) {
      // Clean if FIN went both ways, else RST.
      this.stream.localClosed()
      this.stream = undefined
    }
    this.releaseAttempt?.()
    // Unless the exchange ended both ways (the client's last bytes may still be on their way to
    // the endpoint), nothing more can be relayed: drop the upstream.
    if (!(this.established && this.clientEnded && this.upstream?.readableEnded)) this.upstream?.destroy()
    this.finish()
  }

  private attempt(): void {
    if (this.clientClosed) return
    const core = this.core
    const record = core.pickEndpoint(this.plan, this.tried, undefined)
    if (record === undefined) {
      this.fail('no_endpoint')
      return
    }
    this.tried.push(record)
    this.record = record
    this.secure = false
    this.upstream = undefined
    record.pool.acquire(record)
    const session = this.mux?.sessionFor(record)
    if (session === undefined) {
      this.attemptTls(record, undefined)
      return
    }
    let released = false
    const release = (): void => {
      if (released) return
      released = true
      this.releaseAttempt = undefined
      record.pool.release(record)
    }
    this.releaseAttempt = release
    this.cancelWait = session.whenReady((outcome) => {
      this.cancelWait = undefined
      if (outcome.kind === 'mux') {
        this.openStream(record, session, outcome.session, release)
      } else if (outcome.kind === 'fallback') {
        // The TLS path gives the endpoint back when its socket closes.
        released = true
        this.releaseAttempt = undefined
        this.attemptTls(record, outcome.adopted)
      } else {
        release()
        this.attemptFailed(record, 'connect')
      }
    })
  }

  /** Mux: this connection's stream on `session`, fed the bytes held so far. */
  private openStream(
    record: EndpointRecord,
    cs: ClientSession,
    session: MuxSession,
    release: () => void,
  ): void {
    const stream = cs.openStream(session)
    this.stream = stream
    this.secure = true
    stream.attach(this.client, {
      onData: (first) => {
        if (first && !this.established) this.establish(record)
      },
      onRemoteFin: () => {
        if (this.established) {
          this.client.end()
          return
        }
        if (this.clientEnded) {
          // The client finished and the endpoint ended without a word: a complete, empty exchange.
          record.pool.reportSuccess(record)
          this.established = true
          this.commitToStreaming()
          this.client.end()
          return
        }
        // Ended before the first response byte, the client still talking: as a reset.
        this.stream = undefined
        this.secure = false
        stream.reset(MuxResetCode.CANCEL)
        release()
        this.attemptFailed(record, 'reset')
      },
      onReset: (code) => {
        if (this.stream === stream) this.stream = undefined
        this.secure = false
        release()
        if (this.clientClosed) return
        if (this.established) {
          this.client.destroy()
          return
        }
        if (code === MuxResetCode.DENIED) this.attemptDenied(record)
        else this.attemptFailed(record, 'reset')
      },
    })
    for (const chunk of this.chunks) stream.write(chunk)
    if (this.bufferedBytes > this.replayLimit) this.commitToStreaming()
    if (this.clientEnded) stream.end()
    // Held while no endpoint took the bytes (see onClientData).
    if (!stream.pausingSource) this.client.resume()
  }

  /** Before the first response byte: retry on another endpoint, or fail with `reason`. */
  private attemptFailed(record: EndpointRecord, reason: 'connect' | 'reset'): void {
    const core = this.core
    if (this.clientClosed) return
    if (reason === 'reset' && core.locallyDenied()) {
      this.fail('denied')
      return
    }
    record.pool.reportFailure(record)
    this.retryOr(record, reason)
  }

  /**
   * Mux: the endpoint's inbound denied the stream. Not the endpoint's fault (no outlier failure);
   * another instance may hold a newer policy, so it is retried, unless the local view denies too.
   */
  private attemptDenied(record: EndpointRecord): void {
    if (this.core.locallyDenied()) {
      this.fail('denied')
      return
    }
    this.retryOr(record, 'denied')
  }

  private retryOr(record: EndpointRecord, reason: FailureReason): void {
    const core = this.core
    if (this.replayable && this.tried.length < core.maxAttempts && core.budget.tryAcquire(core.clock.now())) {
      core.metrics.retries.inc()
      core.logger.debug(
        { upstream: core.destination, endpoint: record.endpoint.id, reason },
        `retrying upstream=${core.destination} after ${reason}`,
      )
      this.attempt()
      return
    }
    this.fail(reason)
  }

  /**
   * One TLS connection for this client connection: dialled here, or `adopted` (a mux session's
   * connection whose inbound does not speak mux, already through its handshake).
   */
  private attemptTls(record: EndpointRecord, adopted: AdoptedSocket | undefined): void {
    const core = this.core
    let up: tls.TLSSocket
    if (adopted === undefined) {
      up = tls.connect({
        host: record.endpoint.address,
        port: record.endpoint.port,
        secureContext: core.tls.secureContext,
        checkServerIdentity: core.identityCheckFor(record.endpoint.service),
        // Half-close is relayed both ways (node:tls accepts it; the typings omit it).
        allowHalfOpen: true,
        // Response bytes come to `onUpstreamChunk`, without the Readable machinery (relay.ts).
        onread: relayOnRead((chunk) => this.onUpstreamChunk(up, record, chunk)),
      } as tls.ConnectionOptions)
      up.setNoDelay(true)
    } else {
      up = adopted.socket
    }
    this.upstream = up
    const cancelTimer =
      adopted === undefined
        ? core.clock.setTimeout(
            () => up.destroy(new UpstreamConnectError('connect timeout')),
            core.connectTimeoutFor(record.endpoint.service),
          )
        : () => {}
    let upEnded = false

    const onSecure = (): void => {
      cancelTimer()
      this.secure = true
      for (const chunk of this.chunks) up.write(chunk)
      if (this.bufferedBytes > this.replayLimit) {
        this.commitToStreaming()
        this.client.resume()
      } else if (this.clientEnded) {
        up.end()
      }
    }
    if (adopted === undefined) up.once('secureConnect', onSecure)
    else {
      onSecure()
      adopted.take((chunk) => this.onUpstreamChunk(up, record, chunk))
    }
    up.on('end', () => {
      upEnded = true
      // Half-open is allowed, so an end does not close by itself: before the first response byte
      // it settles the attempt (see 'close'); after it, the end is relayed to the client.
      if (!this.established) up.destroy()
      else if (this.upstream === up) this.client.end()
    })
    up.on('error', () => {}) // handled on 'close'
    up.on('close', () => {
      cancelTimer()
      record.pool.release(record)
      if (this.established) {
        // A clean end was relayed by pipe; anything else tears the client down.
        if (!upEnded) this.client.destroy()
        return
      }
      if (this.clientClosed) return
      if (this.secure && upEnded && this.clientEnded) {
        // The client finished and the endpoint closed without a word: a complete, empty exchange.
        record.pool.reportSuccess(record)
        this.established = true
        this.client.end()
        return
      }
      // Closed before the first response byte.
      this.attemptFailed(record, this.secure ? 'reset' : 'connect')
    })
  }

  /** Response bytes of the attempt on `up`: the first commits to its endpoint, the rest are relayed. */
  private onUpstreamChunk(up: tls.TLSSocket, record: EndpointRecord, chunk: Buffer): boolean {
    if (this.upstream !== up) return false
    if (!this.established) this.establish(record)
    return forward(up, this.client, chunk)
  }

  /** First response byte: commit to this endpoint and relay both ways. */
  private establish(record: EndpointRecord): void {
    this.established = true
    this.core.metrics.latency.observe((this.core.clock.now() - this.startedAt) / 1000)
    record.pool.reportSuccess(record)
    if (this.replayable) this.commitToStreaming()
  }

  /** Stop holding bytes for replay: from here on the client's bytes are piped. */
  private commitToStreaming(): void {
    this.replayable = false
    this.chunks = []
    this.bufferedBytes = 0
    // A mux stream keeps taking the client's bytes through onClientData (with its credit).
    if (this.stream !== undefined) return
    const up = this.upstream!
    if (this.clientOnRead) {
      this.deliverClient = (chunk) => forward(this.client, up, chunk)
      if (this.clientEnded && !up.writableEnded) up.end()
      return
    }
    this.client.off('data', this.onClientData)
    // A client that already ended (before the handshake finished) gets its end relayed here.
    if (!this.clientEnded) this.client.pipe(up)
    else if (!up.writableEnded) up.end()
  }

  private fail(reason: FailureReason): void {
    this.result = reason
    this.core.metrics.error(reason)
    this.client.destroy()
  }

  private finish(): void {
    if (this.finished) return
    this.finished = true
    const core = this.core
    const rx = this.client.bytesRead
    const tx = this.client.bytesWritten
    core.metrics.addBytes(rx, tx)
    this.onDone()
    if (shouldLogAccess(core.accessLog, 0, this.result)) {
      const e = this.record?.endpoint
      core.logger.info(
        {
          direction: 'outbound',
          upstream: core.destination,
          endpoint: e?.id,
          address: e ? `${e.address}:${e.port}` : undefined,
          attempts: this.tried.length,
          result: this.result,
          bytesIn: rx,
          bytesOut: tx,
          durationMs: Math.round((core.clock.now() - this.startedAt) * 1000) / 1000,
        },
        'access',
      )
    }
  }
}
