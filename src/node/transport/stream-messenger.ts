import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { systemClock } from '../../common/clock.ts'
import { PeermeshError } from '../../common/errors.ts'
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
import { MuxServer } from './mux-server.ts'
import type { StreamMessengerInit } from './stream-messenger-init.ts'
import {
  encodeMessageFrames,
  MessageStreamReader,
  PARTIAL_BUDGET_PEERS,
  PartialBudget,
  PartialBudgetExceededError,
} from './message-chunks.ts'

export type { StreamMessengerInit } from './stream-messenger-init.ts'

type MessageHandler = (from: string, bytes: Uint8Array) => void
type RequestHandler = (from: string, bytes: Uint8Array, signal: AbortSignal) => Promise<Uint8Array>

interface Outbound {
  stream?: Stream
  opening?: Promise<void>
  /** Messages waiting for the stream, each as its frames (a message is dropped whole, never in part). */
  queue: Uint8Array[][]
  failedUntil: number
}

interface PendingRequest {
  resolve: (reply: Uint8Array) => void
  reject: (err: Error) => void
}

/** The long-lived multiplexed request stream to one peer. */
interface RequestChannel {
  stream?: Stream
  opening?: Promise<Stream>
  nextId: number
  pending: Map<number, PendingRequest>
}

/** A multiplexed request failed on the serving side (handler threw, or too many in flight). */
export class RemoteRequestError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_REMOTE_REQUEST'
}

/** The request stream closed before the reply came. */
export class RequestStreamClosedError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_REQUEST_STREAM_CLOSED'
}

/**
 * Message transport over libp2p streams, shared by the protocol layers.
 *
 * - `send()` is **best-effort** (like UDP in memberlist's `Transport`): one long-lived outbound
 *   stream per peer carries length-prefixed frames; a message to a peer that cannot be reached
 *   is dropped, never retried here. Protocols above decide what a lost message means.
 * - `request()` is **reliable** (like memberlist's TCP stream): one request frame, one response
 *   frame, or an error; on a new stream per exchange, or (`requestMode: 'multiplexed'`) on one
 *   long-lived stream per peer carrying many exchanges at once, matched by id.
 *
 * A frame over the size limit resets the stream. Nothing that a peer sends can throw out of here.
 */
export class StreamMessenger {
  private readonly outbound = new Map<string, Outbound>()
  private readonly channels = new Map<string, RequestChannel>()
  private messageHandler: MessageHandler = () => {}
  private requestHandler?: RequestHandler
  private readonly inbound = new Set<Stream>()
  private stopped = false
  /** Counters for metrics and tests. */
  readonly stats = {
    sent: 0,
    sentBytes: 0,
    received: 0,
    receivedBytes: 0,
    dropped: 0,
    dialFailures: 0,
    badFrames: 0,
    /** Inbound streams reset because their peer went over its partial-message budget. */
    overBudget: 0,
  }
  private readonly budget: PartialBudget

  constructor(private readonly init: StreamMessengerInit) {
    const frame = init.chunking?.maxFrameBytes ?? init.maxMessageBytes
    const perPeer = init.maxPartialBytesPerPeer ?? init.maxMessageBytes + 2 * (frame + 4)
    this.budget = new PartialBudget({
      maxBytes: perPeer,
      maxMessages: init.maxPartialMessagesPerPeer ?? 2,
      maxTotalBytes: PARTIAL_BUDGET_PEERS * perPeer,
    })
  }
  private readonly now = (): number => (this.init.clock ?? systemClock).now()

  onMessage(handler: MessageHandler): void {
    this.messageHandler = handler
  }

  onRequest(handler: RequestHandler): void {
    this.requestHandler = handler
  }

  async start(): Promise<void> {
    const { host, protocol, requestProtocol } = this.init
    await host.handle(protocol, (stream, connection) => this.readMessages(stream, connection), {
      maxInboundStreams: this.init.maxInboundStreams ?? 1024,
      runOnLimitedConnection: false,
    })
    if (requestProtocol !== undefined && this.init.requestMode === 'multiplexed') {
      // One stream per peer in normal use; a few more while one is being replaced.
      await host.handle(requestProtocol, (stream, connection) => this.serveMultiplexed(stream, connection), {
        maxInboundStreams: 8,
      })
    } else if (requestProtocol !== undefined) {
      await host.handle(requestProtocol, (stream, connection) => this.serveRequest(stream, connection), {
        maxInboundStreams: 256,
      })
    }
  }

  async stop(): Promise<void> {
    this.stopped = true
    const { host, protocol, requestProtocol } = this.init
    await host.unhandle(protocol).catch(() => {})
    if (requestProtocol !== undefined) await host.unhandle(requestProtocol).catch(() => {})
    for (const out of this.outbound.values()) out.stream?.abort(new Error('stopping'))
    for (const ch of this.channels.values()) {
      ch.stream?.abort(new Error('stopping'))
      this.failPending(ch, new RequestStreamClosedError('stopping'))
    }
    for (const s of this.inbound) s.abort(new Error('stopping'))
    this.outbound.clear()
    this.channels.clear()
  }

  /** Best-effort send. Returns false if the message was dropped right away. */
  send(to: string, bytes: Uint8Array): boolean {
    if (this.stopped) return false
    if (bytes.length > this.init.maxMessageBytes) {
      this.stats.dropped++
      return false
    }
    let out = this.outbound.get(to)
    if (out === undefined) {
      out = { queue: [], failedUntil: 0 }
      this.outbound.set(to, out)
    }
    const chunking = this.init.chunking
    const frames =
      chunking === undefined ? [encodeFrame(bytes)] : encodeMessageFrames(bytes, chunking.maxFrameBytes)
    const stream = out.stream
    if (stream !== undefined && stream.status === 'open' && stream.writeStatus === 'writable') {
      // false only means "above the high-water mark": the frames are still queued. A peer that
      // never drains is cut off by the buffer limit (stream error).
      for (const frame of frames) stream.send(frame)
      this.stats.sent++
      this.stats.sentBytes += bytes.length
      return true
    }
    if (this.now() < out.failedUntil) {
      this.stats.dropped++
      return false
    }
    out.queue.push(frames)
    const max = this.init.maxQueuedPerPeer ?? 64
    while (out.queue.length > max) {
      out.queue.shift()
      this.stats.dropped++
    }
    if (out.opening === undefined) out.opening = this.open(to, out)
    return true
  }

  /**
   * Reliable request/response: on a fresh stream, or in multiplexed mode on the peer's long-lived
   * request stream. Rejects on timeout (the signal's reason), when the stream closes before the
   * reply (RequestStreamClosedError) or when the peer reports a failure (RemoteRequestError).
   */
  async request(to: string, bytes: Uint8Array, options: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    const { requestProtocol } = this.init
    if (requestProtocol === undefined) throw new Error('no request protocol configured')
    const signal = options.signal ?? AbortSignal.timeout(10_000)
    if (this.init.requestMode === 'multiplexed') return this.requestMultiplexed(to, bytes, signal)
    const stream = await this.init.host.dialProtocol(peerIdFromString(to), requestProtocol, { signal })
    try {
      stream.send(encodeFrame(bytes))
      const [reply] = await readFrames(stream, this.init.maxRequestBytes ?? 8 << 20, 1, signal)
      if (reply === undefined) throw new RequestStreamClosedError('peer closed the stream without a reply')
      return reply
    } finally {
      await stream.close({ signal }).catch(() => stream.abort(new Error('close failed')))
    }
  }

  private async requestMultiplexed(to: string, bytes: Uint8Array, signal: AbortSignal): Promise<Uint8Array> {
    if (this.stopped) throw new RequestStreamClosedError('stopping')
    signal.throwIfAborted()
    let ch = this.channels.get(to)
    if (ch === undefined) {
      ch = { nextId: 0, pending: new Map() }
      this.channels.set(to, ch)
    }
    const stream = await this.requestStream(to, ch, signal)
    ch.nextId = (ch.nextId + 1) >>> 0
    const id = ch.nextId
    const channel = ch
    return new Promise<Uint8Array>((resolve, reject) => {
      const onAbort = (): void => {
        channel.pending.delete(id)
        reject(signal.reason)
      }
      signal.addEventListener('abort', onAbort, { once: true })
      channel.pending.set(id, {
        resolve: (reply) => {
          signal.removeEventListener('abort', onAbort)
          resolve(reply)
        },
        reject: (err) => {
          signal.removeEventListener('abort', onAbort)
          reject(err)
        },
      })
      try {
        stream.send(encodeMuxFrame(id, MUX_REQUEST, bytes))
      } catch (err) {
        channel.pending.get(id)?.reject(err as Error)
        channel.pending.delete(id)
      }
    })
  }

  /** The open request stream to a peer, opening it (once, for all callers) if needed. */
  private async requestStream(to: string, ch: RequestChannel, signal: AbortSignal): Promise<Stream> {
    const open = ch.stream
    if (open !== undefined && open.status === 'open' && open.writeStatus === 'writable') return open
    ch.stream = undefined
    if (ch.opening === undefined) {
      ch.opening = this.openRequestStream(to, ch).finally(() => {
        ch.opening = undefined
      })
      ch.opening.catch(() => {}) // a caller that gave up must not leave it unhandled
    }
    // Every caller waits with its own deadline; the open itself has its own (it serves them all).
    const aborted = new Promise<never>((_, reject) => {
      const onAbort = (): void => reject(signal.reason)
      if (signal.aborted) onAbort()
      else signal.addEventListener('abort', onAbort, { once: true })
      ch.opening?.finally(() => signal.removeEventListener('abort', onAbort)).catch(() => {})
    })
    return Promise.race([ch.opening, aborted])
  }

  private async openRequestStream(to: string, ch: RequestChannel): Promise<Stream> {
    const stream = await this.init.host.dialProtocol(peerIdFromString(to), this.init.requestProtocol!, {
      signal: AbortSignal.timeout(3_000),
    })
    if (this.stopped) {
      stream.abort(new Error('stopping'))
      throw new RequestStreamClosedError('stopping')
    }
    const decoder = new FrameDecoder(this.init.maxRequestBytes ?? 8 << 20)
    this.onFrames(stream, decoder, to, (frames) => {
      for (const f of frames) {
        const head = parseMuxHeader(f)
        if (head === undefined || head.kind === MUX_REQUEST) {
          this.stats.badFrames++
          continue
        }
        const p = ch.pending.get(head.id)
        if (p === undefined) continue // its caller gave up
        ch.pending.delete(head.id)
        const payload = f.subarray(MUX_HEADER_BYTES)
        if (head.kind === MUX_REPLY) p.resolve(payload)
        else p.reject(new RemoteRequestError(new TextDecoder().decode(payload)))
      }
    })
    stream.addEventListener('close', () => {
      if (ch.stream === stream) ch.stream = undefined
      this.failPending(ch, new RequestStreamClosedError('request stream closed before the reply'))
    })
    ch.stream = stream
    return stream
  }

  private failPending(ch: RequestChannel, err: Error): void {
    const pending = [...ch.pending.values()]
    ch.pending.clear()
    for (const p of pending) p.reject(err)
  }

  /** Serves a peer's long-lived request stream: each request frame answered by id, concurrently. */
  private serveMultiplexed(stream: Stream, connection: Connection): void {
    const from = connection.remotePeer.toString()
    const decoder = new FrameDecoder(this.init.maxRequestBytes ?? 8 << 20)
    const server = new MuxServer({
      from,
      maxConcurrent: this.init.maxConcurrentRequests ?? 256,
      handler: () => this.requestHandler,
      write: (frame) => {
        if (stream.status === 'open' && stream.writeStatus === 'writable') stream.send(frame)
      },
      onBadFrame: () => this.stats.badFrames++,
      log: this.init.log,
    })
    this.inbound.add(stream)
    stream.addEventListener('close', () => {
      this.inbound.delete(stream)
      server.close(new Error('request stream closed'))
    })
    this.onFrames(stream, decoder, from, (frames) => server.receive(frames))
  }

  /** Drops the cached outbound stream to a peer (e.g. after the peer was declared dead). */
  forget(peer: string): void {
    const out = this.outbound.get(peer)
    out?.stream?.abort(new Error('forgotten'))
    this.outbound.delete(peer)
  }

  private async open(to: string, out: Outbound): Promise<void> {
    let peer: PeerId
    try {
      peer = peerIdFromString(to)
    } catch {
      this.outbound.delete(to)
      return
    }
    try {
      const stream = await this.init.host.dialProtocol(peer, this.init.protocol, {
        signal: AbortSignal.timeout(3_000),
      })
      if (this.stopped) {
        stream.abort(new Error('stopping'))
        return
      }
      out.stream = stream
      stream.addEventListener('close', () => {
        if (out.stream === stream) out.stream = undefined
      })
      // Outbound streams are write-only; discard anything the peer sends back.
      stream.addEventListener('message', () => {})
      for (const frames of out.queue) {
        for (const frame of frames) {
          stream.send(frame)
          this.stats.sentBytes += frame.length - 4
        }
        this.stats.sent++
      }
      out.queue = []
    } catch (err) {
      this.stats.dialFailures++
      this.stats.dropped += out.queue.length
      out.queue = []
      out.failedUntil = this.now() + (this.init.dialBackoffMs ?? 0)
      this.init.onDialFailure?.(to)
      this.init.log.trace({ peer: to, err: (err as Error).message }, 'cannot open message stream')
    } finally {
      out.opening = undefined
    }
  }

  /**
   * Hands each batch of length-prefixed frames arriving on `stream` to `onBatch`; a malformed
   * frame (bad length, too large) is counted and resets the stream.
   */
  private onFrames(
    stream: Stream,
    decoder: FrameDecoder,
    peer: string,
    onBatch: (frames: Uint8Array[]) => void,
  ): void {
    stream.addEventListener('message', (evt) => {
      let frames: Uint8Array[]
      try {
        frames = decoder.push(evt.data.subarray())
      } catch (err) {
        this.stats.badFrames++
        this.init.log.debug({ peer, err: (err as Error).message }, 'bad frame; resetting stream')
        stream.abort(err as Error)
        return
      }
      onBatch(frames)
    })
  }

  /**
   * Reads a peer's message stream (see MessageStreamReader). A bad frame or chunk, or a peer over
   * its budget for partly received messages, resets the stream (counted).
   */
  private readMessages(stream: Stream, connection: Connection): void {
    const from = connection.remotePeer.toString()
    const { chunking, maxMessageBytes } = this.init
    const reader = new MessageStreamReader(from, this.budget, {
      maxMessageBytes,
      ...(chunking !== undefined ? { maxFrameBytes: chunking.maxFrameBytes } : {}),
    })
    this.inbound.add(stream)
    stream.addEventListener('close', () => {
      this.inbound.delete(stream)
      reader.release()
    })
    stream.addEventListener('message', (evt) => {
      let messages: Uint8Array[]
      try {
        messages = reader.push(evt.data.subarray())
      } catch (err) {
        this.stats[err instanceof PartialBudgetExceededError ? 'overBudget' : 'badFrames']++
        this.init.log.debug({ peer: from, err: (err as Error).message }, 'bad message stream; resetting it')
        reader.release()
        stream.abort(err as Error)
        return
      }
      for (const m of messages) {
        this.stats.received++
        this.stats.receivedBytes += m.length
        try {
          this.messageHandler(from, m)
        } catch (err) {
          this.init.log.error({ err, peer: from }, 'message handler threw')
        }
      }
    })
  }

  private async serveRequest(stream: Stream, connection: Connection): Promise<void> {
    const from = connection.remotePeer.toString()
    const signal = AbortSignal.timeout(10_000)
    try {
      const [req] = await readFrames(stream, this.init.maxRequestBytes ?? 8 << 20, 1, signal)
      if (req === undefined || this.requestHandler === undefined) {
        stream.abort(new Error('no request'))
        return
      }
      const reply = await this.requestHandler(from, req, signal)
      stream.send(encodeFrame(reply))
      await stream.close({ signal })
    } catch (err) {
      this.stats.badFrames++
      this.init.log.debug({ peer: from, err: (err as Error).message }, 'request failed')
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }
}
