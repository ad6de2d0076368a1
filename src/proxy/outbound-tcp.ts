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
 */
import net from 'node:net'
import tls from 'node:tls'
import { DEFAULT_REPLAY_BUFFER_BYTES } from './constants.ts'
import type { EndpointRecord } from './endpoint-pool.ts'
import { InvalidProxyConfigError, UpstreamConnectError } from './errors.ts'
import { OutboundListenerBase, UpstreamCore, type UpstreamListenerInit } from './outbound-common.ts'
import { forward, relayOnRead } from './relay.ts'
import { ALL_ROUTE, type Plan } from './traffic.ts'
import { shouldLogAccess } from './types.ts'

export interface OutboundListenerInit extends UpstreamListenerInit {
  /** Client bytes held for replay before the first response byte. Default 64 KiB. */
  replayBufferBytes?: number
}

type FailureReason = 'connect' | 'reset' | 'no_endpoint' | 'denied'

export class OutboundListener extends OutboundListenerBase {
  readonly core: UpstreamCore
  private readonly replayBufferBytes: number
  protected readonly server: net.Server
  protected readonly clientSockets = new Set<net.Socket>()

  constructor(init: OutboundListenerInit) {
    super()
    this.core = new UpstreamCore(init)
    this.replayBufferBytes = init.replayBufferBytes ?? DEFAULT_REPLAY_BUFFER_BYTES
    if (!Number.isInteger(this.replayBufferBytes) || this.replayBufferBytes < 0) {
      throw new InvalidProxyConfigError('replayBufferBytes', 'must be an integer ≥ 0')
    }
    this.server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => this.accept(client))
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
    new L4Connection(this.core, client, this.replayBufferBytes, () => {
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
  private record: EndpointRecord | undefined
  private readonly tried: EndpointRecord[] = []
  /** Splitter, resolver and failover targets for this connection (no routes in L4). */
  private readonly plan: Plan
  private finished = false
  private result = 'ok'

  constructor(
    private readonly core: UpstreamCore,
    private readonly client: net.Socket,
    private readonly replayLimit: number,
    private readonly onDone: () => void,
  ) {
    this.startedAt = core.clock.now()
    this.plan = core.plan(ALL_ROUTE)
    client.on('data', this.onClientData)
    client.on('end', this.onClientEnd)
    client.on('error', () => {}) // 'close' follows and tears the upstream down
    client.on('close', this.onClientClose)
    this.attempt()
  }

  private readonly onClientData = (chunk: Buffer): void => {
    if (this.secure) this.upstream!.write(chunk)
    this.chunks.push(chunk)
    this.bufferedBytes += chunk.length
    if (this.bufferedBytes > this.replayLimit) {
      if (this.secure) this.commitToStreaming()
      else this.client.pause() // back-pressure until an endpoint takes the bytes
    }
  }

  private readonly onClientEnd = (): void => {
    this.clientEnded = true
    // Once streaming, the pipe relays the end.
    if (this.secure && this.replayable) this.upstream!.end()
  }

  private readonly onClientClose = (): void => {
    this.clientClosed = true
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
    record.pool.acquire(record)
    const up: tls.TLSSocket = tls.connect({
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
    this.upstream = up
    const cancelTimer = core.clock.setTimeout(
      () => up.destroy(new UpstreamConnectError('connect timeout')),
      core.connectTimeoutFor(record.endpoint.service),
    )
    let upEnded = false

    up.once('secureConnect', () => {
      cancelTimer()
      this.secure = true
      for (const chunk of this.chunks) up.write(chunk)
      if (this.bufferedBytes > this.replayLimit) {
        this.commitToStreaming()
        this.client.resume()
      } else if (this.clientEnded) {
        up.end()
      }
    })
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
      const reason: FailureReason = this.secure ? 'reset' : 'connect'
      if (this.secure && core.locallyDenied()) {
        this.fail('denied')
        return
      }
      record.pool.reportFailure(record)
      if (
        this.replayable &&
        this.tried.length < core.maxAttempts &&
        core.budget.tryAcquire(core.clock.now())
      ) {
        core.metrics.retries.inc()
        core.logger.debug(
          { upstream: core.destination, endpoint: record.endpoint.id, reason },
          `retrying upstream=${core.destination} after ${reason}`,
        )
        this.attempt()
        return
      }
      this.fail(reason)
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
    this.client.off('data', this.onClientData)
    const up = this.upstream!
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
